"""A dataset's label set (`LabelSpec`) and its one reader, for the two files that hold one: the `labels.json` of a
user's own data (see `segface_hf.data.folder`) and the `id2label.json` every built dataset carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..file_utils import read_json
from .common import RawLayoutError

# The name of the label file the builders write beside a dataset's shards.
ID2LABEL_FILE = "id2label.json"
MAX_LABEL_VALUE = 65535
_LABELS_JSON_KEYS = {"id2label", "ignore_index", "pretty_name", "license", "license_notice", "citation"}


@dataclass(frozen=True)
class LabelSpec:
    """A dataset's label set.

    Args:
        id2label (`dict[int, str]`):
            Label value to class name.
        ignore_index (`int`, *optional*):
            Label value to ignore in the loss and metrics.
        pretty_name (`str`, *optional*):
            Dataset name for the card.
        license (`str`, *optional*):
            Hub licence identifier.
        license_notice (`str`, *optional*):
            Licence terms for the card.
        citation (`str`, *optional*):
            BibTeX for the card.
        source (`str`, *optional*):
            The file it was read from.
    """

    id2label: dict[int, str]
    ignore_index: int | None = None
    pretty_name: str | None = None
    license: str | None = None
    license_notice: str | None = None
    citation: str | None = None
    source: str | None = None


def _checked_id2label(mapping: dict, path: Path) -> dict[int, str]:
    id2label: dict[int, str] = {}
    for key, name in mapping.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) <= MAX_LABEL_VALUE):
            raise RawLayoutError(f"{path}: label value {key!r} must be an integer from 0 to {MAX_LABEL_VALUE}.")
        if not isinstance(name, str) or not name.strip():
            raise RawLayoutError(f"{path}: the name of label {key} must be a non-empty string, got {name!r}.")
        id2label[int(key)] = name
    names = list(id2label.values())
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise RawLayoutError(f"{path}: class names must be unique, repeated: {duplicates}.")
    return dict(sorted(id2label.items()))


def read_label_spec(path: str | Path, plain_mapping: bool = False) -> LabelSpec:
    """Read and validate a label file.

    Args:
        path (`str` or `Path`):
            A `labels.json`: `{"id2label": {"0": "background", ...}, "ignore_index": 255, ...}` (see
            `segface_hf.data.folder`).
        plain_mapping (`bool`, *optional*, defaults to `False`):
            Also accept a plain `{"0": "background", ...}` mapping, the `id2label.json` of a built dataset.

    Raises:
        [`RawLayoutError`]: the file is missing, not JSON, or does not follow the format.
    """
    path = Path(path).expanduser()
    spec = read_json(path, RawLayoutError, what="labels file")
    example = '{"id2label": {"0": "background", "1": "skin"}, "ignore_index": 255}'
    if plain_mapping and "id2label" not in spec:
        if not spec:
            raise RawLayoutError(f"{path} must map label values to class names, e.g. {{\"0\": \"background\"}}.")
        return LabelSpec(id2label=_checked_id2label(spec, path), source=str(path))
    if not isinstance(spec.get("id2label"), dict) or not spec["id2label"]:
        raise RawLayoutError(f"{path} must be an object with a non-empty 'id2label' mapping, e.g. {example}.")
    if unknown := sorted(set(spec) - _LABELS_JSON_KEYS):
        raise RawLayoutError(f"{path} has unknown keys {unknown}; allowed keys are {sorted(_LABELS_JSON_KEYS)}.")
    id2label = _checked_id2label(spec["id2label"], path)
    ignore_index = spec.get("ignore_index")
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= MAX_LABEL_VALUE:
            raise RawLayoutError(f"{path}: ignore_index must be an integer from 0 to {MAX_LABEL_VALUE} or null.")
        if ignore_index in id2label:
            raise RawLayoutError(f"{path}: ignore_index {ignore_index} is also a class ({id2label[ignore_index]!r}).")
    for key in ("pretty_name", "license", "license_notice", "citation"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise RawLayoutError(f"{path}: {key} must be a string.")
    return LabelSpec(
        id2label=id2label,
        ignore_index=ignore_index,
        pretty_name=spec.get("pretty_name"),
        license=spec.get("license"),
        license_notice=spec.get("license_notice"),
        citation=spec.get("citation"),
        source=str(path),
    )


__all__ = ["ID2LABEL_FILE", "MAX_LABEL_VALUE", "LabelSpec", "read_label_spec"]
