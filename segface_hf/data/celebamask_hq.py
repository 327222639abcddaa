"""CelebAMask-HQ: per-part masks merged into one 19-class label map, split by the CelebA partition.

Raw layout (spec section 3.1), under the raw folder:

- `CelebA-HQ-img/<id>.jpg`: the 30,000 images, ids not zero-padded.
- `CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png`: one binary mask per annotated part.
- `CelebA-HQ-to-CelebA-mapping.txt`: `idx orig_idx orig_file` per image.
- `list_eval_partition.txt`: `orig_file group` (0 train, 1 validation, 2 test), from the CelebA release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Image, Value

from ..configuration_segface import CELEBAMASK_HQ_LABELS
from ..references import CELEBAMASK_HQ_CITATION
from .common import (
    DUPLICATE_ID,
    IGNORED,
    KEPT,
    NO_MASK_PARTS,
    NOT_IN_ANY_SPLIT,
    SIZE_MISMATCH,
    SKIPPED,
    BuildPlan,
    CardInfo,
    Problem,
    RawLayoutError,
    SampleError,
    SampleOutcome,
    check_layout,
    encode_label_png,
    label_histogram,
    outcome_from_error,
    read_binary_mask,
    read_image,
    relative_to,
    sorted_files,
)

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION_FILE = "list_eval_partition.txt"

# Mask file suffixes in the original's merge order; a part's label value is its position + 1, and a later part
# overwrites an earlier one where both are set (datasets/celebamask_hq.py, label_type='all').
PART_SUFFIXES = (
    "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye", "nose",
    "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
)  # fmt: skip
# The original's label canvas is hard-coded to 512x512 (the size of every released mask).
MASK_SIZE = 512
# Images are 1024x1024, twice the mask size; the original resizes image and label to the model resolution separately.
IMAGE_SCALE = 2
SPLIT_OF_GROUP = {0: "train", 1: "validation", 2: "test"}
IDS_PER_MASK_FOLDER = 2000

if len(PART_SUFFIXES) + 1 != len(CELEBAMASK_HQ_LABELS):
    raise ImportError("CelebAMask-HQ part suffixes and CELEBAMASK_HQ_LABELS disagree in length.")

FEATURES = Features({"id": Value("string"), "image": Image(), "label": Image()})

CARD = CardInfo(
    pretty_name="CelebAMask-HQ (SegFace label order)",
    description=(
        "CelebAMask-HQ (Lee et al., CVPR 2020): CelebA-HQ face images (1024x1024) with hand-annotated masks of 18 "
        "facial parts (512x512). The per-part masks are merged into one label map with the values and overwrite "
        "order of the SegFace training code, and split by CelebA's `list_eval_partition.txt` joined through "
        "`CelebA-HQ-to-CelebA-mapping.txt`, in CelebA index order, as SegFace does."
    ),
    license="other",
    license_name="celebamask-hq",
    license_link="https://github.com/switchablenorms/CelebAMask-HQ",
    license_notice=(
        "CelebAMask-HQ is licensed for non-commercial research use only. Its terms forbid reproducing, selling or "
        "redistributing any portion of the images or of data derived from them, except for internal copies within "
        "one organisation. Keep this copy private (the builder pushes to a private repo). Read the full terms at "
        "https://github.com/switchablenorms/CelebAMask-HQ before use."
    ),
    citation=CELEBAMASK_HQ_CITATION,
    source_url="https://mmlab.ie.cuhk.edu.hk/projects/CelebA/CelebAMask_HQ.html",
    notes=[
        "`label` is 512x512 while `image` is 1024x1024, as released; resize each to the model resolution "
        "(bicubic for the image, nearest for the label), as SegFace does.",
        "Label values follow SegFace's merge order, which differs from the official CelebAMask-HQ script: later "
        "parts overwrite earlier ones (hair over lips and eyes, `eye_g` over eyes, brows, skin and hair, `hat` over "
        "hair, `ear_r` over ears, `neck_l` over neck and cloth).",
        "`l_*` / `r_*` are the annotators' part names (the person's left / right).",
        "Sample order within a split follows CelebA's partition file (original CelebA index), not the HQ id.",
    ],
)


@dataclass(frozen=True)
class CelebAMaskHQTask:
    """One CelebAMask-HQ sample to process.

    Args:
        hq_id (`int`):
            The CelebA-HQ id (image file name without extension).
        root (`Path`):
            The raw folder.
    """

    hq_id: int
    root: Path


def mask_part_path(root: Path, hq_id: int, suffix: str) -> Path:
    """Path of one part mask: `CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<suffix>.png`."""
    return Path(root) / MASK_DIR / str(hq_id // IDS_PER_MASK_FOLDER) / f"{hq_id:05d}_{suffix}.png"


def merge_part_masks(root: Path, hq_id: int) -> tuple[np.ndarray, list[str]]:
    """Merge the part masks of one id the way the original does.

    Starts from a 512x512 zero canvas and, for each part in [`PART_SUFFIXES`] order whose file exists, sets the
    canvas to the part's value (position + 1) where the mask is non-zero.

    Returns:
        `tuple[np.ndarray, list[str]]`: the `uint8` label map and the suffixes that were found.

    Raises:
        [`SampleError`]: a part file is unreadable (`corrupt_file`) or not 512x512 (`size_mismatch`; the original
        fails on such a file).
    """
    label = np.zeros((MASK_SIZE, MASK_SIZE), dtype=np.uint8)
    found = []
    for position, suffix in enumerate(PART_SUFFIXES):
        path = mask_part_path(root, hq_id, suffix)
        if not path.is_file():
            continue
        mask = read_binary_mask(path)
        if mask.shape != label.shape:
            raise SampleError(
                SIZE_MISMATCH,
                f"part mask is {mask.shape[1]}x{mask.shape[0]}, expected {MASK_SIZE}x{MASK_SIZE}; skipped, as the "
                "original cannot merge it",
                path,
            )
        label[mask] = position + 1
        found.append(suffix)
    return label, found


def process_sample(task: CelebAMaskHQTask) -> SampleOutcome:
    """Read the image, merge the part masks and encode one CelebAMask-HQ row."""
    sample_id = str(task.hq_id)
    root = task.root
    image_path = root / IMAGE_DIR / f"{sample_id}.jpg"
    try:
        image_bytes, image_size, extension = read_image(image_path)
        label, found = merge_part_masks(root, task.hq_id)
    except SampleError as error:
        return outcome_from_error(sample_id, error, root)
    problems = []
    if not found:
        problems.append(
            Problem(
                kind=NO_MASK_PARTS,
                action=KEPT,
                detail="no part mask found; the label is all background, as in the original",
                path=relative_to(mask_part_path(root, task.hq_id, "*"), root),
                id=sample_id,
            )
        )
    expected = (MASK_SIZE * IMAGE_SCALE, MASK_SIZE * IMAGE_SCALE)
    if image_size != expected:
        problems.append(
            Problem(
                kind=SIZE_MISMATCH,
                action=KEPT,
                detail=f"image is {image_size[0]}x{image_size[1]}, expected {expected[0]}x{expected[1]}; kept, as the "
                "original resizes image and label to the model resolution separately",
                path=relative_to(image_path, root),
                id=sample_id,
            )
        )
    row = {
        "id": sample_id,
        "image": {"bytes": image_bytes, "path": f"{sample_id}.{extension}"},
        "label": {"bytes": encode_label_png(label), "path": f"{sample_id}.png"},
    }
    return SampleOutcome(id=sample_id, row=row, label_histogram=label_histogram(label), problems=problems)


def read_mapping(path: Path) -> dict[str, int]:
    """Original CelebA file name to CelebA-HQ id, from lines holding `.jpg` (the header is skipped)."""
    mapping = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if ".jpg" not in line:
                continue
            fields = line.split()
            if len(fields) != 3 or not fields[0].isdigit():
                raise RawLayoutError(
                    f"{path}:{number}: expected 'idx orig_idx orig_file', got {line.strip()!r}; is this the "
                    f"{MAPPING_FILE} of the CelebAMask-HQ release?"
                )
            mapping[fields[2]] = int(fields[0])
    if not mapping:
        raise RawLayoutError(f"{path} lists no .jpg file; is this the {MAPPING_FILE} of the CelebAMask-HQ release?")
    return mapping


def read_partition(path: Path, mapping: dict[str, int]) -> tuple[dict[str, list[int]], set[int]]:
    """HQ ids per split, in partition-file order, for the original files that are in the HQ mapping."""
    splits: dict[str, list[int]] = {name: [] for name in SPLIT_OF_GROUP.values()}
    listed: set[int] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if ".jpg" not in line:
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise RawLayoutError(
                    f"{path}:{number}: expected 'orig_file group', got {line.strip()!r}; use "
                    f"Eval/{PARTITION_FILE} of the CelebA release."
                )
            orig_file, group = fields[0], int(fields[1])
            if orig_file not in mapping or group not in SPLIT_OF_GROUP:
                continue
            hq_id = mapping[orig_file]
            splits[SPLIT_OF_GROUP[group]].append(hq_id)
            listed.add(hq_id)
    return splits, listed


def plan_celebamask_hq(raw_dir: str | Path) -> BuildPlan:
    """Scan a CelebAMask-HQ raw folder.

    Args:
        raw_dir (`str` or `Path`):
            The folder holding `CelebA-HQ-img/`, `CelebAMask-HQ-mask-anno/`, `CelebA-HQ-to-CelebA-mapping.txt` and
            `list_eval_partition.txt`.

    Returns:
        [`BuildPlan`]: the train / validation / test samples in the original's order.

    Raises:
        [`RawLayoutError`]: the folder does not match the layout, or a text file is malformed.
    """
    root = Path(raw_dir).expanduser().resolve()
    hint = ""
    if not (root / PARTITION_FILE).is_file():
        hint = (
            f"{PARTITION_FILE} is not in the CelebAMask-HQ archive: copy Eval/{PARTITION_FILE} from the CelebA "
            "release into the raw folder."
        )
    check_layout(root, [f"{IMAGE_DIR}/", f"{MASK_DIR}/", MAPPING_FILE, PARTITION_FILE], "CelebAMask-HQ", hint=hint)
    if not any(child.is_dir() and child.name.isdigit() for child in (root / MASK_DIR).iterdir()):
        raise RawLayoutError(
            f"{root / MASK_DIR} has no numbered sub-folders; masks must stay in the release layout "
            f"{MASK_DIR}/<id // {IDS_PER_MASK_FOLDER}>/<id:05d>_<part>.png."
        )
    mapping = read_mapping(root / MAPPING_FILE)
    split_ids, listed = read_partition(root / PARTITION_FILE, mapping)
    if not listed:
        raise RawLayoutError(
            f"no file of {root / PARTITION_FILE} is in {MAPPING_FILE}; use Eval/{PARTITION_FILE} of the CelebA release."
        )

    problems = []
    seen: set[int] = set()
    splits: dict[str, list[CelebAMaskHQTask]] = {}
    for split, ids in split_ids.items():
        tasks = []
        for hq_id in ids:
            if hq_id in seen:
                problems.append(
                    Problem(
                        kind=DUPLICATE_ID,
                        action=SKIPPED,
                        detail="listed more than once in the partition; the first listing is kept",
                        path=PARTITION_FILE,
                        id=str(hq_id),
                        split=split,
                    )
                )
                continue
            seen.add(hq_id)
            tasks.append(CelebAMaskHQTask(hq_id=hq_id, root=root))
        splits[split] = tasks

    for name in sorted_files(root / IMAGE_DIR):
        stem, _, extension = name.rpartition(".")
        if extension == "jpg" and stem.isdigit() and int(stem) not in seen:
            problems.append(
                Problem(
                    kind=NOT_IN_ANY_SPLIT,
                    action=IGNORED,
                    detail=f"not listed in {PARTITION_FILE} through {MAPPING_FILE}",
                    path=f"{IMAGE_DIR}/{name}",
                    id=stem,
                )
            )

    return BuildPlan(
        name="celebamask-hq",
        raw_dir=root,
        features=FEATURES,
        id2label=dict(enumerate(CELEBAMASK_HQ_LABELS)),
        ignore_index=None,
        splits=splits,
        process=process_sample,
        card=CARD,
        problems=problems,
        sources={"raw_dir": str(root)},
    )
