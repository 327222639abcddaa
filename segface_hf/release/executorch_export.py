"""Write a SegFace model as an ExecuTorch program (`.pte`) with its work delegated to XNNPACK, and run such a file.

The model is captured with `torch.export` (non-strict) at batch size 1, lowered with `to_edge_transform_and_lower`
and the `XnnpackPartitioner` (the operators XNNPACK does not cover, such as the layer norms or the face warp's
`grid_sampler_2d` of the LaPa models, run as ExecuTorch's portable kernels inside the same program) and serialised
with `to_executorch`. The runner here feeds a batch face by face. What keeps the work inside XNNPACK, where it runs
on the thread pool, rather than on ExecuTorch's portable kernels, which are single-threaded reference code
(MobileNetV3 at 512, float32, 2 threads, standalone; docs/deploy.md has the profile):

- Before lowering, the products of parameters that the fast path computes on every call (the folded fusion
  matrices, see [`fold_parameter_products`]) are folded into constants: XNNPACK takes a linear layer only with
  constant weights (2.6 s per image before the folding, 0.39 s after).
- Static shapes: XNNPACK's bilinear resize takes no dynamic output size, so with a dynamic batch dimension the
  feature fusion's three upsamplings stayed outside (0.29 s per image at batch size 1).
- The decoder's attention is captured written out ([`decoder_attention_written_out`]): the decomposition of
  scaled-dot-product attention guards its softmax with comparisons and selects that XNNPACK lacks (0.21 s); the
  written-out attention multiplies with `bmm` and the last upscaling slices rather than indexes, so that no
  broadcasting or selecting copy is left outside either (0.17 s).

For int8 the captured graph is quantized first with PT2E: the XNNPACK quantizer's symmetric per-channel config (int8
weights per output channel, int8 activations) on the linear layers and the convolutions with at least
`SMALLEST_QUANTIZED_CONVOLUTION` weights (`QUANTIZED_OPERATORS`, [`quantized_node_filter`]), observers calibrated on
face crops, then `convert_pt2e`, so XNNPACK runs them as integer kernels.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegFaceError, SegFaceMissingDependencyError
from ..third_party_logging import EXECUTORCH_THREADPOOL_NOTICES, stderr_without
from .onnx_export import SegFaceLogitsOnly, example_inputs, exportable_backbone_attention

# Nodes from the first one of this module (inside `SegFaceLogitsOnly`) on stay float in int8 programs, as in the
# ONNX int8 export: the class tokens' MLP and the class-by-pixel products that make the logits, little compute that
# decides the argmax of every pixel.
FLOAT_OUTPUT_MODULE = "model.mask_decoder.output_hypernetwork_mlp"


class SegFaceExecuTorchError(SegFaceError, RuntimeError):
    """ExecuTorch is missing, or a program could not be made or loaded."""


def require_executorch():
    """The `executorch` package; a one-line `SegFaceMissingDependencyError` saying how to install it otherwise."""
    try:
        import executorch.runtime  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as error:
        raise SegFaceMissingDependencyError(
            f"ExecuTorch export needs executorch ({error.name} is missing): pip install 'segface-hf[executorch]'"
        ) from error
    import executorch

    return executorch


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _capture(module: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.export.ExportedProgram:
    return torch.export.export(module, tuple(inputs.values()), strict=False)


@contextlib.contextmanager
def decoder_attention_written_out(model: nn.Module):
    """Temporarily run the decoder's attention with the eager implementation (batched matrix products and a softmax,
    all of which XNNPACK runs) instead of scaled-dot-product attention, whose decomposition adds comparisons and
    selects on every score map that run on portable kernels. Both compute the same function."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


# Left to run in the program when folding constants: the positional encoding's sines and cosines, of its small
# per-row and per-column angle tables (`SegFacePositionalEmbedding.encode_separably`); folded, they would store the
# 128 x 128 x 256 encoding, 16 MB at 512 pixels, in the file.
UNFOLDED_OPERATORS = (torch.ops.aten.sin.default, torch.ops.aten.cos.default)


def fold_parameter_products(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` (changed in place) with its ATen computations on parameters and constants alone replaced by their
    results (ExecuTorch's `constant_prop_pass`), except for `UNFOLDED_OPERATORS` and everything outside ATen (the
    quantize / dequantize nodes of int8 programs, which XNNPACK must see around each int8 weight)."""
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    skipped = set(UNFOLDED_OPERATORS)
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "namespace", "aten") != "aten":
            skipped.add(node.target)
    return constant_prop_pass(program, custom_skip_targets=skipped)


# Convolutions with fewer weights stay float in int8 programs: the stem and the depthwise kernels, the layers most
# sensitive to rounding (few values per output channel, early in the network), which hold little of the size. The
# bound is dynamic ONNX int8's for storing weights in int8 (`release.export.SMALLEST_INT8_STORED_WEIGHT`), measured
# again here on the learning-check model of docs/training.md (256 pixels, 10 held-out faces): with every convolution
# quantized its program failed the export's check (max |logit difference| 24.9, argmax agreement 76.1%); with these
# left float it passes (1.01, 99.1%) and scores mean F1 23.19 against 22.91 in float32. MobileNetV3 at 512: 12.5 MB
# and the speed of the all-int8 program (137 against 139 ms; float32 168 ms), where linear layers alone give 20.7 MB.
SMALLEST_QUANTIZED_CONVOLUTION = 16384


def output_stage_filter(graph_module: torch.fx.GraphModule):
    """A quantizer filter that is false for the nodes from the first one in `FLOAT_OUTPUT_MODULE` to the end (the
    tracer records each node's module path in its `nn_module_stack`)."""
    float_nodes, reached = set(), False
    for node in graph_module.graph.nodes:
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        reached = reached or any(path.startswith(FLOAT_OUTPUT_MODULE) for path in paths)
        if reached:
            float_nodes.add(node)
    return lambda node: node not in float_nodes


def quantized_node_filter(graph_module: torch.fx.GraphModule):
    """The quantizer filter of int8 programs: false for the output stage ([`output_stage_filter`]) and for the
    convolutions whose stored weight has fewer than `SMALLEST_QUANTIZED_CONVOLUTION` values."""
    outside_output_stage = output_stage_filter(graph_module)
    small_convolutions = set()
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default:
            weight = node.args[1]
            if weight.op == "get_attr":
                value = functools.reduce(getattr, weight.target.split("."), graph_module)
                if value.numel() < SMALLEST_QUANTIZED_CONVOLUTION:
                    small_convolutions.add(node)
    return lambda node: outside_output_stage(node) and node not in small_convolutions


# The operators quantized in int8 programs (weights per output channel, inputs calibrated): the convolutions (those
# [`quantized_node_filter`] lets through), transposed convolutions and linear layers that hold nearly all the
# compute. The XNNPACK quantizer's global config would also
# quantize the elementwise adds, multiplications and concatenations; on the tiny test model that tripled the logit
# error (max |difference| 0.127 against 0.036, logits up to 1.6) and halved the argmax agreement, for little speed.
QUANTIZED_OPERATORS = ("aten.conv2d.default", "aten.conv_transpose2d.input", "aten.linear.default")


def quantize_pt2e(
    module: nn.Module, inputs: dict[str, torch.Tensor], calibration: Sequence[dict[str, np.ndarray]]
) -> nn.Module:
    """`module` with int8 weights and activations as the XNNPACK quantizer places them around
    `QUANTIZED_OPERATORS` (symmetric per-channel int8 weights, int8 activations), the activation ranges observed on
    the `calibration` faces; the output stage and the small convolutions ([`quantized_node_filter`]) stay float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = fold_parameter_products(_capture(module, inputs)).module()
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    for name in QUANTIZED_OPERATORS:
        packet, overload = name.removeprefix("aten.").split(".")
        quantizer.set_operator_type(getattr(getattr(torch.ops.aten, packet), overload), config)
    quantizer.set_filter_function(quantized_node_filter(captured))
    prepared = prepare_pt2e(captured, quantizer)
    for face in calibration:
        prepared(*(torch.from_numpy(face[name]) for name in inputs))
    return convert_pt2e(prepared)


def lower_to_xnnpack(model: nn.Module, image_size: tuple[int, int],
                     calibration: Sequence[dict[str, np.ndarray]] | None = None):  # fmt: skip
    """`model` captured at batch size 1 and `image_size`, int8-quantized when `calibration` faces are given, its
    parameter products folded and lowered to XNNPACK: the `EdgeProgramManager` that [`export_executorch`] writes."""
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if calibration is not None and not calibration:
        raise SegFaceExecuTorchError("int8 ExecuTorch export needs at least one calibration face.")
    module = SegFaceLogitsOnly(model, bool(model.config.use_face_warp)).eval()
    inputs = example_inputs(model.config, 1, image_size)
    with exportable_backbone_attention(model), decoder_attention_written_out(model), torch.no_grad(), _quiet():
        if calibration is not None:
            module = quantize_pt2e(module, inputs, calibration)
        program = fold_parameter_products(_capture(module, inputs))
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def export_executorch(
    model: nn.Module,
    output_path: str | os.PathLike,
    image_size: tuple[int, int],
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
) -> list[str]:
    """Write `model` as an XNNPACK-delegated ExecuTorch program taking one face at `image_size`.

    Args:
        model (`SegFaceForSemanticSegmentation`):
            The model, float32, in eval mode.
        output_path (`str` or `os.PathLike`):
            The `.pte` file to write (its folder must exist; [`~segface_hf.release.export.export_model`] writes into
            a staging folder and checks the file before moving it into place).
        image_size (`tuple[int, int]`):
            The (height, width) the program takes.
        calibration (`list[dict[str, np.ndarray]]`, *optional*):
            Face inputs (as [`~segface_hf.release.export.face_inputs`] returns them) to calibrate int8 on; a float32
            program when not given.

    Returns:
        `list[str]`: the program's inputs, in order (`pixel_values`, and `landmarks` for face-warp models).
    """
    program = lower_to_xnnpack(model, image_size, calibration)
    with _quiet():
        Path(output_path).write_bytes(program.to_executorch().buffer)
    return ["pixel_values"] + (["landmarks"] if model.config.use_face_warp else [])


def executorch_runner(path: str | os.PathLike, threads: int | None = None):
    """`run(feed) -> logits` for a `.pte` file, with the ExecuTorch runtime (XNNPACK on the CPU); a batch is fed one
    face at a time, as the program takes batch size 1.

    Args:
        path (`str` or `os.PathLike`): The `.pte` file.
        threads (`int`, *optional*): Threads of the runtime's (process-wide) XNNPACK thread pool.
    """
    require_executorch()
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ExecuTorch program: {path}")
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        with stderr_without(*EXECUTORCH_THREADPOOL_NOTICES):
            _unsafe_reset_threadpool(threads)
    # The runtime probes the CPU and sizes its thread pool when the first delegated method loads, and says so on stderr.
    with stderr_without(*EXECUTORCH_THREADPOOL_NOTICES):
        method = Runtime.get().load_program(path).load_method("forward")

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        names = ["pixel_values"] + (["landmarks"] if "landmarks" in feed else [])
        faces = []
        for index in range(len(feed["pixel_values"])):
            face = [torch.from_numpy(np.ascontiguousarray(feed[name][index : index + 1], dtype=np.float32))
                    for name in names]  # fmt: skip
            (logits,) = method.execute(face)
            faces.append(logits.numpy())
        return np.concatenate(faces)

    return run


__all__ = [
    "FLOAT_OUTPUT_MODULE",
    "QUANTIZED_OPERATORS",
    "SMALLEST_QUANTIZED_CONVOLUTION",
    "SegFaceExecuTorchError",
    "UNFOLDED_OPERATORS",
    "decoder_attention_written_out",
    "executorch_runner",
    "export_executorch",
    "fold_parameter_products",
    "lower_to_xnnpack",
    "output_stage_filter",
    "quantized_node_filter",
    "quantize_pt2e",
    "require_executorch",
]
