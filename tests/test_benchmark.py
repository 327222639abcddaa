"""The benchmark: its script end to end on a tiny model, the interleaved timer, memory, and the original's loader."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, scaled_model, tiny_config

from segface_hf import SegFaceForSemanticSegmentation
from benchmarks.harness import (
    BenchmarkReport,
    BenchmarkResult,
    BenchmarkSettings,
    DetectionResult,
    SegFaceBenchmarkError,
    build_original,
    build_peer,
    run_benchmarks,
    detection_photos,
    format_markdown,
    peak_memory_mib,
    pytorch_int8_runner,
    time_interleaved,
)


def test_script_runs_end_to_end_on_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    SegFaceForSemanticSegmentation(tiny_config("timm-mobilenet")).save_pretrained(tmp_path / "tiny")
    json_path, markdown_path = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--model", str(tmp_path / "tiny"),
         "--threads", "1", "--batch-sizes", "1", "2", "--warmup", "1", "--repeats", "3", "--reference-path",
         "--onnx", "--onnx-int8", "dynamic", "--image-processor", "--json", str(json_path), "--markdown",
         str(markdown_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(json_path.read_text())

    environment = report["environment"]
    assert environment["torch"] == torch.__version__ and environment["torch_threads"] == 1
    assert environment["device"] == "cpu" and environment["logical_cpus"] >= 1

    results = report["results"]
    seen = {(r["implementation"], r["batch_size"]) for r in results}
    names = ("segface-hf", "segface-hf reference path", "onnxruntime", "onnxruntime int8 dynamic")
    assert seen == {(name, batch) for name in names for batch in (1, 2)}
    for r in results:
        assert r["model"] == "tiny" and r["resolution"] == 64 and r["dtype"] == "float32"
        assert len(r["samples_s"]) == 3 and all(s > 0 for s in r["samples_s"])
        assert r["min_s"] <= r["p25_s"] <= r["median_s"] <= r["p75_s"] <= r["max_s"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / r["median_s"])
        assert r["speedup_vs_original"] is None  # no original code was given
        if r["implementation"].startswith("onnxruntime"):
            assert r["peak_memory_mib"] is None and r["device"] == "cpu"
        else:
            assert r["peak_memory_mib"] is not None
    (processor,) = report["image_processor"]
    assert processor["resolution"] == 64 and processor["batch_size"] == 2 and processor["images_per_s"] > 0

    markdown = markdown_path.read_text()
    assert "| model | size | implementation |" in markdown and "| tiny | 64 | onnxruntime | cpu |" in markdown
    assert "(1 logical CPUs)" in markdown or "logical CPUs" in markdown
    assert markdown in result.stdout


def test_interleaved_timer_alternates_implementations_after_warmup():
    calls = []
    functions = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = time_interleaved(functions, warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(timings[name].samples) for name in "ab"] == [3, 3]
    assert timings["a"].minimum <= timings["a"].median <= timings["a"].maximum


def test_peak_memory_sees_a_large_temporary_allocation():
    def allocate():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        return float(block[-1])

    assert peak_memory_mib(allocate, torch.device("cpu")) >= 48


def test_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="nothing to measure"):
        BenchmarkSettings().validate()
    with pytest.raises(ValueError, match="unknown dtype"):
        BenchmarkSettings(variants=["mobilenet_celeba_512"], dtypes=["float64"]).validate()
    with pytest.raises(ValueError, match="CUDA graphs need --device cuda"):
        BenchmarkSettings(variants=["mobilenet_celeba_512"], cuda_graphs=True).validate()
    with pytest.raises(FileNotFoundError, match="network/models/segface_celeb.py"):
        BenchmarkSettings(variants=["mobilenet_celeba_512"], original_code=str(tmp_path)).validate()
    cuda = BenchmarkSettings(variants=["mobilenet_celeba_512"], device="cuda")
    if torch.cuda.is_available():
        cuda.validate()
    else:
        with pytest.raises(SegFaceBenchmarkError, match="no CUDA device"):
            cuda.validate()


def test_script_reports_bad_settings_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--variants", "mobilenet_celeba_512",
         "--original-code", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("segface benchmark: error:") and len(result.stderr.strip().splitlines()) == 1


# A stand-in with the original's layout and calling convention: it builds a torchvision model with
# pretrained=True (which would try to download) and returns logits of the head's size.
_STAND_IN = '''
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large


class SegFaceCeleb(nn.Module):
    def __init__(self, input_resolution, model):
        super().__init__()
        assert model == "mobilenet", model
        self.backbone = mobilenet_v3_large(pretrained=True).features
        self.head = nn.Conv2d(960, 19, 1)

    def forward(self, x, labels, dataset):
        assert labels["lnm_seg"].shape == (x.shape[0], 5, 2) and dataset.tolist() == [0] * x.shape[0]
        logits = self.head(self.backbone(x))
        return nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
'''


def test_original_code_is_built_without_downloading_weights(tmp_path, monkeypatch):
    import torchvision.models

    package = tmp_path / "network" / "models"
    package.mkdir(parents=True)
    (tmp_path / "network" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "segface_celeb.py").write_text(textwrap.dedent(_STAND_IN))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [n for n in sys.modules if n == "network" or n.startswith("network.")]:
        monkeypatch.delitem(sys.modules, name)
    constructor = torchvision.models.mobilenet_v3_large

    def no_download(*args, **kwargs):
        raise AssertionError("a pretrained download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    try:
        original = build_original(tmp_path, "mobilenet_celeba_512", 64)
        assert torchvision.models.mobilenet_v3_large is constructor  # restored
        with torch.no_grad():
            logits = original(torch.randn(2, 3, 64, 64))
        assert logits.shape == (2, 19, 64, 64)
        assert not original.training
    finally:
        for name in [n for n in sys.modules if n == "network" or n.startswith("network.")]:
            del sys.modules[name]


# A stand-in with the BiSeNet peer's layout (github.com/yakhyo/face-parsing): `models/resnet.py` whose resnet18
# downloads ImageNet weights by default, and `models/bisenet.py` whose BiSeNet calls it and returns three heads.
_PEER_RESNET = '''
from torch import nn


def resnet18(*, weights="DEFAULT", **kwargs):
    if weights is not None:
        raise AssertionError("a pretrained download was attempted")
    return nn.Conv2d(3, 8, 3, stride=8, padding=1)
'''
_PEER_BISENET = '''
import torch.nn.functional as F
from torch import nn

from models.resnet import resnet18


class BiSeNet(nn.Module):
    def __init__(self, num_classes, backbone_name="resnet18"):
        super().__init__()
        assert backbone_name == "resnet18", backbone_name
        self.backbone = resnet18()
        self.heads = nn.ModuleList(nn.Conv2d(8, num_classes, 1) for _ in range(3))

    def forward(self, x):
        features = self.backbone(x)
        return tuple(F.interpolate(head(features), x.shape[2:], mode="bilinear", align_corners=True)
                     for head in self.heads)
'''


def test_the_bisenet_peer_is_built_without_weights_and_timed_beside_the_model(tmp_path, monkeypatch):
    (tmp_path / "peer" / "models").mkdir(parents=True)
    (tmp_path / "peer" / "models" / "__init__.py").write_text("")
    (tmp_path / "peer" / "models" / "resnet.py").write_text(textwrap.dedent(_PEER_RESNET))
    (tmp_path / "peer" / "models" / "bisenet.py").write_text(textwrap.dedent(_PEER_BISENET))
    monkeypatch.setattr(sys, "path", list(sys.path))
    peer_modules = lambda: [n for n in sys.modules if n == "models" or n.startswith("models.")]  # noqa: E731
    for name in peer_modules():
        monkeypatch.delitem(sys.modules, name)
    try:
        peer = build_peer(tmp_path / "peer")
        assert sys.modules["models.bisenet"].resnet18 is sys.modules["models.resnet"].resnet18  # restored
        with torch.no_grad():
            pixel_values = torch.randn(2, 3, 64, 64)
            assert torch.equal(peer(pixel_values), peer.model(pixel_values)[0])  # the parsing head
        assert peer(pixel_values).shape == (2, 19, 64, 64) and not peer.training

        torch.manual_seed(0)
        SegFaceForSemanticSegmentation(tiny_config("timm-mobilenet")).save_pretrained(tmp_path / "tiny")
        settings = BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], peer_code=str(tmp_path / "peer"),
                                     onnx=True, onnx_int8=["dynamic"], litert=["float32", "int8"], threads=1,
                                     batch_sizes=[1], warmup=0, repeats=1)  # fmt: skip
        settings.validate()
        report = run_benchmarks(settings)
        rows = {r.implementation: r for r in report.results}
        assert set(rows) == {"segface-hf", "onnxruntime", "onnxruntime int8 dynamic", "litert float32", "litert int8",
                             "BiSeNet-ResNet18 (PyTorch)", "BiSeNet-ResNet18 onnxruntime float32",
                             "BiSeNet-ResNet18 onnxruntime int8 dynamic", "BiSeNet-ResNet18 litert float32"}
        # litert-int8 quantizes linear layers only: BiSeNet's file would be its float32 one, so it is not timed.
        assert report.skipped == ["BiSeNet-ResNet18 litert int8: litert-int8 quantizes linear layers only, and "
                                  "BiSeNet runs none"]  # fmt: skip
        assert rows["BiSeNet-ResNet18 (PyTorch)"].peak_memory_mib is not None
        assert rows["BiSeNet-ResNet18 onnxruntime float32"].peak_memory_mib is None
        assert all(r.resolution == 64 and r.device == "cpu" for r in report.results)
    finally:
        for name in peer_modules():
            del sys.modules[name]
    with pytest.raises(FileNotFoundError, match="models/bisenet.py"):
        BenchmarkSettings(variants=["mobilenet_celeba_512"], peer_code=str(tmp_path)).validate()


def test_markdown_reports_the_speedup_over_the_original():
    def result(implementation, median, speedup):
        return BenchmarkResult(
            model="mobilenet_celeba_512", resolution=512, implementation=implementation, device="cpu",
            dtype="float32", batch_size=1, options="eager", warmup=1, repeats=2, median_s=median, min_s=median,
            max_s=median, p25_s=median, p75_s=median, images_per_s=1 / median, peak_memory_mib=12.0,
            samples_s=[median, median], speedup_vs_original=speedup,
        )  # fmt: skip

    environment = {"cpu": "Test CPU", "logical_cpus": 2, "platform": "Linux", "python": "3.11", "torch": "2.x",
                   "torch_threads": 2, "transformers": "5", "timm": "1", "onnxruntime": None,
                   "date_utc": "2025-01-01 00:00 UTC"}  # fmt: skip
    report = BenchmarkReport(environment=environment, settings={"warmup": 1, "repeats": 2},
                             results=[result("segface-hf", 0.1, 4.0), result("original", 0.4, 1.0)])  # fmt: skip
    markdown = format_markdown(report)
    assert "| mobilenet_celeba_512 | 512 | segface-hf | cpu | float32 | eager | 1 | 100.0 | 100.0–100.0 | 10.00 | 12 | 4.00x |" in markdown
    assert "| original | cpu |" in markdown and "1.00x" in markdown
    assert "Test CPU (2 logical CPUs)" in markdown and "onnxruntime not installed" in markdown


def test_detection_timing_photos_and_table():
    from conftest import require_shared

    photos = detection_photos(require_shared("images"))
    assert [photo.size for photo in photos.values()] == [(640, 480), (1920, 1080)]
    BenchmarkSettings(detection=True).validate()  # detection alone is something to measure

    def row(implementation, passes, median):
        return DetectionResult(photo="1 face, upright, 640x480", implementation=implementation, faces=1,
                               passes=passes, median_s=median, min_s=median, max_s=median)  # fmt: skip

    environment = {"cpu": "Test CPU", "logical_cpus": 2, "platform": "Linux", "python": "3.11", "torch": "2.x",
                   "torch_threads": 2, "transformers": "5", "timm": "1", "onnxruntime": None,
                   "date_utc": "2025-01-01 00:00 UTC"}  # fmt: skip
    report = BenchmarkReport(environment=environment, settings={"warmup": 1, "repeats": 2}, detection=[
        row("MTCNN alone, upright (before)", "upright", 0.05),
        row("SegFaceFaceDetector rotations=auto", "upright", 0.06)])  # fmt: skip
    markdown = format_markdown(report)
    assert "| SegFaceFaceDetector rotations=auto | 1 face, upright, 640x480 | 1 | upright | 60.0 | 60.0–60.0 | 1.20x |" in markdown
    assert "| model | size |" not in markdown  # no empty model table


def test_executorch_programs_are_timed_beside_the_model(tmp_path):
    """`--executorch float32` exports the model with `segface export --format executorch` and times the program in the
    ExecuTorch runtime, at batch sizes other than the traced one."""
    torch.manual_seed(0)
    SegFaceForSemanticSegmentation(tiny_config("resnet")).save_pretrained(tmp_path / "tiny")
    settings = BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], executorch=["float32"], threads=1,
                                 batch_sizes=[1, 3], warmup=0, repeats=1)  # fmt: skip
    settings.validate()
    report = run_benchmarks(settings)
    rows = {(r.implementation, r.batch_size): r for r in report.results}
    assert set(rows) == {(name, batch) for name in ("segface-hf", "executorch float32") for batch in (1, 3)}
    for batch in (1, 3):
        row = rows["executorch float32", batch]
        assert row.device == "cpu" and row.median_s > 0 and row.peak_memory_mib is not None
    with pytest.raises(ValueError, match=r"unknown ExecuTorch precision\(s\) \['fp16'\]"):
        BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], executorch=["fp16"]).validate()


def test_suites_run_as_segface_benchmark_subcommands(tmp_path, capsys):
    from segface_hf.cli import main

    # The video suite with nothing to measure still parses its own options and reports the load average.
    assert main(["benchmark", "video", "--skip-throughput", "--memory-frames"]) == 0
    assert "load average before" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # its own parser, under its segface name
        main(["benchmark", "bulk", "--no-such-option"])
    assert stop.value.code == 2
    assert "segface benchmark bulk: error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_litert_files_are_timed_beside_the_model(tmp_path):
    """`--litert int8` converts the model with `segface export --format litert-int8` and times the file in the LiteRT
    interpreter, a batch of three face by face."""
    torch.manual_seed(0)
    SegFaceForSemanticSegmentation(tiny_config("resnet")).save_pretrained(tmp_path / "tiny")
    settings = BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], litert=["int8"], threads=1,
                                 batch_sizes=[1, 3], warmup=0, repeats=1)  # fmt: skip
    settings.validate()
    report = run_benchmarks(settings)
    rows = {(r.implementation, r.batch_size): r for r in report.results}
    assert set(rows) == {(name, batch) for name in ("segface-hf", "litert int8") for batch in (1, 3)}
    assert all(rows["litert int8", batch].median_s > 0 for batch in (1, 3))
    with pytest.raises(ValueError, match=r"unknown LiteRT precision\(s\) \['fp16'\]"):
        BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], litert=["fp16"]).validate()


def test_pytorch_int8_is_timed_beside_the_model_and_reproduces_it(tmp_path):
    """`--pytorch-int8`: PT2E with the x86 inductor quantizer, compiled, timed at batch sizes other than the captured
    one; its logits stay within a few percent of the float32 model's (the tiny model's logits are nearly tied, so the
    distance, not the argmax, is what is held)."""
    model = scaled_model("resnet", upscale_channels=[16, 8]).eval()
    model.save_pretrained(tmp_path / "tiny")
    settings = BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], pytorch_int8=True, threads=1,
                                 batch_sizes=[2], warmup=0, repeats=1)  # fmt: skip
    settings.validate()
    report = run_benchmarks(settings)
    rows = {r.implementation: r for r in report.results}
    int8 = "segface-hf int8 (PT2E x86 inductor, compiled)"
    assert set(rows) == {"segface-hf", int8}
    assert rows[int8].options == "torch.compile" and rows[int8].median_s > 0

    from segface_hf.release.export import face_inputs

    run = pytorch_int8_runner(model, 64)
    # The bundled photos' faces, which it was calibrated on: what the int8 ranges are for.
    pixels = torch.cat([torch.from_numpy(face["pixel_values"]) for face in face_inputs(model.config, None, (64, 64))])
    with torch.no_grad():
        expected, got = model(pixels).logits, run(pixels)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    with pytest.raises(ValueError, match="run it with --device cpu"):
        BenchmarkSettings(model_paths=[str(tmp_path / "tiny")], pytorch_int8=True, device="cuda").validate()
