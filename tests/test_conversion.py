"""The converter's command line and its error cases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, parity_module, require_shared

from segface_hf.cli import main
from segface_hf.release.conversion import SegFaceCheckpointError, convert_original_checkpoint, load_original_checkpoint


@pytest.fixture(scope="module")
def mobilenet_checkpoint(tmp_path_factory):
    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", "mobilenet_celeba_512"))
    path = tmp_path_factory.mktemp("release") / "model_299.pt"
    torch.save({**fixture.checkpoint, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_wrong_variant_is_a_clear_error_and_writes_nothing(mobilenet_checkpoint, tmp_path, capsys):
    output = tmp_path / "out"
    code = main(["convert", "--checkpoint", str(mobilenet_checkpoint), "--variant", "swinb_celeba_512",
                 "--output-dir", str(output)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "mobilenet_v3_large backbone with a celebamask-hq head" in err and "swin_base" in err
    assert len(err.strip().splitlines()) == 1
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_wrong_head_is_a_clear_error(mobilenet_checkpoint, tmp_path):
    with pytest.raises(SegFaceCheckpointError, match="lapa/helen"):
        convert_original_checkpoint(mobilenet_checkpoint, "mobilenet_lapa_512", tmp_path / "out")


def test_truncated_file(mobilenet_checkpoint, tmp_path):
    truncated = tmp_path / "model_299.pt"
    data = mobilenet_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(SegFaceCheckpointError, match="truncated or corrupt"):
        load_original_checkpoint(truncated)


def test_not_a_segface_checkpoint(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(SegFaceCheckpointError, match="no 'state_dict_backbone'"):
        load_original_checkpoint(other)
    backbone_only = tmp_path / "backbone.pt"
    torch.save({"state_dict_backbone": {"backbone.0.weight": torch.zeros(1)}}, backbone_only)
    with pytest.raises(SegFaceCheckpointError, match="lacks the SegFace decoder"):
        load_original_checkpoint(backbone_only)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(SegFaceCheckpointError, match="cannot be read"):
        load_original_checkpoint(text)
    with pytest.raises(SegFaceCheckpointError, match="no such checkpoint"):
        load_original_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_refused(tmp_path):
    import fractions

    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict_backbone": fractions.Fraction(1, 3)}, path)  # an arbitrary class: not allow-listed
    with pytest.raises(SegFaceCheckpointError, match="cannot be read"):
        load_original_checkpoint(path)


def test_tampered_checkpoint_fails_loudly(mobilenet_checkpoint, tmp_path):
    checkpoint = torch.load(mobilenet_checkpoint, weights_only=True)
    state = checkpoint["state_dict_backbone"]
    extra = tmp_path / "extra.pt"
    torch.save({"state_dict_backbone": {**state, "backbone.99.block.0.0.weight": torch.zeros(1)}}, extra)
    with pytest.raises(SegFaceCheckpointError, match="match no conversion rule"):
        convert_original_checkpoint(extra, "mobilenet_celeba_512", tmp_path / "a")
    missing = tmp_path / "missing.pt"
    torch.save({"state_dict_backbone": {k: v for k, v in state.items() if k != "linear_c.2.proj.bias"}}, missing)
    with pytest.raises(SegFaceCheckpointError, match="unfilled"):
        convert_original_checkpoint(missing, "mobilenet_celeba_512", tmp_path / "b")
    reshaped = tmp_path / "reshaped.pt"
    torch.save({"state_dict_backbone": {**state, "linear_fuse.weight": torch.zeros(256, 1024, 3, 3)}}, reshaped)
    with pytest.raises(SegFaceCheckpointError, match="wrong shape"):
        convert_original_checkpoint(reshaped, "mobilenet_celeba_512", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.pt", "missing.pt", "reshaped.pt"]


def test_existing_output_needs_overwrite(mobilenet_checkpoint, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_original_checkpoint(mobilenet_checkpoint, "mobilenet_celeba_512", output)
    summary = convert_original_checkpoint(mobilenet_checkpoint, "mobilenet_celeba_512", output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").exists()
    assert summary.num_parameters == 7_035_824  # the spec's count for the MobileNet variant (section 1.11)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_remote_code_loads_without_the_package(mobilenet_checkpoint, tmp_path):
    """A converted folder carries its code: it loads with trust_remote_code=True where segface_hf is absent."""
    output = tmp_path / "segface-mobilenet"
    convert_original_checkpoint(mobilenet_checkpoint, "mobilenet_celeba_512", output)
    names = sorted(p.name for p in output.iterdir())
    assert {"configuration_segface.py", "modeling_segface.py", "image_processing_segface.py", "fast_path_segface.py",
            "image_processing_segface_fast.py", "face_warp.py"} <= set(names)  # fmt: skip
    script = f"""
import sys
sys.modules["segface_hf"] = None  # make the package unimportable in this interpreter
try:
    import segface_hf
except ImportError:
    pass
else:
    raise SystemExit("segface_hf is importable")
import numpy as np, torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
model = AutoModelForSemanticSegmentation.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = processor(np.full((64, 48, 3), 128, np.uint8))
with torch.no_grad():
    logits = model(**inputs).logits
print(type(model).__name__, tuple(logits.shape), model.config.id2label[4])
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SegFaceForSemanticSegmentation (1, 19, 512, 512) l_ear" in result.stdout


def test_script_help_runs():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_original_checkpoint.py"), "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and "--variant" in result.stdout
