"""One call per dataset: scan the raw folder, then write the `datasets` folder."""

from __future__ import annotations

from pathlib import Path

from .celebamask_hq import plan_celebamask_hq
from .folder import plan_folder
from .helen import plan_helen
from .lapa import plan_lapa
from .writer import DEFAULT_MAX_SHARD_BYTES, BuildSummary, write_dataset

# Datasets whose licences forbid redistribution: their copies go to private repos only.
LICENSED_DATASETS = ("celebamask-hq", "lapa", "helen")


def build_celebamask_hq(
    raw_dir: str | Path,
    output_dir: str | Path,
    *,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> BuildSummary:
    """Build CelebAMask-HQ (train / validation / test) from its raw release.

    Args:
        raw_dir (`str` or `Path`):
            Folder with `CelebA-HQ-img/`, `CelebAMask-HQ-mask-anno/`, `CelebA-HQ-to-CelebA-mapping.txt` and CelebA's
            `list_eval_partition.txt`.
        output_dir (`str` or `Path`):
            Folder to write (absent or empty, unless `overwrite`).
        num_proc (`int`, *optional*, defaults to 1):
            Worker processes for the per-sample work.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an earlier build in `output_dir`.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        max_shard_bytes (`int`, *optional*, defaults to 500 MiB):
            Arrow size per parquet shard.

    Returns:
        [`BuildSummary`]
    """
    plan = plan_celebamask_hq(raw_dir)
    return write_dataset(
        plan, output_dir, num_proc=num_proc, overwrite=overwrite, progress=progress, max_shard_bytes=max_shard_bytes
    )


def build_lapa(
    raw_dir: str | Path,
    output_dir: str | Path,
    *,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> BuildSummary:
    """Build LaPa (train / validation / test, with 106 and 5-point landmarks) from its raw release.

    Args:
        raw_dir (`str` or `Path`):
            Folder with `train/`, `val/`, `test/`, each holding `images/`, `labels/` and `landmarks/`.
        output_dir (`str` or `Path`):
            Folder to write (absent or empty, unless `overwrite`).
        num_proc (`int`, *optional*, defaults to 1):
            Worker processes for the per-sample work.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an earlier build in `output_dir`.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        max_shard_bytes (`int`, *optional*, defaults to 500 MiB):
            Arrow size per parquet shard.

    Returns:
        [`BuildSummary`]
    """
    plan = plan_lapa(raw_dir)
    return write_dataset(
        plan, output_dir, num_proc=num_proc, overwrite=overwrite, progress=progress, max_shard_bytes=max_shard_bytes
    )


def build_helen(
    raw_dir: str | Path,
    output_dir: str | Path,
    *,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> BuildSummary:
    """Build Helen (Relabeled-HELEN; train / test, with 68 landmarks and the face crop box) from its raw release.

    Args:
        raw_dir (`str` or `Path`):
            Folder with `train/`, `test/` and `landmarks.txt`.
        output_dir (`str` or `Path`):
            Folder to write (absent or empty, unless `overwrite`).
        num_proc (`int`, *optional*, defaults to 1):
            Worker processes for the per-sample work.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an earlier build in `output_dir`.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        max_shard_bytes (`int`, *optional*, defaults to 500 MiB):
            Arrow size per parquet shard.

    Returns:
        [`BuildSummary`]
    """
    plan = plan_helen(raw_dir)
    return write_dataset(
        plan, output_dir, num_proc=num_proc, overwrite=overwrite, progress=progress, max_shard_bytes=max_shard_bytes
    )


def build_from_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    labels_file: str | Path,
    output_dir: str | Path,
    *,
    mask_suffix: str = "",
    landmarks_dir: str | Path | None = None,
    landmarks_suffix: str = "",
    split: str = "train",
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> BuildSummary:
    """Build a one-split dataset from a folder of images and a folder of label maps matched by file stem.

    Args:
        images_dir (`str` or `Path`):
            Folder of images.
        masks_dir (`str` or `Path`):
            Folder of label maps (may be `images_dir` when `mask_suffix` is set).
        labels_file (`str` or `Path`):
            `labels.json` with `id2label` and optionally `ignore_index` (see `segface_hf.data.folder`).
        output_dir (`str` or `Path`):
            Folder to write (absent or empty, unless `overwrite`).
        mask_suffix (`str`, *optional*, defaults to `""`):
            What follows the image stem in a label map's name, e.g. `"_seg"`.
        landmarks_dir (`str` or `Path`, *optional*):
            Folder of landmark text files; adds a `landmarks` column.
        landmarks_suffix (`str`, *optional*, defaults to `""`):
            What follows the image stem in a landmark file's name, e.g. `"_ldmks"`.
        split (`str`, *optional*, defaults to `"train"`):
            Name of the split.
        num_proc (`int`, *optional*, defaults to 1):
            Worker processes for the per-sample work.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an earlier build in `output_dir`.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        max_shard_bytes (`int`, *optional*, defaults to 500 MiB):
            Arrow size per parquet shard.

    Returns:
        [`BuildSummary`]
    """
    plan = plan_folder(
        images_dir,
        masks_dir,
        labels_file,
        mask_suffix=mask_suffix,
        landmarks_dir=landmarks_dir,
        landmarks_suffix=landmarks_suffix,
        split=split,
    )
    return write_dataset(
        plan, output_dir, num_proc=num_proc, overwrite=overwrite, progress=progress, max_shard_bytes=max_shard_bytes
    )
