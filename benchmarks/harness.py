"""Latency, throughput and memory of SegFace: this package's model, its reference path, the original code and ONNX.

Every implementation of one case (model, resolution, dtype, batch size) is timed in the same process, interleaved:
after warm-up, each repetition runs every implementation once in turn, so a change of machine load affects all of
them alike. Reported per implementation: the median and spread (min, max, quartiles) of the repetitions, images per
second, and the peak memory of one extra call (CUDA: peak allocated; CPU: peak resident-set growth, sampled).

The original SegFace code is not part of this package: point `original_code` at a folder holding its `network/`
package (e.g. a checkout of github.com/Kartik-3004/SegFace). It is built with random weights: the torchvision
constructors it calls with `pretrained=True` are replaced, while it is built, by ones that build without weights.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segface_hf.errors import SegFaceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# `--executorch` precisions and the `segface export` format of each.
EXECUTORCH_FORMATS = {"float32": "executorch", "int8": "executorch-int8"}
# `--litert` precisions and the `segface export` format of each.
LITERT_FORMATS = {"float32": "litert", "int8": "litert-int8"}

# The original's `--model` name for each backbone preset, and the module and class of each original head.
ORIGINAL_BACKBONE_NAMES = {
    "swin_base": "swin_base", "swinv2_base": "swinv2_base", "swinv2_small": "swinv2_small",
    "swinv2_tiny": "swinv2_tiny", "convnext_base": "convnext_base", "convnext_small": "convnext_small",
    "resnet101": "resnet", "mobilenet_v3_large": "mobilenet", "efficientnet_v2_m": "efficientnet",
}  # fmt: skip
ORIGINAL_HEADS = {
    "celebamask-hq": ("network.models.segface_celeb", "SegFaceCeleb"),
    "lapa": ("network.models.segface_lapa", "SegFaceLapa"),
    "helen": ("network.models.segface_helen", "SegFaceHelen"),
}
# The torchvision constructors the original calls with pretrained weights.
_TORCHVISION_CONSTRUCTORS = (
    "swin_b", "swin_v2_b", "swin_v2_s", "swin_v2_t", "convnext_large", "convnext_base", "convnext_small",
    "convnext_tiny", "resnet101", "mobilenet_v3_large", "efficientnet_v2_m",
)  # fmt: skip

# The speed peer most face tools embed (github.com/yakhyo/face-parsing, MIT): its rows are named after it.
PEER_NAME = "BiSeNet-ResNet18"

IMPLEMENTATION_FAST = "segface-hf"
IMPLEMENTATION_REFERENCE = "segface-hf reference path"
IMPLEMENTATION_ORIGINAL = "original"
IMPLEMENTATION_ONNX = "onnxruntime"
IMPLEMENTATION_EXECUTORCH = "executorch"
IMPLEMENTATION_LITERT = "litert"
IMPLEMENTATION_PYTORCH_INT8 = "segface-hf int8 (PT2E x86 inductor, compiled)"


class SegFaceBenchmarkError(SegFaceError, RuntimeError):
    """A benchmark that cannot run as asked (missing device, library or original code)."""


# ----------------------------------------------------------------------------------------------------------------
# Settings and results


@dataclass
class BenchmarkSettings:
    """What to measure.

    Args:
        variants (`list[str]`, *optional*):
            Official variant names (e.g. `mobilenet_celeba_512`), built with random weights.
        model_paths (`list[str]`, *optional*):
            Saved models (`from_pretrained` folders) to measure as well.
        resolutions (`list[int]`, *optional*):
            Square input sizes; by default each variant's own resolution (a model's `config.image_size`).
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"` (or `"cuda:N"`).
        dtypes (`list[str]`, *optional*, defaults to `["float32"]`):
            Any of `float32`, `bfloat16`, `float16`; models and inputs are cast to it.
        threads (`int`, *optional*):
            CPU threads for PyTorch and onnxruntime; PyTorch's default when not given.
        batch_sizes (`list[int]`, *optional*, defaults to `[1, 8]`):
            Batch 1 gives the latency, larger batches the throughput.
        warmup (`int`, *optional*, defaults to 2):
            Untimed calls before timing (the first also compiles or captures, where asked).
        repeats (`int`, *optional*, defaults to 5):
            Timed calls per implementation.
        compile (`bool`, *optional*, defaults to `False`):
            Whether to `torch.compile` this package's model.
        channels_last (`bool`, *optional*, defaults to `False`):
            Whether to convert this package's model and inputs to channels-last memory format.
        cuda_graphs (`bool`, *optional*, defaults to `False`):
            Whether to capture this package's model in a CUDA graph (CUDA only).
        reference_path (`bool`, *optional*, defaults to `False`):
            Whether to also time this package's reference path (`model.fast_path = False`).
        original_code (`str`, *optional*):
            Folder holding the original SegFace `network/` package, to time the original side by side.
        onnx (`bool`, *optional*, defaults to `False`):
            Whether to export each model to ONNX and time it with onnxruntime on the CPU (float32 only).
        onnx_int8 (`list[str]`, *optional*):
            int8 quantization modes (`static`, `dynamic`) to export with `segface export --format onnx-int8` and time
            with onnxruntime on the CPU (float32 inputs); static calibrates on the bundled photos' faces. Not checked
            against PyTorch (random weights: the argmax says nothing); use `segface export` for that.
        executorch (`list[str]`, *optional*):
            Precisions (`float32`, `int8`) to export with `segface export --format executorch / executorch-int8`
            (XNNPACK, int8 calibrated on the bundled photos' faces) and time in the ExecuTorch runtime on the CPU
            (float32 inputs, a batch face by face); not checked against PyTorch, as for `onnx_int8`.
        litert (`list[str]`, *optional*):
            Precisions (`float32`, `int8`) to export with `segface export --format litert / litert-int8` (int8
            calibrated on the bundled photos' faces) and time in the LiteRT interpreter on the CPU (a batch face by
            face); with `peer_code`, the peer is converted and timed the same way in float32 (`litert-int8`
            quantizes linear layers only, and the peer runs none).
        pytorch_int8 (`bool`, *optional*, defaults to `False`):
            Whether to time int8 in PyTorch: this package's model captured with `torch.export`, quantized with PT2E
            and torchao's `X86InductorQuantizer` (its default config: int8 weights per channel, uint8 activations
            calibrated on the bundled photos' faces) and compiled with `torch.compile` (CPU, float32 inputs). It
            answers whether a quantized PyTorch path would be the fastest int8 on a CPU (docs/deploy.md).
        image_processor (`bool`, *optional*, defaults to `False`):
            Whether to time the image processor on photos of `processor_input_size`.
        processor_input_size (`tuple[int, int]`, *optional*, defaults to `(480, 640)`):
            (height, width) of the synthetic photos given to the image processor.
        detection (`bool`, *optional*, defaults to `False`):
            Whether to time face detection (see [`time_face_detection`]).
        detection_images (`str`, *optional*):
            Folder with the shared photos the detection photos are made from (default: `../shared/images`).
        peer_code (`str`, *optional*):
            A checkout of github.com/yakhyo/face-parsing (its `models/bisenet.py`): BiSeNet-ResNet18 with random
            weights and 19 classes is timed beside each model at the same input size, in PyTorch and through the same
            onnxruntime paths (`onnx`, `onnx_int8`).
        seed (`int`, *optional*, defaults to 0):
            Seed of random weights and inputs.
    """

    variants: list[str] = field(default_factory=list)
    model_paths: list[str] = field(default_factory=list)
    resolutions: list[int] | None = None
    device: str = "cpu"
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    threads: int | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    warmup: int = 2
    repeats: int = 5
    compile: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    reference_path: bool = False
    original_code: str | None = None
    onnx: bool = False
    onnx_int8: list[str] = field(default_factory=list)
    executorch: list[str] = field(default_factory=list)
    litert: list[str] = field(default_factory=list)
    pytorch_int8: bool = False
    image_processor: bool = False
    processor_input_size: tuple[int, int] = (480, 640)
    detection: bool = False
    detection_images: str | None = None
    peer_code: str | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise a one-line error for settings that cannot run on this machine."""
        if not self.variants and not self.model_paths and not self.detection:
            raise ValueError("nothing to measure: give at least one variant or model path, or time face detection.")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown:
            raise ValueError(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}.")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"need warmup >= 0 and repeats >= 1, got {self.warmup} and {self.repeats}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}.")
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}.")
        if self.pytorch_int8 and device.type != "cpu":
            raise ValueError("--pytorch-int8 times the x86 (CPU) int8 kernels; run it with --device cpu.")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SegFaceBenchmarkError(
                f"device {self.device!r} asked for, but PyTorch sees no CUDA device on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})."
            )
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need --device cuda.")
        if self.original_code is not None:
            _original_root(self.original_code)  # fails early on a wrong folder
        if self.peer_code is not None:
            _peer_root(self.peer_code)
        unknown = [p for p in self.executorch if p not in EXECUTORCH_FORMATS]
        if unknown:
            raise ValueError(f"unknown ExecuTorch precision(s) {unknown}; choose from {sorted(EXECUTORCH_FORMATS)}.")
        if self.executorch:
            from segface_hf.release.executorch_export import require_executorch

            require_executorch()
        unknown = [p for p in self.litert if p not in LITERT_FORMATS]
        if unknown:
            raise ValueError(f"unknown LiteRT precision(s) {unknown}; choose from {sorted(LITERT_FORMATS)}.")
        if self.litert:
            from segface_hf.release.litert_export import require_litert

            require_litert()


@dataclass
class TimingResult:
    """Seconds per call of repeated runs."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def maximum(self) -> float:
        return max(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        low, high = np.percentile(self.samples, [25, 75])
        return float(low), float(high)


@dataclass
class BenchmarkResult:
    """One implementation on one case."""

    model: str
    resolution: int
    implementation: str
    device: str
    dtype: str
    batch_size: int
    options: str
    warmup: int
    repeats: int
    median_s: float
    min_s: float
    max_s: float
    p25_s: float
    p75_s: float
    images_per_s: float
    peak_memory_mib: float | None
    samples_s: list[float]
    speedup_vs_original: float | None = None


@dataclass
class ProcessorResult:
    """Throughput of the image processor."""

    resolution: int
    input_size: tuple[int, int]
    batch_size: int
    median_s: float
    min_s: float
    max_s: float
    images_per_s: float


@dataclass
class BenchmarkReport:
    environment: dict
    settings: dict
    results: list[BenchmarkResult] = field(default_factory=list)
    image_processor: list[ProcessorResult] = field(default_factory=list)
    detection: list[DetectionResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        return format_markdown(self)


# ----------------------------------------------------------------------------------------------------------------
# Environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> str | None:
    try:
        return importlib.import_module(module_name).__version__
    except (ImportError, AttributeError):  # an optional library that is absent
        return None


def environment_info(device: str = "cpu") -> dict:
    """The machine and library versions a benchmark ran with."""
    import transformers

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "timm": _version("timm"),
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "device": device,
        # Allocator settings change CPU timings noticeably; record them.
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
        # Other work on the machine slows CPU timings: the 1/5/15-minute load averages when the run started.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# ----------------------------------------------------------------------------------------------------------------
# Timing and memory


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_interleaved(
    functions: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    synchronize: Callable[[], None] = lambda: None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, TimingResult]:
    """Warm each function up, then time `repeats` rounds in which every function runs once, in turn."""
    for function in functions.values():
        for _ in range(warmup):
            function()
        synchronize()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            samples[name].append(time.perf_counter() - start)
            if on_step is not None:
                on_step()
    return {name: TimingResult(values) for name, values in samples.items()}


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_heap() -> None:
    """Return the C heap's free memory to the system (glibc), so that resident-set growth shows a call's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mib(function: Callable[[], object], device: torch.device, interval_s: float = 5e-4) -> float | None:
    """Peak memory one call of `function` adds: CUDA peak allocated, or on the CPU the peak growth of the resident
    set after releasing the heap's free memory, sampled every `interval_s` (Linux only; None elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _release_free_heap()
    before = _resident_bytes()
    if before is None:
        return None
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes() or 0)
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _resident_bytes() or 0)
    return (peak[0] - before) / 2**20


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelSpec:
    """A model to measure: an official variant (random weights) or a saved folder."""

    name: str
    resolution: int
    variant: str | None = None
    path: str | None = None


def model_specs(settings: BenchmarkSettings) -> list[ModelSpec]:
    from segface_hf.configuration_segface import SegFaceConfig, parse_variant

    specs = []
    for variant in settings.variants:
        _, _, own_resolution = parse_variant(variant)
        for resolution in settings.resolutions or [own_resolution]:
            specs.append(ModelSpec(name=variant, resolution=resolution, variant=variant))
    for path in settings.model_paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no such model folder: {path}")
        config = SegFaceConfig.from_pretrained(path)
        for resolution in settings.resolutions or [config.image_size]:
            specs.append(ModelSpec(name=Path(path).name, resolution=resolution, path=path))
    return specs


def build_segface(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """This package's model for `spec`, in eval mode, float32, on the CPU."""
    from segface_hf.configuration_segface import SegFaceConfig, parse_variant
    from segface_hf.modeling_segface import SegFaceForSemanticSegmentation

    if spec.path is not None:
        return SegFaceForSemanticSegmentation.from_pretrained(spec.path).eval()
    backbone, dataset, _ = parse_variant(spec.variant)
    torch.manual_seed(seed)
    config = SegFaceConfig.from_backbone(backbone, dataset=dataset, image_size=spec.resolution)
    return SegFaceForSemanticSegmentation(config).eval()


def _original_root(original_code: str | os.PathLike) -> Path:
    root = Path(original_code).expanduser().resolve()
    if not (root / "network" / "models" / "segface_celeb.py").is_file():
        raise FileNotFoundError(
            f"{root} does not hold the original SegFace code: expected network/models/segface_celeb.py in it "
            f"(a checkout of github.com/Kartik-3004/SegFace)."
        )
    return root


@contextlib.contextmanager
def _torchvision_without_weights(modules: Sequence[object]):
    """Make torchvision's model constructors (in torchvision.models and in `modules`) ignore pretrained weights."""
    import torchvision.models as tv_models

    def weightless(constructor):
        def build(*args, **kwargs):
            kwargs.pop("pretrained", None)
            kwargs.pop("weights", None)
            return constructor(*args, weights=None, **kwargs)

        return build

    saved = []
    for owner in (tv_models, *modules):
        for name in _TORCHVISION_CONSTRUCTORS:
            if hasattr(owner, name):
                saved.append((owner, name, getattr(owner, name)))
    originals = {name: getattr(tv_models, name) for name in _TORCHVISION_CONSTRUCTORS if hasattr(tv_models, name)}
    try:
        for owner, name, _ in saved:
            setattr(owner, name, weightless(originals.get(name, getattr(owner, name))))
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class OriginalSegFace(nn.Module):
    """The original SegFace model behind this package's call signature: `(pixel_values, landmarks=None)` to logits.

    The original forward takes `(x, labels, dataset)`; the LaPa model warps the images of dataset 1 with the
    `labels["lnm_seg"]` landmarks and writes the warped images into `x`, so it is given a copy.
    """

    def __init__(self, model: nn.Module, dataset: str):
        super().__init__()
        self.model = model
        self.dataset = dataset

    def forward(self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        batch = pixel_values.shape[0]
        if landmarks is None:
            landmarks = torch.zeros(batch, 5, 2, device=pixel_values.device, dtype=pixel_values.dtype)
        if self.dataset == "lapa":
            dataset = torch.ones(batch, dtype=torch.long, device=pixel_values.device)
            pixel_values = pixel_values.clone()
        else:
            dataset = torch.zeros(batch, dtype=torch.long, device=pixel_values.device)
        return self.model(pixel_values, {"lnm_seg": landmarks}, dataset)


def build_original(original_code: str | os.PathLike, variant: str, resolution: int, seed: int = 0) -> OriginalSegFace:
    """The original implementation of an official variant, with random weights, in eval mode on the CPU."""
    from segface_hf.configuration_segface import parse_variant

    root = _original_root(original_code)
    backbone, dataset, _ = parse_variant(variant)
    module_name, class_name = ORIGINAL_HEADS[dataset]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    with _torchvision_without_weights(()):
        module = importlib.import_module(module_name)
    with _torchvision_without_weights((module,)):
        torch.manual_seed(seed)
        model = getattr(module, class_name)(resolution, ORIGINAL_BACKBONE_NAMES[backbone])
    return OriginalSegFace(model, dataset).eval()


def _peer_root(peer_code: str | os.PathLike) -> Path:
    root = Path(peer_code).expanduser().resolve()
    if not (root / "models" / "bisenet.py").is_file():
        raise FileNotFoundError(
            f"{root} does not hold the BiSeNet peer: expected models/bisenet.py in it (a checkout of "
            f"github.com/yakhyo/face-parsing)."
        )
    return root


class PeerBiSeNet(nn.Module):
    """BiSeNet behind this package's call signature: `(pixel_values, landmarks=None)` to the parsing logits. Its
    forward also computes the two auxiliary heads, as the peer's own inference does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(pixel_values)[0]


def build_peer(peer_code: str | os.PathLike, seed: int = 0) -> PeerBiSeNet:
    """BiSeNet-ResNet18 of the peer checkout with random weights (its ResNet-18 built without ImageNet weights) and
    19 classes, in eval mode on the CPU."""
    root = _peer_root(peer_code)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    bisenet = importlib.import_module("models.bisenet")
    resnet = importlib.import_module("models.resnet")
    constructor = bisenet.resnet18
    bisenet.resnet18 = lambda **kwargs: resnet.resnet18(weights=None, **kwargs)  # its default downloads weights
    try:
        torch.manual_seed(seed)
        model = bisenet.BiSeNet(19, backbone_name="resnet18")
    finally:
        bisenet.resnet18 = constructor
    return PeerBiSeNet(model).eval()


def _cuda_graph(function: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3):
    """Capture `function(example)` in a CUDA graph; the returned callable copies its input in and replays."""
    static_input = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                function(static_input)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = function(static_input)

    def replay(pixel_values: torch.Tensor) -> torch.Tensor:
        static_input.copy_(pixel_values)
        graph.replay()
        return static_output

    return replay


def _graphed(function: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` captured in a CUDA graph for these inputs (landmarks, if any, are fixed at capture)."""
    landmarks = inputs.get("landmarks")
    replay = _cuda_graph(lambda pixel_values: function(pixel_values, landmarks), inputs["pixel_values"])
    return lambda pixel_values, landmarks=None: replay(pixel_values)


def _options_label(settings: BenchmarkSettings) -> str:
    options = [name for name, on in (("compile", settings.compile), ("channels-last", settings.channels_last),
                                     ("cuda-graphs", settings.cuda_graphs)) if on]  # fmt: skip
    return "+".join(options) or "eager"


# ----------------------------------------------------------------------------------------------------------------
# Running


def _inputs(config, batch: int, resolution: int, device, dtype, seed: int) -> dict[str, torch.Tensor]:
    from segface_hf.release.onnx_export import example_inputs

    inputs = example_inputs(config, batch, (resolution, resolution), seed=seed)
    inputs["pixel_values"] = inputs["pixel_values"].to(device, dtype)
    if "landmarks" in inputs:
        inputs["landmarks"] = inputs["landmarks"].to(device, torch.float32)
    return inputs


def _prepare_fast(model: nn.Module, settings: BenchmarkSettings, device, dtype) -> Callable[..., torch.Tensor]:
    model = model.to(device, dtype)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def forward(pixel_values, landmarks=None):
        return model(pixel_values, landmarks=landmarks, return_dict=False)[0]

    if settings.compile:
        mode = "reduce-overhead" if settings.cuda_graphs else None
        forward = torch.compile(forward, mode=mode)
    return forward


def _time_case(
    implementations: dict[str, Callable[..., object]],
    inputs: dict[str, torch.Tensor],
    settings: BenchmarkSettings,
    device: torch.device,
    on_step: Callable[[], None] | None,
) -> tuple[dict[str, TimingResult], dict[str, float | None]]:
    calls = {name: (lambda function=function: function(**inputs)) for name, function in implementations.items()}
    with torch.inference_mode():
        timings = time_interleaved(calls, settings.warmup, settings.repeats, _synchronizer(device), on_step)
        # onnxruntime keeps its memory in an arena between calls: its growth over one call says nothing.
        memory = {
            name: None if IMPLEMENTATION_ONNX in name else peak_memory_mib(call, device)
            for name, call in calls.items()
        }
    return timings, memory


def _onnx_runner(model: nn.Module, resolution: int, threads: int | None, folder: str,
                 int8: str | None = None) -> Callable[..., object]:  # fmt: skip
    from segface_hf.release.export import export_model
    from segface_hf.release.onnx_export import export_onnx

    path = Path(folder) / f"segface_{resolution}{'_int8_' + int8 if int8 else ''}.onnx"
    if int8:
        export_model(model, path, format="onnx-int8", quantization=int8, image_size=resolution, verify=False,
                     overwrite=True)  # fmt: skip
    else:
        export_onnx(model, path, image_size=resolution, overwrite=True)
    return _onnx_session_runner(path, threads)


def _exported_runner(model: nn.Module, resolution: int, threads: int | None, folder: str,
                     format: str) -> Callable[..., object]:  # fmt: skip
    """A file written by `segface export --format format` (unchecked: random weights), run in its own runtime."""
    from segface_hf.release.export import export_format, export_model, runner

    export = export_format(format)
    path = Path(folder) / f"segface_{resolution}_{format}{export.suffix}"
    export_model(model, path, format=format, image_size=resolution, verify=False, overwrite=True)
    run = runner(path, export, threads=threads)

    def call(pixel_values, landmarks=None):
        feed = {"pixel_values": pixel_values.cpu().numpy()}
        if landmarks is not None:
            feed["landmarks"] = landmarks.cpu().numpy()
        return run(feed)

    return call


def pytorch_int8_runner(model: nn.Module, resolution: int) -> Callable[..., torch.Tensor]:
    """`model` quantized to int8 in PyTorch (PT2E with the x86 inductor quantizer, calibrated on the bundled photos'
    faces) and compiled; the batch dimension stays dynamic."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as error:
        raise SegFaceBenchmarkError(f"--pytorch-int8 needs torchao ({error}): pip install torchao") from error
    from segface_hf.release.export import face_inputs
    from segface_hf.release.onnx_export import SegFaceLogitsOnly, example_inputs

    with_landmarks = bool(model.config.use_face_warp)
    module = SegFaceLogitsOnly(model, with_landmarks).eval()
    inputs = example_inputs(model.config, 2, (resolution, resolution))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        captured = torch.export.export(module, tuple(inputs.values()), dynamic_shapes=[{0: batch}] * len(inputs),
                                       strict=False).module()  # fmt: skip
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(captured, quantizer)
        for face in face_inputs(model.config, None, (resolution, resolution)):
            prepared(*(torch.from_numpy(face[name]) for name in inputs))
        compiled = torch.compile(convert_pt2e(prepared))

    def run(pixel_values, landmarks=None):
        return compiled(pixel_values, landmarks) if with_landmarks else compiled(pixel_values)

    return run


def _onnx_session_runner(path: Path, threads: int | None) -> Callable[..., object]:
    from segface_hf.release.onnx_export import load_onnx_session

    # No busy-waiting threads: they would take CPU time from the implementation timed next.
    session = load_onnx_session(path, threads=threads, spinning=False)

    def run(pixel_values, landmarks=None):
        feed = {"pixel_values": pixel_values.cpu().numpy()}
        if landmarks is not None:
            feed["landmarks"] = landmarks.cpu().numpy()
        return session.run(["logits"], feed)

    return run


def _peer_onnx_runner(peer: PeerBiSeNet, model_config, resolution: int, threads: int | None, folder: str,
                      int8: str | None = None) -> Callable[..., object]:  # fmt: skip
    """The peer exported with torch.onnx (as its own `onnx_export.py` does) and, for `int8`, quantized by the same
    function as SegFace's int8 exports, calibrated (static) on the same face crops."""
    from segface_hf.release.export import face_inputs, quantize_to_int8, split_held_out

    float_path = Path(folder) / f"peer_{resolution}.onnx"
    if not float_path.exists():
        example = torch.zeros(1, 3, resolution, resolution)
        torch.onnx.export(peer, (example,), str(float_path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, dynamo=True,
                          verbose=False)  # fmt: skip
    if not int8:
        return _onnx_session_runner(float_path, threads)
    calibration = []
    if int8 == "static":
        calibration, _ = split_held_out(face_inputs(model_config, None, (resolution, resolution)))
    path = Path(folder) / f"peer_{resolution}_int8_{int8}.onnx"
    quantize_to_int8(float_path, path, calibration, int8)
    return _onnx_session_runner(path, threads)


def _peer_litert_runner(peer: PeerBiSeNet, resolution: int, threads: int | None, folder: str) -> Callable[..., object]:
    """The peer converted to float32 LiteRT by the same function as SegFace's LiteRT exports."""
    from segface_hf.release.litert_export import litert_runner, write_litert_module

    path = Path(folder) / f"peer_{resolution}.tflite"
    write_litert_module(peer.eval(), {"pixel_values": torch.zeros(1, 3, resolution, resolution)}, path)
    run = litert_runner(path, threads=threads)
    return lambda pixel_values, landmarks=None: run({"pixel_values": pixel_values.cpu().numpy()})


def time_image_processor(
    resolution: int, input_size: tuple[int, int], batch_size: int, warmup: int, repeats: int, seed: int = 0
) -> ProcessorResult:
    """Images per second of `SegFaceImageProcessor` resizing synthetic RGB photos to `resolution`."""
    from segface_hf.image_processing_segface import SegFaceImageProcessor

    processor = SegFaceImageProcessor(size={"height": resolution, "width": resolution})
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (*input_size, 3), dtype=np.uint8) for _ in range(batch_size)]
    timing = time_interleaved({"processor": lambda: processor(images)}, warmup, repeats)["processor"]
    return ProcessorResult(
        resolution=resolution,
        input_size=tuple(input_size),
        batch_size=batch_size,
        median_s=timing.median,
        min_s=timing.minimum,
        max_s=timing.maximum,
        images_per_s=batch_size / timing.median,
    )


# ----------------------------------------------------------------------------------------------------------------
# Face detection


@dataclass
class DetectionResult:
    """Seconds per call of one face detector on one photo."""

    photo: str
    implementation: str
    faces: int
    passes: str
    median_s: float
    min_s: float
    max_s: float


def detection_photos(images_dir: str | os.PathLike) -> dict[str, "PIL.Image.Image"]:
    """The two detection benchmark photos, composed from the shared public-domain photos in `images_dir`: one
    upright face in 640x480 (grace_hopper.jpg), and four faces in 1920x1080 (grace_hopper, astronaut, camera and the
    astronaut mirrored, side by side)."""
    import PIL.Image
    import PIL.ImageOps

    folder = Path(images_dir)
    names = ("grace_hopper.jpg", "astronaut.png", "camera.png")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the detection benchmark needs {', '.join(missing)} in {folder}.")
    grace, astronaut, camera = (PIL.Image.open(folder / name).convert("RGB") for name in names)
    one = PIL.Image.new("RGB", (640, 480), (128, 128, 128))
    one.paste(grace.resize((410, 480), PIL.Image.LANCZOS), (115, 0))
    four = PIL.Image.new("RGB", (1920, 1080), (128, 128, 128))
    for index, photo in enumerate((grace, astronaut, camera, PIL.ImageOps.mirror(astronaut))):
        scaled = photo.resize((480, round(photo.height * 480 / photo.width)), PIL.Image.LANCZOS)
        four.paste(scaled, (480 * index, (1080 - scaled.height) // 2))
    return {"1 face, upright, 640x480": one, "4 faces, upright, 1920x1080": four}


def time_face_detection(images_dir: str | os.PathLike, warmup: int, repeats: int,
                        on_step: Callable[[], None] | None = None) -> list[DetectionResult]:  # fmt: skip
    """Time face detection on [`detection_photos`], interleaved: MTCNN alone (what `SegFaceFaceDetector` ran before
    it searched rotated faces: one upright pass) and `SegFaceFaceDetector` with `rotations` never, auto and always."""
    from facenet_pytorch import MTCNN

    from segface_hf.inference.faces import SegFaceFaceDetector

    mtcnn = MTCNN(min_face_size=20, thresholds=[0.6, 0.7, 0.7], keep_all=True, post_process=False)
    detectors = {f"SegFaceFaceDetector rotations={mode}": SegFaceFaceDetector(rotations=mode)
                 for mode in ("never", "auto", "always")}  # fmt: skip
    results = []
    for photo_name, photo in detection_photos(images_dir).items():

        def alone(photo=photo):
            with torch.inference_mode():
                return mtcnn.detect(photo, landmarks=True)

        functions = {"MTCNN alone, upright (before)": alone}
        functions.update({name: (lambda d=d, p=photo: d.detect(p)) for name, d in detectors.items()})
        timings = time_interleaved(functions, warmup, repeats, on_step=on_step)
        boxes, scores, _ = alone()
        found = {"MTCNN alone, upright (before)": (0 if boxes is None else int((scores >= 0.9).sum()), "upright")}
        for name, detector in detectors.items():
            detections = detector.detect(photo)
            found[name] = (len(detections.faces), ", ".join(detections.passes))
        for name, timing in timings.items():
            results.append(DetectionResult(photo=photo_name, implementation=name, faces=found[name][0],
                                           passes=found[name][1], median_s=timing.median, min_s=timing.minimum,
                                           max_s=timing.maximum))  # fmt: skip
    return results


def _exported_row(name: str) -> bool:
    """Whether row `name` times an exported file (onnxruntime, ExecuTorch or LiteRT, on the CPU), the peer's
    included."""
    return any(runtime in name for runtime in (IMPLEMENTATION_ONNX, IMPLEMENTATION_EXECUTORCH, IMPLEMENTATION_LITERT))


def _case_results(
    spec: ModelSpec,
    dtype_name: str,
    batch_size: int,
    timings: dict[str, TimingResult],
    memory: dict[str, float | None],
    settings: BenchmarkSettings,
) -> list[BenchmarkResult]:
    original = timings.get(IMPLEMENTATION_ORIGINAL)
    results = []
    for name, timing in timings.items():
        low, high = timing.quartiles
        results.append(
            BenchmarkResult(
                model=spec.name,
                resolution=spec.resolution,
                implementation=name,
                device="cpu" if _exported_row(name) else settings.device,
                dtype=dtype_name,
                batch_size=batch_size,
                options=(_options_label(settings) if name == IMPLEMENTATION_FAST
                         else "torch.compile" if name == IMPLEMENTATION_PYTORCH_INT8 else "eager"),  # fmt: skip
                warmup=settings.warmup,
                repeats=settings.repeats,
                median_s=timing.median,
                min_s=timing.minimum,
                max_s=timing.maximum,
                p25_s=low,
                p75_s=high,
                images_per_s=batch_size / timing.median,
                peak_memory_mib=memory[name],
                samples_s=timing.samples,
                speedup_vs_original=None if original is None else original.median / timing.median,
            )
        )
    return results


def _implementations(
    spec: ModelSpec, dtype: torch.dtype, settings: BenchmarkSettings, model: nn.Module, original, exported_runs,
    peer=None,
) -> dict[str, Callable[..., object]]:
    """The callables `(pixel_values, landmarks=None)` to time for one model and dtype."""
    device = torch.device(settings.device)
    implementations: dict[str, Callable[..., object]] = {
        IMPLEMENTATION_FAST: _prepare_fast(model, settings, device, dtype)
    }
    if settings.reference_path:
        reference = build_segface(spec, settings.seed).to(device, dtype)
        reference.fast_path = False
        implementations[IMPLEMENTATION_REFERENCE] = lambda pixel_values, landmarks=None: (
            reference(pixel_values, landmarks=landmarks).logits
        )
    if original is not None:
        implementations[IMPLEMENTATION_ORIGINAL] = original.to(device, dtype)
    if peer is not None:
        implementations[f"{PEER_NAME} (PyTorch)"] = peer.to(device, dtype)
    if dtype == torch.float32:
        implementations.update(exported_runs)
    return implementations


def _measure_model(
    spec: ModelSpec,
    settings: BenchmarkSettings,
    report: BenchmarkReport,
    scratch: str,
    progress: Callable[[str], None],
    on_step: Callable[[], None] | None,
) -> None:
    """Every dtype and batch size of one model, all its implementations interleaved; results go into `report`."""
    device = torch.device(settings.device)
    base = build_segface(spec, settings.seed)
    original = None
    if settings.original_code is not None:
        if spec.variant is None:
            report.skipped.append(f"{spec.name}: the original runs only for official variants")
        else:
            original = build_original(settings.original_code, spec.variant, spec.resolution, settings.seed)
    peer = build_peer(settings.peer_code, settings.seed) if settings.peer_code is not None else None
    exported_runs = {}
    exporting = settings.onnx or settings.onnx_int8 or settings.executorch or settings.litert or settings.pytorch_int8
    if exporting and "float32" not in settings.dtypes:
        report.skipped.append(f"{spec.name}: the exported files run float32 inputs only")
    else:
        if settings.onnx:
            progress(f"{spec.name}@{spec.resolution}: exporting to ONNX")
            exported_runs[IMPLEMENTATION_ONNX] = _onnx_runner(base, spec.resolution, settings.threads, scratch)
        for mode in settings.onnx_int8:
            progress(f"{spec.name}@{spec.resolution}: exporting to ONNX int8 ({mode})")
            exported_runs[f"{IMPLEMENTATION_ONNX} int8 {mode}"] = _onnx_runner(
                base, spec.resolution, settings.threads, scratch, int8=mode
            )
        for precision in settings.executorch:
            progress(f"{spec.name}@{spec.resolution}: exporting to ExecuTorch ({precision})")
            exported_runs[f"{IMPLEMENTATION_EXECUTORCH} {precision}"] = _exported_runner(
                base, spec.resolution, settings.threads, scratch, EXECUTORCH_FORMATS[precision]
            )
        for precision in settings.litert:
            progress(f"{spec.name}@{spec.resolution}: converting to LiteRT ({precision})")
            exported_runs[f"{IMPLEMENTATION_LITERT} {precision}"] = _exported_runner(
                base, spec.resolution, settings.threads, scratch, LITERT_FORMATS[precision]
            )
        if settings.pytorch_int8:
            progress(f"{spec.name}@{spec.resolution}: quantizing to int8 in PyTorch")
            exported_runs[IMPLEMENTATION_PYTORCH_INT8] = pytorch_int8_runner(base, spec.resolution)
        if peer is not None:
            for mode in ([None] if settings.onnx else []) + list(settings.onnx_int8):
                progress(f"{PEER_NAME}@{spec.resolution}: exporting to ONNX" + (f" int8 ({mode})" if mode else ""))
                name = f"{PEER_NAME} {IMPLEMENTATION_ONNX}" + (f" int8 {mode}" if mode else " float32")
                exported_runs[name] = _peer_onnx_runner(peer, base.config, spec.resolution, settings.threads,
                                                        scratch, int8=mode)  # fmt: skip
            for precision in settings.litert:
                if precision == "int8":  # litert-int8 quantizes linear layers only (litert_export's docstring)
                    report.skipped.append(f"{PEER_NAME} {IMPLEMENTATION_LITERT} int8: litert-int8 quantizes "
                                          "linear layers only, and BiSeNet runs none")  # fmt: skip
                    continue
                progress(f"{PEER_NAME}@{spec.resolution}: converting to LiteRT ({precision})")
                exported_runs[f"{PEER_NAME} {IMPLEMENTATION_LITERT} {precision}"] = _peer_litert_runner(
                    peer, spec.resolution, settings.threads, scratch
                )
    for dtype_name in settings.dtypes:
        dtype = DTYPES[dtype_name]
        model = build_segface(spec, settings.seed) if len(settings.dtypes) > 1 else base
        implementations = _implementations(spec, dtype, settings, model, original, exported_runs, peer)
        for batch_size in settings.batch_sizes:
            progress(f"{spec.name}@{spec.resolution} {dtype_name} batch {batch_size}")
            inputs = _inputs(model.config, batch_size, spec.resolution, device, dtype, settings.seed)
            case = dict(implementations)
            if settings.cuda_graphs and not settings.compile:
                case[IMPLEMENTATION_FAST] = _graphed(case[IMPLEMENTATION_FAST], inputs)
            timings, memory = _time_case(case, inputs, settings, device, on_step)
            report.results.extend(_case_results(spec, dtype_name, batch_size, timings, memory, settings))


def run_benchmarks(
    settings: BenchmarkSettings,
    progress: Callable[[str], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> BenchmarkReport:
    """Measure everything `settings` asks for.

    Args:
        settings ([`BenchmarkSettings`]):
            What to measure.
        progress (`Callable[[str], None]`, *optional*):
            Called with a short description before each case.
        on_step (`Callable[[], None]`, *optional*):
            Called after every timed call (e.g. to advance a progress bar).
    """
    settings.validate()
    progress = progress or (lambda text: None)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    report = BenchmarkReport(environment=environment_info(settings.device), settings=asdict(settings))
    specs = model_specs(settings)
    with tempfile.TemporaryDirectory(prefix="segface-bench-") as scratch:
        for spec in specs:
            _measure_model(spec, settings, report, scratch, progress, on_step)
    if settings.image_processor:
        for resolution in sorted({spec.resolution for spec in specs}):
            progress(f"image processor @{resolution}")
            report.image_processor.append(
                time_image_processor(
                    resolution,
                    settings.processor_input_size,
                    max(settings.batch_sizes),
                    settings.warmup,
                    settings.repeats,
                    settings.seed,
                )
            )
    if settings.detection:
        progress("face detection")
        images = settings.detection_images or Path(__file__).resolve().parents[1].parent / "shared" / "images"
        report.detection = time_face_detection(images, settings.warmup, settings.repeats, on_step=on_step)
    if hasattr(os, "getloadavg"):
        report.environment["load_average_end"] = list(os.getloadavg())
    return report


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def format_markdown(report: BenchmarkReport) -> str:
    """The report as markdown: the environment, one table of model timings, one of the image processor."""
    env = report.environment
    gpu = f", GPU {env['gpu']} (CUDA {env['cuda']})" if "gpu" in env else ""
    software = (
        f"Software: Python {env['python']}, torch {env['torch']} ({env['torch_threads']} CPU threads), transformers "
        f"{env['transformers']}, timm {env['timm']}, onnxruntime {env['onnxruntime'] or 'not installed'}"
    )
    date = (
        f"Date: {env['date_utc']}; warm-up {report.settings['warmup']} calls, then {report.settings['repeats']} "
        "timed calls per implementation, interleaved"
    )
    if env.get("load_average"):
        end = env.get("load_average_end")
        date += f"; load average {env['load_average'][0]:.2f} at the start" + (
            f", {end[0]:.2f} at the end" if end else ""
        )
    header = (
        "| model | size | implementation | device | dtype | options | batch | median ms | min–max ms | "
        "images/s | peak MiB | vs original |"
    )
    lines = [f"Machine: {env['cpu']} ({env['logical_cpus']} logical CPUs), {env['platform']}{gpu}", software, date]
    if report.results:  # no model table for a detection-only run
        lines += ["", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.results:
        memory = "—" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.0f}"
        speedup = "—" if r.speedup_vs_original is None else f"{r.speedup_vs_original:.2f}x"
        lines.append(
            f"| {r.model} | {r.resolution} | {r.implementation} | {r.device} | {r.dtype} | {r.options} | "
            f"{r.batch_size} | {_ms(r.median_s)} | {_ms(r.min_s)}–{_ms(r.max_s)} | {r.images_per_s:.2f} | "
            f"{memory} | {speedup} |"
        )
    if report.image_processor:
        lines += [
            "",
            "| image processor | input | batch | median ms | min–max ms | images/s |",
            "|---|---|---|---|---|---|",
        ]
        for p in report.image_processor:
            lines.append(
                f"| resize to {p.resolution} | {p.input_size[0]}x{p.input_size[1]} RGB | {p.batch_size} | "
                f"{_ms(p.median_s)} | {_ms(p.min_s)}–{_ms(p.max_s)} | {p.images_per_s:.1f} |"
            )
    if report.detection:
        lines += [
            "",
            "| face detection | photo | faces | passes | median ms | min–max ms | vs MTCNN alone |",
            "|---|---|---|---|---|---|---|",
        ]
        alone = {d.photo: d.median_s for d in report.detection if d.passes == "upright" and "alone" in d.implementation}
        for d in report.detection:
            ratio = f"{d.median_s / alone[d.photo]:.2f}x" if d.photo in alone else "—"
            lines.append(f"| {d.implementation} | {d.photo} | {d.faces} | {d.passes} | {_ms(d.median_s)} | "
                         f"{_ms(d.min_s)}–{_ms(d.max_s)} | {ratio} |")  # fmt: skip
    for note in report.skipped:
        lines.append(f"\nSkipped: {note}")
    return "\n".join(lines) + "\n"


__all__ = [
    "BenchmarkReport",
    "BenchmarkResult",
    "BenchmarkSettings",
    "OriginalSegFace",
    "DetectionResult",
    "ProcessorResult",
    "SegFaceBenchmarkError",
    "TimingResult",
    "build_original",
    "build_peer",
    "build_segface",
    "environment_info",
    "format_markdown",
    "peak_memory_mib",
    "run_benchmarks",
    "detection_photos",
    "time_face_detection",
    "time_image_processor",
    "time_interleaved",
]
