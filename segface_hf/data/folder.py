"""A user's own face-parsing data: a folder of images, a folder of label maps, and a `labels.json`.

Images and label maps are matched by file stem: the label map of `<images>/<stem>.<ext>` is
`<masks>/<stem><mask_suffix>.png` (or `.bmp` / `.tif` / `.tiff`). The two folders may be the same one when
`mask_suffix` is set (FaceSynthetics keeps `000000.png` and `000000_seg.png` side by side). Landmarks, when given,
are read from `<landmarks>/<stem><landmarks_suffix>.txt`: whitespace-separated x y pairs, optionally preceded by
their count (the LaPa format).

`labels.json` holds the label map and the ignore value:

```json
{
  "id2label": {"0": "background", "1": "skin", "2": "nose"},
  "ignore_index": 255,
  "pretty_name": "My faces",
  "license": "cc-by-4.0",
  "license_notice": "CC BY 4.0, see https://creativecommons.org/licenses/by/4.0/",
  "citation": "@misc{...}"
}
```

Only `id2label` is required; `ignore_index` may be `null` or left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Features, Image, List, Value

from .labels import read_label_spec
from .common import (
    BAD_LANDMARKS,
    DUPLICATE_ID,
    IGNORED,
    MISSING_FILE,
    SKIPPED,
    SPLIT_NAME_PATTERN,
    UNMATCHED_FILE,
    BuildPlan,
    CardInfo,
    Problem,
    RawLayoutError,
    SampleError,
    SampleOutcome,
    outcome_from_error,
    parse_floats,
    read_image_and_label,
    relative_to,
    sorted_files,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Lossless formats only, in the order tried when several exist.
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderTask:
    """One sample of a folder dataset.

    Args:
        stem (`str`):
            The shared file stem, used as the sample id.
        image_path (`Path`):
            The image file.
        mask_path (`Path`):
            The label map file.
        landmarks_path (`Path`, *optional*):
            The landmark file, when landmarks are requested.
        root (`Path`):
            Common parent of the input folders, for report paths.
    """

    stem: str
    image_path: Path
    mask_path: Path
    landmarks_path: Path | None
    root: Path


def read_point_file(path: Path) -> np.ndarray:
    """Parse a landmark text file: x y pairs, optionally preceded by their count.

    Returns:
        `np.ndarray`: `(N, 2)` float32.

    Raises:
        [`SampleError`] with kind `missing_landmarks` or `bad_landmarks`.
    """
    values = parse_floats(path)
    if len(values) % 2 == 1 and values[0] == (len(values) - 1) // 2:
        values = values[1:]
    if not values or len(values) % 2:
        raise SampleError(BAD_LANDMARKS, f"expected x y pairs, got {len(values)} numbers", path)
    return np.asarray(values, dtype=np.float32).reshape(-1, 2)


def process_sample(task: FolderTask) -> SampleOutcome:
    """Read the image, label map and (optionally) landmarks of one folder sample."""
    try:
        row, histogram, problems, _ = read_image_and_label(task.stem, task.image_path, task.mask_path, task.root)
        if task.landmarks_path is not None:
            row["landmarks"] = read_point_file(task.landmarks_path).tolist()
    except SampleError as error:
        return outcome_from_error(task.stem, error, task.root)
    return SampleOutcome(id=task.stem, row=row, label_histogram=histogram, problems=problems)


def _checked_folder(path: str | Path, option: str) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise RawLayoutError(f"{option} folder {folder} does not exist or is not a folder.")
    return folder


def plan_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    labels_file: str | Path,
    *,
    mask_suffix: str = "",
    landmarks_dir: str | Path | None = None,
    landmarks_suffix: str = "",
    split: str = "train",
) -> BuildPlan:
    """Scan a user's image and label-map folders.

    Args:
        images_dir (`str` or `Path`):
            Folder of images (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.webp`, `.tif`, `.tiff`); not searched recursively.
        masks_dir (`str` or `Path`):
            Folder of label maps, one class value per pixel (8- or 16-bit grayscale or palette PNG).
        labels_file (`str` or `Path`):
            The `labels.json` (see the module docstring).
        mask_suffix (`str`, *optional*, defaults to `""`):
            What follows the image stem in a label map's name, e.g. `"_seg"`. Required when both folders are the
            same.
        landmarks_dir (`str` or `Path`, *optional*):
            Folder of landmark text files; adds a `landmarks` column.
        landmarks_suffix (`str`, *optional*, defaults to `""`):
            What follows the image stem in a landmark file's name, e.g. `"_ldmks"`.
        split (`str`, *optional*, defaults to `"train"`):
            Name of the single split written.

    Returns:
        [`BuildPlan`]: one split, sorted by stem.

    Raises:
        [`RawLayoutError`]: a folder or `labels.json` is missing or invalid, or no image has a label map.
    """
    images = _checked_folder(images_dir, "--images")
    masks = _checked_folder(masks_dir, "--masks")
    landmarks = _checked_folder(landmarks_dir, "--landmarks") if landmarks_dir is not None else None
    spec = read_label_spec(labels_file)
    if not SPLIT_NAME_PATTERN.match(split):
        raise RawLayoutError(f"split name {split!r} must be letters, digits and underscores, e.g. 'train'.")
    if images == masks and not mask_suffix:
        raise RawLayoutError(
            f"--images and --masks are the same folder ({images}); pass --mask-suffix (e.g. _seg) so that label "
            "maps can be told from images."
        )
    root = Path(os.path.commonpath([p for p in (images, masks, landmarks) if p is not None]))

    mask_by_stem: dict[str, Path] = {}
    for name in sorted_files(masks):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in MASK_EXTENSIONS or not stem.endswith(mask_suffix):
            continue
        image_stem = stem[: len(stem) - len(mask_suffix)] if mask_suffix else stem
        previous = mask_by_stem.get(image_stem)
        if previous is None or MASK_EXTENSIONS.index(extension.lower()) < MASK_EXTENSIONS.index(
            previous.suffix.lower()
        ):
            mask_by_stem[image_stem] = masks / name

    problems: list[Problem] = []
    tasks: list[FolderTask] = []
    seen: dict[str, str] = {}
    for name in sorted_files(images):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in IMAGE_EXTENSIONS:
            continue
        if images == masks and stem.endswith(mask_suffix):
            continue
        if stem in seen:
            problems.append(
                Problem(
                    kind=DUPLICATE_ID,
                    action=SKIPPED,
                    detail=f"another image has the same stem ({seen[stem]}); the first one is kept",
                    path=relative_to(images / name, root),
                    id=stem,
                    split=split,
                )
            )
            continue
        seen[stem] = name
        mask_path = mask_by_stem.get(stem)
        if mask_path is None:
            problems.append(
                Problem(
                    kind=MISSING_FILE,
                    action=SKIPPED,
                    detail=f"no label map {stem}{mask_suffix}{{{','.join(MASK_EXTENSIONS)}}} in {masks}",
                    path=relative_to(images / name, root),
                    id=stem,
                    split=split,
                )
            )
            continue
        landmarks_path = landmarks / f"{stem}{landmarks_suffix}.txt" if landmarks is not None else None
        tasks.append(FolderTask(stem, images / name, mask_path, landmarks_path, root))

    for stem, mask_path in mask_by_stem.items():
        if stem not in seen:
            problems.append(
                Problem(
                    kind=UNMATCHED_FILE,
                    action=IGNORED,
                    detail="label map without an image",
                    path=relative_to(mask_path, root),
                    id=stem,
                )
            )
    if not tasks:
        raise RawLayoutError(
            f"no image in {images} has a label map {'<stem>' + mask_suffix}.png in {masks} "
            f"({len(seen)} images, {len(mask_by_stem)} label maps found)."
        )

    features = {"id": Value("string"), "image": Image(), "label": Image()}
    if landmarks is not None:
        features["landmarks"] = List(List(Value("float32"), length=2))
    pretty_name = spec.pretty_name or images.name
    notes = [f"Label values are the pixel values of the label maps in `{masks.name}`, matched to images by stem."]
    if spec.ignore_index is not None:
        notes.append(f"Pixels with value {spec.ignore_index} are to be ignored in the loss and metrics.")
    if landmarks is not None:
        notes.append("`landmarks` are (x, y) points in pixels of `image`.")
    card = CardInfo(
        pretty_name=pretty_name,
        description=f"{pretty_name}: face images with label maps of {len(spec.id2label)} classes.",
        license=spec.license or "unknown",
        license_notice=spec.license_notice
        or "The licence of this data was not given to the builder (add `license` and `license_notice` to "
        "labels.json). Check the terms of your data before sharing this copy.",
        citation=spec.citation,
        notes=notes,
    )
    sources = {"images_dir": str(images), "masks_dir": str(masks), "labels_file": str(Path(labels_file).resolve())}
    if landmarks is not None:
        sources["landmarks_dir"] = str(landmarks)
    return BuildPlan(
        name="folder",
        raw_dir=root,
        features=Features(features),
        id2label=spec.id2label,
        ignore_index=spec.ignore_index,
        splits={split: tasks},
        process=process_sample,
        card=card,
        problems=problems,
        sources=sources,
    )
