"""The dataset card (README.md) of a built dataset: Hub YAML metadata, label map, counts, frequencies, licence."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from datasets import DatasetInfo, Image, List, SplitInfo, Value
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

from ..references import SEGFACE_CITATION
from .common import BuildPlan

COLUMN_DOCS = {
    "id": "sample id (the file stem of the raw data)",
    "image": "the face image, as the raw file's bytes",
    "label": "label map: one class value per pixel (grayscale PNG)",
    "landmarks": "(x, y) landmark points in pixels of `image`",
    "landmarks_5": "the 5 (x, y) points SegFace's LaPa model warps with, in pixels of `image`",
    "crop_box": "(x1, y1, x2, y2) face crop the original Helen pipeline applies",
}


def _type_name(feature) -> str:
    """A short type name: `string`, `image`, `float32[106][2]`, `int32[4]`, `float32[][2]`."""
    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, List):
        length = "" if feature.length == -1 else str(feature.length)
        inner = _type_name(feature.feature)
        base, _, dims = inner.partition("[")
        return f"{base}[{length}]" + (f"[{dims}" if dims else "")
    return repr(feature)


def _size_category(num_rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < bound:
            return name
    return "1M<n<10M"


def _percent(count: int, total: int) -> str:
    if total == 0:
        return "-"
    return f"{100.0 * count / total:.4g}%"


def card_metadata(plan: BuildPlan, split_rows: Mapping[str, int], split_bytes: Mapping[str, int], download_size: int):
    """The YAML metadata of the card as a `huggingface_hub.DatasetCardData`."""
    info = DatasetInfo(features=plan.features, splits=SplitDict(), download_size=download_size, dataset_size=0)
    for split, rows in split_rows.items():
        info.splits.add(SplitInfo(name=split, num_bytes=split_bytes[split], num_examples=rows))
        info.dataset_size += split_bytes[split]
    card = plan.card
    metadata = {
        "pretty_name": card.pretty_name,
        "license": card.license,
        "task_categories": ["image-segmentation"],
        "task_ids": ["semantic-segmentation"],
        "tags": ["face-parsing", "segface"],
        "size_categories": [_size_category(sum(split_rows.values()))],
    }
    if card.license_name:
        metadata["license_name"] = card.license_name
    if card.license_link:
        metadata["license_link"] = card.license_link
    data = DatasetCardData(**metadata)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": split, "path": f"data/{split}-*"} for split in split_rows]}}
    ).to_dataset_card_data(data)
    return data


def render_card(
    plan: BuildPlan,
    split_rows: Mapping[str, int],
    split_bytes: Mapping[str, int],
    download_size: int,
    histograms: Mapping[str, np.ndarray],
    skipped: Mapping[str, int],
    problems_by_kind: Mapping[str, int],
) -> str:
    """Write the README.md of a built dataset.

    Args:
        plan (`BuildPlan`):
            The plan the dataset was built from.
        split_rows (`Mapping[str, int]`):
            Rows written per split.
        split_bytes (`Mapping[str, int]`):
            Arrow size in bytes per split.
        download_size (`int`):
            Total size of the parquet files.
        histograms (`Mapping[str, np.ndarray]`):
            Pixel count of each label value per split.
        skipped (`Mapping[str, int]`):
            Samples skipped per split.
        problems_by_kind (`Mapping[str, int]`):
            Report entries per kind.

    Returns:
        `str`: the card, YAML front matter included.
    """
    card = plan.card
    splits = list(split_rows)
    metadata = card_metadata(plan, split_rows, split_bytes, download_size)
    lines = [f"---\n{metadata.to_yaml()}\n---", "", f"# {card.pretty_name}", "", card.description, ""]
    lines += [
        f"This copy was built locally with `segface-hf` (`scripts/build_dataset.py {plan.name}`) from the raw data "
        "as distributed by its authors.",
    ]
    if card.source_url:
        lines += ["", f"Raw data: {card.source_url}"]
    lines += ["", "## Licence", "", card.license_notice, ""]

    lines += [
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'dataset = load_dataset("<this folder or repo>")',
    ]
    first_split = splits[0]
    lines += [f'sample = dataset["{first_split}"][0]  # sample["image"], sample["label"] are PIL images', "```", ""]

    lines += ["## Features", "", "| column | type | content |", "|---|---|---|"]
    for name, feature in plan.features.items():
        lines.append(f"| `{name}` | `{_type_name(feature)}` | {COLUMN_DOCS.get(name, '')} |")
    lines.append("")

    lines += ["## Splits", "", "| split | samples | skipped |", "|---|---:|---:|"]
    for split in splits:
        lines.append(f"| {split} | {split_rows[split]:,} | {skipped.get(split, 0):,} |")
    lines.append("")

    lines += [
        "## Labels",
        "",
        "Class values of `label` and the share of all label pixels of each split that carries them. The same map is "
        "in `id2label.json`.",
        "",
        "| value | class | " + " | ".join(splits) + " |",
        "|---:|---|" + "---:|" * len(splits),
    ]
    totals = {split: int(histograms[split].sum()) for split in splits}

    def count(split: str, value: int) -> int:
        histogram = histograms[split]
        return int(histogram[value]) if value < len(histogram) else 0

    for value, name in plan.id2label.items():
        cells = [_percent(count(split, value), totals[split]) for split in splits]
        lines.append(f"| {value} | {name} | " + " | ".join(cells) + " |")
    if plan.ignore_index is not None:
        cells = [_percent(count(split, plan.ignore_index), totals[split]) for split in splits]
        lines.append(f"| {plan.ignore_index} | *(ignore)* | " + " | ".join(cells) + " |")
    known = set(plan.id2label) | ({plan.ignore_index} if plan.ignore_index is not None else set())
    other = {split: totals[split] - sum(count(split, value) for value in known) for split in splits}
    if any(other.values()):
        cells = [_percent(other[split], totals[split]) for split in splits]
        lines.append("| other | *(values not in the label map)* | " + " | ".join(cells) + " |")
    lines.append("")
    if plan.ignore_index is None:
        lines += ["There is no ignore value: every pixel carries a class.", ""]
    else:
        lines += [f"Ignore value: {plan.ignore_index}.", ""]

    if card.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in card.notes] + [""]

    lines += ["## Build report", ""]
    if problems_by_kind:
        lines += [
            "Problems met while building (each file and reason is in the `build_report.json` of the local build):",
            "",
        ]
        lines += [f"- {kind}: {number:,}" for kind, number in sorted(problems_by_kind.items())]
    else:
        lines.append("No problems were met while building.")
    lines.append("")

    lines += ["## Citation", "", "```bibtex"]
    if card.citation:
        lines.append(card.citation)
    lines += [SEGFACE_CITATION, "```", ""]
    return "\n".join(lines)
