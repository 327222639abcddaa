"""Core ML export: a SegFace model as an ML program (`.mlpackage`) with coremltools, for iOS and macOS.

The model is captured with `torch.export` (non-strict) at batch size 1 and converted with `coremltools.convert`.
Two things differ from the other exports:

- The capture runs the model's reference path (`model.fast_path = False`): the fast path's CPU kernels contain
  matrix products that coremltools' converter cannot type (a rank it does not expect), and the reference path computes
  the same function (the fast path is tested against it); on Apple devices Core ML plans its own kernels anyway.
- The LaPa models' face warp uses `atanh`, which coremltools has no conversion for; it is decomposed into
  `(log1p(x) - log1p(-x)) / 2` before conversion. `grid_sample` and the closed-form 3x3 inverse convert as they are,
  so the warp stays inside the program.

Core ML runs only on Apple platforms, so here the written package is checked by its spec (inputs, outputs, their
shapes and the class count) and not run; [`~segface_hf.release.export.export_model`] says so in its result.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ..errors import SegFaceError, SegFaceMissingDependencyError
from ..third_party_logging import quiet_converter
from .onnx_export import SegFaceLogitsOnly, example_inputs, exportable_backbone_attention

# The oldest OS whose Core ML runs the ML programs written here (float32 or float16 compute, grid_sample).
MINIMUM_DEPLOYMENT_TARGET = "iOS17"
COMPUTE_PRECISIONS = ("float32", "float16")


class SegFaceCoreMLError(SegFaceError, RuntimeError):
    """A Core ML package could not be written, or its spec is not the model's."""


def require_coremltools():
    """The `coremltools` package; a one-line `SegFaceMissingDependencyError` saying how to install it otherwise."""
    try:
        with _quiet():
            import coremltools
    except ImportError as error:
        raise SegFaceMissingDependencyError(
            f"Core ML export needs coremltools ({error.name} is missing): pip install 'segface-hf[coreml]'"
        ) from error
    return coremltools


def _quiet():
    """coremltools logs version notices on import and prints progress bars (on stderr) while converting."""
    return quiet_converter("coremltools", "stderr")


def _atanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.log1p(x) - torch.log1p(-x))


@contextlib.contextmanager
def reference_path(model: nn.Module):
    """Temporarily run `model` on its reference path (see the module docstring)."""
    previous = model.fast_path
    model.fast_path = False
    try:
        yield
    finally:
        model.fast_path = previous


def export_coreml(
    model: nn.Module, output_path: str | os.PathLike, image_size: tuple[int, int], precision: str = "float32"
) -> list[str]:
    """Write `model` as a Core ML ML program taking one face at `image_size`.

    Args:
        model (`SegFaceForSemanticSegmentation`):
            The model, float32, in eval mode.
        output_path (`str` or `os.PathLike`):
            The `.mlpackage` folder to write (its parent must exist; it must not).
        image_size (`tuple[int, int]`):
            The (height, width) the program takes.
        precision (`str`, *optional*, defaults to `"float32"`):
            The program's compute precision, `float32` or `float16` (which the Neural Engine runs).

    Returns:
        `list[str]`: the program's inputs, in order (`pixel_values`, and `landmarks` for face-warp models).
    """
    if precision not in COMPUTE_PRECISIONS:
        raise SegFaceCoreMLError(f"precision must be one of {', '.join(COMPUTE_PRECISIONS)}, got {precision!r}.")
    ct = require_coremltools()
    module = SegFaceLogitsOnly(model, bool(model.config.use_face_warp)).eval()
    inputs = example_inputs(model.config, 1, image_size)
    with exportable_backbone_attention(model), reference_path(model), torch.no_grad(), _quiet():
        program = torch.export.export(module, tuple(inputs.values()), strict=False)
        program = program.run_decompositions(
            {torch.ops.aten.arctanh.default: _atanh, torch.ops.aten.atanh.default: _atanh}
        )
        package = ct.convert(
            program,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16,
            outputs=[ct.TensorType(name="logits")],
        )
        package.save(str(output_path))
    return list(inputs)


def check_coreml_spec(path: str | os.PathLike, config, image_size: tuple[int, int]) -> list[str]:
    """Check that the package at `path` takes the model's inputs and gives its logits, without running it.

    Returns:
        `list[str]`: what was checked, for the export's notes.

    Raises:
        [`SegFaceCoreMLError`]: an input or output with another name or shape.
    """
    ct = require_coremltools()
    with _quiet():
        spec = ct.utils.load_spec(str(path))
    height, width = image_size
    expected_inputs = {"pixel_values": [1, 3, height, width]}
    if config.use_face_warp:
        expected_inputs["landmarks"] = [1, 5, 2]
    expected_outputs = {"logits": [1, config.num_labels, height, width]}
    for kind, features, expected in (("inputs", spec.description.input, expected_inputs),
                                     ("outputs", spec.description.output, expected_outputs)):  # fmt: skip
        found = {feature.name: list(feature.type.multiArrayType.shape) for feature in features}
        if found != expected:
            raise SegFaceCoreMLError(f"the Core ML package's {kind} are {found}, expected {expected}.")
    shapes = {**expected_inputs, **expected_outputs}
    shapes = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items())
    return [f"Core ML spec checked ({shapes}); not run: Core ML runs on Apple platforms only"]


__all__ = [
    "COMPUTE_PRECISIONS",
    "MINIMUM_DEPLOYMENT_TARGET",
    "SegFaceCoreMLError",
    "check_coreml_spec",
    "export_coreml",
    "reference_path",
    "require_coremltools",
]
