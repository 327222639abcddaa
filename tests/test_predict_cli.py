"""`segface predict` end to end: outputs, batching, and one test per kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_DECODER, require_shared, tiny_backbone_config

from segface_hf import CELEBAMASK_HQ_LABELS, SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.cli import main

SHARED_PHOTOS = {"astronaut": (512, 512), "camera": (512, 512), "grace_hopper": (512, 600)}  # name: (width, height)


def _save_tiny(folder: Path, num_labels: int) -> Path:
    torch.manual_seed(0)
    labels = dict(enumerate(CELEBAMASK_HQ_LABELS)) if num_labels == 19 else {i: f"part_{i}" for i in range(num_labels)}
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"), id2label=labels, **TINY_DECODER)
    SegFaceForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-model"), 19)


@pytest.fixture(scope="module")
def tiny_model_5(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-model-5"), 5)


@pytest.fixture
def good(tmp_path):
    """A good input image, processed beside each bad one."""
    path = tmp_path / "inputs" / "good.png"
    path.parent.mkdir()
    PIL.Image.open(require_shared("images", "astronaut.png")).resize((96, 80)).save(path)
    return path


def run(capsys, *args):
    code = main(["predict", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "summary.json").read_text())


def _labels(path: Path) -> np.ndarray:
    image = PIL.Image.open(path)
    assert image.mode == "L"
    return np.asarray(image)


def _no_leftovers(output_dir: Path):
    assert not [p for p in output_dir.rglob(".*") if p.name != ".gitkeep"], "staging files were left behind"


def test_end_to_end_on_the_shared_photos(parity_model, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, require_shared("images"), "--model", parity_model, "--output-dir", out,
                               "--overlay", "--masks", "--per-face")  # fmt: skip
    assert code == 0, stderr
    assert "3 succeeded, 0 failed" in stdout
    summary = _summary(out)
    assert summary["succeeded"] == 3 and summary["failed"] == 0
    assert [summary["labels"][str(i)] for i in range(19)] == list(CELEBAMASK_HQ_LABELS)
    for name, size in SHARED_PHOTOS.items():
        labels = _labels(out / f"{name}.png")
        assert labels.shape == size[::-1] and labels.max() < 19
        assert PIL.Image.open(out / f"{name}_overlay.jpg").size == size
        record = next(
            r for r in summary["inputs"] if r["input"].endswith(name + (".jpg" if name == "grace_hopper" else ".png"))
        )
        assert record["status"] == "ok" and record["mode"] == "faces" and len(record["faces"]) == 1
        assert record["width"], record["height"] == size
        assert abs(sum(record["class_fractions"].values()) - 1) < 1e-4
        masks = sorted((out / f"{name}_masks").iterdir())
        assert [int(p.name[:2]) for p in masks] == np.unique(labels).tolist()
        total = np.zeros(labels.shape, dtype=int)
        for mask_path in masks:
            mask = _labels(mask_path)
            assert set(np.unique(mask).tolist()) <= {0, 255}
            assert np.array_equal(mask == 255, labels == int(mask_path.name[:2]))
            total += mask == 255
        assert (total == 1).all()
        face = _labels(out / f"{name}_face0.png")
        assert face.shape == labels.shape
    assert (out / "legend.png").is_file()
    _no_leftovers(out)


def test_console_script(tiny_model, good, tmp_path):
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("segface")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "segface_hf.cli"]
    result = subprocess.run([*command, "predict", str(good), "--model", str(tiny_model), "--output-dir", str(out),
                             "--no-detect"], check=False, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "parsing" in result.stderr  # the progress bar
    assert _labels(out / "good.png").shape == (80, 96)


def test_batching_gives_the_same_labels(tiny_model, tmp_path, capsys):
    results = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        code, _, stderr = run(capsys, require_shared("images"), "--model", tiny_model, "--output-dir", out,
                              "--batch-size", batch)  # fmt: skip
        assert code == 0, stderr
        results[batch] = {name: _labels(out / f"{name}.png") for name in SHARED_PHOTOS}
    for name in SHARED_PHOTOS:
        # Batches of 1 and 3 crops run different float kernels (logits agree to ~1e-6), which may flip a pixel whose
        # two best classes tie; a crop mixed up between faces or images would change thousands.
        assert results[1][name].shape == results[3][name].shape
        assert (results[1][name] != results[3][name]).sum() <= 5


def test_globs_and_name_clashes(tiny_model, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        PIL.Image.new("RGB", (40, 30), (200, 150, 120)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    code, _, stderr = run(capsys, tmp_path / "*" / "x.png", tmp_path / "nothing-*.png", "--model", tiny_model,
                          "--output-dir", out, "--no-detect")  # fmt: skip
    assert code == 1
    assert stderr.count("\n") == 1 and "nothing-*.png: no image file matches" in stderr
    assert (out / "x.png").is_file() and (out / "x-2.png").is_file()
    assert _summary(out)["succeeded"] == 2


def _check_one_failure(code, stderr, out, bad: Path, reason: str):
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert str(bad) in lines[0] and reason in lines[0]
    assert _labels(out / "good.png").shape == (80, 96)  # the other input was still processed
    assert not list(out.glob(f"{bad.stem}*")), "outputs left for a failed input"
    summary = _summary(out)
    assert summary["succeeded"] == 1 and summary["failed"] == 1
    failed = [r for r in summary["inputs"] if r["status"] == "failed"]
    assert failed[0]["input"] == str(bad) and reason in failed[0]["error"]
    _no_leftovers(out)


def test_missing_file(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "missing.jpg"
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
    _check_one_failure(code, stderr, tmp_path / "out", bad, "no such file")


def test_folder_without_images(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "empty"
    bad.mkdir()
    (bad / "notes.txt").write_text("no pictures here")
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
    _check_one_failure(code, stderr, tmp_path / "out", bad, "no images or videos in this folder")


def test_corrupt_image(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
    _check_one_failure(code, stderr, tmp_path / "out", bad, "")
    assert "not an image" in stderr or "corrupt" in stderr


def test_truncated_image(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "truncated.jpg"
    data = require_shared("images", "grace_hopper.jpg").read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 5])
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
    _check_one_failure(code, stderr, tmp_path / "out", bad, "truncated")


def test_non_image_file(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect")
    _check_one_failure(code, stderr, tmp_path / "out", bad, "not an image file")


def test_no_face_found(tiny_model, good, tmp_path, capsys):
    bad = tmp_path / "wall.png"
    PIL.Image.new("RGB", (120, 90), (180, 170, 160)).save(bad)
    code, _, stderr = run(capsys, good, bad, "--model", tiny_model, "--output-dir", tmp_path / "out",
                          "--if-no-face", "error")  # fmt: skip
    assert code == 1 and "no face found" in stderr and str(bad) in stderr
    assert not list((tmp_path / "out").glob("wall*"))
    code, _, stderr = run(capsys, bad, "--model", tiny_model, "--output-dir", tmp_path / "out2", "--if-no-face",
                          "whole-image")  # fmt: skip
    assert code == 0, stderr
    assert _summary(tmp_path / "out2")["inputs"][0]["mode"] == "whole-image"
    assert _labels(tmp_path / "out2" / "wall.png").shape == (90, 120)


def test_tiny_image(tiny_model, tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    PIL.Image.open(require_shared("images", "astronaut.png")).resize((8, 8)).save(tiny)
    code, _, stderr = run(capsys, tiny, "--model", tiny_model, "--output-dir", tmp_path / "out")
    assert code == 1 and "no face found" in stderr and "8x8" in stderr
    code, _, stderr = run(capsys, tiny, "--model", tiny_model, "--output-dir", tmp_path / "out2", "--no-detect")
    assert code == 0, stderr
    assert _labels(tmp_path / "out2" / "tiny.png").shape == (8, 8)


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "16-bit", "cmyk", "exif-rotated"])
def test_image_formats(kind, tiny_model, tmp_path, capsys):
    photo = PIL.Image.open(require_shared("images", "astronaut.png")).convert("RGB").resize((60, 40))
    expected = (40, 60)  # (height, width) of the upright image
    path = tmp_path / f"{kind}.png"
    if kind == "grayscale":
        shutil.copy(require_shared("images", "camera.png"), path)
        assert PIL.Image.open(path).mode == "L"
        expected = (512, 512)
    elif kind == "rgba":
        rgba = photo.convert("RGBA")
        rgba.putalpha(PIL.Image.linear_gradient("L").resize(photo.size))
        rgba.save(path)
    elif kind == "16-bit":
        array = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        PIL.Image.fromarray(array).save(path)
        assert PIL.Image.open(path).mode.startswith("I")
    elif kind == "cmyk":
        path = path.with_suffix(".jpg")
        photo.convert("CMYK").save(path)
        assert PIL.Image.open(path).mode == "CMYK"
    else:
        path = path.with_suffix(".jpg")
        exif = PIL.Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        photo.save(path, exif=exif)
        expected = (60, 40)
    code, _, stderr = run(capsys, path, "--model", tiny_model, "--output-dir", tmp_path / "out", "--no-detect",
                          "--overlay")  # fmt: skip
    assert code == 0, stderr
    labels = _labels(tmp_path / "out" / f"{kind}.png")
    assert labels.shape == expected and labels.max() < 19
    assert PIL.Image.open(tmp_path / "out" / f"{kind}_overlay.jpg").size == expected[::-1]


def test_very_large_image(tiny_model_5, tmp_path, capsys):
    path = tmp_path / "large.jpg"
    ramp = np.linspace(0, 255, 8000, dtype=np.uint8)
    pixels = np.empty((6000, 8000, 3), dtype=np.uint8)
    pixels[...] = ramp[None, :, None]
    pixels[:3000, :, 1] = 90
    PIL.Image.fromarray(pixels).save(path, quality=80)
    del pixels
    code, _, stderr = run(capsys, path, "--model", tiny_model_5, "--output-dir", tmp_path / "out", "--no-detect")
    assert code == 0, stderr
    labels = _labels(tmp_path / "out" / "large.png")
    assert labels.shape == (6000, 8000) and labels.max() < 5


def test_a_failure_while_writing_leaves_nothing(tiny_model, good, tmp_path, capsys, monkeypatch):
    import segface_hf.inference.predict as predict_module

    other = good.with_name("other.png")
    shutil.copy(good, other)
    real_overlay = predict_module.overlay

    def failing_overlay(image, label_map, *args, **kwargs):
        if image.size == (96, 80) and label_map[0, 0] == 255:  # never: label maps hold classes < 19
            raise AssertionError
        if failing_overlay.calls == 1:
            raise OSError("disk full")
        failing_overlay.calls += 1
        return real_overlay(image, label_map, *args, **kwargs)

    failing_overlay.calls = 0
    monkeypatch.setattr(predict_module, "overlay", failing_overlay)
    out = tmp_path / "out"
    code, _, stderr = run(capsys, good, other, "--model", tiny_model, "--output-dir", out, "--no-detect", "--overlay",
                          "--masks")  # fmt: skip
    assert code == 1 and "disk full" in stderr and str(other) in stderr
    assert (out / "good.png").is_file() and (out / "good_overlay.jpg").is_file() and (out / "good_masks").is_dir()
    assert not list(out.glob("other*"))  # its label map was written first, but not left behind
    _no_leftovers(out)


def test_usage_errors(tiny_model, good, tmp_path, capsys, monkeypatch):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    code, _, stderr = run(capsys, good, "--model", not_a_model, "--output-dir", tmp_path / "out")
    assert code == 2 and stderr.count("\n") == 1 and "cannot load the model" in stderr
    code, _, stderr = run(capsys, good, "--model", tmp_path / "missing", "--output-dir", tmp_path / "out")
    assert code == 2 and stderr.count("\n") == 1 and "no such folder" in stderr
    corrupt = _save_tiny(tmp_path / "corrupt", 19)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, stderr = run(capsys, good, "--model", corrupt, "--output-dir", tmp_path / "out")
    assert code == 2 and stderr.count("\n") == 1 and "cannot load the weights" in stderr
    assert not (tmp_path / "out").exists()
    code, _, stderr = run(capsys, good, "--model", tiny_model, "--output-dir", tmp_path / "out", "--batch-size", "0")
    assert code == 2 and "--batch-size" in stderr
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    code, _, stderr = run(capsys, good, "--model", tiny_model, "--output-dir", tmp_path / "out")
    assert code == 2 and 'pip install "segface-hf[faces]"' in stderr and stderr.count("\n") == 1
    code, _, stderr = run(capsys, good, "--model", tiny_model, "--output-dir", tmp_path / "out3", "--no-detect")
    assert code == 0, stderr  # detection is not needed for aligned crops


def test_a_photo_turned_sideways_is_parsed_with_its_roll(tiny_model, tmp_path, capsys):
    photo = PIL.Image.open(require_shared("images", "grace_hopper.jpg")).convert("RGB")
    path = tmp_path / "sideways.jpg"
    photo.transpose(PIL.Image.Transpose.ROTATE_90).save(path, quality=95)  # counterclockwise: a roll of -90
    code, _, stderr = run(capsys, path, "--model", tiny_model, "--output-dir", tmp_path / "out", "--rotations", "auto")
    assert code == 0, stderr
    record = _summary(tmp_path / "out")["inputs"][0]
    assert record["mode"] == "faces" and len(record["faces"]) == 1 and record["dropped_faces"] == []
    face = record["faces"][0]
    assert abs(face["roll"] + 90) < 15 and face["found_in"] == "turned-270" and isinstance(face["refined"], bool)
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, path, "--model", tiny_model, "--output-dir", tmp_path / "out", "--rotations", "up")
    assert exit_info.value.code == 2 and "--rotations" in capsys.readouterr().err


def test_an_exported_file_parses_the_photos_in_its_runtime(tiny_model, tmp_path, capsys):
    """`segface predict --exported model.onnx`: the same faces and label maps as the PyTorch model (a float32 export
    reproduces it), from logits computed by onnxruntime."""
    from segface_hf.release.onnx_export import export_onnx

    model = SegFaceForSemanticSegmentation.from_pretrained(tiny_model).eval()
    export_onnx(model, tmp_path / "model.onnx", image_size=(64, 64))
    outputs = {}
    for name, extra in (("pytorch", ()), ("exported", ("--exported", tmp_path / "model.onnx"))):
        out = tmp_path / name
        code, _, stderr = run(capsys, require_shared("images"), "--model", tiny_model, "--output-dir", out, *extra)
        assert code == 0, stderr
        outputs[name] = out
    summary = _summary(outputs["exported"])
    assert summary["model"] == f"{tiny_model} ({tmp_path / 'model.onnx'})" and summary["succeeded"] == 3
    for name in SHARED_PHOTOS:
        pytorch, exported = _labels(outputs["pytorch"] / f"{name}.png"), _labels(outputs["exported"] / f"{name}.png")
        assert exported.shape == pytorch.shape and len(np.unique(pytorch)) > 1
        assert (exported != pytorch).sum() <= 5  # float rounding of nearly tied logits at most

    # bad input: one line each, nothing written
    for extra, message in ((("--exported", tmp_path / "model.engine"), "ending in .onnx or .pte or .tflite"),
                           (("--exported", tmp_path / "model.onnx", "--device", "cuda"), "run on the CPU")):  # fmt: skip
        code, _, stderr = run(capsys, require_shared("images"), "--model", tiny_model, "--output-dir",
                              tmp_path / "bad", *extra)  # fmt: skip
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "bad").exists()
