"""LaPa: 11-class label maps with 106 landmarks, and the 5 points SegFace's LaPa head warps with.

Raw layout (spec section 3.2): `<raw>/{train,val,test}/images/<name>.jpg`, `labels/<name>.png` (values 0..10) and
`landmarks/<name>.txt` (the count 106, then 212 numbers: x y pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Image, List, Value

from ..configuration_segface import LAPA_LABELS
from ..references import LAPA_CITATION
from .common import (
    BAD_LANDMARKS,
    IGNORED,
    UNRECOGNISED_FILE,
    BuildPlan,
    CardInfo,
    Problem,
    SampleError,
    SampleOutcome,
    check_layout,
    outcome_from_error,
    parse_floats,
    read_image_and_label,
    relative_to,
    sorted_files,
)

NUM_LANDMARKS = 106
# Split folder -> split name in the output.
SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}
PARTS = ("images", "labels", "landmarks")

FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "label": Image(),
        "landmarks": List(List(Value("float32"), length=2), length=NUM_LANDMARKS),
        "landmarks_5": List(List(Value("float32"), length=2), length=5),
    }
)

CARD = CardInfo(
    pretty_name="LaPa (SegFace layout)",
    description=(
        "LaPa (Liu et al., AAAI 2020): face images with 11-class label maps and 106 landmarks, in the train / val / "
        "test split of the release. `landmarks_5` holds the five points SegFace's LaPa model warps the face with "
        "(eye, eye, nose tip, mouth corner, mouth corner), derived from the 106 as in the SegFace code."
    ),
    license="other",
    license_name="lapa",
    license_link="https://github.com/jd-opensource/lapa-dataset",
    license_notice=(
        "LaPa is released by its authors for non-commercial research use; do not redistribute it. Keep this copy "
        "private (the builder pushes to a private repo) and read the terms at "
        "https://github.com/jd-opensource/lapa-dataset before use."
    ),
    citation=LAPA_CITATION,
    source_url="https://github.com/jd-opensource/lapa-dataset",
    notes=[
        "`landmarks` are the 106 (x, y) points of the release, in pixels of `image`.",
        "`landmarks_5` (pixels of `image`) are, with 0-based indices into the 106: mean(74, 104), mean(83, 105), 54, "
        "84, 90. SegFace's LaPa model needs them as input: pass `landmarks=[row['landmarks_5']]` to "
        "`SegFaceImageProcessor`, which rescales them with the image.",
        "Samples are sorted by name within each split (the original uses the unsorted `os.listdir` order).",
        "The `val` folder is the `validation` split.",
    ],
)


@dataclass(frozen=True)
class LaPaTask:
    """One LaPa sample to process.

    Args:
        name (`str`):
            The file stem shared by the image, label and landmark files.
        split_dir (`Path`):
            The split folder (`<raw>/train`, `<raw>/val` or `<raw>/test`).
        root (`Path`):
            The raw folder, for report paths.
    """

    name: str
    split_dir: Path
    root: Path


def read_lapa_landmarks(path: Path) -> np.ndarray:
    """Parse a LaPa landmark file: the count 106, then 106 x y pairs.

    Returns:
        `np.ndarray`: `(106, 2)` float32 (x, y) pixel coordinates.

    Raises:
        [`SampleError`] with kind `missing_landmarks` or `bad_landmarks`.
    """
    values = parse_floats(path)
    if len(values) != 2 * NUM_LANDMARKS + 1 or values[0] != NUM_LANDMARKS:
        raise SampleError(
            BAD_LANDMARKS,
            f"expected the count {NUM_LANDMARKS} followed by {2 * NUM_LANDMARKS} numbers, got {len(values)} numbers "
            f"starting with {values[0] if values else 'nothing'}",
            path,
        )
    return np.asarray(values[1:], dtype=np.float32).reshape(NUM_LANDMARKS, 2)


def five_point_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The 5 points SegFace's LaPa model uses, from the 106 LaPa landmarks (0-based indices).

    In order: mean of points 74 and 104, mean of points 83 and 105, point 54, point 84, point 90
    (eye, eye, nose tip, mouth corner, mouth corner).

    Args:
        landmarks (`np.ndarray` of shape `(106, 2)`):
            The LaPa landmarks.

    Returns:
        `np.ndarray`: `(5, 2)` float32.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected ({NUM_LANDMARKS}, 2) landmarks, got shape {points.shape}")
    five = np.stack(
        [
            (points[74] + points[104]) / 2,
            (points[83] + points[105]) / 2,
            points[54],
            points[84],
            points[90],
        ]
    )
    return five.astype(np.float32)


def process_sample(task: LaPaTask) -> SampleOutcome:
    """Read the image, label and landmarks of one LaPa sample."""
    folder = task.split_dir
    try:
        landmarks = read_lapa_landmarks(folder / "landmarks" / f"{task.name}.txt")
        row, histogram, problems, _ = read_image_and_label(
            task.name, folder / "images" / f"{task.name}.jpg", folder / "labels" / f"{task.name}.png", task.root
        )
    except SampleError as error:
        return outcome_from_error(task.name, error, task.root)
    row["landmarks"] = landmarks.tolist()
    row["landmarks_5"] = five_point_landmarks(landmarks).tolist()
    return SampleOutcome(id=task.name, row=row, label_histogram=histogram, problems=problems)


def plan_lapa(raw_dir: str | Path) -> BuildPlan:
    """Scan a LaPa raw folder.

    Args:
        raw_dir (`str` or `Path`):
            The folder holding `train/`, `val/` and `test/`, each with `images/`, `labels/` and `landmarks/`.

    Returns:
        [`BuildPlan`]: the train / validation / test samples, sorted by name.

    Raises:
        [`RawLayoutError`]: the folder does not match the layout.
    """
    root = Path(raw_dir).expanduser().resolve()
    check_layout(root, [f"{split}/{part}/" for split in SPLIT_FOLDERS for part in PARTS], "LaPa")
    splits: dict[str, list[LaPaTask]] = {}
    problems = []
    for folder_name, split in SPLIT_FOLDERS.items():
        split_dir = root / folder_name
        tasks = []
        for file_name in sorted_files(split_dir / "images"):
            if file_name.endswith(".jpg"):
                tasks.append(LaPaTask(name=file_name[: -len(".jpg")], split_dir=split_dir, root=root))
            else:
                problems.append(
                    Problem(
                        kind=UNRECOGNISED_FILE,
                        action=IGNORED,
                        detail="not a .jpg file; the original reads only .jpg images",
                        path=relative_to(split_dir / "images" / file_name, root),
                        split=split,
                    )
                )
        splits[split] = tasks
    return BuildPlan(
        name="lapa",
        raw_dir=root,
        features=FEATURES,
        id2label=dict(enumerate(LAPA_LABELS)),
        ignore_index=None,
        splits=splits,
        process=process_sample,
        card=CARD,
        problems=problems,
        sources={"raw_dir": str(root)},
    )
