"""Face-parsing F1: the metric protocol of SegFace (and of the face-parsing literature it compares with).

This file is an `evaluate` module, loadable by path without network access:

```python
import evaluate

metric = evaluate.load("path/to/segface_hf/metrics/face_parsing_f1")
metric.compute(predictions=[pred_map], references=[label_map], num_labels=11, label_names=[...])
```

and an ordinary Python module whose functions ([`confusion_matrix`], [`scores_from_confusion`]) let large evaluations
accumulate the confusion matrix image by image (or across processes) without storing every label map. It depends on
numpy only (plus `evaluate` and `datasets` for the `evaluate` wrapper).

The protocol, exactly as SegFace's evaluation code computes it:

- One confusion matrix over the **whole dataset** (ground-truth rows x predicted columns), summed image by image.
  Pixels whose ground truth is `ignore_index` are dropped.
- F1 of an entry with ground-truth class set G and predicted class set P: `2 * I / (|gt in G| + |pred in P|)`, where
  I counts the pixels with ground truth in G and prediction in P. For a single class this is the micro-F1 (Dice) of
  that class over the whole dataset, not a mean of per-image scores.
- **Mean F1 = the plain mean of the per-class F1 over every class except the background** (index 0).
- Merged entries (Helen's `eyes`, `brows`, `mouth` and `overall`) merge the index sets on both sides, so that a
  left/right confusion counts as correct there; they are reported beside the classes and never enter the mean.
- IoU per class `TP / (|gt| + |pred| - TP)`, mean IoU over all classes (background included), pixel accuracy
  `sum(TP) / all pixels` and mean (per-class) accuracy `TP / |gt|`.

One deliberate, documented difference: a class that is absent from both the ground truth and the prediction has no
defined F1 (0/0; the original code would produce NaN and with it a NaN mean F1) nor IoU. Such a class is reported
with `None` and listed in `absent_classes`, and it is left out of mean F1, mean IoU and mean accuracy (the means are
over the classes that occur). A class absent from the ground truth but predicted somewhere gets F1 = IoU = 0 and does
count, and a class with ground truth but no prediction likewise. Mean accuracy leaves out every class without
ground-truth pixels (its recall is undefined; the original counts it as 0). When every class occurs, which is the
case on the standard test sets, all numbers equal the original code's.

All scores are fractions in [0, 1] (the paper prints F1 x 100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

try:  # the `evaluate` wrapper; the functions above it need numpy only
    import datasets
    import evaluate
except ImportError:  # pragma: no cover - exercised only where evaluate is not installed
    datasets = evaluate = None

# `evaluate.load` runs this file on its own (no package around it), so it keeps its own copy of the paper's BibTeX
# (the package's is in segface_hf/references.py).
_CITATION = """\
@inproceedings{narayan2025segface,
  title={SegFace: Face Segmentation of Long-Tail Classes},
  author={Narayan, Kartik and VS, Vibashan and Patel, Vishal M.},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  volume={39},
  number={6},
  pages={6182--6190},
  year={2025}
}
"""

_DESCRIPTION = """\
Face-parsing F1 as SegFace reports it: per-class F1 from one confusion matrix accumulated over the whole dataset,
their mean over every class except the background, Helen's merged entries (eyes, brows, mouth, overall) beside it,
plus per-class IoU, mean IoU and pixel accuracy. A class absent from both ground truth and prediction is reported as
None and left out of the means.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays):
        Predicted label maps, one per image.
    references (`list` of 2-D integer arrays):
        Ground-truth label maps, each the shape of its prediction.
    num_labels (`int`, *optional*):
        Number of classes K (labels 0..K-1). Defaults to `len(label_names)`.
    label_names (`list[str]`, *optional*):
        Class names in index order; default `class_0`, `class_1`, ...
    ignore_index (`int`, *optional*, defaults to 255):
        Ground-truth value whose pixels are dropped. `None` to keep every pixel.
    background_index (`int`, *optional*, defaults to 0):
        The class left out of mean F1. `None` to average over all classes.
    merged_entries (`dict[str, list]` or `"helen"`, *optional*):
        Extra F1 entries over merged class sets, by class name or index; `"helen"` gives SegFace's Helen entries.
    return_confusion_matrix (`bool`, *optional*, defaults to `False`):
        Also return the K x K confusion matrix (ground-truth rows, predicted columns) as nested lists.

Returns:
    `mean_f1`, `f1` (per class), `merged_f1`, `iou` (per class), `mean_iou`, `pixel_accuracy`, `mean_accuracy`,
    `absent_classes`, `num_pixels` and, on request, `confusion_matrix`.

Example:
    >>> import evaluate
    >>> metric = evaluate.load("segface_hf/metrics/face_parsing_f1")
    >>> results = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 1]]],
    ...                          label_names=["background", "skin"])
    >>> round(results["mean_f1"], 4)
    0.8
"""

# SegFace's Helen evaluation adds these entries (merged on both sides) beside the classes. Names of the Helen / LaPa
# label set of segface_hf (background, skin, l_brow, r_brow, l_eye, r_eye, nose, u_lip, mouth, l_lip, hair).
HELEN_MERGED_ENTRIES = {
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "mouth": ("u_lip", "mouth", "l_lip"),
    "overall": ("l_eye", "r_eye", "l_brow", "r_brow", "nose", "u_lip", "mouth", "l_lip"),
}
MERGED_ENTRY_PRESETS = {"helen": HELEN_MERGED_ENTRIES}


def confusion_matrix(prediction, reference, num_labels: int, ignore_index: int | None = 255) -> np.ndarray:
    """The `(num_labels, num_labels)` confusion matrix of one label map: ground-truth rows, predicted columns.

    Args:
        prediction (array-like of shape `(height, width)`):
            Predicted class indices.
        reference (array-like of shape `(height, width)`):
            Ground-truth class indices; pixels equal to `ignore_index` are dropped.
        num_labels (`int`):
            Number of classes.
        ignore_index (`int`, *optional*, defaults to 255):
            Ground-truth value to drop; `None` keeps every pixel.

    Returns:
        `np.ndarray` of dtype int64.

    Raises:
        `ValueError`: shapes differ, or a value lies outside 0..num_labels-1 (other than the ignored one).
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction of shape {prediction.shape} and reference of shape {reference.shape} must match; resize "
            "one to the other first (see segface_hf.training.evaluation for the two protocols)."
        )
    prediction = prediction.reshape(-1).astype(np.int64, copy=False)
    reference = reference.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = reference != ignore_index
        prediction, reference = prediction[keep], reference[keep]
    for name, values in (("reference", reference), ("prediction", prediction)):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            bad = np.unique(values[(values < 0) | (values >= num_labels)])[:8].tolist()
            ignored = f" or the ignore value {ignore_index}" if ignore_index is not None else ""
            raise ValueError(
                f"{name} holds values {bad} outside the {num_labels} classes (0..{num_labels - 1}){ignored}; "
                "check num_labels and the label mapping."
            )
    counts = np.bincount(reference * num_labels + prediction, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels).astype(np.int64)


def _entry_indices(members, label_names: Sequence[str], entry: str) -> list[int]:
    indices = []
    for member in members:
        if isinstance(member, (int, np.integer)) and not isinstance(member, bool):
            index = int(member)
            if not 0 <= index < len(label_names):
                raise ValueError(f"merged entry {entry!r}: class index {index} is outside 0..{len(label_names) - 1}.")
        elif isinstance(member, str) and member in label_names:
            index = list(label_names).index(member)
        else:
            raise ValueError(f"merged entry {entry!r}: {member!r} is not one of the classes {list(label_names)}.")
        indices.append(index)
    return sorted(set(indices))


def resolve_merged_entries(merged_entries, label_names: Sequence[str]) -> dict[str, list[int]]:
    """Turn `merged_entries` (a preset name such as `"helen"`, or a mapping of entry name to class names or
    indices) into entry name -> sorted class indices."""
    if merged_entries is None:
        return {}
    if isinstance(merged_entries, str):
        if merged_entries not in MERGED_ENTRY_PRESETS:  # a name: one of the presets
            raise ValueError(
                f"unknown merged-entry preset {merged_entries!r}; choose one of {sorted(MERGED_ENTRY_PRESETS)}."
            )
        merged_entries = MERGED_ENTRY_PRESETS[merged_entries]
    if not isinstance(merged_entries, Mapping):
        raise TypeError("merged_entries must be a preset name or a mapping of entry name to a list of classes.")
    resolved = {}
    for entry, members in merged_entries.items():
        if isinstance(members, (str, int)) or not len(members):
            raise ValueError(f"merged entry {entry!r} must list one or more classes.")
        resolved[str(entry)] = _entry_indices(members, label_names, entry)
    return resolved


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator > 0 else None


def _mean(values) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def scores_from_confusion(
    confusion,
    label_names: Sequence[str] | None = None,
    background_index: int | None = 0,
    merged_entries=None,
    return_confusion_matrix: bool = False,
) -> dict:
    """All face-parsing scores from a dataset-level confusion matrix (ground-truth rows, predicted columns).

    Args:
        confusion (array-like of shape `(num_labels, num_labels)`):
            Pixel counts summed over the dataset, e.g. the sum of [`confusion_matrix`] over all images.
        label_names (`list[str]`, *optional*):
            Class names in index order; defaults to `class_0`, `class_1`, ...
        background_index (`int`, *optional*, defaults to 0):
            The class left out of mean F1; `None` averages over every class.
        merged_entries (`dict` or `str`, *optional*):
            Extra entries over merged class sets (see [`resolve_merged_entries`]), reported in `merged_f1` and never
            part of the mean.
        return_confusion_matrix (`bool`, *optional*, defaults to `False`):
            Whether to include the confusion matrix (nested lists) in the result.

    Returns:
        `dict` with `mean_f1`, `f1` (class name -> F1, `None` for a class absent from both sides), `merged_f1`,
        `iou`, `mean_iou`, `pixel_accuracy`, `mean_accuracy`, `absent_classes` and `num_pixels`.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] == 0:
        raise ValueError(f"confusion must be a square (num_labels, num_labels) matrix, got shape {confusion.shape}.")
    if (confusion < 0).any():
        raise ValueError("confusion holds negative counts.")
    num_labels = confusion.shape[0]
    if label_names is None:
        label_names = [f"class_{index}" for index in range(num_labels)]
    label_names = [str(name) for name in label_names]
    if len(label_names) != num_labels:
        raise ValueError(f"got {len(label_names)} label names for a {num_labels}-class confusion matrix.")
    if len(set(label_names)) != num_labels:
        raise ValueError(f"label names must be unique, got {label_names}.")
    if background_index is not None and not 0 <= background_index < num_labels:
        raise ValueError(f"background_index {background_index} is outside 0..{num_labels - 1}.")

    ground_truth = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    true_positive = np.diag(confusion)
    absent = (ground_truth == 0) & (predicted == 0)

    f1 = {}
    iou = {}
    accuracy = []
    for index, name in enumerate(label_names):
        if absent[index]:
            f1[name] = iou[name] = None
        else:
            f1[name] = 2.0 * float(true_positive[index]) / float(ground_truth[index] + predicted[index])
            iou[name] = float(true_positive[index]) / float(
                ground_truth[index] + predicted[index] - true_positive[index]
            )
        accuracy.append(_ratio(true_positive[index], ground_truth[index]))

    merged_f1 = {}
    for entry, indices in resolve_merged_entries(merged_entries, label_names).items():
        gt_pixels = ground_truth[indices].sum()
        predicted_pixels = predicted[indices].sum()
        intersection = confusion[np.ix_(indices, indices)].sum()
        merged_f1[entry] = _ratio(2 * intersection, gt_pixels + predicted_pixels)

    foreground = [name for index, name in enumerate(label_names) if index != background_index]
    total = int(confusion.sum())
    results = {
        "mean_f1": _mean(f1[name] for name in foreground),
        "f1": f1,
        "merged_f1": merged_f1,
        "iou": iou,
        "mean_iou": _mean(iou.values()),
        "pixel_accuracy": _ratio(true_positive.sum(), total),
        "mean_accuracy": _mean(accuracy),
        "absent_classes": [name for index, name in enumerate(label_names) if absent[index]],
        "num_pixels": total,
    }
    if return_confusion_matrix:
        results["confusion_matrix"] = confusion.tolist()
    return results


def flatten_scores(scores: dict, prefix: str = "") -> dict[str, float]:
    """The scores as a flat `name -> float` mapping for loggers and `Trainer` (`mean_f1`, `f1_<class>`,
    `merged_f1_<entry>`, `iou_<class>`, `mean_iou`, `pixel_accuracy`, `mean_accuracy`); undefined values are left
    out. (Merged entries have their own prefix: Helen's merged `mouth` is not the class `mouth`.)"""
    flat = {}
    for key in ("mean_f1", "mean_iou", "pixel_accuracy", "mean_accuracy"):
        if scores.get(key) is not None:
            flat[f"{prefix}{key}"] = scores[key]
    for group, tag in (("f1", "f1"), ("merged_f1", "merged_f1"), ("iou", "iou")):
        for name, value in scores.get(group, {}).items():
            if value is not None:
                flat[f"{prefix}{tag}_{name}"] = value
    return flat


if evaluate is not None:

    @evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
    class FaceParsingF1(evaluate.Metric):
        """`evaluate` wrapper of [`confusion_matrix`] + [`scores_from_confusion`]."""

        def _info(self):
            label_map = datasets.Sequence(datasets.Sequence(datasets.Value("int32")))
            return evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features({"predictions": label_map, "references": label_map}),
                reference_urls=["https://github.com/Kartik-3004/SegFace"],
            )

        def _compute(
            self,
            predictions,
            references,
            num_labels: int | None = None,
            label_names: Sequence[str] | None = None,
            ignore_index: int | None = 255,
            background_index: int | None = 0,
            merged_entries=None,
            return_confusion_matrix: bool = False,
        ):
            if num_labels is None:
                if label_names is None:
                    raise ValueError("give num_labels or label_names.")
                num_labels = len(label_names)
            if len(predictions) != len(references):
                raise ValueError(f"got {len(predictions)} predictions for {len(references)} references.")
            total = np.zeros((num_labels, num_labels), dtype=np.int64)
            for prediction, reference in zip(predictions, references):
                total += confusion_matrix(prediction, reference, num_labels, ignore_index)
            return scores_from_confusion(
                total,
                label_names=label_names,
                background_index=background_index,
                merged_entries=merged_entries,
                return_confusion_matrix=return_confusion_matrix,
            )
