"""Reading the photo, parsing its faces, and the pictures and tables the page shows (no Gradio in here)."""

from __future__ import annotations

import html
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from segface_hf.inference.faces import SegFaceFaceDetector, SegFaceMissingDependencyError, SegFaceNoFaceError, parse_faces
from segface_hf.errors import SegFaceError
from segface_hf.image_io import SegFaceImageError, to_rgb
from segface_hf.inference.visualization import class_areas, colorize, overlay, palette_for

MAX_MEGAPIXELS = float(os.environ.get("SEGFACE_MAX_MEGAPIXELS", "40"))
MIN_SIDE = 16
ROLL_WORTH_MENTIONING = 20.0  # degrees; faces rolled less are not remarked on
READABLE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"


class DemoInputError(SegFaceError, ValueError):
    """A problem with the user's input, worded for the page."""


def _megapixels(width: int, height: int) -> float:
    return width * height / 1e6


def _too_large(width: int, height: int) -> DemoInputError:
    return DemoInputError(
        f"The image is {width}x{height} pixels ({_megapixels(width, height):.0f} megapixels); the demo accepts up to "
        f"{MAX_MEGAPIXELS:g} megapixels. Downscale it (a face needs only a few hundred pixels) and try again."
    )


def read_photo(path: str | os.PathLike | None) -> PIL.Image.Image:
    """Open an uploaded file as an upright RGB image, or raise [`DemoInputError`] saying what is wrong with it.

    The size is checked from the header before the pixels are decoded, so an oversized image costs no memory.
    """
    if path is None or str(path) == "":
        raise DemoInputError("No image yet: upload a photo, take one with the webcam, or paste one from the clipboard.")
    path = Path(path)
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as header:
                width, height = header.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise DemoInputError(
            f"{name} is far too large an image to open safely; the demo accepts up to {MAX_MEGAPIXELS:g} megapixels."
        ) from error
    except PIL.UnidentifiedImageError as error:
        raise DemoInputError(f"{name} is not an image the demo can read; upload a {READABLE_FORMATS} file.") from error
    except OSError as error:
        raise DemoInputError(f"{name} could not be read ({error}).") from error
    if _megapixels(width, height) > MAX_MEGAPIXELS:
        raise _too_large(width, height)
    if min(width, height) < MIN_SIDE:
        raise DemoInputError(
            f"The image is only {width}x{height} pixels; a face needs at least {MIN_SIDE} pixels a side."
        )
    try:
        return to_rgb(path)
    except SegFaceImageError as error:
        raise DemoInputError(
            f"{name} is corrupt or truncated and cannot be decoded; save or export it again and re-upload it."
        ) from error


@dataclass
class ParseOutcome:
    """One parsed photo and what is needed to redraw it (opacity, shown classes) without running the model again.

    Args:
        image (`PIL.Image.Image`): the photo (RGB).
        label_map (`np.ndarray`): `(height, width)` class indices.
        labels (`list[str]`): the class names in index order.
        palette (`np.ndarray`): `(num_labels, 3)` colours.
        num_faces (`int`): faces parsed (0 when the whole image was parsed as one face crop).
        faces (list of `SegFaceFaceDetection`): the parsed faces' detections (roll angle, pass that found them).
        dropped (list of `SegFaceDroppedFace`): detections not parsed, with the reason.
        mode (`str`): `"faces"` or `"whole-image"`.
        seconds (`float`): detection and parsing time.
        model_label (`str`): which model parsed it.
    """

    image: PIL.Image.Image
    label_map: np.ndarray
    labels: list[str]
    palette: np.ndarray
    num_faces: int
    mode: str
    seconds: float
    model_label: str
    faces: list = field(default_factory=list)
    dropped: list = field(default_factory=list)

    @property
    def present(self) -> list[str]:
        """Names of the classes that occur, background excluded, in index order."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self.labels))
        return [name for index, name in enumerate(self.labels) if index and counts[index]]


class Parser:
    """Parses photos with a loaded model; shares one face detector between requests (created on first use)."""

    def __init__(self):
        self._detector: SegFaceFaceDetector | None = None
        self._lock = threading.Lock()

    def detector(self) -> SegFaceFaceDetector:
        with self._lock:
            if self._detector is None:
                try:
                    self._detector = SegFaceFaceDetector()
                except SegFaceMissingDependencyError as error:
                    raise DemoInputError(
                        "Face detection is not installed here (facenet-pytorch is missing); untick 'Find the faces' "
                        "to parse a photo that is already an aligned face crop."
                    ) from error
            return self._detector

    def parse(
        self, image: PIL.Image.Image, loaded, detect: bool = True, whole_if_no_face: bool = False
    ) -> ParseOutcome:
        """Find the faces of `image`, parse each with `loaded` (a `models.LoadedModel`) and paste them back."""
        start = time.perf_counter()
        detector = self.detector() if detect else None
        try:
            result = parse_faces(image, loaded.model, loaded.processor, detector=detector, detect=detect,
                                 if_no_face="whole-image" if whole_if_no_face else "error")  # fmt: skip
        except SegFaceNoFaceError as error:
            dropped = "".join(f" A detection was dropped: {reason}." for reason in dropped_reasons(error.dropped))
            raise DemoInputError(
                f"No face found in this {image.width}x{image.height} photo.{dropped} Try a photo where the face is "
                "larger and seen from the front, or tick 'Parse the whole image when no face is found' if the photo "
                "is already a face crop."
            ) from error
        except SegFaceImageError as error:
            raise DemoInputError(str(error)) from error
        seconds = time.perf_counter() - start
        label_map = np.asarray(result.label_map)
        faces = len(result.faces) if result.mode == "faces" else 0
        return ParseOutcome(image=image, label_map=label_map, labels=loaded.labels, palette=palette_for(loaded.labels),
                            num_faces=faces, mode=result.mode, seconds=seconds, model_label=loaded.choice.label,
                            faces=[face.detection for face in result.faces if face.detection is not None],
                            dropped=list(result.dropped))  # fmt: skip


def _shown_map(outcome: ParseOutcome, shown: list[str] | None) -> np.ndarray:
    if shown is None:
        return outcome.label_map
    keep = np.zeros(len(outcome.labels), dtype=bool)
    for name in shown:
        if name in outcome.labels:
            keep[outcome.labels.index(name)] = True
    keep[0] = True  # background stays background
    return np.where(keep[outcome.label_map], outcome.label_map, 0)


def render(
    outcome: ParseOutcome, opacity: float, shown: list[str] | None = None
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The overlay at `opacity` and the colour mask, showing only the classes in `shown` (all when `None`)."""
    label_map = _shown_map(outcome, shown)
    return overlay(outcome.image, label_map, outcome.palette, alpha=float(opacity)), colorize(
        label_map, outcome.palette
    )


def legend_html(outcome: ParseOutcome, shown: list[str] | None = None) -> str:
    """The legend: a colour swatch, the name and the share of the image for each class found; hidden ones dimmed."""
    areas = class_areas(outcome.label_map, outcome.labels)
    items = []
    for name in outcome.present:
        red, green, blue = (int(c) for c in outcome.palette[outcome.labels.index(name)])
        hidden = shown is not None and name not in shown
        items.append(
            f'<li class="segface-legend-item{" segface-hidden" if hidden else ""}" data-label="{html.escape(name)}">'
            f'<span class="segface-swatch" style="background:#{red:02x}{green:02x}{blue:02x}"></span>'
            f"<code>{html.escape(name)}</code> {100 * areas[name]['fraction']:.1f}%</li>"
        )
    if not items:
        return '<div id="segface-legend-body"><p>No face classes found in this image.</p></div>'
    return f'<div id="segface-legend-body"><ul class="segface-legend">{"".join(items)}</ul></div>'


def area_rows(outcome: ParseOutcome) -> list[list]:
    """Rows of the area table: class, pixels, % of the image, % of the parsed face area (all classes but
    background)."""
    areas = class_areas(outcome.label_map, outcome.labels)
    foreground = sum(entry["pixels"] for name, entry in areas.items() if entry["index"] != 0)
    rows = []
    for name in outcome.present:
        pixels = areas[name]["pixels"]
        rows.append(
            [name, pixels, round(100 * areas[name]["fraction"], 2), round(100 * pixels / max(foreground, 1), 2)]
        )
    return rows


def save_label_png(outcome: ParseOutcome, directory: str | os.PathLike | None = None, stem: str = "segface") -> str:
    """Write the label map as a palette PNG: pixel values are the class indices, shown in the class colours."""
    if int(outcome.label_map.max(initial=0)) > 255:
        raise ValueError("label PNGs hold at most 256 classes")
    picture = PIL.Image.fromarray(outcome.label_map.astype(np.uint8))  # mode L; putpalette makes it P, values kept
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(outcome.palette)] = outcome.palette
    picture.putpalette(palette.flatten().tolist())
    directory = Path(directory or tempfile.mkdtemp(prefix="segface-"))
    path = directory / f"{stem}_labels.png"
    picture.save(path, optimize=True)
    return str(path)


def summary(outcome: ParseOutcome) -> str:
    """One Markdown line: what was parsed, by which model, and how long it took."""
    height, width = outcome.label_map.shape
    if outcome.mode == "faces":
        what = f"{outcome.num_faces} face{'s' if outcome.num_faces != 1 else ''} found and parsed"
    else:
        what = "the whole image parsed as one face crop"
    details = "".join(f" {line}" for line in face_notes(outcome))
    return (
        f"**{what}** in {outcome.seconds:.2f} s ({width}x{height} photo, {len(outcome.present)} classes found) "
        f"with {outcome.model_label}.{details}"
    )


def dropped_reasons(dropped) -> list[str]:
    """The distinct reasons of dropped detections, in order."""
    return list(dict.fromkeys(face.reason for face in dropped))


def face_notes(outcome: ParseOutcome) -> list[str]:
    """Sentences about rotated faces (roll and the pass that found them) and dropped detections."""
    notes = []
    for index, face in enumerate(outcome.faces, start=1):
        if abs(face.roll) >= ROLL_WORTH_MENTIONING:
            notes.append(f"Face {index} is rolled by {face.roll:.0f}° (found {face.found_in}).")
    for reason in dropped_reasons(outcome.dropped):
        notes.append(f"A detection was dropped: {reason}.")
    return notes
