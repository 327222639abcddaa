"""Evaluation metrics. `FACE_PARSING_F1_PATH` is the folder to pass to `evaluate.load`; the functions are the same
code, importable directly for evaluations that accumulate a confusion matrix image by image."""

from pathlib import Path

from .confusion import batch_confusion_matrices
from .face_parsing_f1.face_parsing_f1 import (
    HELEN_MERGED_ENTRIES,
    confusion_matrix,
    flatten_scores,
    resolve_merged_entries,
    scores_from_confusion,
)

FACE_PARSING_F1_PATH = str(Path(__file__).resolve().parent / "face_parsing_f1")


def load_face_parsing_f1(**kwargs):
    """`evaluate.load` of the face-parsing F1 module shipped in this package (works offline)."""
    import evaluate

    return evaluate.load(FACE_PARSING_F1_PATH, **kwargs)


__all__ = [
    "FACE_PARSING_F1_PATH",
    "HELEN_MERGED_ENTRIES",
    "batch_confusion_matrices",
    "confusion_matrix",
    "flatten_scores",
    "load_face_parsing_f1",
    "resolve_merged_entries",
    "scores_from_confusion",
]
