"""Export a SegFace model for deployment in one of several formats, each checked in its own runtime before it is kept.

Formats (see `EXPORT_FORMATS`):

- `onnx`: float32 ONNX, as [`~segface_hf.release.onnx_export.export_onnx`] writes it (dynamic batch size).
- `onnx-fp16`: the same graph with float16 weights and arithmetic (onnxruntime's converter), float32 inputs and
  outputs; for GPUs and mobile NPUs (onnxruntime's CPU kernels run many float16 ops through casts, so it is not faster
  on a CPU).
- `onnx-int8`: 8-bit integers with onnxruntime's quantizer. `dynamic` (the default): int8 weights of the matrix
  products, activation ranges computed at run time (no calibration). `static`: QDQ format, per-channel int8 weights,
  uint8 activations whose ranges are calibrated on face crops, framed with the face detector the way the model expects
  (a folder of photos the caller gives, or the public-domain photos bundled with the Space); the recipes of
  `STATIC_INT8_RECIPES` are tried in turn and the first one that passes the check is kept.
- `executorch`: a float32 ExecuTorch program (`.pte`) delegated to XNNPACK, as
  [`~segface_hf.release.executorch_export.export_executorch`] writes it (batch size 1).
- `executorch-int8`: the same after PT2E quantization with the XNNPACK quantizer (symmetric, per-channel int8
  weights, int8 activations calibrated on the same face crops as `onnx-int8`).
- `litert` and `litert-int8`: a LiteRT flatbuffer (`.tflite`, batch size 1), float32 or int8 (PT2E with
  litert-torch's quantizer on the convolutions and linear layers, calibrated on the same face crops), as
  [`~segface_hf.release.litert_export.export_litert`] writes it.
- `coreml` and `coreml-fp16`: a Core ML ML program (`.mlpackage`, batch size 1) with float32 or float16 compute, as
  [`~segface_hf.release.coreml_export.export_coreml`] writes it.

Every export is written into a temporary folder next to its target, run in its runtime (onnxruntime, the ExecuTorch
runtime or the LiteRT interpreter) on held-out face crops (faces that calibration did not see) and compared with the
PyTorch model; it is moved into place only if its fidelity meets the format's thresholds, so a failed export leaves
nothing behind. Core ML packages cannot run off Apple platforms: their spec (inputs, outputs, shapes) is checked
instead, and the result's notes say that they were not run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegFaceError, error_summary
from .onnx_export import (
    MAX_ABS_LOGIT_DIFFERENCE,
    MIN_ARGMAX_AGREEMENT,
    LogitAgreement,
    argmax_agreement,
    example_inputs,
    export_onnx,
    load_onnx_session,
)

# The bundled public-domain photos, the default calibration and held-out set.
BUNDLED_PHOTOS = Path(__file__).resolve().parents[2] / "spaces" / "segface" / "examples"
# Every `HELD_OUT_EVERY`-th face crop (and at least one) is held out of calibration to check the export.
HELD_OUT_EVERY = 4
# Ties closer than this in PyTorch's logits are excused in the tie-aware agreement (float32 rounding, not the error of
# the export under test).
TIE_TOLERANCE = 2 * MAX_ABS_LOGIT_DIFFERENCE
QUANTIZATION_MODES = ("static", "dynamic")
# int8 weights use 7 bits of range: onnxruntime's x86 kernels for CPUs without VNNI (AVX2 only: AMD Zen 1-3, Intel
# before Ice Lake) add pairs of uint8 x int8 products in 16 bits, which saturate with full-range weights. Measured
# on this project's AVX2 machine (tiny model): max |logit difference| 0.75 -> 0.23 (static), 0.87 -> 0.08 (dynamic).
REDUCE_RANGE = True

# Convolution weights with fewer values stay float32 in dynamic int8 files: the stem and the depthwise kernels are the
# layers most sensitive to rounding (few values per channel, early in the network) and hold little of the size.
# Measured on the learning-check model (docs/training.md), alone on the float graph: all convolutions in int8 change
# 2.4% of the pixels' argmax; those with at least 16,384 values 0.33%, and they are 97% of the convolutions' bytes.
SMALLEST_INT8_STORED_WEIGHT = 16384


@dataclass(frozen=True)
class SegFaceStaticInt8Recipe:
    """Which nodes of an ONNX graph static QDQ quantization turns into int8 (the output stage, `output_stage_nodes`,
    always stays float).

    Args:
        name (`str`): how reports name it.
        op_types (`tuple[str, ...]`, *optional*): the operator types that get QDQ nodes; every type onnxruntime's
            quantizer handles when `None`.
        float_op_types (`tuple[str, ...]`): operator types left float.
        float_convolutions_below (`int`): convolutions whose weights have fewer values stay float (0: none).
    """

    name: str
    op_types: tuple[str, ...] | None
    float_op_types: tuple[str, ...]
    float_convolutions_below: int


# Tried in this order by `export_model` until one passes the check. Measured on the trained learning-check model
# (docs/training.md; float32 mean F1 22.91) and at 512 pixels on MobileNetV3 (onnxruntime, 2 threads):
# - every operator in QDQ: refused (max |logit difference| 16.4 against a limit of 5.1); 137 ms;
# - the same with the small convolutions float: refused (5.34, 95.4% of the pixels);
# - the first recipe, also the softmaxes float: 4.33, 95.8%; F1 22.99, 98.50% of the test pixels; 139 ms;
# - the second recipe: 3.65, 96.3%; F1 22.80, 98.74%; 165 ms (only its operator types: refused, 29.1, 74.9%).
# A softmax in QDQ gets the fixed output range [0, 1], a step of 1/255, which rounds most probabilities of an
# attention over 16,384 image tokens to zero; left float, its output is quantized as the next product's input, with
# the range calibration saw.
STATIC_INT8_RECIPES = (
    SegFaceStaticInt8Recipe("every operator but the softmaxes", None, ("Softmax",), SMALLEST_INT8_STORED_WEIGHT),
    SegFaceStaticInt8Recipe("convolutions and matrix products", ("Conv", "MatMul", "Gemm"), (),
                            SMALLEST_INT8_STORED_WEIGHT),  # fmt: skip
)


class SegFaceExportError(SegFaceError, ValueError):
    """An export that cannot be made as asked (unsupported format, no faces to calibrate on) or that does not
    reproduce the PyTorch model closely enough."""


@dataclass(frozen=True)
class SegFaceExportFormat:
    """One export format and what its check requires.

    Args:
        name (`str`): the `--format` value.
        suffix (`str`): the file name ending.
        runtime (`str`): the runtime it is checked (and meant to be run) with.
        precision (`str`): `float32`, `float16` or `int8`.
        max_relative_difference (`float`): largest allowed max |logit difference|, as a fraction of the largest
            |logit| of PyTorch on the same faces (the float32 format uses the absolute limit of `onnx_export`).
        min_argmax_agreement (`float`): smallest allowed fraction of pixels whose class is PyTorch's (ties closer than
            `TIE_TOLERANCE` excused).
        hub_path (`str`): where [`~segface_hf.release.publishing`] puts it in a model repository.
        dynamic_batch (`bool`): whether the file takes any batch size (otherwise batch size 1).
    """

    name: str
    suffix: str
    runtime: str
    precision: str
    max_relative_difference: float | None
    min_argmax_agreement: float
    hub_path: str
    dynamic_batch: bool = True

    def max_difference(self, max_abs_logit: float) -> float:
        if self.max_relative_difference is None:
            return MAX_ABS_LOGIT_DIFFERENCE
        return self.max_relative_difference * max_abs_logit


EXPORT_FORMATS: dict[str, SegFaceExportFormat] = {
    "onnx": SegFaceExportFormat("onnx", ".onnx", "onnxruntime", "float32", None, MIN_ARGMAX_AGREEMENT,
                                "onnx/model.onnx"),  # fmt: skip
    "onnx-fp16": SegFaceExportFormat("onnx-fp16", ".onnx", "onnxruntime", "float16", 0.02, 0.99,
                                     "onnx/model_fp16.onnx"),  # fmt: skip
    "onnx-int8": SegFaceExportFormat("onnx-int8", ".onnx", "onnxruntime", "int8", 0.25, 0.90,
                                     "onnx/model_quantized.onnx"),  # fmt: skip
    "executorch": SegFaceExportFormat("executorch", ".pte", "executorch", "float32", None, MIN_ARGMAX_AGREEMENT,
                                      "executorch/model.pte", dynamic_batch=False),  # fmt: skip
    "executorch-int8": SegFaceExportFormat("executorch-int8", ".pte", "executorch", "int8", 0.25, 0.90,
                                           "executorch/model_int8.pte", dynamic_batch=False),  # fmt: skip
    "litert": SegFaceExportFormat("litert", ".tflite", "litert", "float32", None, MIN_ARGMAX_AGREEMENT,
                                  "litert/model.tflite", dynamic_batch=False),  # fmt: skip
    "litert-int8": SegFaceExportFormat("litert-int8", ".tflite", "litert", "int8", 0.25, 0.90,
                                       "litert/model_int8.tflite", dynamic_batch=False),  # fmt: skip
    # Core ML runs on Apple platforms only: these are checked by their spec, not run (see coreml_export).
    "coreml": SegFaceExportFormat("coreml", ".mlpackage", "coreml", "float32", None, MIN_ARGMAX_AGREEMENT,
                                  "coreml/model.mlpackage", dynamic_batch=False),  # fmt: skip
    "coreml-fp16": SegFaceExportFormat("coreml-fp16", ".mlpackage", "coreml", "float16", 0.02, 0.99,
                                       "coreml/model_fp16.mlpackage", dynamic_batch=False),  # fmt: skip
}
# The runtimes this machine cannot run: their exports are checked by what the file declares, not by running it.
UNRUNNABLE_RUNTIMES = ("coreml",)
# The int8 formats whose quantization can be `dynamic` (the others are calibrated, `static`, only), and dynamic by
# default: for MobileNetV3 in onnxruntime on a CPU it is faster than static QDQ and as small, and it passed its check
# on the trained learning-check model where static QDQ did not (docs/deploy.md, "Which int8"). Static QDQ stays for
# the runtimes that take QDQ graphs (XNNPACK, NNAPI, QNN).
DYNAMIC_INT8_FORMATS = ("onnx-int8",)


def export_format(name: str) -> SegFaceExportFormat:
    """The format called `name`; a one-line `SegFaceExportError` naming the supported ones otherwise."""
    if name not in EXPORT_FORMATS:
        raise SegFaceExportError(f"unsupported export format {name!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    return EXPORT_FORMATS[name]


@dataclass
class SegFaceExportFidelity(LogitAgreement):
    """How an export's outputs compare with PyTorch's on held-out face crops: [`LogitAgreement`] (ties within
    `TIE_TOLERANCE` excused) plus the number of faces compared, `faces`, a keyword argument."""

    faces: int = field(kw_only=True)

    def __str__(self) -> str:
        return f"{self.faces} held-out faces: {self.describe()}"


@dataclass
class SegFaceExportResult:
    """What [`export_model`] wrote and measured.

    Args:
        path (`Path`): the exported file.
        format (`str`): its format name.
        size_bytes (`int`): its size.
        fidelity ([`SegFaceExportFidelity`], *optional*): the check against PyTorch (`None` when skipped).
        latency_ms (`float`, *optional*): median time of one face in the runtime, after a warm-up call.
        calibration_faces (`int`): faces the int8 ranges were calibrated on (0 for other formats).
        input_names (`list[str]`): graph inputs, in order.
        image_size (`tuple[int, int]`): the (height, width) the file takes.
    """

    path: Path
    format: str
    size_bytes: int
    fidelity: SegFaceExportFidelity | None
    latency_ms: float | None
    calibration_faces: int
    input_names: list[str]
    image_size: tuple[int, int]
    quantization: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["path"] = str(self.path)
        if self.fidelity is not None:
            record["fidelity"]["passed"] = self.fidelity.passed
        return record

    def __str__(self) -> str:
        height, width = self.image_size
        kind = self.format + (f" ({self.quantization})" if self.quantization else "")
        text = (
            f"Exported SegFace to {self.path} as {kind}, {self.size_bytes / 2**20:.1f} MiB: inputs "
            f"{', '.join(self.input_names)} at {height}x{width}, "
            + ("dynamic batch size" if EXPORT_FORMATS[self.format].dynamic_batch else "batch size 1")
        )
        if self.calibration_faces:
            text += f"; calibrated on {self.calibration_faces} faces"
        if self.fidelity is not None:
            text += f"; {EXPORT_FORMATS[self.format].runtime} against PyTorch on {self.fidelity}"
        if self.latency_ms is not None:
            text += f"; {self.latency_ms:.1f} ms per face"
        return "; ".join([text, *self.notes])


# ------------------------------------------------------------------------------------------------ face crops


def face_inputs(
    model_config,
    folder: str | os.PathLike | None,
    image_size: tuple[int, int],
    processor=None,
    detector=None,
) -> list[dict[str, np.ndarray]]:
    """The model inputs of every face in a folder of photos, framed as the model expects.

    Each photo goes through the face detector; each face is cut with the framing of the model's training data
    ([`~segface_hf.inference.faces.framing_for`]) and prepared by the image processor at `image_size` (with its 5
    landmarks for face-warp models).

    Args:
        model_config (`SegFaceConfig`): the model's config (framing, landmarks).
        folder (`str` or `os.PathLike`, *optional*): photos (searched recursively); the bundled public-domain photos
            when not given.
        image_size (`tuple[int, int]`): the (height, width) of the inputs.
        processor (`SegFaceImageProcessor`, *optional*): normalisation; the original's (ImageNet) when not given.
        detector (`SegFaceFaceDetector`, *optional*): a detector to reuse.

    Returns:
        `list[dict[str, np.ndarray]]`: one `{"pixel_values": (1, 3, H, W)[, "landmarks": (1, 5, 2)]}` per face, in
        the order of the photos' paths and, within a photo, largest face first.
    """
    from ..image_io import SegFaceImageError, load_image, to_rgb
    from ..image_processing_segface import SegFaceImageProcessor
    from ..inference.faces import SegFaceFaceDetector, face_crops, framing_for
    from ..inference.predict import collect_inputs

    source = Path(folder).expanduser() if folder is not None else BUNDLED_PHOTOS
    if not source.is_dir():
        raise SegFaceExportError(f"the calibration folder {str(source)!r} does not exist or is not a folder.")
    photos, _ = collect_inputs([str(source)])
    if not photos:
        raise SegFaceExportError(f"the calibration folder {str(source)!r} holds no images.")
    processor = processor if processor is not None else SegFaceImageProcessor()
    detector = detector if detector is not None else SegFaceFaceDetector()
    height, width = image_size
    framing = framing_for(model_config)
    inputs = []
    for photo in photos:
        try:
            image = to_rgb(load_image(photo.path))
        except SegFaceImageError:
            continue  # an unreadable file is not a face
        crops = face_crops(image, detector(image), framing, (width, height))
        for crop in crops:
            kwargs = {"landmarks": [crop.landmarks]} if model_config.use_face_warp else {}
            prepared = processor([crop.image], size={"height": height, "width": width}, return_tensors="np", **kwargs)
            face = {"pixel_values": np.ascontiguousarray(prepared["pixel_values"], dtype=np.float32)}
            if model_config.use_face_warp:
                face["landmarks"] = np.ascontiguousarray(prepared["landmarks"], dtype=np.float32)
            inputs.append(face)
    if not inputs:
        raise SegFaceExportError(
            f"no faces found in the {len(photos)} images of {str(source)!r}; give a folder of photos with faces."
        )
    return inputs


def split_held_out(faces: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """`(calibration, held_out)`: every `HELD_OUT_EVERY`-th face (counting from the last, at least one) is held out;
    with a single face it serves both."""
    held = {len(faces) - 1 - i for i in range(0, len(faces), HELD_OUT_EVERY)}
    calibration = [face for i, face in enumerate(faces) if i not in held]
    held_out = [face for i, face in enumerate(faces) if i in held]
    return (calibration or list(held_out)), held_out


def _batched(faces: Sequence[dict]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([face[name] for face in faces]) for name in faces[0]}


# ------------------------------------------------------------------------------------------------ checking


def pytorch_logits(model: nn.Module, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The model's float32 logits for numpy inputs, on the model's device."""
    device = next(model.parameters()).device
    with torch.no_grad():
        inputs = {name: torch.from_numpy(array).to(device) for name, array in feed.items()}
        return model(**inputs).logits.float().cpu().numpy()


def compare_logits(
    candidate: Sequence[np.ndarray], reference: Sequence[np.ndarray], export: SegFaceExportFormat
) -> SegFaceExportFidelity:
    """Fidelity of `candidate` logits to PyTorch's `reference` (lists of `(batch, classes, H, W)` arrays) against
    `export`'s thresholds."""
    pairs = list(zip(candidate, reference))
    for got, expected in pairs:
        if got.shape != expected.shape:
            raise SegFaceExportError(f"the export returned logits of shape {got.shape}, PyTorch {expected.shape}.")
    largest = max(float(np.abs(got - expected).max()) for got, expected in pairs)
    scale = max(float(np.abs(expected).max()) for _, expected in pairs)
    agreement, strict = argmax_agreement(pairs, tie_tolerance=TIE_TOLERANCE)
    return SegFaceExportFidelity(
        faces=sum(expected.shape[0] for _, expected in pairs),
        max_abs_difference=largest,
        max_abs_logit=scale,
        argmax_agreement=agreement,
        strict_argmax_agreement=strict,
        max_allowed_difference=export.max_difference(scale),
        min_allowed_agreement=export.min_argmax_agreement,
    )


def check_export(run, model: nn.Module, held_out: Sequence[dict], export: SegFaceExportFormat) -> SegFaceExportFidelity:
    """Run an export (`run(feed) -> logits`) on the held-out faces, all in one batch and the first alone (two batch
    sizes, for the dynamic batch dimension), and compare with PyTorch."""
    batches = [_batched(held_out)] + ([held_out[0]] if len(held_out) > 1 else [])
    expected = [pytorch_logits(model, feed) for feed in batches]
    fidelity = compare_logits([run(feed) for feed in batches], expected, export)
    fidelity.faces = len(held_out)
    return fidelity


def median_latency_ms(run, feed: dict[str, np.ndarray], repeats: int = 3) -> float:
    """Median wall time of `run(feed)` after one warm-up call, in milliseconds."""
    run(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def onnx_runner(path: str | os.PathLike, threads: int | None = None):
    """`run(feed) -> logits` for an ONNX file, with onnxruntime on the CPU."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # not the float16 graph's notes on ops it cannot constant-fold
    session = load_onnx_session(path, threads=threads)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], feed)[0]

    return run


# ------------------------------------------------------------------------------------------------ converting


def convert_to_float16(source: Path, target: Path) -> None:
    """Write `source`'s graph with float16 weights and arithmetic, keeping float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True, disable_shape_infer=False)
    onnx.save(graph, str(target))


# Nodes from the first one of this module on (the class tokens' MLP and the class-by-pixel products that make the
# logits) stay in float in static int8: little compute, but they decide the argmax (on the tiny test model, strict
# argmax agreement 0.81 with them quantized, 0.94 without).
FLOAT_OUTPUT_SCOPE = "mask_decoder.output_hypernetwork_mlp"


def output_stage_nodes(path: str | os.PathLike) -> list[str]:
    """Names of the exported graph's nodes from the first one in `FLOAT_OUTPUT_SCOPE` to the end (the exporter
    records each node's module in its `namespace` metadata)."""
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    for index, node in enumerate(nodes):
        scope = {entry.key: entry.value for entry in node.metadata_props}.get("namespace", "")
        if FLOAT_OUTPUT_SCOPE in scope:
            return [later.name for later in nodes[index:]]
    return []


def constant_nodes(path: str | os.PathLike, graph=None) -> list[str]:
    """Names of the nodes of an ONNX graph whose inputs are all initializers or outputs of such nodes: what the graph
    computes from constants alone (and onnxruntime folds when it loads the file). Pass the file's `graph`
    (`onnx.GraphProto`) when it is already loaded."""
    import onnx

    if graph is None:
        graph = onnx.load(str(path), load_external_data=False).graph
    known = {initializer.name for initializer in graph.initializer}
    names = []
    for node in graph.node:  # in topological order
        if all(not name or name in known for name in node.input):
            known.update(node.output)
            names.append(node.name)
    return names


def fold_weight_products(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Write `source`'s graph to `target` with what it computes from its stored tensors alone replaced by the results,
    except where a result is larger than the largest tensor it is computed from (onnxruntime folds those in memory
    when it loads the file).

    The fast path computes some weights on every call (the feature fusion's folded matrices, the transposed
    convolutions' weights as matrices): folding them stores each weight once, in the form the quantizer sees and
    quantizes. Growing results are left in: the positional encoding is 16 MB of sines and cosines at 512 pixels,
    computed from a 2 x 128 matrix and a small grid.
    """
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in graph.initializer}
    names = set(constant_nodes(source, graph))
    constant = [node for node in graph.node if node.name in names and node.domain in ("", "ai.onnx")
                and not any(attribute.type == onnx.AttributeProto.GRAPH for attribute in node.attribute)]  # fmt: skip
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    types = {info.name: info.type.tensor_type.elem_type for info in inferred}
    available, typed = set(sizes), []
    for node in constant:  # nodes whose results have no inferred type are left to onnxruntime, with what follows
        if all(not name or name in available for name in node.input) and all(types.get(n) for n in node.output if n):
            typed.append(node)
            available.update(node.output)
    constant = typed
    if not constant:
        onnx.save(model, str(target))
        return
    outputs = [name for node in constant for name in node.output if name]
    evaluation = helper.make_model(
        helper.make_graph(constant, "constants", [], [helper.make_tensor_value_info(name, types[name], None)
                                                      for name in outputs], list(graph.initializer)),
        opset_imports=model.opset_import,
    )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # unused initializers of the whole graph are expected here
    session = onnxruntime.InferenceSession(evaluation.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip(outputs, session.run(outputs, {})))
    folded = set()
    for node in constant:  # in topological order
        inputs = [name for name in node.input if name]
        if not all(name in sizes for name in inputs):
            continue  # computed from a result left in
        results = {name: values[name].size for name in node.output if name}
        if max(results.values()) <= max((sizes[name] for name in inputs), default=0):
            folded.add(node.name)
            sizes.update(results)
    kept = [node for node in graph.node if node.name not in folded]
    needed = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    initializers += [numpy_helper.from_array(values[name], name)
                     for node in constant if node.name in folded for name in node.output if name in needed]  # fmt: skip
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(target))


def strip_node_metadata(path: str | os.PathLike) -> None:
    """Drop the exporter's per-node metadata (module paths and source locations) from an ONNX file in place: about
    1 MB on SegFace's graphs, which onnxruntime does not read."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def store_convolution_weights_in_int8(path: str | os.PathLike, min_weights: int = SMALLEST_INT8_STORED_WEIGHT) -> int:
    """Store the float32 weights of an ONNX graph's `Conv` and `ConvTranspose` nodes with at least `min_weights`
    values in int8, in place: symmetric, one scale per output channel, turned back into float by a `Cast` and a `Mul`
    that onnxruntime folds when it loads the file, so the convolutions still compute in float32 at the float graph's
    speed. Returns how many weights it stored so.

    This is what dynamic int8 leaves large (it quantizes the matrix products only): MobileNetV3 at 512 goes from
    15.9 MB to 7.8 MB at the same speed. `DequantizeLinear` would say the same more briefly, but onnxruntime keeps
    those nodes unfolded for its QDQ fusions, and convolutions whose weights are computed on every call ran slower
    (measured: 122 ms against 104 ms).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    stored = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    axes = {}  # weight name -> its output-channel axis
    for node in graph.node:
        weight = node.input[1] if node.op_type in ("Conv", "ConvTranspose") else None
        float_weight = weight in stored and stored[weight].data_type == onnx.TensorProto.FLOAT
        if float_weight and consumers[weight] == {node.op_type} and np.prod(stored[weight].dims) >= min_weights:
            axes[weight] = 0 if node.op_type == "Conv" else 1  # ConvTranspose weights are (in, out / groups, ...)
    taken = set(stored) | {name for node in graph.node for name in (node.name, *node.input, *node.output)}
    taken |= {value.name for value in (*graph.input, *graph.output)}

    def new_name(base: str) -> str:
        name, count = base, 0
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        return name

    dequantizing = []
    for weight, axis in axes.items():
        values = numpy_helper.to_array(stored[weight])
        shape = [1] * values.ndim
        shape[axis] = -1
        largest = np.abs(values).max(axis=tuple(i for i in range(values.ndim) if i != axis)).reshape(shape)
        scale = np.where(largest > 0, largest / 127, 1).astype(np.float32)
        integers, scales, floats = new_name(weight + "_int8"), new_name(weight + "_scale"), new_name(weight + "_float")
        graph.initializer.remove(stored[weight])
        graph.initializer.extend([numpy_helper.from_array(np.rint(values / scale).astype(np.int8), integers),
                                  numpy_helper.from_array(scale, scales)])  # fmt: skip
        dequantizing += [
            helper.make_node("Cast", [integers], [floats], new_name(weight + "_cast"), to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [floats, scales], [weight], new_name(weight + "_dequantize")),
        ]
    for node in reversed(dequantizing):
        graph.node.insert(0, node)
    onnx.save(model, str(path))
    return len(axes)


def float_nodes(path: str | os.PathLike, recipe: SegFaceStaticInt8Recipe) -> list[str]:
    """Names of the nodes of an ONNX graph that `recipe` leaves float: its `float_op_types`, and the `Conv` nodes
    whose stored weights have fewer than `recipe.float_convolutions_below` values."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in graph.initializer}

    def small(node) -> bool:
        if node.op_type != "Conv":
            return False
        return node.input[1] in sizes and sizes[node.input[1]] < recipe.float_convolutions_below

    return [node.name for node in graph.node if node.op_type in recipe.float_op_types or small(node)]


def quantize_to_int8(
    source: Path,
    target: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    mode: str,
    recipe: SegFaceStaticInt8Recipe = STATIC_INT8_RECIPES[0],
) -> None:
    """Write `source`'s graph quantized to int8: `static` QDQ with per-channel int8 weights and uint8 activations
    calibrated (min/max) on `calibration`, of the nodes `recipe` names (the output stage, `output_stage_nodes`, stays
    float), or `dynamic` int8 weights of the matrix products (the convolutions' weights stored in int8 and computed
    in float, [`store_convolution_weights_in_int8`]). Weight products are folded first ([`fold_weight_products`]);
    what is left computed from constants stays float and is folded by onnxruntime when it loads the file."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded = target.with_name(target.stem + ".folded.onnx")
    prepared = target.with_name(target.stem + ".prepared.onnx")
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer warns for every rank-1 weight it leaves in float
    try:
        fold_weight_products(source, folded)
        # Shape inference only: the pre-processing's graph optimizer would fold the positional encoding into a
        # stored tensor (16 MB of float32 at 512 pixels; 4.2 MB as uint8 in static int8: the MobileNetV3 file was
        # 12.0 MB, and is 8.1 MB at the same speed with the products folded above and the metadata dropped below).
        quant_pre_process(str(folded), str(prepared), skip_optimization=True)
        computed = constant_nodes(prepared)
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=computed,
                             reduce_range=REDUCE_RANGE)  # fmt: skip
            store_convolution_weights_in_int8(target)
        else:

            class FaceReader(CalibrationDataReader):
                def __init__(self):
                    self.faces = iter(calibration)

                def get_next(self):
                    return next(self.faces, None)

            reader = FaceReader()
            excluded = output_stage_nodes(source) + computed + float_nodes(prepared, recipe)
            op_types = list(recipe.op_types) if recipe.op_types else None
            quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types, nodes_to_exclude=excluded,
                            reduce_range=REDUCE_RANGE)  # fmt: skip
        strip_node_metadata(target)
    finally:
        logger.setLevel(level)
        for scratch in (folded, prepared):
            if scratch.exists():
                scratch.unlink()


def write_onnx(model: nn.Module, target: Path, export: SegFaceExportFormat, image_size: tuple[int, int],
               calibration: Sequence[dict[str, np.ndarray]], quantization: str, opset_version: int,
               verify: bool, recipe: SegFaceStaticInt8Recipe | None = None) -> list[str]:  # fmt: skip
    """Write `model` as `export` (an ONNX format) at `target`: the float32 graph (checked on random inputs when
    `verify`), then converted to float16 or quantized to int8 (static with `recipe`) next to it. The float32 graph
    is kept beside `target` for the next call into the same folder, which quantizes it again instead of exporting
    it again. Returns the graph's input names."""
    float_path = target.with_name("model_float32.onnx")
    if export.precision == "float32" or not float_path.exists():
        export_onnx(model, float_path, image_size=image_size, opset_version=opset_version, verify=verify,
                    overwrite=True)  # fmt: skip
    if export.precision == "float32":
        os.replace(float_path, target)
    elif export.precision == "float16":
        convert_to_float16(float_path, target)
    else:
        quantize_to_int8(float_path, target, calibration, quantization, recipe or STATIC_INT8_RECIPES[0])
    return list(example_inputs(model.config, 1, image_size))


def write_executorch(model: nn.Module, target: Path, export: SegFaceExportFormat, image_size: tuple[int, int],
                     calibration: Sequence[dict[str, np.ndarray]]) -> list[str]:  # fmt: skip
    """Write `model` as `export` (an ExecuTorch format) at `target`, int8 calibrated on `calibration`. Returns the
    program's input names."""
    from .executorch_export import export_executorch

    return export_executorch(model, target, image_size, calibration=calibration if export.precision == "int8" else None)


def write_litert(model: nn.Module, target: Path, export: SegFaceExportFormat, image_size: tuple[int, int],
                 calibration: Sequence[dict[str, np.ndarray]]) -> list[str]:  # fmt: skip
    """Write `model` as `export` (a LiteRT format) at `target`, int8 calibrated on `calibration`. Returns the file's
    input names."""
    from .litert_export import export_litert

    return export_litert(model, target, image_size, calibration=calibration if export.precision == "int8" else None)


def write_coreml(model: nn.Module, target: Path, export: SegFaceExportFormat, image_size: tuple[int, int]) -> list[str]:
    """Write `model` as `export` (a Core ML format) at `target`. Returns the program's input names."""
    from .coreml_export import export_coreml

    return export_coreml(model, target, image_size, precision=export.precision)


def write_export(model: nn.Module, target: Path, export: SegFaceExportFormat, image_size: tuple[int, int],
                 calibration: Sequence[dict[str, np.ndarray]], quantization: str, opset_version: int, verify: bool,
                 recipe: SegFaceStaticInt8Recipe | None = None) -> list[str]:  # fmt: skip
    """Write `model` as `export` at `target` with its format's writer; returns the file's input names."""
    if export.runtime == "executorch":
        return write_executorch(model, target, export, image_size, calibration)
    if export.runtime == "litert":
        return write_litert(model, target, export, image_size, calibration)
    if export.runtime == "coreml":
        return write_coreml(model, target, export, image_size)
    return write_onnx(model, target, export, image_size, calibration, quantization, opset_version, verify, recipe)


def runner(path: str | os.PathLike, export: SegFaceExportFormat, threads: int | None = None):
    """`run(feed) -> logits` for a file of `export`'s format, in its runtime."""
    if export.runtime in UNRUNNABLE_RUNTIMES:
        raise SegFaceExportError(f"{export.runtime} files cannot be run on this platform.")
    if export.runtime == "executorch":
        from .executorch_export import executorch_runner

        return executorch_runner(path, threads=threads)
    if export.runtime == "litert":
        from .litert_export import litert_runner

        return litert_runner(path, threads=threads)
    return onnx_runner(path, threads=threads)


def default_quantization(export: SegFaceExportFormat) -> str:
    """The quantization mode `export` gets when none is asked for: `dynamic` where it is offered
    (`DYNAMIC_INT8_FORMATS`), otherwise `static`."""
    return "dynamic" if export.name in DYNAMIC_INT8_FORMATS else "static"


def check_quantization(export: SegFaceExportFormat, quantization: str | None, option: str = "quantization") -> str:
    """The quantization mode to use for `export` (its default for `None`), or a one-line `SegFaceExportError` for one
    that is unknown or that `export` does not offer (`option` names the setting in the message)."""
    if quantization is None:
        return default_quantization(export)
    if quantization not in QUANTIZATION_MODES:
        raise SegFaceExportError(f"{option} must be one of {', '.join(QUANTIZATION_MODES)}, got {quantization!r}.")
    if quantization == "dynamic" and export.precision == "int8" and export.name not in DYNAMIC_INT8_FORMATS:
        raise SegFaceExportError(f"{export.name} is calibrated (static) only; {option} dynamic is for "
                                 f"{', '.join(DYNAMIC_INT8_FORMATS)}.")  # fmt: skip
    return quantization


# ------------------------------------------------------------------------------------------------ export


def check_output(output_path: str | os.PathLike, export: SegFaceExportFormat, overwrite: bool) -> Path:
    """The output path, checked: the format's suffix, not a folder, not an existing file unless `overwrite`."""
    output = Path(output_path).expanduser()
    if output.suffix != export.suffix:
        raise SegFaceExportError(f"--output must name a {export.suffix} file for {export.name}, got {str(output)!r}.")
    if output.is_dir() and export.suffix != ".mlpackage":  # a Core ML package is a folder
        raise SegFaceExportError(f"--output {output} is a folder; name the {export.suffix} file to write.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
    return output


def export_model(
    model: nn.Module,
    output_path: str | os.PathLike,
    format: str = "onnx",
    calibration: str | os.PathLike | None = None,
    processor=None,
    image_size: int | tuple[int, int] | None = None,
    quantization: str | None = None,
    opset_version: int = 20,
    verify: bool = True,
    overwrite: bool = False,
    threads: int | None = None,
    detector=None,
    faces: Sequence[dict[str, np.ndarray]] | None = None,
) -> SegFaceExportResult:
    """Export a SegFace model in `format`, check it in its runtime against PyTorch and move it into place.

    Args:
        model (`SegFaceForSemanticSegmentation`):
            The model, float32.
        output_path (`str` or `os.PathLike`):
            The file to write (its folder is created if needed).
        format (`str`, *optional*, defaults to `"onnx"`):
            One of `EXPORT_FORMATS`.
        calibration (`str` or `os.PathLike`, *optional*):
            A folder of photos with faces: int8 ranges are calibrated on most of its faces, and every export is
            checked on the others. Defaults to the bundled public-domain photos.
        processor (`SegFaceImageProcessor`, *optional*):
            The model's image processor (normalisation of the face crops); the original's when not given.
        image_size (`int` or `tuple[int, int]`, *optional*):
            The (height, width) the file takes; the model's `config.image_size` by default.
        quantization (`str`, *optional*):
            For `onnx-int8`: `dynamic` (the default: int8 weights, activations quantized at run time) or `static`
            (calibrated QDQ); the other int8 formats are `static` only. See [`default_quantization`].
        opset_version (`int`, *optional*, defaults to 20):
            ONNX opset.
        verify (`bool`, *optional*, defaults to `True`):
            Whether to check the export against PyTorch before keeping it (and time it). Without it no faces are
            needed except to calibrate int8.
        overwrite (`bool`, *optional*, defaults to `False`):
            Whether to replace an existing file.
        threads (`int`, *optional*):
            Runtime threads for the check and the timing.
        detector (`SegFaceFaceDetector`, *optional*):
            A face detector to reuse.
        faces (`list[dict[str, np.ndarray]]`, *optional*):
            Face inputs as [`face_inputs`] returns them, instead of detecting the faces of `calibration` again.

    Returns:
        [`SegFaceExportResult`]: the file, its size, fidelity and latency.
    """
    export = export_format(format)
    quantization = check_quantization(export, quantization)
    output = check_output(output_path, export, overwrite)
    if image_size is None:
        image_size = model.config.image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    model.eval()
    static_int8 = export.precision == "int8" and quantization == "static"
    if faces is None:
        needed = (verify and export.runtime not in UNRUNNABLE_RUNTIMES) or static_int8
        faces = face_inputs(model.config, calibration, image_size, processor, detector) if needed else []
    for face in faces:
        if face["pixel_values"].shape[2:] != image_size:
            size = face["pixel_values"].shape[2:]
            raise SegFaceExportError(f"face inputs of size {size} for an export at {image_size}.")
    calibration_faces, held_out = split_held_out(faces) if faces else ([], [])
    if not static_int8:
        calibration_faces = []

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".segface-export-", dir=output.parent))
    try:
        candidate = staging / f"model{export.suffix}"
        # Static ONNX int8: each recipe in turn until one passes the check. Every other format is written once.
        recipes = STATIC_INT8_RECIPES if static_int8 and export.runtime == "onnxruntime" else (None,)
        refused = []
        for recipe in recipes:
            input_names = write_export(model, candidate, export, image_size, calibration_faces, quantization,
                                       opset_version, verify, recipe)  # fmt: skip
            fidelity = latency = None
            notes = []
            if verify and export.runtime == "coreml":
                from .coreml_export import check_coreml_spec

                notes = check_coreml_spec(candidate, model.config, image_size)
            elif verify:
                run = runner(candidate, export, threads=threads)
                fidelity = check_export(run, model, held_out, export)
                if not fidelity.passed:
                    refused.append(f"{recipe.name}: {fidelity}" if recipe else str(fidelity))
                    continue
                latency = median_latency_ms(run, held_out[0])
            break
        else:
            raise SegFaceExportError(f"the {export.name} export does not reproduce the PyTorch model: "
                                     + "; ".join(refused))  # fmt: skip
        if refused:
            notes.append(f"static QDQ of {recipe.name} only (refused with {'; '.join(refused)})")
        if output.is_dir():  # an earlier Core ML package, replaced (overwrite was checked above)
            os.replace(output, staging / "replaced")
        os.replace(candidate, output)
    except SegFaceError:
        raise
    except Exception as error:  # the converters raise many kinds; report one line
        raise SegFaceExportError(f"the {export.name} export failed: {error_summary(error)}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SegFaceExportResult(
        path=output,
        format=export.name,
        size_bytes=file_size(output),
        fidelity=fidelity,
        latency_ms=latency,
        calibration_faces=len(calibration_faces),
        input_names=input_names,
        image_size=image_size,
        quantization=quantization if export.precision == "int8" else None,
        notes=notes,
    )


def file_size(path: Path) -> int:
    """Bytes of an export: its file, or the files of a package folder (Core ML)."""
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


__all__ = [
    "BUNDLED_PHOTOS",
    "DYNAMIC_INT8_FORMATS",
    "EXPORT_FORMATS",
    "QUANTIZATION_MODES",
    "STATIC_INT8_RECIPES",
    "SegFaceExportError",
    "SegFaceExportFidelity",
    "SegFaceExportFormat",
    "SegFaceExportResult",
    "SegFaceStaticInt8Recipe",
    "check_export",
    "check_quantization",
    "default_quantization",
    "check_output",
    "compare_logits",
    "export_format",
    "export_model",
    "face_inputs",
    "file_size",
    "median_latency_ms",
    "onnx_runner",
    "pytorch_logits",
    "runner",
    "split_held_out",
    "UNRUNNABLE_RUNTIMES",
    "write_coreml",
    "write_litert",
    "write_executorch",
    "write_export",
    "write_onnx",
]
