"""Export a SegFace model to ONNX with a dynamic batch size, and check the export with onnxruntime.

The exported graph takes `pixel_values` of shape `(batch, 3, height, width)` (plus `landmarks` `(batch, 5, 2)` for
the face-warp models of the LaPa head) at the fixed resolution it was exported for, and returns `logits` of shape
`(batch, num_labels, height, width)`. It is written to a temporary file next to the target and moved into place
only once onnxruntime's outputs match PyTorch's, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegFaceError, SegFaceMissingDependencyError, error_summary

# The agreement an export must reach with PyTorch on the same inputs.
MAX_ABS_LOGIT_DIFFERENCE = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999

# The 5-point face template (image-left eye, image-right eye, nose tip, mouth corners) on a 512 canvas: verification
# inputs for face-warp models put a jittered copy of it in the frame.
_TEMPLATE_512 = ((196.0, 226.0), (316.0, 226.0), (256.0, 286.0), (220.0, 360.4), (292.0, 360.4))


class SegFaceOnnxError(SegFaceError, RuntimeError):
    """An ONNX export that could not be made or does not reproduce the PyTorch model."""


@dataclass
class LogitAgreement:
    """How an export's logits compare with PyTorch's, and the limits they are held to.

    Args:
        max_abs_difference (`float`):
            Largest absolute logit difference.
        argmax_agreement (`float`):
            Fraction of pixels whose predicted class is the same, counting as agreeing the pixels where the two
            classes are tied in PyTorch's logits up to the tie tolerance of [`argmax_agreement`].
        strict_argmax_agreement (`float`):
            Fraction of pixels whose predicted class is the same, ties not excused.
        max_abs_logit (`float`):
            Largest absolute PyTorch logit, for scale.
        max_allowed_difference (`float`, *optional*, defaults to 1e-3):
            The limit on `max_abs_difference`.
        min_allowed_agreement (`float`, *optional*, defaults to 0.999):
            The limit on `argmax_agreement`.
    """

    max_abs_difference: float
    argmax_agreement: float
    strict_argmax_agreement: float
    max_abs_logit: float
    max_allowed_difference: float = MAX_ABS_LOGIT_DIFFERENCE
    min_allowed_agreement: float = MIN_ARGMAX_AGREEMENT

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_difference <= self.max_allowed_difference
            and self.argmax_agreement >= self.min_allowed_agreement
        )

    def describe(self) -> str:
        return (
            f"max |logit difference| {self.max_abs_difference:.3g} (limit {self.max_allowed_difference:.3g}, logits "
            f"up to {self.max_abs_logit:.3g}), argmax agreement {self.argmax_agreement:.5f} (limit "
            f"{self.min_allowed_agreement}; {self.strict_argmax_agreement:.5f} without excusing ties)"
        )


@dataclass
class OnnxVerification(LogitAgreement):
    """How an exported graph compares with PyTorch on random inputs ([`LogitAgreement`] plus the batch sizes run,
    `batch_sizes`, a keyword argument)."""

    batch_sizes: tuple[int, ...] = field(kw_only=True)

    def __str__(self) -> str:
        return f"batch sizes {list(self.batch_sizes)}: {self.describe()}"


@dataclass
class OnnxExportResult:
    """What `export_onnx` wrote.

    Args:
        path (`Path`):
            The `.onnx` file.
        image_size (`tuple[int, int]`):
            The (height, width) the graph takes.
        input_names (`list[str]`):
            Graph inputs, in order.
        opset_version (`int`):
            The ONNX opset of the graph.
        verification (`OnnxVerification`, *optional*):
            The check against PyTorch, unless it was skipped.
    """

    path: Path
    image_size: tuple[int, int]
    input_names: list[str]
    opset_version: int
    verification: OnnxVerification | None = None
    output_names: list[str] = field(default_factory=lambda: ["logits"])

    def __str__(self) -> str:
        size = os.path.getsize(self.path) / 2**20
        height, width = self.image_size
        lines = [
            (
                f"Exported SegFace to {self.path} ({size:.1f} MiB, opset {self.opset_version}): inputs "
                f"{', '.join(self.input_names)} at {height}x{width}, dynamic batch size"
            )
        ]
        if self.verification is not None:
            lines.append(f"onnxruntime agrees with PyTorch: {self.verification}")
        return "\n".join(lines)


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise SegFaceMissingDependencyError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
            "pip install onnx onnxscript onnxruntime"
        ) from error
    return onnxruntime


class SegFaceLogitsOnly(nn.Module):
    """The model as a function of its tensor inputs that returns only the logits."""

    def __init__(self, model: nn.Module, with_landmarks: bool):
        super().__init__()
        self.model = model
        self.with_landmarks = with_landmarks

    def forward(self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        if self.with_landmarks:
            return self.model(pixel_values, landmarks=landmarks, return_dict=False)[0]
        return self.model(pixel_values, return_dict=False)[0]


def example_inputs(
    config, batch_size: int, image_size: tuple[int, int], seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Random normalised images (and, for face-warp models, jittered template landmarks) for a SegFace model."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    inputs = {"pixel_values": torch.randn(batch_size, 3, height, width, generator=generator)}
    if config.use_face_warp:
        template = torch.tensor(_TEMPLATE_512) * torch.tensor([width / 512, height / 512])
        jitter = torch.randn(batch_size, 5, 2, generator=generator) * (min(height, width) / 100)
        inputs["landmarks"] = template.unsqueeze(0) + jitter
    return {name: tensor.to(device) for name, tensor in inputs.items()}


@contextlib.contextmanager
def exportable_backbone_attention(model: nn.Module):
    """Temporarily run `transformers` backbones with eager attention: the exporter's decomposition of their SDPA
    attention produces an invalid view for windowed (Swin) attention. Eager and SDPA compute the same function."""
    backbone = getattr(getattr(model, "backbone", None), "model", None)
    config = getattr(backbone, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(backbone, "set_attn_implementation")
    if switch:
        backbone.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            backbone.set_attn_implementation(previous)


def _session(path: str | os.PathLike, threads: int | None = None, spinning: bool = True):
    onnxruntime = require_onnx()
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # onnxruntime's CPU kernel for the fused residual + layer norm is several times slower than the two ops apart on
    # the decoder's 16384 x 256 token maps (11 ms against about 3 ms each at 512 pixels; 10% of the whole graph).
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"]
    )


def load_onnx_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session for an exported SegFace graph, with the `SkipLayerNormFusion` graph optimisation
    off (the fused kernel is slower than the residual add and layer norm apart on SegFace's token maps). Pass
    `disabled_optimizers=["SkipLayerNormFusion"]` to `onnxruntime.InferenceSession` to get the same in your own code.

    Args:
        path (`str` or `os.PathLike`):
            The `.onnx` file.
        threads (`int`, *optional*):
            Intra-op threads; onnxruntime's default (all cores) when not given.
        spinning (`bool`, *optional*, defaults to `True`):
            Whether idle worker threads busy-wait for the next call (onnxruntime's default: lower latency for
            back-to-back calls, but the spinning threads take CPU time from whatever runs next in the process).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    return _session(path, threads, spinning)


def argmax_agreement(pairs: list[tuple[np.ndarray, np.ndarray]], tie_tolerance: float) -> tuple[float, float]:
    """Fraction of pixels where two implementations predict the same class, `(tie-aware, strict)`.

    `pairs` holds `(candidate, reference)` logits of shape `(batch, classes, height, width)`. Tie-aware counts a pixel
    as agreeing when the candidate's class has a reference logit within `tie_tolerance` of the reference maximum:
    two implementations whose logits differ by `d` may legitimately break ties closer than `2 d` either way.
    """
    agreeing = strict = total = 0
    for candidate, reference in pairs:
        choice = candidate.argmax(1)
        strict += int((choice == reference.argmax(1)).sum())
        chosen = np.take_along_axis(reference, choice[:, None], axis=1)[:, 0]
        agreeing += int((reference.max(1) - chosen <= tie_tolerance).sum())
        total += choice.size
    return agreeing / total, strict / total


def verify_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    image_size: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
    max_abs_difference: float = MAX_ABS_LOGIT_DIFFERENCE,
    min_argmax_agreement: float = MIN_ARGMAX_AGREEMENT,
) -> OnnxVerification:
    """Run an exported graph with onnxruntime and the model with PyTorch on the same random inputs and compare.

    Args:
        path (`str` or `os.PathLike`):
            The `.onnx` file.
        model (`SegFaceForSemanticSegmentation`):
            The model that was exported.
        image_size (`tuple[int, int]`):
            The (height, width) the graph was exported for.
        batch_sizes (`tuple[int, ...]`, *optional*, defaults to `(1, 3)`):
            Batch sizes to run; use ones other than the export's to check the dynamic batch dimension.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random inputs.
        max_abs_difference (`float`, *optional*, defaults to 1e-3):
            Largest absolute logit difference that passes.
        min_argmax_agreement (`float`, *optional*, defaults to 0.999):
            Smallest fraction of pixels with the same predicted class that passes.
    """
    session = _session(path)
    device = next(model.parameters()).device
    pairs = []
    for offset, batch_size in enumerate(batch_sizes):
        inputs = example_inputs(model.config, batch_size, image_size, seed=seed + offset)
        feed = {name: tensor.numpy() for name, tensor in inputs.items()}
        (onnx_logits,) = session.run(["logits"], feed)
        with torch.no_grad():
            torch_inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            torch_logits = model(**torch_inputs).logits.float().cpu().numpy()
        if onnx_logits.shape != torch_logits.shape:
            raise SegFaceOnnxError(
                f"the ONNX graph returned logits of shape {onnx_logits.shape} for batch size {batch_size}, PyTorch "
                f"{torch_logits.shape}: the batch dimension is not dynamic."
            )
        pairs.append((onnx_logits, torch_logits))
    largest = max(float(np.abs(o - t).max()) for o, t in pairs)
    agreement, strict = argmax_agreement(pairs, tie_tolerance=2 * largest)
    return OnnxVerification(
        batch_sizes=tuple(batch_sizes),
        max_abs_difference=largest,
        argmax_agreement=agreement,
        strict_argmax_agreement=strict,
        max_abs_logit=max(float(np.abs(t).max()) for _, t in pairs),
        max_allowed_difference=max_abs_difference,
        min_allowed_agreement=min_argmax_agreement,
    )


def export_onnx(
    model: nn.Module,
    output_path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    opset_version: int = 20,
    verify: bool = True,
    verify_batch_sizes: tuple[int, ...] = (1, 3),
    overwrite: bool = False,
) -> OnnxExportResult:
    """Export a SegFace model to ONNX with a dynamic batch dimension.

    The graph is traced with `torch.onnx.export(dynamo=True)` from an example batch of 2 (the exporter fixes
    dimensions traced at size 1), then run with onnxruntime at `verify_batch_sizes` and compared with PyTorch: the
    file is kept only if the logits differ by at most 1e-3 and at least 99.9% of the predicted classes agree.

    Args:
        model (`SegFaceForSemanticSegmentation`):
            The model, in float32. It is put in eval mode.
        output_path (`str` or `os.PathLike`):
            Where to write the `.onnx` file; its folder is created if needed.
        image_size (`int` or `tuple[int, int]`, *optional*):
            The (height, width) the graph takes; defaults to the model's `config.image_size`.
        opset_version (`int`, *optional*, defaults to 20):
            ONNX opset. From 20 on, GELU is one `Gelu` node (onnxruntime >= 1.17 runs it about 7% faster than the
            erf-based decomposition older opsets need); pass 18 for runtimes without opset 20.
        verify (`bool`, *optional*, defaults to `True`):
            Whether to check the export with onnxruntime before keeping it.
        verify_batch_sizes (`tuple[int, ...]`, *optional*, defaults to `(1, 3)`):
            Batch sizes of the check, which differ from the export's 2 to exercise the dynamic dimension.
        overwrite (`bool`, *optional*, defaults to `False`):
            Whether to replace an existing file.

    Returns:
        [`OnnxExportResult`]: the path, input names and the verification.
    """
    require_onnx()
    output_path = Path(output_path)
    if output_path.suffix != ".onnx":
        raise ValueError(f"the output file must end in .onnx, got {output_path.name!r}.")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=True (--overwrite) to replace it.")
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32:
        raise ValueError(f"export a float32 model (this one is {parameter.dtype}); call model.float() first.")
    if image_size is None:
        image_size = model.config.image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if min(image_size) < 32:
        raise ValueError(f"SegFace needs inputs of at least 32x32 pixels, got {image_size[0]}x{image_size[1]}.")

    model.eval()
    with_landmarks = bool(model.config.use_face_warp)
    inputs = example_inputs(model.config, 2, image_size, device=parameter.device)
    input_names = list(inputs)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic_shapes = {name: {0: batch} for name in input_names}
    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".onnx.partial", dir=output_path.parent)
    os.close(handle)
    try:
        try:
            with exportable_backbone_attention(model), torch.no_grad(), warnings.catch_warnings(), \
                    contextlib.redirect_stdout(io.StringIO()):  # fmt: skip
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    SegFaceLogitsOnly(model, with_landmarks),
                    tuple(inputs.values()),
                    temporary,
                    input_names=input_names,
                    output_names=["logits"],
                    dynamic_shapes=dynamic_shapes,
                    opset_version=opset_version,
                    dynamo=True,
                    external_data=False,
                )
        except Exception as error:  # the exporter raises many kinds; report one line
            summary = error_summary(error)
            raise SegFaceOnnxError(f"torch.onnx.export failed: {summary}") from error
        verification = None
        if verify:
            verification = verify_onnx(temporary, model, image_size, batch_sizes=tuple(verify_batch_sizes))
            if not verification.passed:
                raise SegFaceOnnxError(f"the ONNX export does not reproduce the PyTorch model: {verification}")
        os.replace(temporary, output_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return OnnxExportResult(
        path=output_path,
        image_size=image_size,
        input_names=input_names,
        opset_version=opset_version,
        verification=verification,
    )


__all__ = [
    "LogitAgreement",
    "MAX_ABS_LOGIT_DIFFERENCE",
    "MIN_ARGMAX_AGREEMENT",
    "OnnxExportResult",
    "OnnxVerification",
    "SegFaceLogitsOnly",
    "SegFaceOnnxError",
    "argmax_agreement",
    "example_inputs",
    "exportable_backbone_attention",
    "export_onnx",
    "load_onnx_session",
    "require_onnx",
    "verify_onnx",
]
