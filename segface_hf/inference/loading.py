"""Loading a SegFace model for inference (a converted folder or a Hub id), with one-line errors: the one loader of
`segface predict`, `segface export-onnx` and the Space."""

from __future__ import annotations

import os

import torch

from ..errors import SegFaceError, error_summary


class SegFaceModelLoadError(SegFaceError, ValueError):
    """A model that cannot be loaded as asked: missing folder, unreachable id, not a SegFace model, unreadable
    weights, or a device that is not there."""


def check_model_location(model_name_or_path: str) -> str:
    """The path to load `model_name_or_path` from (`~` expanded); a one-line `SegFaceModelLoadError` when it names a
    local path that is missing or a file. Hub ids pass unchecked."""
    path = os.path.expanduser(model_name_or_path)
    looks_like_a_path = os.path.isabs(model_name_or_path) or model_name_or_path.startswith((".", "~"))
    if (looks_like_a_path or os.path.exists(path)) and not os.path.isdir(path):
        reason = "it is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise SegFaceModelLoadError(f"cannot load the model {model_name_or_path!r}: {reason}.")
    return path


def load_segface_model(model_name_or_path: str, device: str = "cpu"):
    """Load a SegFace model (a local folder or a Hub id) in eval mode on `device`; a one-line `SegFaceModelLoadError`
    for an unusable device, a missing folder, a file, an unreachable id, a model of another type or weights that
    cannot be read."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SegFaceModelLoadError("--device cuda was requested, but PyTorch sees no CUDA device here.")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SegFaceModelLoadError(f"--device must be cpu or cuda, got {device!r}.")
    path = check_model_location(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        first_line = error_summary(error)
        raise SegFaceModelLoadError(f"cannot load the model {model_name_or_path!r}: {first_line}") from error
    if config.model_type != "segface":
        raise SegFaceModelLoadError(f"{model_name_or_path} is a {config.model_type!r} model, not a SegFace model.")
    from safetensors import SafetensorError

    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(path, config=config)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        first_line = error_summary(error)
        raise SegFaceModelLoadError(f"cannot load the weights of {model_name_or_path!r}: {first_line}") from error
    return model.to(device).eval()


def load_model(model_name_or_path: str, device: str = "cpu"):
    """Load a SegFace model and its image processor (a local folder or a Hub id) for inference on `device`."""
    from transformers import AutoImageProcessor

    model = load_segface_model(model_name_or_path, device)
    processor = AutoImageProcessor.from_pretrained(os.path.expanduser(model_name_or_path))
    return model, processor


__all__ = ["SegFaceModelLoadError", "check_model_location", "load_model", "load_segface_model"]
