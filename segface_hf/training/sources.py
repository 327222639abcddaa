"""Where training and evaluation data come from: a dataset folder or Hub repo, and its label set (`labels.json`, the
`id2label.json` the segface-hf builders write, or none)."""

from __future__ import annotations

from pathlib import Path

from ..data.labels import ID2LABEL_FILE, LabelSpec, read_label_spec


def resolve_label_spec(dataset: str, labels: str | None = None) -> LabelSpec | None:
    """The label set of a dataset: `labels` when given, else the dataset's `id2label.json` (in its folder, or in
    its Hub repo), else `None` (the model's own label set applies)."""
    if labels is not None:
        return read_label_spec(labels, plain_mapping=True)
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        candidate = folder / ID2LABEL_FILE
        return read_label_spec(candidate, plain_mapping=True) if candidate.is_file() else None
    if folder.exists():
        raise ValueError(f"--dataset {dataset} is a file; give a dataset folder or a Hub dataset repo.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return read_label_spec(hf_hub_download(dataset, ID2LABEL_FILE, repo_type="dataset"), plain_mapping=True)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def load_dataset_splits(dataset: str, config_name: str | None = None):
    """Load every split of a dataset: a folder written by `save_to_disk`, any folder `datasets.load_dataset` reads
    (e.g. the parquet folders the segface-hf builders write), or a Hub dataset repo.

    Returns:
        `datasets.DatasetDict`.
    """
    import datasets

    folder = Path(dataset).expanduser()
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(folder))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--dataset {dataset} is a file; give a dataset folder or a Hub dataset repo.")
    if not folder.exists() and (dataset.startswith((".", "/", "~")) or dataset.count("/") > 1):
        raise ValueError(f"--dataset {dataset}: no such folder (and not a Hub repo id namespace/name).")
    try:
        loaded = datasets.load_dataset(str(folder) if folder.is_dir() else dataset, config_name)
    except datasets.exceptions.DatasetNotFoundError as error:
        raise ValueError(f"--dataset {dataset}: {error}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def pick_eval_split(value: str, splits) -> str | None:
    """The split to validate on: `"auto"` takes the first of validation, val and test the dataset has (or none),
    `"none"` none, any other value that split, which must exist."""
    if value == "none":
        return None
    if value == "auto":
        return next((name for name in ("validation", "val", "test") if name in splits), None)
    if value not in splits:
        raise ValueError(f"the dataset has no split {value!r}; its splits are {sorted(splits)}.")
    return value


def resolve_column(value: str | None, default: str | None, columns) -> str | None:
    """An optional column (landmarks, crop box): `"auto"` takes `default` if the dataset has it, `"none"` (or `None`)
    none, any other value that column, which must exist."""
    if value in (None, "none"):
        return None
    if value == "auto":
        return default if default in columns else None
    if value not in columns:
        raise ValueError(f"the split has no column {value!r}; its columns are {list(columns)}.")
    return value


__all__ = ["load_dataset_splits", "pick_eval_split", "resolve_column", "resolve_label_spec"]
