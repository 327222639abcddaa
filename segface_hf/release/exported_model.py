"""An exported SegFace file (`segface export`) wrapped to be called like the PyTorch model, so that code written for
[`SegFaceForSemanticSegmentation`] (evaluation, prediction loops) can score the export itself: the logits come from
the file's own runtime, the config (labels, image size, face warp) from the model folder it was exported from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from ..errors import SegFaceError, error_summary

# File endings and the runtime that runs them.
EXPORTED_RUNTIMES = {".onnx": "onnxruntime"}


class SegFaceExportedModelError(SegFaceError, ValueError):
    """An exported file that cannot be loaded or run for the model it is paired with."""


class SegFaceExportedModel(nn.Module):
    """An exported file behind the forward signature of [`SegFaceForSemanticSegmentation`].

    Args:
        path (`str` or `os.PathLike`):
            The exported file (`.onnx`).
        config ([`SegFaceConfig`]):
            The config of the model it was exported from.
        threads (`int`, *optional*):
            Runtime threads.

    Example:

    ```python
    >>> from segface_hf import SegFaceForSemanticSegmentation
    >>> from segface_hf.release.exported_model import SegFaceExportedModel
    >>> model = SegFaceForSemanticSegmentation.from_pretrained("my-segface")
    >>> int8 = SegFaceExportedModel("my-segface-int8.onnx", model.config)
    >>> logits = int8(pixel_values).logits  # the same shape as model(pixel_values).logits
    ```
    """

    def __init__(self, path: str | os.PathLike, config, threads: int | None = None):
        super().__init__()
        from .export import onnx_runner

        self.path = Path(path).expanduser()
        if self.path.suffix not in EXPORTED_RUNTIMES:
            raise SegFaceExportedModelError(
                f"{str(self.path)!r} is not an exported model this package can run; give a file ending in "
                f"{', '.join(EXPORTED_RUNTIMES)} (written by segface export)."
            )
        if not self.path.is_file():
            raise SegFaceExportedModelError(f"the exported model {str(self.path)!r} does not exist.")
        self.config = config
        self.runtime = EXPORTED_RUNTIMES[self.path.suffix]
        try:
            self._run = onnx_runner(self.path, threads=threads)
        except SegFaceError:
            raise
        except Exception as error:  # onnxruntime raises its own kinds for a bad file
            raise SegFaceExportedModelError(
                f"{str(self.path)!r} cannot be loaded with {self.runtime}: {error_summary(error)}"
            ) from error

    def forward(self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None = None, **kwargs):
        feed = {"pixel_values": np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())}
        if self.config.use_face_warp:
            if landmarks is None:
                raise SegFaceExportedModelError("this export aligns faces from 5 landmarks: pass `landmarks`.")
            feed["landmarks"] = np.ascontiguousarray(landmarks.detach().float().cpu().numpy())
        try:
            logits = self._run(feed)
        except Exception as error:
            raise SegFaceExportedModelError(
                f"{self.runtime} could not run {str(self.path)!r} on inputs of shape {tuple(pixel_values.shape)} "
                f"(an export takes the size it was exported at): {error_summary(error)}"
            ) from error
        return SemanticSegmenterOutput(logits=torch.from_numpy(logits).to(pixel_values.device))


__all__ = ["EXPORTED_RUNTIMES", "SegFaceExportedModel", "SegFaceExportedModelError"]
