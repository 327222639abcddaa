"""Confusion matrices of predicted label maps against ground truth, on the tensors' device (torch), for evaluations
that accumulate one dataset-level matrix batch by batch."""

from __future__ import annotations

import torch


def batch_confusion_matrices(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int | None
) -> torch.Tensor:
    """Per-image confusion matrices `(batch, K, K)` (ground-truth rows, predicted columns) of predicted label maps
    `(batch, H, W)` against label maps of the same shape, on the tensors' device.

    Raises:
        `ValueError`: a label outside 0..K-1 that is not `ignore_index`.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape.")
    labels = labels.long()
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    if bool(((labels < 0) | (labels >= num_labels)).logical_and(valid).any()):
        bad = torch.unique(labels[valid & ((labels < 0) | (labels >= num_labels))])[:8].tolist()
        raise ValueError(
            f"labels hold values {bad} outside the model's {num_labels} classes and the ignore value {ignore_index}."
        )
    batch = labels.shape[0]
    image = torch.arange(batch, device=labels.device).view(batch, *([1] * (labels.dim() - 1))).expand_as(labels)
    codes = (image * num_labels + labels) * num_labels + predictions.long()
    counts = torch.bincount(codes[valid], minlength=batch * num_labels * num_labels)
    return counts.view(batch, num_labels, num_labels)


__all__ = ["batch_confusion_matrices"]
