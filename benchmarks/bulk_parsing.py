"""Throughput of `segface predict` in 1 process and in N processes (`accelerate launch`), one CPU thread each.

The model is MobileNetV3 at 512 with random weights; the inputs are the one-face photos of ../shared/images, copied
as often as needed; every run detects the faces (MTCNN) and writes the label PNGs. Each configuration parses a small
and a large folder; images/s = (large - small) / (time large - time small), which takes the start-up (imports, model
loading, process-group set-up) out. The configurations alternate within each repeat; the median is reported, with
the load average before and after (the machine may be shared).

    segface benchmark bulk --processes 1 2 --small 6 --large 30 --repeats 3 --markdown bulk.md
    python benchmarks/bulk_parsing.py --processes 1 2   # the same
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = REPO_ROOT.parent / "shared" / "images"


def build_model(folder: Path) -> None:
    import torch

    from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor

    torch.manual_seed(0)
    SegFaceForSemanticSegmentation(SegFaceConfig.from_variant("mobilenet_celeba_512")).eval().save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 512, "width": 512}).save_pretrained(folder)


def make_inputs(folder: Path, count: int) -> None:
    photos = sorted(PHOTOS.iterdir())
    folder.mkdir(parents=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        shutil.copy(photo, folder / f"{index:04d}{photo.suffix}")


def command(processes: int, inputs: Path, model: Path, output: Path, extra: list[str]) -> list[str]:
    predict = ["-m", "segface_hf.cli", "predict", str(inputs), "--model", str(model), "--output-dir", str(output),
               "--quiet", *extra]  # fmt: skip
    if processes == 1:
        return [sys.executable, *predict]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            *predict]  # fmt: skip


def timed_run(processes: int, inputs: Path, model: Path, scratch: Path, extra: list[str]) -> float:
    output = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command(processes, inputs, model, output, extra), env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed ({processes} processes): {done.stderr[-2000:]}")
    shutil.rmtree(output)
    return elapsed


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--small", type=int, default=6, help="images in the small folder (default: 6)")
    parser.add_argument("--large", type=int, default=30, help="images in the large folder (default: 30)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more segface predict options")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="segface-bulk-bench-"))
    try:
        model = scratch / "model"
        build_model(model)
        small, large = scratch / "small", scratch / "large"
        make_inputs(small, args.small)
        make_inputs(large, args.large)
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        timed_run(1, small, model, scratch, args.extra)  # warm-up: file caches, compiled kernels
        times: dict[int, list[float]] = {n: [] for n in args.processes}
        for _ in range(args.repeats):
            for processes in args.processes:  # side by side
                t_small = timed_run(processes, small, model, scratch, args.extra)
                t_large = timed_run(processes, large, model, scratch, args.extra)
                times[processes].append((args.large - args.small) / (t_large - t_small))
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    medians = {n: statistics.median(values) for n, values in times.items()}
    base = medians[args.processes[0]]
    report = {"images_per_second": times, "median": medians, "loadavg_before": load_before,
              "loadavg_after": load_after, "cpus": os.cpu_count(), "small": args.small, "large": args.large}  # fmt: skip
    lines = ["| processes (1 thread each) | images/s (median) | runs | vs 1 process |", "|---|---|---|---|"]
    for processes, median in medians.items():
        runs = ", ".join(f"{v:.2f}" for v in times[processes])
        lines.append(f"| {processes} | {median:.2f} | {runs} | {median / base:.2f}x |")
    lines.append(f"\nload average before: {' '.join(load_before)}; after: {' '.join(load_after)}; "
                 f"{os.cpu_count()} CPUs")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
