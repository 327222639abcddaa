"""ONNX export: a tiny model exported at one batch size runs in onnxruntime at others and matches PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO_ROOT, one_export_error_line, run_export_cli, scaled_model

from segface_hf.release import onnx_export
from segface_hf.release.onnx_export import (
    OnnxVerification,
    SegFaceOnnxError,
    example_inputs,
    export_onnx,
    load_onnx_session,
    verify_onnx,
)


@pytest.fixture(scope="module")
def exported_swin(tmp_path_factory):
    model = scaled_model("swin", upscale_channels=[16, 8])
    path = tmp_path_factory.mktemp("onnx") / "swin.onnx"
    return model, export_onnx(model, path)


def test_export_has_a_dynamic_batch_and_matches_pytorch(exported_swin):
    model, result = exported_swin
    assert result.path.is_file() and result.input_names == ["pixel_values"] and result.image_size == (64, 64)
    assert [p.name for p in result.path.parent.iterdir()] == ["swin.onnx"]  # no temporary file left behind
    graph = onnx.load(str(result.path))
    assert {entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")} == {20}
    assert "Gelu" in {node.op_type for node in graph.graph.node} and "Erf" not in {n.op_type for n in graph.graph.node}
    verification = result.verification
    assert verification.passed and verification.batch_sizes == (1, 3), verification
    assert verification.max_abs_logit > 0.1  # the comparison is of real logits, not of near-zero ones
    # Our own run at a batch size neither the export (2) nor the verification used.
    session = load_onnx_session(result.path, threads=1)
    inputs = example_inputs(model.config, 4, (64, 64), seed=7)
    (logits,) = session.run(["logits"], {"pixel_values": inputs["pixel_values"].numpy()})
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    assert logits.shape == (4, 5, 64, 64)
    assert np.abs(logits - expected).max() <= 1e-3
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999
    # The backbone's attention implementation, switched to eager for the export, is restored.
    assert model.backbone.model.config._attn_implementation == "sdpa"
    # Without busy-waiting workers (as the benchmark times it): same results.
    quiet = load_onnx_session(result.path, threads=1, spinning=False)
    assert quiet.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    (again,) = quiet.run(["logits"], {"pixel_values": inputs["pixel_values"].numpy()})
    np.testing.assert_array_equal(again, logits)


def test_verification_notices_a_graph_that_does_not_match(exported_swin):
    model, result = exported_swin
    with torch.no_grad():
        model.mask_decoder.upscale_conv2.bias.add_(0.5)
    try:
        verification = verify_onnx(result.path, model, (64, 64), batch_sizes=(2,))
    finally:
        with torch.no_grad():
            model.mask_decoder.upscale_conv2.bias.sub_(0.5)
    assert not verification.passed
    assert verification.max_abs_difference > 1e-3


def test_script_exports_a_face_warp_model_with_landmarks(tmp_path):
    """The LaPa-style head takes landmarks and warps with a matrix inverse, which the export writes in closed form."""
    model = scaled_model("timm-mobilenet", use_face_warp=True, upscale_channels=[16, 8])
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "out" / "face-warp.onnx"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "export_onnx.py"), "--model", str(tmp_path / "model"),
         "--output", str(output)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "inputs pixel_values, landmarks at 64x64" in result.stdout and "onnxruntime agrees" in result.stdout
    session = load_onnx_session(output)
    inputs = example_inputs(model.config, 2, (64, 64), seed=3)
    (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    assert logits.shape == (2, 5, 64, 64)
    assert np.abs(logits - expected).max() <= 1e-3


def test_existing_output_and_bad_arguments_are_refused(tmp_path):
    model = scaled_model("timm-mobilenet", upscale_channels=[16, 8])
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, existing)
    with pytest.raises(ValueError, match=r"end in \.onnx"):
        export_onnx(model, tmp_path / "model.txt")
    with pytest.raises(ValueError, match="at least 32x32"):
        export_onnx(model, tmp_path / "small.onnx", image_size=16)
    with pytest.raises(ValueError, match="float32"):
        export_onnx(model.to(torch.bfloat16), tmp_path / "half.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"] and existing.read_bytes() == b"keep"


def test_failures_leave_nothing_on_disk(tmp_path, monkeypatch):
    model = scaled_model("timm-mobilenet", upscale_channels=[16, 8])

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(SegFaceOnnxError, match="torch.onnx.export failed: unsupported operator aten::frobnicate$"):
        export_onnx(model, tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []

    def fake_export(module, args, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"not really onnx")

    failing = OnnxVerification(batch_sizes=(1,), max_abs_difference=0.5, argmax_agreement=0.9,
                               strict_argmax_agreement=0.9, max_abs_logit=2.0)  # fmt: skip
    monkeypatch.setattr(torch.onnx, "export", fake_export)
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *args, **kwargs: failing)
    with pytest.raises(SegFaceOnnxError, match="does not reproduce the PyTorch model"):
        export_onnx(model, tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == []


def test_argmax_agreement_excuses_only_ties_within_the_tolerance():
    reference = np.zeros((1, 3, 1, 4), dtype=np.float32)
    reference[0, :, 0, 0] = [1.0, 1.0, 0.0]  # a true tie between classes 0 and 1
    reference[0, :, 0, 1] = [1.0, 0.9995, 0.0]  # a near tie, within 1e-3
    reference[0, :, 0, 2] = [1.0, 0.5, 0.0]  # a clear decision
    reference[0, :, 0, 3] = [0.0, 0.0, 2.0]
    candidate = reference.copy()
    candidate[0, :, 0, 0] = [1.0, 1.0 + 1e-7, 0.0]  # breaks the tie the other way
    candidate[0, :, 0, 1] = [1.0, 1.0005, 0.0]
    candidate[0, :, 0, 2] = [0.5, 1.0, 0.0]  # a real disagreement
    assert onnx_export.argmax_agreement([(candidate, reference)], tie_tolerance=1e-3) == (0.75, 0.25)
    assert onnx_export.argmax_agreement([(candidate, reference)], tie_tolerance=0.0) == (0.5, 0.25)
    assert onnx_export.argmax_agreement([(reference, reference)], tie_tolerance=0.0) == (1.0, 1.0)


# The `segface export-onnx` command and the script that wraps it.


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = scaled_model("timm-mobilenet", upscale_channels=[16, 8])
    folder = tmp_path_factory.mktemp("cli-model") / "model"
    model.save_pretrained(folder)
    return model, folder


def _export_cli(capsys, *args):
    return run_export_cli(capsys, *args, command="export-onnx")


def _one_error_line(err: str) -> str:
    return one_export_error_line(err, command="export-onnx")


def test_cli_export_runs_in_onnxruntime_and_matches_pytorch(saved_model, tmp_path, capsys):
    model, folder = saved_model
    output = tmp_path / "out" / "tiny.onnx"
    code, out, err = _export_cli(capsys, "--model", folder, "--output", output,
                                 "--image-size", 64, 96, "--opset", 18)  # fmt: skip
    assert code == 0, err
    assert "error" not in err
    assert out.count("\n") == 1 and out.startswith("segface export-onnx: Exported SegFace to "), out
    assert str(output) in out and "at 64x96" in out and "opset 18" in out
    assert "max |logit difference|" in out and "argmax agreement" in out
    assert [p.name for p in output.parent.iterdir()] == ["tiny.onnx"]

    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model(pixel_values).logits.numpy()
    session = load_onnx_session(output, threads=1)
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    assert logits.shape == (2, 5, 64, 96)
    assert np.abs(expected).max() > 0.1  # real logits, not near-zero ones
    assert np.abs(logits - expected).max() <= 1e-3
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999


def test_cli_refuses_an_existing_output_without_overwrite(saved_model, tmp_path, capsys):
    _, folder = saved_model
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep")
    code, out, err = _export_cli(capsys, "--model", folder, "--output", existing)
    assert code != 0 and out == ""
    assert "model.onnx exists; pass --overwrite" in _one_error_line(err)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and existing.read_bytes() == b"keep"


def test_cli_reports_a_missing_model_folder(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code, out, err = _export_cli(capsys, "--model", missing, "--output", tmp_path / "out" / "model.onnx")
    assert code != 0 and out == ""
    assert _one_error_line(err).endswith(f"cannot load the model {str(missing)!r}: no such folder.")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_missing_onnx_packages(saved_model, tmp_path, capsys, monkeypatch):
    _, folder = saved_model
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    code, out, err = _export_cli(capsys, "--model", folder, "--output", tmp_path / "model.onnx")
    assert code != 0 and out == ""
    line = _one_error_line(err)
    assert "onnxruntime is missing" in line and "pip install onnx onnxscript onnxruntime" in line
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_failed_export_in_one_line_and_writes_nothing(saved_model, tmp_path, capsys, monkeypatch):
    _, folder = saved_model

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    code, out, err = _export_cli(capsys, "--model", folder, "--output", tmp_path / "out" / "model.onnx", "--quiet")
    assert code != 0 and out == ""
    assert _one_error_line(err).endswith("torch.onnx.export failed: unsupported operator aten::frobnicate")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--output", "{tmp}/model.onnx", "--image-size", "64", "64", "64"], "--image-size takes HEIGHT or HEIGHT"),
        (["--output", "{tmp}/model.txt"], "--output must name a .onnx file"),
        (["--output", "{tmp}/folder.onnx"], "is a folder; name the .onnx file"),
        (["--output", "{tmp}/model.onnx", "--image-size", "16"], "SegFace needs inputs of at least 32x32 pixels"),
    ],
)
def test_cli_reports_bad_arguments_in_one_line(saved_model, tmp_path, capsys, arguments, message):
    _, folder = saved_model
    (tmp_path / "folder.onnx").mkdir()
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    code, out, err = _export_cli(capsys, "--model", folder, *arguments, "--quiet")
    assert code != 0 and out == ""
    assert message in _one_error_line(err)
    assert [p.name for p in tmp_path.iterdir()] == ["folder.onnx"] and not any((tmp_path / "folder.onnx").iterdir())


def test_script_keeps_its_command_line(saved_model, tmp_path):
    script = str(REPO_ROOT / "scripts" / "export_onnx.py")
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for option in ("--model", "--output", "--image-size", "--opset", "--no-verify", "--overwrite"):
        assert option in result.stdout
    _, folder = saved_model
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep")
    result = subprocess.run([sys.executable, script, "--model", str(folder), "--output", str(existing)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert "exists; pass --overwrite" in _one_error_line(result.stderr)
    assert existing.read_bytes() == b"keep"
