"""Where training and evaluation data come from: a dataset folder or Hub repo, and its label set (`labels.json`, the
`id2label.json` the segface-hf builders write, or none)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ID2LABEL_FILE = "id2label.json"


@dataclass
class LabelSpec:
    """A dataset's label set.

    Args:
        id2label (`dict[int, str]`):
            Label value -> class name.
        ignore_index (`int`, *optional*):
            Label value to ignore, if the data has one.
        source (`str`, *optional*):
            Where it was read from.
    """

    id2label: dict[int, str]
    ignore_index: int | None = None
    source: str | None = None


def read_labels_file(path: str | Path) -> LabelSpec:
    """Read a label set: a `labels.json` (`{"id2label": {...}, "ignore_index": 255}`, the format of the folder
    builder) or a plain `{"0": "background", ...}` mapping (the `id2label.json` of a built dataset).

    Raises:
        `ValueError`: the file is missing or malformed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None
    if isinstance(content, dict) and "id2label" in content:
        from ..data.folder import read_label_spec

        spec = read_label_spec(path)
        return LabelSpec(id2label=spec.id2label, ignore_index=spec.ignore_index, source=str(path))
    example = '{"0": "background", "1": "skin"} or {"id2label": {...}, "ignore_index": 255}'
    if not isinstance(content, dict) or not content:
        raise ValueError(f"{path} must map label values to class names, e.g. {example}.")
    id2label = {}
    for key, name in content.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise ValueError(f"{path}: label value {key!r} is not a non-negative integer; expected e.g. {example}.")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: the name of label {key} must be a non-empty string.")
        id2label[int(key)] = name
    if len(set(id2label.values())) != len(id2label):
        raise ValueError(f"{path}: class names must be unique.")
    return LabelSpec(id2label=dict(sorted(id2label.items())), source=str(path))


def resolve_label_spec(dataset: str, labels: str | None = None) -> LabelSpec | None:
    """The label set of a dataset: `labels` when given, else the dataset's `id2label.json` (in its folder, or in
    its Hub repo), else `None` (the model's own label set applies)."""
    if labels is not None:
        return read_labels_file(labels)
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        candidate = folder / ID2LABEL_FILE
        return read_labels_file(candidate) if candidate.is_file() else None
    if folder.exists():
        raise ValueError(f"--dataset {dataset} is a file; give a dataset folder or a Hub dataset repo.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return read_labels_file(hf_hub_download(dataset, ID2LABEL_FILE, repo_type="dataset"))
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


__all__ = ["LabelSpec", "load_dataset_splits", "read_labels_file", "resolve_label_spec"]
