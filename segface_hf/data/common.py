"""Types and file readers shared by the dataset builders.

A builder turns a raw dataset folder into a [`BuildPlan`]: the ordered samples of each split as small picklable
tasks, plus a module-level function that turns one task into a [`SampleOutcome`] (the encoded row, the label
histogram, and any problems found). [`segface_hf.data.writer.write_dataset`] runs that function over the tasks,
optionally in worker processes, and writes the result.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import SegFaceError

# Kinds of problems recorded in the build report.
MISSING_FILE = "missing_file"
CORRUPT_FILE = "corrupt_file"
SIZE_MISMATCH = "size_mismatch"
BAD_LABEL = "bad_label"
BAD_LANDMARKS = "bad_landmarks"
MISSING_LANDMARKS = "missing_landmarks"
UNKNOWN_LABEL_VALUES = "unknown_label_values"
NO_MASK_PARTS = "no_mask_parts"
UNMATCHED_FILE = "unmatched_file"
UNRECOGNISED_FILE = "unrecognised_file"
DUPLICATE_ID = "duplicate_id"
NOT_IN_ANY_SPLIT = "not_in_any_split"
EMPTY_SPLIT = "empty_split"

# What the builder did about a problem.
SKIPPED = "skipped"  # the sample is not in the output
KEPT = "kept"  # the sample is in the output, as the original implementation would use it
IGNORED = "ignored"  # a file that belongs to no sample

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
SPLIT_NAME_PATTERN = re.compile(r"^\w+(\.\w+)*$")


class RawLayoutError(SegFaceError, ValueError):
    """A raw dataset folder (or a file that describes it) does not match the expected layout."""


@dataclass
class Problem:
    """One entry of the build report.

    Args:
        kind (`str`):
            What went wrong, e.g. `"corrupt_file"` or `"size_mismatch"`.
        action (`str`):
            What the builder did: `"skipped"` (sample left out), `"kept"` (sample written) or `"ignored"`.
        detail (`str`):
            A human-readable explanation.
        path (`str`, *optional*):
            The file concerned, relative to the raw folder where possible.
        id (`str`, *optional*):
            The sample id concerned.
        split (`str`, *optional*):
            The split the sample belongs to.
    """

    kind: str
    action: str
    detail: str
    path: str | None = None
    id: str | None = None
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class SampleOutcome:
    """What processing one sample produced.

    Args:
        id (`str`):
            The sample id.
        row (`dict`, *optional*):
            The row to write (already in the form `datasets.Features.encode_example` accepts), or `None` when the
            sample is skipped.
        label_histogram (`np.ndarray`, *optional*):
            Pixel count of each label value in the written label map (index = value).
        problems (`list[Problem]`, *optional*, defaults to `[]`):
            Problems found while processing this sample.
    """

    id: str
    row: dict[str, Any] | None = None
    label_histogram: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def skipped(cls, sample_id: str, kind: str, detail: str, path: str | None = None) -> SampleOutcome:
        return cls(id=sample_id, problems=[Problem(kind=kind, action=SKIPPED, detail=detail, path=path, id=sample_id)])


@dataclass
class CardInfo:
    """What the dataset card says beyond counts and frequencies.

    Args:
        pretty_name (`str`):
            Human-readable dataset name.
        description (`str`):
            One paragraph about the data and where it comes from.
        license (`str`):
            Hub licence identifier (`"other"` for a custom licence).
        license_notice (`str`):
            The licence terms in a sentence or two, with where to read them.
        citation (`str`, *optional*):
            BibTeX of the work(s) to cite.
        license_name (`str`, *optional*):
            Short name of a custom licence (Hub `license_name`).
        license_link (`str`, *optional*):
            Where the licence terms are published (Hub `license_link`).
        source_url (`str`, *optional*):
            Where the raw data is downloaded from.
        notes (`list[str]`, *optional*, defaults to `[]`):
            Layout-specific remarks, one bullet each.
    """

    pretty_name: str
    description: str
    license: str
    license_notice: str
    citation: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    source_url: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildPlan:
    """Everything the writer needs to produce a dataset from a raw folder.

    Args:
        name (`str`):
            Builder name, e.g. `"lapa"`.
        raw_dir (`Path`):
            The raw folder (or the images folder in folder mode).
        features (`datasets.Features`):
            Column types of every split.
        id2label (`dict[int, str]`):
            Label value to class name.
        ignore_index (`int`, *optional*):
            Label value that marks pixels to ignore, if the data has one.
        splits (`dict[str, list]`):
            Split name to the ordered list of picklable tasks.
        process (`Callable`):
            Module-level function turning one task into a [`SampleOutcome`].
        card (`CardInfo`):
            Licence, citation and remarks for the dataset card.
        problems (`list[Problem]`, *optional*, defaults to `[]`):
            Problems found while scanning the raw folder.
        sources (`dict[str, str]`, *optional*, defaults to `{}`):
            Named input locations, recorded in the report.
    """

    name: str
    raw_dir: Path
    features: Any
    id2label: dict[int, str]
    ignore_index: int | None
    splits: dict[str, list]
    process: Callable[[Any], SampleOutcome]
    card: CardInfo
    problems: list[Problem] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


class SampleError(SegFaceError, ValueError):
    """A file of one sample cannot be used; carries the report kind."""

    def __init__(self, kind: str, detail: str, path: Path | str | None = None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.path = path


def relative_to(path: Path | str, root: Path | None) -> str:
    """`path` relative to `root` when it lies below it, else the path as given (posix separators)."""
    path = Path(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def missing_entries(root: Path, entries: Sequence[str]) -> list[str]:
    """The layout entries (`"dir/"` for a folder, `"file"` for a file) that are absent under `root`."""
    missing = []
    for entry in entries:
        path = root / entry.rstrip("/")
        if entry.endswith("/") and not path.is_dir():
            missing.append(entry)
        elif not entry.endswith("/") and not path.is_file():
            missing.append(entry)
    return missing


def check_layout(root: Path, entries: Sequence[str], dataset: str, hint: str = "") -> None:
    """Raise [`RawLayoutError`] naming every missing entry of a raw layout, and a sub-folder that has them all."""
    root = Path(root)
    if not root.is_dir():
        raise RawLayoutError(f"{dataset} raw folder {root} does not exist or is not a folder.")
    missing = missing_entries(root, entries)
    if not missing:
        return
    nested = [child for child in sorted(root.iterdir()) if child.is_dir() and not missing_entries(child, entries)]
    suggestion = f" It looks like {nested[0]} is the folder to pass." if nested else ""
    if len(missing) == len(entries):
        what = f"it has none of {', '.join(entries)}"
    else:
        what = f"missing {', '.join(missing)} (expected {', '.join(entries)})"
    raise RawLayoutError(
        f"{root} is not a {dataset} raw folder: {what}.{suggestion}{(' ' + hint) if hint and not nested else ''}"
    )


def read_image(path: Path) -> tuple[bytes, tuple[int, int], str]:
    """Read an image file and decode it completely.

    Returns:
        `tuple[bytes, tuple[int, int], str]`: the file's bytes (stored unchanged), its (width, height) and a file
        name extension for its format (`"jpg"`, `"png"`, ...).

    Raises:
        [`SampleError`] with kind `missing_file` or `corrupt_file`.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleError(MISSING_FILE, "image file not found", path) from None
    except OSError as error:
        raise SampleError(CORRUPT_FILE, f"cannot read image file: {error}", path) from None
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
            image_format = image.format or ""
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise SampleError(CORRUPT_FILE, f"image cannot be decoded: {error}", path) from None
    extension = _EXTENSIONS.get(image_format, image_format.lower() or "img")
    return data, size, extension


def _open_decoded(path: Path, what: str) -> tuple[bytes, PIL.Image.Image]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleError(MISSING_FILE, f"{what} file not found", path) from None
    except OSError as error:
        raise SampleError(CORRUPT_FILE, f"cannot read {what} file: {error}", path) from None
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise SampleError(CORRUPT_FILE, f"{what} cannot be decoded: {error}", path) from None
    return data, image


def read_label_map(path: Path) -> tuple[np.ndarray, bytes | None]:
    """Read a label map: one class value per pixel.

    Grayscale (`L`) and 16-bit (`I;16`, `I`) images give their values, palette (`P`) images their palette
    indices, and RGB(A) or LA images whose colour channels are all equal give that channel (what OpenCV's grayscale
    read gives for such files). Colour masks with differing channels are rejected.

    Returns:
        `tuple[np.ndarray, bytes | None]`: the 2-D `uint8` or `uint16` label array, and the file's bytes when they
        can be stored unchanged (an 8-bit grayscale PNG), else `None`.

    Raises:
        [`SampleError`] with kind `missing_file`, `corrupt_file` or `bad_label`.
    """
    data, image = _open_decoded(path, "label")
    mode = image.mode
    if mode in ("L", "P"):
        array = np.asarray(image, dtype=np.uint8)
    elif mode == "1":
        array = np.asarray(image, dtype=np.uint8)
    elif mode.startswith("I"):
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise SampleError(BAD_LABEL, f"label values must lie in 0..65535, got {array.min()}..{array.max()}", path)
        array = array.astype(np.uint16)
    elif mode in ("RGB", "RGBA", "LA"):
        channels = np.asarray(image)
        colour = channels[..., :1] if mode == "LA" else channels[..., :3]
        if not (colour == colour[..., :1]).all():
            raise SampleError(
                BAD_LABEL, f"label is a colour ({mode}) image; convert it to one class value per pixel first", path
            )
        array = np.ascontiguousarray(colour[..., 0], dtype=np.uint8)
    else:
        raise SampleError(BAD_LABEL, f"unsupported label image mode {mode}", path)
    if array.ndim != 2:
        raise SampleError(BAD_LABEL, f"label must be 2-D, got shape {array.shape}", path)
    if array.dtype == np.uint16 and array.size and array.max() <= 255:
        array = array.astype(np.uint8)
    unchanged = data if (image.format == "PNG" and mode == "L") else None
    return array, unchanged


def read_binary_mask(path: Path) -> np.ndarray:
    """Read a part mask as OpenCV's grayscale read followed by `> 0` would: a boolean array.

    Raises:
        [`SampleError`] with kind `missing_file` or `corrupt_file`.
    """
    _, image = _open_decoded(path, "mask")
    if image.mode not in ("L", "1"):
        image = image.convert("L")
    return np.asarray(image) > 0


def encode_label_png(array: np.ndarray) -> bytes:
    """Encode a 2-D label array as an 8-bit (values <= 255) or 16-bit grayscale PNG."""
    # A 2-D uint8 array becomes mode L, a uint16 array mode I;16.
    image = PIL.Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8 if array.dtype == np.uint8 else np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_histogram(array: np.ndarray) -> np.ndarray:
    """Pixel count of every value of a label array, with at least 256 bins."""
    return np.bincount(array.ravel(), minlength=256).astype(np.int64)


def parse_floats(path: Path, what: str = "landmark") -> list[float]:
    """All whitespace-separated numbers of a text file.

    Raises:
        [`SampleError`] with kind `missing_landmarks` or `bad_landmarks`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise SampleError(MISSING_LANDMARKS, f"{what} file not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SampleError(BAD_LANDMARKS, f"cannot read {what} file: {error}", path) from None
    try:
        values = [float(token) for token in text.split()]
    except ValueError as error:
        raise SampleError(BAD_LANDMARKS, f"{what} file holds a non-number: {error}", path) from None
    if not all(np.isfinite(values)):
        raise SampleError(BAD_LANDMARKS, f"{what} file holds NaN or infinity", path)
    return values


def sorted_files(folder: Path) -> list[str]:
    """The names of the regular files in a folder, sorted."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_file())


def outcome_from_error(sample_id: str, error: SampleError, root: Path | None) -> SampleOutcome:
    """The [`SampleOutcome`] of a sample skipped because of `error`."""
    path = relative_to(error.path, root) if error.path is not None else None
    return SampleOutcome.skipped(sample_id, error.kind, error.detail, path)


def read_image_and_label(
    sample_id: str, image_path: Path, label_path: Path, root: Path | None
) -> tuple[dict[str, Any], np.ndarray, list[Problem], tuple[int, int]]:
    """Read and check an image and its label map (same size expected).

    A size mismatch is kept and reported: the original resizes image and label to the model resolution separately
    (bicubic and nearest), so such a pair still trains, stretched.

    Returns:
        `tuple`: the row's `id`, `image` and `label` entries, the label histogram, the problems, and the image's
        (width, height).

    Raises:
        [`SampleError`] when the image or the label cannot be used.
    """
    image_bytes, image_size, extension = read_image(image_path)
    label, unchanged = read_label_map(label_path)
    label_size = (label.shape[1], label.shape[0])
    problems = []
    if label_size != image_size:
        problems.append(
            Problem(
                kind=SIZE_MISMATCH,
                action=KEPT,
                detail=f"image is {image_size[0]}x{image_size[1]} but label is {label_size[0]}x{label_size[1]}; "
                "kept, as the original resizes each to the model resolution on its own",
                path=relative_to(label_path, root),
                id=sample_id,
            )
        )
    row = {
        "id": sample_id,
        "image": {"bytes": image_bytes, "path": f"{sample_id}.{extension}"},
        "label": {"bytes": unchanged if unchanged is not None else encode_label_png(label), "path": f"{sample_id}.png"},
    }
    return row, label_histogram(label), problems, image_size
