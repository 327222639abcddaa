"""Faces in the wild: detection with 5 landmarks, the crop each SegFace label set was trained on, and pasting the
parses back into the photo.

SegFace models were trained on aligned, centred face crops, so a photo is parsed face by face:

1. [`SegFaceFaceDetector`] finds each face with a box and 5 landmarks (MTCNN from `facenet-pytorch`, whose weights
   ship inside its wheel, so detection works offline; install with `pip install "segface-hf[faces]"`).
2. [`face_crops`] cuts the crop that matches how the model's training data was framed (see [`framing_for`]):
   - `celebamask-hq`: the CelebA-HQ construction from the 5 landmarks (oriented square of side
     2 * max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|), centred 0.1 * eye_to_mouth below the eye midpoint, rotated so
     that the eyes are level);
   - `helen`: the axis-aligned square of 1.2x the side of the 68-landmark box that the Helen data was cropped to,
     estimated from the 5 landmarks (the 68 points are not available);
   - `lapa`: an axis-aligned square around the face, and the 5 landmarks in its frame, from which the LaPa model
     aligns the face itself.
   Parts of a crop outside the photo are filled by reflection, blurred and faded towards the median colour (as
   CelebA-HQ did), never clipped, so the framing is the same at the border.
3. [`segment_crops`] runs the model on the crops, in batches.
4. [`paste_faces`] maps each face's class scores back into the photo. Where the crops of several faces overlap, a
   pixel takes the label of the face whose parse gives it the highest probability of *not* being background; ties go
   to the earlier face (larger box first). Pixels outside every crop are background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch
import torch.nn.functional as F

from ..errors import SegFaceError
from ..configuration_segface import LAPA_LABELS
from ..image_processing_segface import resized_argmax
from ..image_io import SegFaceImageError, to_rgb

FRAMINGS = ("celebamask-hq", "helen", "lapa")
FACES_EXTRA_HINT = 'pip install "segface-hf[faces]" (or: pip install facenet-pytorch==2.5.3)'

# Helen crops are 1.2x the box of 68 landmarks. Measured in units of the CelebA-HQ half-side |x| (see
# `celebamask_hq_quad`), that square has a side of about 1.35 |x| and is centred about 0.3 |x| below the eye midpoint
# (from average facial proportions: jaw width ~2.3 and brow-to-chin height ~2.2 inter-ocular distances, the eye line
# ~0.4 below the brow top and ~1.8 above the chin); tests/test_faces.py checks it against real 68-point annotations.
# When the head turns, the nose tip moves sideways from the eye-mouth centre and the face outline about as far the
# other way.
HELEN_SIDE_PER_HALF_SIDE = 1.35
HELEN_CENTRE_BELOW_EYES = 0.3
HELEN_OUTLINE_SHIFT_PER_NOSE_SHIFT = 1.0
# LaPa crops: a square twice the side of the model's aligned frame, rendered at twice the model resolution, so that
# the aligned face is sampled about 1:1 and the tanh warp sees context around it.
LAPA_CONTEXT = 2.0


class SegFaceMissingDependencyError(SegFaceError, ImportError):
    """An optional dependency (the face detector) is not installed."""


class SegFaceNoFaceError(SegFaceImageError):
    """No face was found in an image."""


@dataclass(frozen=True)
class SegFaceFaceDetection:
    """One detected face.

    Attributes:
        box (`np.ndarray` of shape `(4,)`): `(x0, y0, x1, y1)` in image pixels.
        landmarks (`np.ndarray` of shape `(5, 2)`): (x, y) of the image-left eye, image-right eye, nose tip,
            image-left and image-right mouth corners.
        score (`float`): the detector's confidence.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }


class SegFaceFaceDetector:
    r"""
    Face detector with 5 landmarks: the MTCNN of `facenet-pytorch` (pretrained weights bundled in its wheel).

    Args:
        min_face_size (`int`, *optional*, defaults to 20):
            Smallest face side, in pixels of the (possibly downscaled, see `max_side`) detection image.
        thresholds (`tuple[float, float, float]`, *optional*, defaults to `(0.6, 0.7, 0.7)`):
            Score thresholds of MTCNN's three stages.
        min_score (`float`, *optional*, defaults to 0.9):
            Faces below this final score are dropped.
        max_side (`int`, *optional*, defaults to 1600):
            Larger photos are downscaled to this longer side for detection (boxes and landmarks are scaled back).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Where the detector runs.
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7), min_score: float = 0.9,
                 max_side: int = 1600, device: str | torch.device = "cpu"):  # fmt: skip
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise SegFaceMissingDependencyError(
                f"Face detection needs the facenet-pytorch package, which is not installed: {FACES_EXTRA_HINT}. "
                "To parse images that are already aligned face crops, skip detection (--no-detect / detect=False)."
            ) from error
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self.device = torch.device(device)
        self._mtcnn = MTCNN(min_face_size=self.min_face_size, thresholds=list(thresholds), keep_all=True,
                            post_process=False, device=self.device)  # fmt: skip

    def __call__(self, image) -> list[SegFaceFaceDetection]:
        """Detect the faces of one image, largest box first (then left to right)."""
        image = to_rgb(image)
        scale = 1.0
        if max(image.size) > self.max_side:
            scale = self.max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, resample=PIL.Image.BILINEAR, reducing_gap=2.0)
        if min(image.size) < self.min_face_size:
            return []
        with torch.inference_mode():
            boxes, scores, landmarks = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, score, points in zip(boxes, scores, landmarks):
            if score is not None and float(score) >= self.min_score:
                box, points = np.asarray(box, np.float64) / scale, np.asarray(points, np.float64) / scale
                faces.append(SegFaceFaceDetection(box=box, landmarks=points, score=float(score)))
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[0], f.box[1]))
        return faces


# ------------------------------------------------------------------------------------------------ framing


def framing_for(config) -> str:
    """The crop a model's training data used, from its config: `lapa` for models that align faces themselves
    (`use_face_warp`), `helen` for the other 11-class LaPa/Helen label set, `celebamask-hq` otherwise (also for custom
    label sets, which are usually fine-tuned from CelebAMask-HQ models)."""
    if getattr(config, "use_face_warp", False):
        return "lapa"
    names = tuple(config.id2label[i] for i in range(len(config.id2label)))
    if names == LAPA_LABELS:
        return "helen"
    return "celebamask-hq"


def _check_landmarks(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise SegFaceImageError(f"Expected 5 finite (x, y) landmarks, got an array of shape {points.shape}.")
    return points


def _rot90(vector: np.ndarray) -> np.ndarray:
    """Rotate by +90 degrees in image coordinates (y down): (x, y) -> (-y, x)."""
    return np.array([-vector[1], vector[0]])


def _celebahq_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye midpoint (continuous coordinates), half-side vector x and its perpendicular y of the CelebA-HQ crop."""
    eye_mid = (points[0] + points[1]) * 0.5 + 0.5
    mouth_mid = (points[3] + points[4]) * 0.5 + 0.5
    eye_to_eye = points[1] - points[0]
    eye_to_mouth = mouth_mid - eye_mid
    half = eye_to_eye - _rot90(eye_to_mouth)
    norm = np.hypot(*half)
    if norm < 1e-6:
        raise SegFaceImageError("Degenerate landmarks: the eyes and mouth coincide.")
    half = half / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_mid, half, _rot90(half)


def celebamask_hq_quad(landmarks) -> np.ndarray:
    """The CelebA-HQ crop of a face: corners (top-left, bottom-left, bottom-right, top-right), `(4, 2)`, in
    continuous image coordinates (pixel `i` spans `[i, i + 1)`).

    This is the construction Karras et al. (2018) used to make CelebA-HQ (the images of CelebAMask-HQ) from the
    5 CelebA landmarks: `x = eye_to_eye - rot90(eye_to_mouth)`, scaled to `max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)`,
    `y = rot90(x)`, centre `c = eye_midpoint + 0.1 * eye_to_mouth`, square `c -/+ x -/+ y`, including the script's
    half-pixel offsets.
    """
    points = _check_landmarks(landmarks)
    eye_mid, x, y = _celebahq_axes(points)
    eye_to_mouth = (points[3] + points[4]) * 0.5 + 0.5 - eye_mid
    centre = eye_mid + eye_to_mouth * 0.1
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y]) + 0.5


def _axis_aligned_square(centre: np.ndarray, side: float) -> np.ndarray:
    half = side / 2.0
    x0, y0, x1, y1 = centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half
    return np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=np.float64)


def helen_quad(landmarks) -> np.ndarray:
    """The Helen crop of a face (1.2x square around the 68-landmark box, estimated from 5 landmarks); axis-aligned,
    corners as in [`celebamask_hq_quad`]."""
    points = _check_landmarks(landmarks)
    eye_mid, x, y = _celebahq_axes(points)
    half_side = np.hypot(*x)
    across, down = x / half_side, y / half_side
    # A turned head moves its nose tip sideways and its outline (which the 68-point box follows) the other way.
    nose_shift = (points[2] - points[[0, 1, 3, 4]].mean(axis=0)) @ across
    centre = (
        eye_mid + down * HELEN_CENTRE_BELOW_EYES * half_side - across * HELEN_OUTLINE_SHIFT_PER_NOSE_SHIFT * nose_shift
    )
    return _axis_aligned_square(centre, HELEN_SIDE_PER_HALF_SIDE * half_side)


def lapa_quad(landmarks, model_size: int) -> np.ndarray:
    """The crop handed to a LaPa model: an axis-aligned square, `LAPA_CONTEXT` times the side of the model's aligned
    face frame (the 5-point template at `model_size`), centred on that frame."""
    from ..face_warp import face_alignment_matrix

    points = _check_landmarks(landmarks)
    matrix = face_alignment_matrix(torch.tensor(points[None], dtype=torch.float64), (model_size, model_size))[0].numpy()
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    if scale < 1e-9:
        raise SegFaceImageError("Degenerate landmarks: all 5 points coincide.")
    centre = np.linalg.solve(matrix[:2, :2], np.full(2, (model_size - 1) / 2.0) - matrix[:2, 2]) + 0.5
    return _axis_aligned_square(centre, LAPA_CONTEXT * model_size / scale)


def quad_for(landmarks, framing: str, model_size: int) -> np.ndarray:
    """The crop corners of one face for a framing (`celebamask-hq`, `helen` or `lapa`)."""
    if framing == "celebamask-hq":
        return celebamask_hq_quad(landmarks)
    if framing == "helen":
        return helen_quad(landmarks)
    if framing == "lapa":
        return lapa_quad(landmarks, model_size)
    raise ValueError(f"Unknown framing {framing!r}; choose one of {FRAMINGS}.")


def _crop_to_image_affine(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine taking continuous crop coordinates (0..width, 0..height) to continuous image coordinates."""
    width, height = size
    origin, right, down = quad[0], (quad[3] - quad[0]) / width, (quad[1] - quad[0]) / height
    return np.array([[right[0], down[0], origin[0]], [right[1], down[1], origin[1]]], dtype=np.float64)


def _image_to_crop_affine(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    forward = np.vstack([_crop_to_image_affine(quad, size), [0.0, 0.0, 1.0]])
    return np.linalg.inv(forward)[:2]


def _pad_like_celebahq(array: np.ndarray, pads: tuple[int, int, int, int], blur_radius: float) -> np.ndarray:
    """Pad `(h, w, 3)` float pixels by (left, top, right, bottom) by reflection, then blur the padding and fade it
    towards the median colour with the distance from the original border."""
    left, top, right, bottom = pads
    padded = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    height, width = padded.shape[:2]
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    # 0 on the original pixels up to their border, rising to 1 at the outer edge of the padding (per side).
    depth = np.zeros((height, width), dtype=np.float32)
    if left:
        depth = np.maximum(depth, (left - xs) / left)
    if top:
        depth = np.maximum(depth, (top - ys) / top)
    if right:
        depth = np.maximum(depth, (xs - (width - 1 - right)) / right)
    if bottom:
        depth = np.maximum(depth, (ys - (height - 1 - bottom)) / bottom)
    depth = np.clip(depth, 0.0, 1.0)[..., None]
    image = PIL.Image.fromarray(np.uint8(np.clip(np.round(padded), 0, 255)))
    blurred = np.asarray(image.filter(PIL.ImageFilter.GaussianBlur(blur_radius)), dtype=np.float32)
    padded = padded + (blurred - padded) * np.clip(depth * 3.0, 0.0, 1.0)
    median = np.median(array.reshape(-1, 3), axis=0)
    return padded + (median - padded) * depth


def extract_quad(image: PIL.Image.Image, quad: np.ndarray, size: tuple[int, int]) -> PIL.Image.Image:
    """Render the image inside `quad` (corners top-left, bottom-left, bottom-right, top-right, continuous
    coordinates) of an RGB PIL image (as [`~segface_hf.image_io.to_rgb`] returns it) as an RGB image of `size`
    (width, height), antialiased, padding beyond the image borders."""
    quad = np.asarray(quad, dtype=np.float64).copy()
    out_w, out_h = size
    side = float(
        max(np.hypot(*(quad[3] - quad[0])) / out_w, np.hypot(*(quad[1] - quad[0])) / out_h)
    )  # source px per output px
    border = max(round(0.1 * side * max(out_w, out_h)), 3)
    x0 = math.floor(quad[:, 0].min()) - border
    y0 = math.floor(quad[:, 1].min()) - border
    x1 = math.ceil(quad[:, 0].max()) + border
    y1 = math.ceil(quad[:, 1].max()) + border
    crop = (max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height))
    if crop[0] >= crop[2] or crop[1] >= crop[3]:
        raise SegFaceImageError("The face crop lies entirely outside the image.")
    region = image.crop(crop)
    quad -= crop[:2]
    pads = [crop[0] - x0, crop[1] - y0, x1 - crop[2], y1 - crop[3]]
    if any(pads):  # as CelebA-HQ: once padding is needed, at least 0.3 crop sides on every side, for a gentle fade
        pads = [max(p, round(0.3 * side * max(out_w, out_h))) for p in pads]
    shrink = math.floor(side / 2.0)
    if shrink > 1:  # minify with a box filter first, as CelebA-HQ did, so that the final resampling is antialiased
        region = region.reduce(shrink)
        quad /= shrink
        pads = [math.ceil(p / shrink) for p in pads]
        side /= shrink
    if any(pads):
        # Reflection needs at least 2 pixels per side; tiny regions are first replicated at the edges.
        array = np.asarray(region, dtype=np.float32)
        if min(array.shape[:2]) < 2:
            array = np.pad(array, ((0, max(0, 2 - array.shape[0])), (0, max(0, 2 - array.shape[1])), (0, 0)), "edge")
        padded = _pad_like_celebahq(array, tuple(pads), blur_radius=float(max(0.02 * side * max(out_w, out_h), 0.5)))
        region = PIL.Image.fromarray(np.uint8(np.clip(np.round(padded), 0, 255)))
        quad += [pads[0], pads[1]]
    supersample = 4 if max(out_w, out_h) <= 1024 else 2
    rendered = region.transform((out_w * supersample, out_h * supersample), PIL.Image.QUAD, quad.flatten().tolist(),
                                resample=PIL.Image.BILINEAR)  # fmt: skip
    return rendered.resize((out_w, out_h), resample=PIL.Image.LANCZOS)


# ------------------------------------------------------------------------------------------------ crops


@dataclass
class SegFaceFaceCrop:
    """One face prepared for the model.

    Attributes:
        image (`PIL.Image.Image`): the crop, at the size the model gets.
        quad (`np.ndarray` of shape `(4, 2)`): its corners in the photo (continuous coordinates).
        landmarks (`np.ndarray` of shape `(5, 2)` or `None`): the 5 landmarks in the crop's pixels (for LaPa models).
        detection ([`SegFaceFaceDetection`] or `None`): the detection it came from.
        resize (`bool`): whether the image processor must still resize it (whole images), or it is already at the
            model's input size (face crops).
    """

    image: PIL.Image.Image
    quad: np.ndarray
    landmarks: np.ndarray | None = None
    detection: SegFaceFaceDetection | None = None
    resize: bool = False


def model_input_size(processor) -> tuple[int, int]:
    """(width, height) the image processor resizes to."""
    size = processor.size
    return int(size["width"]), int(size["height"])


def face_crops(image, detections: Sequence[SegFaceFaceDetection], framing: str,
               input_size: tuple[int, int]) -> list[SegFaceFaceCrop]:  # fmt: skip
    """Cut one crop per detected face.

    Args:
        image (`PIL.Image.Image`): the photo, RGB (as [`~segface_hf.image_io.to_rgb`] returns it).
        detections (list of [`SegFaceFaceDetection`]): the faces.
        framing (`str`): `celebamask-hq`, `helen` or `lapa` (see [`framing_for`]).
        input_size (`tuple[int, int]`): the model's (width, height), e.g. from [`model_input_size`].
    """
    crops = []
    for detection in detections:
        quad = quad_for(detection.landmarks, framing, input_size[1])
        size = (
            input_size if framing != "lapa" else (int(input_size[0] * LAPA_CONTEXT), int(input_size[1] * LAPA_CONTEXT))
        )
        landmarks = None
        if framing == "lapa":
            to_crop = _image_to_crop_affine(quad, size)
            points = np.asarray(detection.landmarks, np.float64) + 0.5
            landmarks = points @ to_crop[:, :2].T + to_crop[:, 2] - 0.5
        crops.append(SegFaceFaceCrop(image=extract_quad(image, quad, size), quad=quad, landmarks=landmarks,
                                     detection=detection))  # fmt: skip
    return crops


def template_landmarks(width: int, height: int, model_size: int) -> np.ndarray:
    """The 5 landmarks at which a LaPa model's alignment is the identity, in the pixels of a `width` x `height`
    image that the processor resizes to `model_size` (i.e. for an image that is already an aligned face)."""
    from ..face_warp import face_template

    template = face_template((model_size, model_size), torch.float64).numpy()
    return template * np.array([width / model_size, height / model_size])


def whole_image_crop(image, model_size: int | None = None, needs_landmarks: bool = False) -> SegFaceFaceCrop:
    """The whole image as one face (for aligned crops): the processor resizes it, as the original pipeline did.
    With `needs_landmarks` (LaPa models) the face is assumed to sit at the alignment template. `image` is RGB (as
    [`~segface_hf.image_io.to_rgb`] returns it)."""
    quad = np.array([[0, 0], [0, image.height], [image.width, image.height], [image.width, 0]], dtype=np.float64)
    landmarks = template_landmarks(image.width, image.height, model_size) if needs_landmarks else None
    return SegFaceFaceCrop(image=image, quad=quad, landmarks=landmarks, resize=True)


# ------------------------------------------------------------------------------------------------ model


def segment_crops(model, processor, crops: Sequence[SegFaceFaceCrop], batch_size: int = 8) -> list[torch.Tensor]:
    """Run the model on crops in batches (crops of equal size together); returns `(num_labels, h, w)` float logits
    per crop, on the CPU, at the crop's size (face crops) or the model resolution (whole images)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    needs_landmarks = bool(getattr(model.config, "use_face_warp", False))
    results: list[torch.Tensor | None] = [None] * len(crops)
    groups: dict[tuple, list[int]] = {}
    for index, crop in enumerate(crops):
        key = ("resize",) if crop.resize else ("native", crop.image.size)
        groups.setdefault(key, []).append(index)
    for key, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            kwargs = {}
            if needs_landmarks:
                if any(crops[i].landmarks is None for i in chunk):
                    raise SegFaceImageError("This model (LaPa head) needs 5 landmarks per face; a crop has none.")
                kwargs["landmarks"] = [crops[i].landmarks for i in chunk]
            inputs = processor([crops[i].image for i in chunk], do_resize=key[0] == "resize", return_tensors="pt",
                               **kwargs)  # fmt: skip
            model_inputs = {"pixel_values": inputs["pixel_values"].to(device, dtype)}
            if needs_landmarks:
                model_inputs["landmarks"] = inputs["landmarks"].to(device, torch.float32)
            with torch.inference_mode():
                logits = model(**model_inputs).logits
            for position, index in enumerate(chunk):
                results[index] = logits[position].float().cpu()
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ paste back


@dataclass
class SegFaceFaceParse:
    """The parse of one face, in the photo's pixels.

    Attributes:
        detection ([`SegFaceFaceDetection`] or `None`): the detection.
        quad (`np.ndarray`): the crop's corners in the photo.
        region (`tuple[int, int, int, int]`): `(x0, y0, x1, y1)`, the part of the photo the crop covers.
        labels (`np.ndarray`): class indices inside `region`; 0 (background) where the crop does not reach.
        covered (`np.ndarray` of `bool`): which pixels of `region` the crop covers.
        image_size (`tuple[int, int]`): the photo's (height, width).
    """

    detection: SegFaceFaceDetection | None
    quad: np.ndarray
    region: tuple[int, int, int, int]
    labels: np.ndarray
    covered: np.ndarray
    image_size: tuple[int, int]

    @property
    def label_map(self) -> np.ndarray:
        """This face's labels as a full-size `(height, width)` map (background outside its crop)."""
        full = np.zeros(self.image_size, dtype=self.labels.dtype)
        x0, y0, x1, y1 = self.region
        full[y0:y1, x0:x1] = self.labels
        return full


@dataclass
class SegFaceParsingResult:
    """The parse of a photo.

    Attributes:
        label_map (`np.ndarray`): `(height, width)` class indices for the whole photo (all faces combined).
        faces (list of [`SegFaceFaceParse`]): one entry per face (one entry for the whole image in whole-image mode).
        mode (`str`): `"faces"` (detected faces) or `"whole-image"` (the image parsed as one aligned face).
        face_index (`np.ndarray` or `None`): `(height, width)` index into `faces` of the face each pixel's label came
            from, -1 where no face reached (faces mode only).
    """

    label_map: np.ndarray
    faces: list[SegFaceFaceParse] = field(default_factory=list)
    mode: str = "faces"
    face_index: np.ndarray | None = None


def _label_dtype(num_labels: int):
    return np.uint8 if num_labels <= 256 else np.int32


def _paste_one(logits: torch.Tensor, quad: np.ndarray, image_size: tuple[int, int], band_pixels: int = 2**20):
    """Per-pixel (label, foreground probability, covered) of one face inside the photo region its crop covers."""
    height, width = image_size
    num_labels = logits.shape[0]
    x0 = max(math.floor(quad[:, 0].min()), 0)
    y0 = max(math.floor(quad[:, 1].min()), 0)
    x1 = min(math.ceil(quad[:, 0].max()), width)
    y1 = min(math.ceil(quad[:, 1].max()), height)
    region = (x0, y0, max(x0, x1), max(y0, y1))
    region_h, region_w = region[3] - region[1], region[2] - region[0]
    labels = np.zeros((region_h, region_w), dtype=_label_dtype(num_labels))
    foreground = np.full((region_h, region_w), -1.0, dtype=np.float32)
    covered = np.zeros((region_h, region_w), dtype=bool)
    if region_h == 0 or region_w == 0:
        return region, labels, foreground, covered
    # Image pixel centres -> normalised crop coordinates in [-1, 1] (align_corners=False: -1/1 are the crop's edges).
    to_crop = _image_to_crop_affine(quad, (1, 1))
    xs = torch.arange(x0, x1, dtype=torch.float64) + 0.5
    source = logits[None].float()
    rows_per_band = max(1, band_pixels // region_w)
    for start in range(y0, y1, rows_per_band):
        stop = min(y1, start + rows_per_band)
        ys = torch.arange(start, stop, dtype=torch.float64) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        u = to_crop[0, 0] * grid_x + to_crop[0, 1] * grid_y + to_crop[0, 2]
        v = to_crop[1, 0] * grid_x + to_crop[1, 1] * grid_y + to_crop[1, 2]
        grid = torch.stack([u * 2 - 1, v * 2 - 1], dim=-1)[None].float()
        inside = ((u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)).numpy()
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        probabilities = sampled.softmax(dim=0)
        band = slice(start - y0, stop - y0)
        labels[band] = np.where(inside, probabilities.argmax(dim=0).numpy(), 0)
        foreground[band] = np.where(inside, 1.0 - probabilities[0].numpy(), -1.0)
        covered[band] = inside
    return region, labels, foreground, covered


def paste_faces(image_size: tuple[int, int], crops: Sequence[SegFaceFaceCrop],
                logits: Sequence[torch.Tensor]) -> SegFaceParsingResult:  # fmt: skip
    """Combine per-face logits into the photo's label map.

    Args:
        image_size (`tuple[int, int]`): the photo's (height, width).
        crops (list of [`SegFaceFaceCrop`]): the crops, as made by [`face_crops`].
        logits (list of `torch.Tensor`): `(num_labels, h, w)` per crop, over the whole crop.

    Returns:
        [`SegFaceParsingResult`]: overlapping faces resolved per pixel by the highest non-background probability
        (ties: the earlier face).
    """
    if len(crops) != len(logits):
        raise ValueError(f"Got {len(logits)} logits for {len(crops)} crops.")
    height, width = image_size
    num_labels = int(logits[0].shape[0]) if logits else 1
    label_map = np.zeros((height, width), dtype=_label_dtype(num_labels))
    best = np.full((height, width), -1.0, dtype=np.float32)
    face_index = np.full((height, width), -1, dtype=np.int16)
    faces = []
    for index, (crop, face_logits) in enumerate(zip(crops, logits)):
        region, labels, foreground, covered = _paste_one(face_logits, crop.quad, image_size)
        x0, y0, x1, y1 = region
        window = (slice(y0, y1), slice(x0, x1))
        wins = covered & (foreground > best[window])
        label_map[window][wins] = labels[wins]
        best[window][wins] = foreground[wins]
        face_index[window][wins] = index
        faces.append(SegFaceFaceParse(detection=crop.detection, quad=crop.quad, region=region, labels=labels,
                                      covered=covered, image_size=(height, width)))  # fmt: skip
    return SegFaceParsingResult(label_map=label_map, faces=faces, mode="faces", face_index=face_index)


def paste_whole_image(image_size: tuple[int, int], crop: SegFaceFaceCrop, logits: torch.Tensor) -> SegFaceParsingResult:
    """The label map of an image parsed whole: the logits bilinearly resized to the image, then the argmax (as the
    image processor's post-processing does)."""
    height, width = image_size
    label_map = resized_argmax(logits, (height, width)).numpy().astype(_label_dtype(int(logits.shape[0])))
    face = SegFaceFaceParse(detection=None, quad=crop.quad, region=(0, 0, width, height), labels=label_map,
                            covered=np.ones((height, width), dtype=bool), image_size=(height, width))  # fmt: skip
    return SegFaceParsingResult(label_map=label_map, faces=[face], mode="whole-image", face_index=None)


# ------------------------------------------------------------------------------------------------ one call


def parse_faces(image, model, processor, detector: SegFaceFaceDetector | None = None, detect: bool = True,
                framing: str = "auto", if_no_face: str = "error", batch_size: int = 8,
                detections: Sequence[SegFaceFaceDetection] | None = None) -> SegFaceParsingResult:  # fmt: skip
    """Parse every face of a photo and paste the results back into it.

    Args:
        image (`PIL.Image.Image`, path or array): the photo (EXIF orientation is applied).
        model ([`SegFaceForSemanticSegmentation`]): the model (in eval mode).
        processor ([`SegFaceImageProcessor`]): its image processor.
        detector ([`SegFaceFaceDetector`], *optional*): defaults to a new one on the model's device.
        detect (`bool`, *optional*, defaults to `True`): `False` parses the whole image as one aligned face crop.
        framing (`str`, *optional*, defaults to `"auto"`): the crop to cut; `"auto"` follows [`framing_for`].
        if_no_face (`str`, *optional*, defaults to `"error"`): `"error"` raises [`SegFaceNoFaceError`],
            `"whole-image"` parses the whole image instead.
        batch_size (`int`, *optional*, defaults to 8): faces per forward pass.
        detections (list of [`SegFaceFaceDetection`], *optional*): faces found beforehand (e.g. by another detector,
            with 5 landmarks in the order of [`SegFaceFaceDetection`]); used instead of running the detector.
    """
    image = to_rgb(image)
    plan = plan_image(image, model, processor, detector=detector, detect=detect, framing=framing, if_no_face=if_no_face,
                      name="the image", detections=detections)  # fmt: skip
    logits = segment_crops(model, processor, plan.crops, batch_size=batch_size)
    return plan.finish(logits)


@dataclass
class SegFaceImagePlan:
    """The crops of one image and how to put their logits back together."""

    image_size: tuple[int, int]
    crops: list[SegFaceFaceCrop]
    mode: str

    def finish(self, logits: Sequence[torch.Tensor]) -> SegFaceParsingResult:
        if self.mode == "whole-image":
            return paste_whole_image(self.image_size, self.crops[0], logits[0])
        return paste_faces(self.image_size, self.crops, logits)


def plan_image(image: PIL.Image.Image, model, processor, detector: SegFaceFaceDetector | None = None,
               detect: bool = True, framing: str = "auto", if_no_face: str = "error",
               name: str = "the image", detections: Sequence[SegFaceFaceDetection] | None = None) -> SegFaceImagePlan:  # fmt: skip
    """Detect the faces of an RGB image (unless `detections` are given) and cut their crops (or take the whole
    image)."""
    if if_no_face not in ("error", "whole-image"):
        raise ValueError(f"if_no_face must be 'error' or 'whole-image', got {if_no_face!r}.")
    framing = framing_for(model.config) if framing == "auto" else framing
    if framing not in FRAMINGS:
        raise ValueError(f"Unknown framing {framing!r}; choose 'auto' or one of {FRAMINGS}.")
    input_size = model_input_size(processor)
    needs_landmarks = bool(getattr(model.config, "use_face_warp", False))
    image_size = (image.height, image.width)
    if detect or detections is not None:
        if detections is None:
            if detector is None:
                detector = SegFaceFaceDetector(device=next(model.parameters()).device)
            detections = detector(image)
        if detections:
            return SegFaceImagePlan(image_size, face_crops(image, detections, framing, input_size), "faces")
        if if_no_face == "error":
            raise SegFaceNoFaceError(
                f"no face found in {name} ({image.width}x{image.height}); if it is an aligned face crop, parse it "
                "whole with --no-detect (detect=False), or use --if-no-face whole-image (if_no_face='whole-image')"
            )
    crop = whole_image_crop(image, model_size=input_size[1], needs_landmarks=needs_landmarks)
    return SegFaceImagePlan(image_size, [crop], "whole-image")


__all__ = [
    "FRAMINGS",
    "SegFaceFaceCrop",
    "SegFaceFaceDetection",
    "SegFaceFaceDetector",
    "SegFaceFaceParse",
    "SegFaceImagePlan",
    "SegFaceMissingDependencyError",
    "SegFaceNoFaceError",
    "SegFaceParsingResult",
    "celebamask_hq_quad",
    "extract_quad",
    "face_crops",
    "framing_for",
    "helen_quad",
    "lapa_quad",
    "parse_faces",
    "paste_faces",
    "paste_whole_image",
    "plan_image",
    "quad_for",
    "segment_crops",
    "template_landmarks",
    "whole_image_crop",
]
