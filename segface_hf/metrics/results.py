"""The result of scoring a model on a dataset split: what the evaluation writes (`evaluation.json`) and what a model
card reads back."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegFaceError
from ..file_utils import atomic_write_text, read_json


class SegFaceEvaluationFileError(SegFaceError, ValueError):
    """An evaluation JSON that is missing, malformed or has no usable mean F1."""


@dataclass
class EvaluationResult:
    """Scores of one model on one split.

    Args:
        scores (`dict`):
            See `segface_hf.metrics.scores_from_confusion` (fractions in [0, 1]: `mean_f1`, per-class `f1`, ...);
            plus `num_images`.
        protocol (`str`, *optional*):
            `"model"` (compared at the model resolution, as the paper does) or `"native"`.
        dataset (`str`, *optional*):
            The dataset folder, repo or label set.
        split (`str`, *optional*, defaults to `"test"`):
            The split.
        model (`str`, *optional*):
            The model folder or repo (or a description of a baseline).
        seconds (`float`, *optional*, defaults to 0.0):
            Wall time of the evaluation.
        settings (`dict`, *optional*, defaults to `{}`):
            Further settings worth recording (resolution, label mapping, merged entries).
        source (`str`, *optional*):
            The file the result was read from, when it was read.
    """

    scores: dict
    protocol: str | None = None
    dataset: str | None = None
    split: str = "test"
    model: str | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    source: str | None = None

    @property
    def mean_f1(self) -> float:
        """Mean F1 in percent over all classes but background."""
        return 100.0 * self.scores["mean_f1"]

    @property
    def per_class_f1(self) -> dict[str, float | None]:
        """F1 in percent per class name; `None` for a class absent from both the ground truth and the predictions."""
        return {name: None if value is None else 100.0 * value for name, value in (self.scores.get("f1") or {}).items()}

    @property
    def num_images(self) -> int | None:
        value = self.scores.get("num_images")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "split": self.split, "protocol": self.protocol,
                "seconds": round(self.seconds, 3), "settings": self.settings, "scores": self.scores}  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (atomically)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _score(value, what: str, source: str) -> float:
    if isinstance(value, dict):
        for key in ("value", "f1", "score"):
            if key in value:
                return _score(value[key], what, source)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SegFaceEvaluationFileError(f"{source}: {what} must be a finite number, got {value!r}.")
    if not 0.0 <= value <= 100.0:
        raise SegFaceEvaluationFileError(f"{source}: {what} = {value} is not a score in [0, 1] or [0, 100].")
    return float(value)


def _find(data: dict, *names):
    for name in names:
        if name in data:
            return data[name]
    for nested in ("metrics", "results", "scores"):
        if isinstance(data.get(nested), dict):
            found = _find(data[nested], *names)
            if found is not None:
                return found
    return None


def load_evaluation(path: str | os.PathLike) -> EvaluationResult:
    """Read an evaluation JSON: the one [`EvaluationResult.save`] writes, or a foreign one with a mean F1 (under
    `mean_f1`, `Mean_F1`, ..., at the top or under `metrics` / `results` / `scores`), in fractions (as the original
    logs them) or percentages.

    Raises:
        [`SegFaceEvaluationFileError`]: the file is missing, not a JSON object, or has no valid mean F1.
    """
    path = Path(path)
    source = str(path)
    data = read_json(path, SegFaceEvaluationFileError, what="evaluation file")
    mean_f1 = _find(data, "mean_f1", "Mean_F1", "mean_F1", "meanF1")
    if mean_f1 is None:
        raise SegFaceEvaluationFileError(f"{source}: has no 'mean_f1'; pass the JSON written by `segface evaluate`.")
    mean_f1 = _score(mean_f1, "mean_f1", source)
    # A mean above 1 means the file is in percent; scores are kept as fractions.
    scale = 0.01 if mean_f1 > 1.0 else 1.0
    per_class = _find(data, "per_class_f1", "f1_per_class", "class_f1", "f1")
    f1 = {}
    if isinstance(per_class, dict):
        f1 = {str(k): None if v is None else scale * _score(v, f"F1 of {k}", source) for k, v in per_class.items()}
    scores = {"mean_f1": scale * mean_f1, "f1": f1}
    num_images = _find(data, "num_images", "num_samples", "images")
    if isinstance(num_images, int) and not isinstance(num_images, bool):
        scores["num_images"] = num_images
    dataset = _find(data, "dataset", "label_set", "dataset_name")
    model = data.get("model")
    return EvaluationResult(
        scores=scores,
        protocol=_find(data, "protocol", "at", "compare_at"),
        dataset=str(dataset) if isinstance(dataset, str) else None,
        split=str(_find(data, "split") or "test"),
        model=model if isinstance(model, str) else None,
        seconds=float(data.get("seconds") or 0.0),
        settings=data.get("settings") if isinstance(data.get("settings"), dict) else {},
        source=path.name,
    )


__all__ = ["EvaluationResult", "SegFaceEvaluationFileError", "load_evaluation"]
