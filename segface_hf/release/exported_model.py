"""An exported SegFace file (`segface export`) wrapped to be called like the PyTorch model, so that code written for
[`SegFaceForSemanticSegmentation`] (evaluation, photo and video parsing) runs the export itself: the logits come from
the file's own runtime (onnxruntime, ExecuTorch or LiteRT, on the CPU), the config (labels, image size, face warp) from the
model folder it was exported from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from ..errors import SegFaceError, error_summary

# File endings and the `segface export` format whose runtime runs them (int8 and float16 files run the same way).
EXPORTED_FORMATS = {".onnx": "onnx", ".pte": "executorch", ".tflite": "litert"}


class SegFaceExportedModelError(SegFaceError, ValueError):
    """An exported file that cannot be loaded or run for the model it is paired with."""


class SegFaceExportedModel(nn.Module):
    """An exported file behind the forward signature of [`SegFaceForSemanticSegmentation`].

    Args:
        path (`str` or `os.PathLike`):
            The exported file (`.onnx`, `.pte` or `.tflite`).
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
        from .export import export_format, runner

        self.path = Path(path).expanduser()
        if self.path.suffix not in EXPORTED_FORMATS:
            raise SegFaceExportedModelError(
                f"{str(self.path)!r} is not an exported model this package can run; give a file ending in "
                f"{' or '.join(EXPORTED_FORMATS)} (written by segface export)."
            )
        if not self.path.is_file():
            raise SegFaceExportedModelError(f"the exported model {str(self.path)!r} does not exist.")
        self.config = config
        export = export_format(EXPORTED_FORMATS[self.path.suffix])
        self.runtime = export.runtime
        try:
            self._run = runner(self.path, export, threads=threads)
        except SegFaceError:
            raise
        except Exception as error:  # the runtimes raise their own kinds for a bad file
            raise SegFaceExportedModelError(
                f"{str(self.path)!r} cannot be loaded with {self.runtime}: {error_summary(error)}"
            ) from error

    @property
    def device(self) -> torch.device:
        """Where inputs go: the runtimes here run on the CPU."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The inputs' dtype: every export takes float32 pixels (int8 files quantize inside)."""
        return torch.float32

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
        if logits.shape[1] != self.config.num_labels:
            raise SegFaceExportedModelError(
                f"{str(self.path)!r} gives {logits.shape[1]} classes, but the model it is paired with has "
                f"{self.config.num_labels}: give the model folder it was exported from."
            )
        return SemanticSegmenterOutput(logits=torch.from_numpy(logits).to(pixel_values.device))


__all__ = ["EXPORTED_FORMATS", "SegFaceExportedModel", "SegFaceExportedModelError"]
