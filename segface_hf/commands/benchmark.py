"""`segface benchmark`: time SegFace (latency at batch 1, throughput at batch 8), optionally beside the original code
and onnxruntime, every implementation interleaved in one process.

    segface benchmark --variants mobilenet_celeba_512 swinb_celeba_512 --threads 2 \\
        --original-code /path/to/SegFace --onnx --image-processor --json bench.json --markdown bench.md
    segface benchmark --variants swinb_celeba_512 --device cuda --dtypes float32 bfloat16 float16
    segface benchmark --model ./segface-mobilenet --resolutions 512 --compile
    segface benchmark video --frames 30 --repeats 2 --memory-frames        # parse_video vs photo by photo
    segface benchmark bulk --processes 1 2                                 # segface predict in 1 and 2 processes
    segface benchmark training-memory --help                               # gradient checkpointing's peak memory

The benchmarks live in `benchmarks/` of a source checkout, outside the installed package: `harness.py` for the
model timings (it imports the original SegFace code from the folder given with --original-code), and one module per
suite named above (`segface benchmark SUITE --help` lists its options); see those files for what is measured and how.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HELP = "time the model (and the original code, onnxruntime) side by side, or a suite (video, bulk, training-memory)"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# `segface benchmark SUITE ...`: the module of benchmarks/ that measures it (each has main(argv, prog)).
SUITES = {"video": "video", "bulk": "bulk_parsing", "training-memory": "training_memory"}


def load_benchmark(name: str = "harness"):
    """The module `benchmarks.<name>` of the source checkout this package is installed from."""
    module_name = f"benchmarks.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"segface benchmark runs from a source checkout of segface-hf: {path} is missing "
                                "(install the package with `pip install -e .` from the repository).")  # fmt: skip
    try:
        module = importlib.import_module(module_name)  # the checkout is on sys.path (its root is the working directory)
    except ImportError:
        module = None
    if module is None or Path(module.__file__).resolve() != path.resolve():  # not on sys.path, or another package's
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return module


def load_harness():
    """The `benchmarks.harness` module of the source checkout."""
    return load_benchmark("harness")


class SegFaceBenchmarkSuite:
    """`segface benchmark SUITE ...`: hands the suite's arguments to its module's own parser."""

    def __init__(self, module_name: str):
        self.module_name = module_name

    def run_argv(self, argv: list[str], prog: str) -> int:
        suite, *arguments = argv
        return load_benchmark(self.module_name).main(arguments, prog=f"{prog} {suite}")


def configure(parser: argparse.ArgumentParser) -> None:
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", help="instead of the model timings, run a suite: "
                                   + ", ".join(SUITES))  # fmt: skip
    for suite, module_name in SUITES.items():
        suites.add_parser(suite, add_help=False).set_defaults(passthrough=SegFaceBenchmarkSuite(module_name))
    parser.add_argument("--variants", nargs="*", default=[], help="official variants, built with random weights")
    parser.add_argument("--model", dest="model_paths", action="append", default=[],
                        help="a saved model folder (repeatable)")  # fmt: skip
    parser.add_argument("--resolutions", nargs="*", type=int, help="square input sizes (default: each model's own)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="float32, bfloat16 and/or float16")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch and onnxruntime")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="default: 1 (latency) and 8")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (default: 5)")
    parser.add_argument("--compile", action="store_true", help="torch.compile this package's model")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and inputs")
    parser.add_argument("--cuda-graphs", action="store_true", help="capture this package's model in a CUDA graph")
    parser.add_argument("--reference-path", action="store_true", help="also time the reference path")
    parser.add_argument("--original-code", help="folder with the original SegFace network/ package, to compare")
    parser.add_argument("--onnx", action="store_true", help="also export to ONNX and time onnxruntime (CPU)")
    parser.add_argument("--onnx-int8", nargs="+", default=[], choices=["static", "dynamic"],
                        help="also time onnxruntime int8 exports made with these quantization modes")  # fmt: skip
    parser.add_argument("--executorch", nargs="+", default=[], choices=["float32", "int8"],
                        help="also time ExecuTorch (XNNPACK) exports of these precisions")  # fmt: skip
    parser.add_argument("--litert", nargs="+", default=[], choices=["float32", "int8"],
                        help="also time LiteRT exports of these precisions (and the peer's float32)")
    parser.add_argument("--pytorch-int8", action="store_true", help="also time int8 in PyTorch (PT2E with the x86 "
                        "inductor quantizer, calibrated on the bundled photos' faces, torch.compile)")  # fmt: skip
    parser.add_argument("--image-processor", action="store_true", help="also time the image processor")
    parser.add_argument("--detection", action="store_true", help="also time face detection (MTCNN alone, before the "
                        "rotation search, and SegFaceFaceDetector with rotations never/auto/always) on a one-face "
                        "640x480 and a four-face 1920x1080 photo made from ../shared/images")  # fmt: skip
    parser.add_argument("--detection-images", help="folder with grace_hopper.jpg, astronaut.png and camera.png "
                        "(default: ../shared/images of the checkout)")  # fmt: skip
    parser.add_argument("--peer-code", help="a checkout of github.com/yakhyo/face-parsing: time its BiSeNet-ResNet18 "
                        "(random weights) beside each model, in PyTorch and through the same onnxruntime paths")  # fmt: skip
    parser.add_argument("--json", dest="json_path", help="write the full report as JSON here")
    parser.add_argument("--markdown", dest="markdown_path", help="write the tables as markdown here")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    harness = load_harness()
    settings = harness.BenchmarkSettings(
        variants=args.variants, model_paths=args.model_paths, resolutions=args.resolutions, device=args.device,
        dtypes=args.dtypes, threads=args.threads, batch_sizes=args.batch_sizes, warmup=args.warmup,
        repeats=args.repeats, compile=args.compile, channels_last=args.channels_last, cuda_graphs=args.cuda_graphs,
        reference_path=args.reference_path, original_code=args.original_code, peer_code=args.peer_code,
        onnx=args.onnx, onnx_int8=args.onnx_int8, executorch=args.executorch, litert=args.litert,
        pytorch_int8=args.pytorch_int8, image_processor=args.image_processor, detection=args.detection,
        detection_images=args.detection_images,
    )  # fmt: skip
    settings.validate()
    bar = tqdm(desc="timed calls", unit="call", file=sys.stderr)
    try:
        report = harness.run_benchmarks(settings, progress=lambda text: bar.set_postfix_str(text), on_step=bar.update)
    finally:
        bar.close()
    markdown = report.to_markdown()
    print(markdown)
    for path, text in ((args.json_path, report.to_json()), (args.markdown_path, markdown)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return 0
