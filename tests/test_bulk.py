"""Bulk parsing: resuming, several processes (gloo on CPUs), a SIGKILLed run finished by the next one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_DECODER, require_shared, tiny_backbone_config

from segface_hf import CELEBAMASK_HQ_LABELS, SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.cli import main
from segface_hf.inference.bulk import SegFaceProcesses, read_shard, shard_paths

NUM_IMAGES = 24


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"),
                           id2label=dict(enumerate(CELEBAMASK_HQ_LABELS)), **TINY_DECODER)  # fmt: skip
    SegFaceForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small crops of the shared photos, of different sizes, in two subfolders."""
    folder = tmp_path_factory.mktemp("images")
    photos = [PIL.Image.open(require_shared("images", name)).convert("RGB") for name in ("astronaut.png", "camera.png")]
    for index in range(NUM_IMAGES):
        photo = photos[index % 2]
        box = (index * 7, index * 5, 260 + index * 7, 300 + index * 5)
        path = folder / f"part{index % 2}" / f"img{index:02d}.png"
        path.parent.mkdir(exist_ok=True)
        photo.crop(box).resize((40 + index, 36 + 2 * index)).save(path)
    return folder


def run(capsys, *args):
    code = main(["predict", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def label_maps(output_dir: Path) -> dict[str, np.ndarray]:
    summary = json.loads((output_dir / "summary.json").read_text())
    return {r["outputs"]["labels"]: np.asarray(PIL.Image.open(output_dir / r["outputs"]["labels"]))
            for r in summary["inputs"] if r["status"] == "ok"}  # fmt: skip


def counts(stdout: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) succeeded, (\d+) failed(?:, (\d+) skipped)?", stdout)
    assert found, stdout
    return int(found[1]), int(found[2]), int(found[3] or 0)


def no_leftovers(output_dir: Path) -> None:
    assert not list(output_dir.rglob(".*")), "staging files were left behind"
    assert not shard_paths(output_dir), "summary shards were not merged"


@pytest.fixture(scope="module")
def reference(tiny_model, images, tmp_path_factory):
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["predict", str(images), "--model", str(tiny_model), "--output-dir", str(out), "--no-detect",
                 "--batch-size", "2", "--quiet"]) == 0  # fmt: skip
    maps = label_maps(out)
    assert len(maps) == NUM_IMAGES
    return out, maps


def test_processes_take_disjoint_shares_that_cover_everything():
    shares = [list(SegFaceProcesses(rank=rank, world_size=3).take(range(10))) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_resume_skips_finished_inputs_and_merges_the_summary(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    part0, part1 = images / "part0", images / "part1"
    common = ["--model", tiny_model, "--output-dir", out, "--no-detect"]
    code, stdout, _ = run(capsys, part0, *common)
    assert code == 0 and counts(stdout) == (12, 0, 0)
    first = label_maps(out)
    code, stdout, _ = run(capsys, part0, *common)
    assert code == 0 and counts(stdout) == (0, 0, 12)
    (out / "img04.png").unlink()  # an output that went missing is made again, and only that one
    code, stdout, _ = run(capsys, part0, *common)
    assert counts(stdout) == (1, 0, 11)
    assert all(np.array_equal(first[name], array) for name, array in label_maps(out).items())
    code, stdout, _ = run(capsys, part0, *common, "--overlay")  # outputs asked for that do not exist yet
    assert counts(stdout) == (12, 0, 0) and (out / "img00_overlay.jpg").is_file()
    code, stdout, _ = run(capsys, part0, *common, "--overwrite")
    assert counts(stdout) == (12, 0, 0)
    code, stdout, _ = run(capsys, part1, *common)  # another set of inputs: the summary keeps both
    assert counts(stdout) == (12, 0, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 24 and summary["failed"] == 0
    assert sorted(Path(r["input"]).parent.name for r in summary["inputs"]) == ["part0"] * 12 + ["part1"] * 12
    assert [Path(r["input"]).name for r in summary["inputs"][:12]] == sorted(p.name for p in part1.iterdir())
    no_leftovers(out)


def _launch(*args, processes: int = 2, **popen):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", "-m", "segface_hf.cli", "predict", *map(str, args)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False, **popen)


def _two_best_gap(model_dir: Path, image_path: Path) -> torch.Tensor:
    """Per pixel, the difference between the two highest logits (the model's output bilinearly resized to the
    image, as the label map is made)."""
    model = SegFaceForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = SegFaceImageProcessor.from_pretrained(model_dir)
    image = PIL.Image.open(image_path).convert("RGB")
    with torch.inference_mode():
        logits = model(**processor(image, return_tensors="pt")).logits
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)[0]
    top2 = logits.topk(2, dim=0).values
    return top2[0] - top2[1]


def test_two_processes_give_the_outputs_of_one(tiny_model, images, reference, tmp_path):
    out = tmp_path / "two"
    done = _launch(images, "--model", tiny_model, "--output-dir", out, "--no-detect", "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert counts(done.stdout) == (NUM_IMAGES, 0, 0)  # the main process reports the count of both
    assert "parsing" in done.stderr and done.stderr.count("parsing:   0%") == 1  # one bar, on the main process
    reference_dir, expected = reference
    two = label_maps(out)
    assert sorted(two) == sorted(expected)
    differing = 0
    for name, array in expected.items():
        mismatch = array != two[name]
        if mismatch.any():  # allowed only where the two best classes tie within float tolerance
            gap = _two_best_gap(tiny_model, next(images.rglob(name)))
            assert (gap[torch.from_numpy(mismatch)] < 1e-4).all(), f"{name}: labels differ where no classes tie"
            differing += int(mismatch.sum())
    print(f"1 vs 2 processes: {differing} differing pixels (ties) over {NUM_IMAGES} images")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["input"] for r in summary["inputs"]] == [
        r["input"] for r in json.loads((reference_dir / "summary.json").read_text())["inputs"]
    ]
    no_leftovers(out)


def test_a_killed_run_is_finished_by_the_next(tiny_model, images, reference, tmp_path, capsys):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "segface_hf.cli", "predict", str(images), "--model", str(tiny_model),
               "--output-dir", str(out), "--no-detect", "--batch-size", "2", "--masks", "--overlay", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "summary-shard-00000.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and shard.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished_before = {record["input"] for _, record in read_shard(shard)}
    assert 6 <= len(finished_before) < NUM_IMAGES and not (out / "summary.json").exists()

    code, stdout, stderr = run(capsys, images, "--model", tiny_model, "--output-dir", out, "--no-detect",
                               "--batch-size", "2", "--masks", "--overlay")  # fmt: skip
    assert code == 0, stderr
    # Nothing parsed twice (what the killed run recorded is skipped), nothing missing.
    assert counts(stdout) == (NUM_IMAGES - len(finished_before), 0, len(finished_before))
    _, expected = reference
    resumed = label_maps(out)
    assert sorted(resumed) == sorted(expected)
    assert all(np.array_equal(expected[name], resumed[name]) for name in expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == NUM_IMAGES and len(summary["inputs"]) == NUM_IMAGES
    for record in summary["inputs"]:
        assert (out / record["outputs"]["overlay"]).is_file() and (out / record["outputs"]["masks"]).is_dir()
    no_leftovers(out)
