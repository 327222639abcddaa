"""Faces in the wild: detection with 5 landmarks, the crop each SegFace label set was trained on, and pasting the
parses back into the photo.

SegFace models were trained on aligned, centred face crops, so a photo is parsed face by face:

1. [`SegFaceFaceDetector`] finds each face with a box and 5 landmarks (MTCNN from `facenet-pytorch`, whose weights
   ship inside its wheel, so detection works offline; install with `pip install "segface-hf[faces]"`), at any
   in-plane rotation: the photo is searched upright and, when needed, turned by multiples of 45 degrees; each face
   is then checked and refined on an upright crop around it, and faces whose landmarks are implausible are dropped
   with a reason. Each detection carries its roll angle and the pass that found it.
2. [`face_crops`] cuts the crop that matches how the model's training data was framed (see [`framing_for`]), turned
   with the face's roll so that the face is upright in it:
   - `celebamask-hq`: the CelebA-HQ construction from the 5 landmarks (oriented square of side
     2 * max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|), centred 0.1 * eye_to_mouth below the eye midpoint, rotated so
     that the eyes are level);
   - `helen`: the square of 1.2x the side of the 68-landmark box that the Helen data was cropped to, estimated from
     the 5 landmarks (the 68 points are not available), axis-aligned like Helen's for faces rolled up to 15 degrees;
   - `lapa`: a square around the face's aligned frame, and the 5 landmarks in its frame, from which the LaPa model
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch
import torch.nn.functional as F

from ..errors import SegFaceMissingDependencyError
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
# Helen's faces are upright within about this roll (degrees) in their axis-aligned crops; see `helen_quad`.
HELEN_KEPT_ROLL = 15.0
# LaPa crops: a square twice the side of the model's aligned frame, rendered at twice the model resolution, so that
# the aligned face is sampled about 1:1 and the tanh warp sees context around it.
LAPA_CONTEXT = 2.0


class SegFaceNoFaceError(SegFaceImageError):
    """No face was found in an image; `dropped` holds the detections that failed the sanity checks, if any."""

    def __init__(self, message: str, dropped=()):
        super().__init__(message)
        self.dropped = list(dropped)


# The photo is searched upright and, when needed, on copies turned counterclockwise by 90, 180 and 270 degrees
# (PIL's exact transposes), then by 45, 135, 225 and 315 degrees (resampled, on a canvas that holds the whole photo).
# MTCNN finds most faces rolled up to 30-45 degrees from the upright of the copy it sees; small or hard faces need
# the diagonal copies too.
ROTATIONS = ("auto", "always", "never")
DETECTION_PASSES = ("upright", "turned-90", "turned-180", "turned-270", "turned-45", "turned-135", "turned-225",
                    "turned-315")  # fmt: skip
_PASS_ANGLES = (0, 90, 180, 270, 45, 135, 225, 315)
_TRANSPOSES = {90: PIL.Image.Transpose.ROTATE_90, 180: PIL.Image.Transpose.ROTATE_180,
               270: PIL.Image.Transpose.ROTATE_270}  # fmt: skip
# `rotations="auto"`: the copies turned by multiples of 90 degrees are searched only when the upright pass finds no
# plausible face, finds landmarks that fail the sanity checks, or finds a face rolled more than this many degrees
# the diagonal copies only when no plausible face has been found by then. `"always"` searches all eight.
AUTO_SEARCH_ROLL = 30.0
# ... or a face scored below this: MTCNN scores the faces it sees upright about 0.998 and more, and those it
# "finds" lying sideways or upside down (with upright-looking landmarks) about 0.9 to 0.99. They are also searched
# when O-net finds no face on the upright patches around a face of the upright pass (see `_refine`): seen rolled by
# 120 degrees and 64 pixels small, a face can give the upright pass confident, plausible and wrong landmarks.
AUTO_SEARCH_SCORE = 0.995
# Faces whose landmarks were found rolled by more than this (in the copy that found them) are refined: detected
# again on an upright crop (their roll undone), at most `REFINE_ROUNDS` times.
REFINE_ROLL = 8.0
REFINE_ROUNDS = 3
# O-net's input: a 48x48 square around the face, in MTCNN's box proportions: measured on the shared photos, MTCNN's
# face box is about 1.25 CelebA-HQ half-sides |x| high and centred about 0.2 |x| below the eye midpoint.
ONET_INPUT = 48
ONET_PATCH_SIDE = 1.25
ONET_PATCH_BELOW_EYES = 0.2
# Detections of several passes whose boxes overlap by more than this IoU are the same face.
SAME_FACE_IOU = 0.3
# Plausible proportions of 5 landmarks, in eye distances (generous: profile faces have close-set eyes).
EYE_MOUTH_DISTANCE_RANGE = (0.45, 4.0)
MOUTH_WIDTH_RANGE = (0.2, 2.0)


@dataclass(frozen=True)
class SegFaceFaceDetection:
    """One detected face.

    Attributes:
        box (`np.ndarray` of shape `(4,)`): `(x0, y0, x1, y1)` in image pixels, axis-aligned around the face.
        landmarks (`np.ndarray` of shape `(5, 2)`): (x, y) of the left eye, right eye, nose tip, left and right mouth
            corners as seen in the upright face (for an upright face: image-left first; for a face upside down in
            the photo the "left" eye is on the image's right).
        score (`float`): the detector's confidence.
        roll (`float`, *optional*, defaults to 0.0): the face's in-plane rotation in degrees, in (-180, 180]: the
            angle of its across-the-face axis from the image's x axis, clockwise on screen (image y points down);
            0 for an upright face, 90 for a face lying on its right cheek, 180 upside down.
        found_in (`str`, *optional*, defaults to `"upright"`): the pass that found it: `upright`, or `turned-90`,
            `turned-180`, `turned-270` (the photo turned counterclockwise by that many degrees).
        refined (`bool`, *optional*, defaults to `False`): whether the landmarks come from the refinement pass (an
            upright crop around the face, its roll undone) rather than from the pass that found it.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    roll: float = 0.0
    found_in: str = "upright"
    refined: bool = False

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
            "roll": round(float(self.roll), 1),
            "found_in": self.found_in,
            "refined": bool(self.refined),
        }


@dataclass(frozen=True)
class SegFaceDroppedFace:
    """A detection that was not parsed, and why.

    Attributes:
        detection ([`SegFaceFaceDetection`]): what the detector returned.
        reason (`str`): why it was dropped (e.g. `"the mouth is not below the eyes"`).
    """

    detection: SegFaceFaceDetection
    reason: str

    def to_dict(self) -> dict:
        return {**self.detection.to_dict(), "reason": self.reason}


@dataclass
class SegFaceDetections:
    """What [`SegFaceFaceDetector.detect`] found in one image.

    Attributes:
        faces (list of [`SegFaceFaceDetection`]): the faces, largest box first (then left to right).
        dropped (list of [`SegFaceDroppedFace`]): detections whose landmarks failed the sanity checks.
        passes (`tuple[str, ...]`): the passes that ran (see [`SegFaceFaceDetection`]'s `found_in`).
    """

    faces: list[SegFaceFaceDetection] = field(default_factory=list)
    dropped: list[SegFaceDroppedFace] = field(default_factory=list)
    passes: tuple[str, ...] = ()


def face_roll(landmarks) -> float:
    """The roll of a face from its 5 landmarks, in degrees (see [`SegFaceFaceDetection`]): the direction of the
    CelebA-HQ crop's x axis, which combines the eye line with the eye-to-mouth direction."""
    points = _check_landmarks(landmarks)
    _, across, _ = _celebahq_axes(points)
    return float(np.degrees(np.arctan2(across[1], across[0])))


def landmark_problem(landmarks) -> str | None:
    """Why 5 landmarks cannot be a face, or `None` if they are plausible.

    The points are turned upright (by [`face_roll`]) and checked: eyes in left/right order and above the mouth,
    mouth corners in left/right order, the nose below the eyes and above the mouth, and eye-to-mouth distance and
    mouth width within generous proportions of the eye distance.
    """
    points = _check_landmarks(landmarks)
    try:
        roll = np.radians(face_roll(points))
    except SegFaceImageError:
        return "degenerate landmarks (the eyes and mouth coincide)"
    cos, sin = math.cos(roll), math.sin(roll)
    upright = (points - points.mean(axis=0)) @ np.array([[cos, -sin], [sin, cos]])  # turned by -roll
    left_eye, right_eye, nose, mouth_left, mouth_right = upright
    eye_distance = float(np.hypot(*(right_eye - left_eye)))
    eye_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (mouth_left[1] + mouth_right[1]) / 2
    if eye_distance < 1e-6 or right_eye[0] <= left_eye[0]:
        return "the eyes are not in left/right order"
    if mouth_y <= eye_y or max(left_eye[1], right_eye[1]) >= min(mouth_left[1], mouth_right[1]):
        return "the mouth is not below the eyes"
    if mouth_right[0] <= mouth_left[0]:
        return "the mouth corners are not in left/right order"
    if not eye_y < nose[1] < mouth_y + 0.25 * (mouth_y - eye_y):
        return "the nose is not between the eyes and the mouth"
    eye_mouth = float(np.hypot(*((mouth_left + mouth_right) / 2 - (left_eye + right_eye) / 2))) / eye_distance
    if not EYE_MOUTH_DISTANCE_RANGE[0] <= eye_mouth <= EYE_MOUTH_DISTANCE_RANGE[1]:
        return f"implausible proportions (eye-to-mouth distance {eye_mouth:.2f} eye distances)"
    mouth_width = float(np.hypot(*(mouth_right - mouth_left))) / eye_distance
    if not MOUTH_WIDTH_RANGE[0] <= mouth_width <= MOUTH_WIDTH_RANGE[1]:
        return f"implausible proportions (mouth width {mouth_width:.2f} eye distances)"
    return None


def _roll_or_zero(points: np.ndarray) -> float:
    """[`face_roll`], or 0 for degenerate landmarks (which the sanity checks reject)."""
    try:
        return face_roll(points)
    except SegFaceImageError:
        return 0.0


def _turn_to_photo(turn: int, width: int, height: int) -> np.ndarray:
    """2x3 affine taking pixel coordinates of a `width` x `height` image turned counterclockwise by `turn` * 90
    degrees (PIL's transpose) back to the image's pixel coordinates."""
    last_x, last_y = width - 1.0, height - 1.0
    return np.array(
        [
            [[1, 0, 0], [0, 1, 0]],
            [[0, -1, last_x], [1, 0, 0]],
            [[-1, 0, last_x], [0, -1, last_y]],
            [[0, 1, 0], [-1, 0, last_y]],
        ][turn % 4],
        dtype=np.float64,
    )


def turned_view(image: PIL.Image.Image, angle: int) -> tuple[PIL.Image.Image, np.ndarray]:
    """The image turned counterclockwise (on screen) by `angle` degrees, on a canvas that holds all of it, and the
    2x3 affine taking the view's pixel coordinates back to the image's. Multiples of 90 degrees are exact
    transposes; other angles are resampled bilinearly (black outside the image)."""
    angle = angle % 360
    if angle % 90 == 0:
        view = image if angle == 0 else image.transpose(_TRANSPOSES[angle])
        return view, _turn_to_photo(angle // 90, image.width, image.height)
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    width = math.ceil(abs(image.width * cos) + abs(image.height * sin))
    height = math.ceil(abs(image.width * sin) + abs(image.height * cos))
    # Continuous coordinates: photo point p = centre + R^T (q - view centre), R the on-screen counterclockwise turn.
    linear = np.array([[cos, -sin], [sin, cos]])
    offset = np.array([image.width, image.height]) / 2 - linear @ (np.array([width, height]) / 2)
    view = image.transform((width, height), PIL.Image.AFFINE, (*linear[0], offset[0], *linear[1], offset[1]),
                           resample=PIL.Image.BILINEAR)  # fmt: skip
    pixel_offset = linear @ np.array([0.5, 0.5]) + offset - 0.5  # pixel i spans [i, i + 1)
    return view, np.hstack([linear, pixel_offset[:, None]])


def _map_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def _map_box(affine: np.ndarray, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    corners = _map_points(affine, np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=np.float64))
    return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def _box_iou(first: np.ndarray, second: np.ndarray) -> float:
    overlap = np.clip(np.minimum(first[2:], second[2:]) - np.maximum(first[:2], second[:2]), 0, None).prod()
    union = np.prod(first[2:] - first[:2]) + np.prod(second[2:] - second[:2]) - overlap
    return float(overlap / union) if union > 0 else 0.0


@dataclass(frozen=True)
class _Candidate:
    detection: SegFaceFaceDetection
    residual_roll: float  # |roll| in the view that found it
    problem: str | None


class SegFaceFaceDetector:
    r"""
    Face detector with 5 landmarks at any in-plane rotation: the MTCNN of `facenet-pytorch` (pretrained weights
    bundled in its wheel), run on the photo and, when needed, on copies turned by 90, 180 and 270 degrees; the
    detections are mapped back into the photo, merged (keeping for each face the detection that MTCNN scores
    highest), refined on an upright crop around each face, and checked for plausibility.

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
        rotations (`str`, *optional*, defaults to `"auto"`):
            `"always"` searches all eight turned copies; `"auto"` searches the turned copies only when the upright
            pass finds no plausible face, a face rolled more than `AUTO_SEARCH_ROLL` degrees, scored below
            `AUTO_SEARCH_SCORE` or not confirmed by O-net on an upright patch (so an upright photo costs one pass,
            but a rotated face next to an upright one can be missed); `"never"` searches upright only.
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7), min_score: float = 0.9,
                 max_side: int = 1600, device: str | torch.device = "cpu", rotations: str = "auto"):  # fmt: skip
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise SegFaceMissingDependencyError(
                f"Face detection needs the facenet-pytorch package, which is not installed: {FACES_EXTRA_HINT}. "
                "To parse images that are already aligned face crops, skip detection (--no-detect / detect=False)."
            ) from error
        self.rotations = _check_rotations(rotations)
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self.device = torch.device(device)
        self._mtcnn = MTCNN(min_face_size=self.min_face_size, thresholds=list(thresholds), keep_all=True,
                            post_process=False, device=self.device)  # fmt: skip
        self.refine_score = float(thresholds[2])  # O-net's own threshold, for the refinement patches

    def __call__(self, image) -> list[SegFaceFaceDetection]:
        """The faces of one image (see [`detect`]), largest box first (then left to right)."""
        return self.detect(image).faces

    def detect(self, image, rotations: str | None = None) -> SegFaceDetections:
        """Detect the faces of one image.

        Args:
            image (`PIL.Image.Image`, path or array): the photo (converted with [`~segface_hf.image_io.to_rgb`]).
            rotations (`str`, *optional*): overrides the detector's `rotations` (`auto`, `always`, `never`).

        Returns:
            [`SegFaceDetections`]: the faces (largest box first, then left to right) and the dropped detections.
        """
        rotations = self.rotations if rotations is None else _check_rotations(rotations)
        image = to_rgb(image)
        scale = 1.0
        small = image
        if max(image.size) > self.max_side:
            scale = self.max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            small = image.resize(size, resample=PIL.Image.BILINEAR, reducing_gap=2.0)
        if min(small.size) < self.min_face_size:
            return SegFaceDetections(passes=())
        refined: dict[int, _Candidate | None] = {}

        def refine(candidate: _Candidate) -> _Candidate | None:
            if id(candidate) not in refined:
                refined[id(candidate)] = self._refine(image, candidate)
            return refined[id(candidate)]

        def confirmed(candidate: _Candidate) -> bool:
            return candidate.problem is None and refine(candidate) is not None

        candidates = self._detect_turned(small, 0, scale)
        angles = [0]
        unconfirmed = rotations == "auto" and not all(confirmed(c) for c in candidates if c.problem is None)
        if rotations == "always" or (rotations == "auto" and (_needs_turned_passes(candidates) or unconfirmed)):
            for angle in (90, 180, 270):
                candidates += self._detect_turned(small, angle, scale)
                angles.append(angle)
        if rotations == "always" or (rotations == "auto" and not any(c.problem is None for c in candidates)):
            for angle in (45, 135, 225, 315):
                candidates += self._detect_turned(small, angle, scale)
                angles.append(angle)
        faces, dropped = [], []
        for candidate, problem in _merge_candidates(candidates, confirmed):
            if problem is None:
                candidate = refine(candidate) or candidate  # O-net's landmarks, or MTCNN's where it found none
                problem = landmark_problem(candidate.detection.landmarks)
            if problem is None:
                faces.append(candidate.detection)
            else:
                dropped.append(SegFaceDroppedFace(candidate.detection, problem))
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), f.box[0], f.box[1]))
        return SegFaceDetections(faces=faces, dropped=dropped, passes=tuple(_pass_name(a) for a in angles))

    def _mtcnn_faces(self, image: PIL.Image.Image):
        """(box, score, landmarks) of MTCNN's detections above `min_score`, in the image's pixels."""
        with torch.inference_mode():
            boxes, scores, landmarks = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        return [
            (np.asarray(box, np.float64), float(score), np.asarray(points, np.float64))
            for box, score, points in zip(boxes, scores, landmarks)
            if score is not None and float(score) >= self.min_score
        ]

    def _detect_turned(self, small: PIL.Image.Image, angle: int, scale: float) -> list[_Candidate]:
        """Detections on the (downscaled) photo turned by `angle` degrees, in the full photo's pixels."""
        view, to_photo = turned_view(small, angle)
        candidates = []
        for box, score, points in self._mtcnn_faces(view):
            problem = landmark_problem(points)
            residual = abs(face_roll(points)) if problem is None else 180.0
            box, points = _map_box(to_photo, box) / scale, _map_points(to_photo, points) / scale
            roll = _roll_or_zero(points)
            detection = SegFaceFaceDetection(box=box, landmarks=points, score=score, roll=roll,
                                             found_in=_pass_name(angle))  # fmt: skip
            candidates.append(_Candidate(detection, residual, problem))
        return candidates

    def _refine(self, image: PIL.Image.Image, candidate: _Candidate) -> _Candidate:
        """Check and refine one face with MTCNN's last stage (O-net) on upright patches around it.

        The patch is the square O-net expects around a face (`ONET_PATCH_SIDE`, placed from the landmarks), turned
        with the face's roll so that the face is upright in it, and rendered at O-net's 48x48 input. MTCNN also
        "finds" faces lying sideways or upside down, with upright-looking landmarks and a slightly lower score, so
        in the first round the patch is also turned by 90, 180 and 270 degrees and the turn O-net scores highest
        wins. Each patch is also read mirrored (landmarks mirrored back, left and right swapped) and the two
        averaged, which removes O-net's left/right bias and some of its noise. The landmarks are read again on the
        patch the new landmarks give, `REFINE_ROUNDS` times in all, or until the face is upright within
        `REFINE_ROLL` degrees in it. `None` if O-net finds no plausible face on the first round's patches.
        """
        for round_ in range(REFINE_ROUNDS):
            read = self._read_patches(image, candidate.detection.landmarks, (0, 1, 2, 3) if round_ == 0 else (0,))
            if read is None:
                if round_ == 0:
                    return None
                break
            landmarks, score, quad = read
            upright = landmarks @ np.linalg.inv(_crop_to_image_affine(quad, (1, 1))[:, :2]).T  # patch directions
            residual = abs(_roll_or_zero(upright))
            box = np.concatenate([quad.min(axis=0), quad.max(axis=0)]) - 0.5
            detection = SegFaceFaceDetection(box=box, landmarks=landmarks, score=score, roll=_roll_or_zero(landmarks),
                                             found_in=candidate.detection.found_in, refined=True)  # fmt: skip
            candidate = _Candidate(detection, residual, None)
            if residual <= REFINE_ROLL and round_ > 0:
                break
        return candidate

    def _read_patches(self, image: PIL.Image.Image, landmarks: np.ndarray, turns: Sequence[int]):
        """O-net on the face's patch turned by each of `turns` * 90 degrees, plain and mirrored: the landmarks (in
        the photo's pixels) and score of the best turn, and its patch's corners; `None` if O-net finds no plausible
        face in any."""
        eye_mid, half, down = _celebahq_axes(_check_landmarks(landmarks))
        half_side = float(np.hypot(*half))
        centre = eye_mid + down / half_side * ONET_PATCH_BELOW_EYES * half_side
        size = (ONET_INPUT, ONET_INPUT)
        quads, patches = [], []
        for turn in turns:
            across = half / half_side
            for _ in range(turn):
                across = _rot90(across)
            quad = _oriented_square(centre, ONET_PATCH_SIDE * half_side, across)
            patch = np.asarray(extract_quad(image, quad, size), dtype=np.float32)
            quads.append(quad)
            patches += [patch, patch[:, ::-1]]
        batch = torch.from_numpy((np.stack(patches) - 127.5) * 0.0078125).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            _, points, probabilities = self._mtcnn.onet(batch.to(self.device))
        points, probabilities = points.cpu().double().numpy(), probabilities.cpu().double().numpy()
        # O-net's landmarks are fractions of its input square: 5 x, then 5 y.
        points = np.stack([points[:, :5], points[:, 5:]], axis=-1) * ONET_INPUT
        log_odds = np.log(np.maximum(probabilities[:, 1], 1e-300)) - np.log(np.maximum(probabilities[:, 0], 1e-300))
        best = None
        for index, quad in enumerate(quads):
            plain, mirrored = points[2 * index], points[2 * index + 1]
            mirrored = np.column_stack([ONET_INPUT - mirrored[:, 0], mirrored[:, 1]])[[1, 0, 2, 4, 3]]
            averaged = (plain + mirrored) / 2
            score = float(probabilities[2 * index : 2 * index + 2, 1].mean())
            if score < self.refine_score or landmark_problem(averaged) is not None:
                continue
            strength = float(log_odds[2 * index : 2 * index + 2].mean())
            if best is None or strength > best[0]:
                to_photo = _crop_to_image_affine(quad, size)
                best = (strength, _map_points(to_photo, averaged) - 0.5, score, quad)
        return None if best is None else best[1:]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine `outer(inner(p))`."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _pass_name(angle: int) -> str:
    return DETECTION_PASSES[_PASS_ANGLES.index(angle % 360)]


def _check_rotations(rotations: str) -> str:
    if rotations not in ROTATIONS:
        raise ValueError(f"rotations must be one of {ROTATIONS}, got {rotations!r}.")
    return rotations


def _needs_turned_passes(candidates: Sequence[_Candidate]) -> bool:
    """Whether the upright pass's detections call for the turned copies (`rotations="auto"`)."""
    if not any(c.problem is None for c in candidates):
        return True
    return any(c.problem is not None or c.residual_roll > AUTO_SEARCH_ROLL or c.detection.score < AUTO_SEARCH_SCORE
               for c in candidates)  # fmt: skip


def _merge_candidates(
    candidates: Sequence[_Candidate], confirmed: Callable[[_Candidate], bool]
) -> list[tuple[_Candidate, str | None]]:
    """One detection per face: plausible detections first, those O-net `confirmed` on an upright patch before the
    others, each face's with the highest score (MTCNN scores a face seen upright higher than the same face seen
    rolled or upside down), then the one made closest to upright; a face seen only with implausible landmarks comes
    back with the reason."""
    order = sorted(candidates, key=lambda c: (c.problem is not None, not confirmed(c), -c.detection.score,
                                              c.residual_roll))  # fmt: skip
    kept: list[tuple[_Candidate, str | None]] = []
    for candidate in order:
        if all(_box_iou(candidate.detection.box, other.detection.box) <= SAME_FACE_IOU for other, _ in kept):
            kept.append((candidate, candidate.problem))
    return kept


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


def _oriented_square(centre: np.ndarray, side: float, across: np.ndarray) -> np.ndarray:
    """Corners (top-left, bottom-left, bottom-right, top-right) of the square of `side` around `centre` whose x axis
    points along the unit vector `across` (so that a face rolled in the photo is upright in the crop)."""
    half_across, half_down = across * side / 2.0, _rot90(across) * side / 2.0
    return np.stack([centre - half_across - half_down, centre - half_across + half_down,
                     centre + half_across + half_down, centre + half_across - half_down])  # fmt: skip


def helen_quad(landmarks) -> np.ndarray:
    """The Helen crop of a face (1.2x square around the 68-landmark box, estimated from 5 landmarks); corners as in
    [`celebamask_hq_quad`].

    Helen's crops were axis-aligned, so its faces keep their natural tilt in them: a face rolled by up to
    `HELEN_KEPT_ROLL` degrees gets the axis-aligned square, and a face rolled further a square turned by the excess,
    so that it appears tilted by `HELEN_KEPT_ROLL` at most (continuous in the roll, upright faces unchanged)."""
    points = _check_landmarks(landmarks)
    eye_mid, x, y = _celebahq_axes(points)
    half_side = np.hypot(*x)
    across, down = x / half_side, y / half_side
    # A turned head moves its nose tip sideways and its outline (which the 68-point box follows) the other way.
    nose_shift = (points[2] - points[[0, 1, 3, 4]].mean(axis=0)) @ across
    centre = (
        eye_mid + down * HELEN_CENTRE_BELOW_EYES * half_side - across * HELEN_OUTLINE_SHIFT_PER_NOSE_SHIFT * nose_shift
    )
    roll = math.atan2(across[1], across[0])
    turn = roll - max(-math.radians(HELEN_KEPT_ROLL), min(math.radians(HELEN_KEPT_ROLL), roll))
    return _oriented_square(centre, HELEN_SIDE_PER_HALF_SIDE * half_side, np.array([math.cos(turn), math.sin(turn)]))


def lapa_quad(landmarks, model_size: int) -> np.ndarray:
    """The crop handed to a LaPa model: a square `LAPA_CONTEXT` times the side of the model's aligned face frame
    (the 5-point template at `model_size`), centred on that frame and turned with it."""
    from ..face_warp import face_alignment_matrix

    points = _check_landmarks(landmarks)
    matrix = face_alignment_matrix(torch.tensor(points[None], dtype=torch.float64), (model_size, model_size))[0].numpy()
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    if scale < 1e-9:
        raise SegFaceImageError("Degenerate landmarks: all 5 points coincide.")
    centre = np.linalg.solve(matrix[:2, :2], np.full(2, (model_size - 1) / 2.0) - matrix[:2, 2]) + 0.5
    across = np.linalg.solve(matrix[:2, :2], np.array([1.0, 0.0]))
    return _oriented_square(centre, LAPA_CONTEXT * model_size / scale, across / np.hypot(*across))


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


# Face crops per forward pass unless one is asked for. On a CPU a batch takes longer per crop than crops one at a
# time (MobileNetV3 at 512, 2 threads: 3.9 images/s at batch 8, 4.6 at batch 1; parse_video 1.78 against 2.04 frames/s,
# docs/benchmarks.md); on a GPU batches pay.
CPU_BATCH_SIZE = 1
ACCELERATOR_BATCH_SIZE = 8


def default_batch_size(model) -> int:
    """Crops per forward pass for `model` when none is given: `CPU_BATCH_SIZE` on the CPU, `ACCELERATOR_BATCH_SIZE`
    elsewhere."""
    return CPU_BATCH_SIZE if model.device.type == "cpu" else ACCELERATOR_BATCH_SIZE


def segment_crops(
    model, processor, crops: Sequence[SegFaceFaceCrop], batch_size: int | None = None
) -> list[torch.Tensor]:
    """Run the model on crops in batches of `batch_size` (crops of equal size together; [`default_batch_size`] when
    not given); returns `(num_labels, h, w)` float logits per crop, on the CPU, at the crop's size (face crops) or the
    model resolution (whole images)."""
    if batch_size is None:
        batch_size = default_batch_size(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    device, dtype = model.device, model.dtype
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
        dropped (list of [`SegFaceDroppedFace`]): detections that were not parsed, with the reason.
    """

    label_map: np.ndarray
    faces: list[SegFaceFaceParse] = field(default_factory=list)
    mode: str = "faces"
    face_index: np.ndarray | None = None
    dropped: list[SegFaceDroppedFace] = field(default_factory=list)


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
                framing: str = "auto", if_no_face: str = "error", batch_size: int | None = None,
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
        batch_size (`int`, *optional*): faces per forward pass (1 on the CPU, 8 on a GPU by default).
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
    dropped: list[SegFaceDroppedFace] = field(default_factory=list)

    def finish(self, logits: Sequence[torch.Tensor]) -> SegFaceParsingResult:
        if self.mode == "whole-image":
            result = paste_whole_image(self.image_size, self.crops[0], logits[0])
        else:
            result = paste_faces(self.image_size, self.crops, logits)
        result.dropped = list(self.dropped)
        return result


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
    dropped: list[SegFaceDroppedFace] = []
    if detect or detections is not None:
        if detections is None:
            if detector is None:
                detector = SegFaceFaceDetector(device=model.device)
            found = detector.detect(image)
            detections, dropped = found.faces, found.dropped
        if detections:
            crops = face_crops(image, detections, framing, input_size)
            return SegFaceImagePlan(image_size, crops, "faces", dropped)
        if if_no_face == "error":
            why = f" ({_dropped_summary(dropped)})" if dropped else ""
            raise SegFaceNoFaceError(
                f"no face found in {name} ({image.width}x{image.height}){why}; if it is an aligned face crop, parse "
                "it whole with --no-detect (detect=False), or use --if-no-face whole-image (if_no_face='whole-image')",
                dropped=dropped,
            )
    crop = whole_image_crop(image, model_size=input_size[1], needs_landmarks=needs_landmarks)
    return SegFaceImagePlan(image_size, [crop], "whole-image", dropped)


def _dropped_summary(dropped: Sequence[SegFaceDroppedFace]) -> str:
    reasons = sorted({face.reason for face in dropped})
    return f"{len(dropped)} detection{'s' if len(dropped) != 1 else ''} dropped: {'; '.join(reasons)}"


__all__ = [
    "DETECTION_PASSES",
    "FRAMINGS",
    "ROTATIONS",
    "SegFaceDetections",
    "SegFaceDroppedFace",
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
    "face_roll",
    "framing_for",
    "helen_quad",
    "lapa_quad",
    "landmark_problem",
    "parse_faces",
    "paste_faces",
    "paste_whole_image",
    "plan_image",
    "quad_for",
    "default_batch_size",
    "segment_crops",
    "template_landmarks",
    "whole_image_crop",
]
