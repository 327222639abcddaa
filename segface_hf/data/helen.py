"""Helen (Relabeled-HELEN layout): 11-class label maps with 68 landmarks, train and test.

Raw layout (spec section 3.3): `<raw>/{train,test}/<base>_image.jpg` and `<base>_label.png` (`_viz` files are
ignored), and `<raw>/landmarks.txt` with one line per image: 136 numbers (68 x y pairs, at twice the image scale)
followed by the base name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Image, List, Value

from ..configuration_segface import HELEN_LABELS
from ..references import HELEN_CITATION
from .common import (
    BAD_LANDMARKS,
    IGNORED,
    MISSING_LANDMARKS,
    UNRECOGNISED_FILE,
    BuildPlan,
    CardInfo,
    Problem,
    RawLayoutError,
    SampleError,
    SampleOutcome,
    check_layout,
    outcome_from_error,
    read_image_and_label,
    relative_to,
    sorted_files,
)

NUM_LANDMARKS = 68
LANDMARKS_FILE = "landmarks.txt"
# landmarks.txt is at twice the scale of the released images; the original multiplies by 0.5.
LANDMARK_SCALE = 0.5
SPLIT_FOLDERS = {"train": "train", "test": "test"}
# The original derives base names by deleting these tags from every file name and dropping the extension.
_TAG_PATTERN = re.compile(r"(_image|_label|_viz)")

FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "label": Image(),
        "landmarks": List(List(Value("float32"), length=2), length=NUM_LANDMARKS),
        "crop_box": List(Value("int32"), length=4),
    }
)

CARD = CardInfo(
    pretty_name="Helen (Relabeled-HELEN, SegFace layout)",
    description=(
        "Helen (Le et al., ECCV 2012) with the relabeled 11-class label maps of Lin et al. (CVPR 2019), as used by "
        "SegFace: train and test splits, 68 landmarks per face, and the face crop SegFace applies before resizing."
    ),
    license="other",
    license_name="helen",
    license_link="https://github.com/JPlin/Relabeled-HELEN-Dataset",
    license_notice=(
        "Helen's images come from Flickr and remain their owners' property; the HELEN and Relabeled-HELEN releases "
        "are for non-commercial research use. Do not redistribute this copy (the builder pushes to a private repo) "
        "and read the terms at https://github.com/JPlin/Relabeled-HELEN-Dataset before use."
    ),
    citation=HELEN_CITATION
    + """
@inproceedings{lin2019face,
  title={Face Parsing with RoI Tanh-Warping},
  author={Lin, Jinpeng and Yang, Hao and Chen, Dong and Zeng, Ming and Wen, Fang and Yuan, Lu},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019}
}""",
    source_url="https://github.com/JPlin/Relabeled-HELEN-Dataset",
    notes=[
        "`landmarks` are the 68 (x, y) points of `landmarks.txt` multiplied by 0.5, i.e. in pixels of `image`.",
        "`crop_box` is (x1, y1, x2, y2), the crop SegFace applies before resizing: a square of 1.2 times the "
        "landmarks' larger extent around their centre, clipped to the image (not padded), so `image[y1:y2, x1:x2]`.",
        "There is no validation split; SegFace validates on `test`.",
        "Samples are sorted by base name within each split, as in the original.",
    ],
)


@dataclass(frozen=True)
class HelenTask:
    """One Helen sample to process.

    Args:
        base (`str`):
            The base name (file name without `_image.jpg` / `_label.png`).
        split_dir (`Path`):
            `<raw>/train` or `<raw>/test`.
        landmarks (`tuple[float, ...]`, *optional*):
            The 136 numbers of `landmarks.txt` for this base, or `None` when the file has no line for it.
        root (`Path`):
            The raw folder, for report paths.
    """

    base: str
    split_dir: Path
    landmarks: tuple[float, ...] | None
    root: Path


def helen_crop_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The face crop of the original Helen pipeline, clipped to the image.

    Reproduces datasets/helen.py: from the landmark bounding box (min, max + 1), a square of side
    `int(1.2 * max(w, h))` centred at `int(min + wh / 2)`, clipped to `[0, width] x [0, height]` without padding.
    Arithmetic follows the original's float32 / float64 mix under NumPy 1.x.

    Args:
        landmarks (`np.ndarray` of shape `(68, 2)`):
            Landmarks in image pixels (already scaled by 0.5).
        width (`int`):
            Image width.
        height (`int`):
            Image height.

    Returns:
        `tuple[int, int, int, int]`: (x1, y1, x2, y2).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    low = points.min(axis=0).astype(np.float32)
    high = points.max(axis=0).astype(np.float32)
    extent = high - low + np.float32(1)
    centre = (low + extent / np.float32(2)).astype(np.int32)
    side = int(float(extent.max()) * 1.2)
    x1, y1 = (int(v) for v in centre - side // 2)
    x2, y2 = x1 + side, y1 + side
    return max(0, x1), max(0, y1), min(width, x2), min(height, y2)


def process_sample(task: HelenTask) -> SampleOutcome:
    """Read the image, label and landmarks of one Helen sample."""
    folder = task.split_dir
    if task.landmarks is None:
        return SampleOutcome.skipped(
            task.base, MISSING_LANDMARKS, f"{LANDMARKS_FILE} has no line for this image", LANDMARKS_FILE
        )
    try:
        row, histogram, problems, (width, height) = read_image_and_label(
            task.base, folder / f"{task.base}_image.jpg", folder / f"{task.base}_label.png", task.root
        )
    except SampleError as error:
        return outcome_from_error(task.base, error, task.root)
    landmarks = (np.asarray(task.landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 2) * LANDMARK_SCALE).astype(
        np.float32
    )
    row["landmarks"] = landmarks.tolist()
    row["crop_box"] = list(helen_crop_box(landmarks, width, height))
    return SampleOutcome(id=task.base, row=row, label_histogram=histogram, problems=problems)


def read_helen_landmarks(path: Path) -> tuple[dict[str, tuple[float, ...]], list[Problem]]:
    """Parse `landmarks.txt`: per line, 136 numbers then the base name. Blank lines are skipped.

    Returns:
        `tuple`: base name to its 136 numbers, and problems for malformed lines.
    """
    landmarks: dict[str, tuple[float, ...]] = {}
    problems = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            name = fields[-1]
            try:
                values = tuple(float(v) for v in fields[: 2 * NUM_LANDMARKS])
            except ValueError:
                values = ()
            if (
                len(fields) != 2 * NUM_LANDMARKS + 1
                or len(values) != 2 * NUM_LANDMARKS
                or not np.isfinite(values).all()
            ):
                problems.append(
                    Problem(
                        kind=BAD_LANDMARKS,
                        action=IGNORED,
                        detail=f"line {number}: expected {2 * NUM_LANDMARKS} numbers then a name, got {len(fields)} "
                        "fields",
                        path=LANDMARKS_FILE,
                        id=name,
                    )
                )
                continue
            landmarks[name] = values
    if not landmarks:
        raise RawLayoutError(
            f"{path} has no line of {2 * NUM_LANDMARKS} numbers followed by a name; use the landmarks.txt of the "
            "Relabeled-HELEN release."
        )
    return landmarks, problems


def helen_base_names(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted base names of a split folder as the original derives them, and the file names that carry no tag."""
    bases = set()
    untagged = []
    for file_name in sorted_files(folder):
        if not _TAG_PATTERN.search(file_name):
            untagged.append(file_name)
            continue
        bases.add(_TAG_PATTERN.sub("", file_name).rsplit(".", 1)[0])
    return sorted(bases), untagged


def plan_helen(raw_dir: str | Path) -> BuildPlan:
    """Scan a Relabeled-HELEN raw folder.

    Args:
        raw_dir (`str` or `Path`):
            The folder holding `train/`, `test/` and `landmarks.txt`.

    Returns:
        [`BuildPlan`]: the train / test samples, sorted by base name.

    Raises:
        [`RawLayoutError`]: the folder does not match the layout, or `landmarks.txt` has no valid line.
    """
    root = Path(raw_dir).expanduser().resolve()
    check_layout(root, ["train/", "test/", LANDMARKS_FILE], "Helen (Relabeled-HELEN)")
    landmarks, problems = read_helen_landmarks(root / LANDMARKS_FILE)
    splits: dict[str, list[HelenTask]] = {}
    for folder_name, split in SPLIT_FOLDERS.items():
        split_dir = root / folder_name
        bases, untagged = helen_base_names(split_dir)
        for file_name in untagged:
            problems.append(
                Problem(
                    kind=UNRECOGNISED_FILE,
                    action=IGNORED,
                    detail="name has none of _image, _label, _viz",
                    path=relative_to(split_dir / file_name, root),
                    split=split,
                )
            )
        splits[split] = [
            HelenTask(base=base, split_dir=split_dir, landmarks=landmarks.get(base), root=root) for base in bases
        ]
    if not any(splits.values()):
        raise RawLayoutError(f"{root}/train and {root}/test hold no <base>_image.jpg / <base>_label.png files.")
    return BuildPlan(
        name="helen",
        raw_dir=root,
        features=FEATURES,
        id2label=dict(enumerate(HELEN_LABELS)),
        ignore_index=None,
        splits=splits,
        process=process_sample,
        card=CARD,
        problems=problems,
        sources={"raw_dir": str(root)},
    )
