"""LiteRT export: a SegFace model as a `.tflite` flatbuffer with litert-torch, run here in the LiteRT interpreter.

The model is converted with `litert_torch.convert` at batch size 1 (LiteRT programs have static shapes; the runner
here feeds a batch face by face). The LaPa models' face warp (`grid_sample` and the closed-form 3x3 inverse) converts
into the same graph.

For int8 the captured graph is quantized first with PT2E and litert-torch's `PT2EQuantizer` (symmetric per-channel
int8 weights, int8 activations calibrated on face crops) on the linear layers only (`QUANTIZED_MODULES`); the
convolutions stay float32. The converter then lowers the quantize / dequantize pairs to LiteRT's integer kernels
(`qdq_conversion_mode` STATIC). Why only the linear layers:

- the quantizer's global config would also annotate additions, including integer index arithmetic, whose observers
  cannot take integer tensors, so it is given module types;
- under a module-type filter its convolution annotator never matches (it asks the filter about the weight too, and
  a weight carries no module stack), so the files written before 2026-12-03, whose module list named the
  convolutions as well, had float32 convolutions all the same;
- with the convolutions quantized as well (the weights given their convolution's module stack), the learning-check
  model of docs/training.md fails the export's check (max |logit difference| 15.4, argmax agreement 87.6%), where
  the linear layers alone keep 99.7% of its pixels (docs/deploy.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegFaceError, SegFaceMissingDependencyError
from ..third_party_logging import LITERT_IMPORT_NOTICES, quiet_converter, stderr_without
from .onnx_export import SegFaceLogitsOnly, example_inputs, exportable_backbone_attention

QUANTIZED_MODULES = (nn.Linear,)  # see the module docstring for why the convolutions stay float


class SegFaceLiteRTError(SegFaceError, RuntimeError):
    """A LiteRT file could not be made or loaded."""


def require_litert():
    """The `litert_torch` converter; a one-line `SegFaceMissingDependencyError` saying how to install it otherwise."""
    try:
        with _quiet(), stderr_without(*LITERT_IMPORT_NOTICES):
            import litert_torch
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError as error:
        raise SegFaceMissingDependencyError(
            f"LiteRT export needs litert-torch and ai-edge-litert ({error.name} is missing): "
            "pip install 'segface-hf[litert]'"
        ) from error
    return litert_torch


def _quiet():
    """litert-torch prints a progress tree of its passes (on stdout) and TensorFlow's native logging on import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return quiet_converter("litert_torch", "stdout")


def quantize_for_litert(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                        calibration: Sequence[dict[str, np.ndarray]], names: Sequence[str]):  # fmt: skip
    """`module` captured and quantized with PT2E for LiteRT (see the module docstring), its activation ranges
    observed on the `calibration` faces; returns the converted graph and the quantization config for the converter."""
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    quantizer = pt2e_quantizer.PT2EQuantizer()
    for module_type in QUANTIZED_MODULES:
        # The quantizer looks a node's module types up in the node's module stack, which torch.export records as
        # qualified class names (earlier versions recorded the classes): give it both.
        quantizer.set_module_type(module_type, config)
        quantizer.set_module_type(f"{module_type.__module__}.{module_type.__qualname__}", config)
    prepared = prepare_pt2e(torch.export.export(module, inputs, strict=False).module(), quantizer)
    for face in calibration:
        prepared(*(torch.from_numpy(face[name]) for name in names))
    converted = convert_pt2e(prepared, fold_quantize=False)
    # The converter reads only whether the scheme is static or dynamic, from a quantizer's global config.
    scheme = pt2e_quantizer.PT2EQuantizer().set_global(config)
    return converted, quant_config.QuantConfig(pt2e_quantizer=scheme)


def export_litert(
    model: nn.Module,
    output_path: str | os.PathLike,
    image_size: tuple[int, int],
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
) -> list[str]:
    """Write `model` as a LiteRT flatbuffer taking one face at `image_size`.

    Args:
        model (`SegFaceForSemanticSegmentation`):
            The model, float32, in eval mode.
        output_path (`str` or `os.PathLike`):
            The `.tflite` file to write (its folder must exist).
        image_size (`tuple[int, int]`):
            The (height, width) the file takes.
        calibration (`list[dict[str, np.ndarray]]`, *optional*):
            Face inputs (as [`~segface_hf.release.export.face_inputs`] returns them) to calibrate int8 on; a float32
            file when not given.

    Returns:
        `list[str]`: the file's inputs, in order (`pixel_values`, and `landmarks` for face-warp models).
    """
    module = SegFaceLogitsOnly(model, bool(model.config.use_face_warp)).eval()
    inputs = example_inputs(model.config, 1, image_size)
    with exportable_backbone_attention(model):
        write_litert_module(module, inputs, output_path, calibration)
    return list(inputs)


def write_litert_module(module: nn.Module, inputs: dict[str, torch.Tensor], output_path: str | os.PathLike,
                        calibration: Sequence[dict[str, np.ndarray]] | None = None) -> None:  # fmt: skip
    """Convert any module that takes the tensors `inputs` (by position, in their order) to a `.tflite` file, int8
    calibrated on `calibration` (rows holding the same names) when given: the one conversion SegFace's export and the
    benchmark's peer share."""
    litert_torch = require_litert()
    if calibration is not None and not calibration:
        raise SegFaceLiteRTError("int8 LiteRT export needs at least one calibration face.")
    with torch.no_grad(), _quiet():
        if calibration is None:
            converted = litert_torch.convert(module, tuple(inputs.values()))
        else:
            graph, config = quantize_for_litert(module, tuple(inputs.values()), calibration, list(inputs))
            converted = litert_torch.convert(graph, tuple(inputs.values()), quant_config=config)
        converted.export(str(output_path))


def litert_runner(path: str | os.PathLike, threads: int | None = None):
    """`run(feed) -> logits` for a `.tflite` file, with the LiteRT interpreter (its XNNPACK delegate on the CPU); a
    batch is fed one face at a time, as the file takes batch size 1.

    Args:
        path (`str` or `os.PathLike`): The `.tflite` file.
        threads (`int`, *optional*): Interpreter threads.
    """
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such LiteRT file: {path}")
    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
    run_one = interpreter.get_signature_runner()
    (signature,) = interpreter.get_signature_list().values()
    (output_name,) = signature["outputs"]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        names = ["pixel_values"] + (["landmarks"] if "landmarks" in feed else [])
        batch = len(feed["pixel_values"])
        faces = [
            run_one(**{slot: np.ascontiguousarray(feed[name][index : index + 1], dtype=np.float32)
                       for slot, name in zip(signature["inputs"], names)})[output_name]
            for index in range(batch)
        ]  # fmt: skip
        return np.concatenate(faces)

    return run


__all__ = [
    "QUANTIZED_MODULES",
    "SegFaceLiteRTError",
    "export_litert",
    "litert_runner",
    "quantize_for_litert",
    "require_litert",
    "write_litert_module",
]
