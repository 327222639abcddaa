"""`segface download` against a local stand-in of the Hub (HTTP on 127.0.0.1, pointed at by HF_ENDPOINT)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import parity_module, require_shared
from hub_standin import hub_standin  # noqa: F401  (the fixture)
from safetensors.torch import load_file

from segface_hf.cli import main
from segface_hf.release.conversion import convert_original_checkpoint
from segface_hf.release.hub import OFFICIAL_REPO_ID, SegFaceDownloadError, download_official, official_checkpoint

VARIANT = "mobilenet_celeba_512"


@pytest.fixture(scope="module")
def checkpoint_bytes():
    fixture = parity_module().load_fixture(require_shared("parity", "fixtures", VARIANT))
    buffer = io.BytesIO()
    torch.save({**fixture.checkpoint, "optimizer": {"state": {}, "param_groups": []}}, buffer)
    return buffer.getvalue()


@pytest.fixture
def official_repo(hub_standin, checkpoint_bytes):  # noqa: F811
    hub_standin.create_repo(OFFICIAL_REPO_ID)
    hub_standin.add_files(OFFICIAL_REPO_ID, {f"{VARIANT}/model_299.pt": checkpoint_bytes,
                                             "swinb_lapa_448/model_299.pt": b"not a checkpoint"})  # fmt: skip
    return hub_standin


def _downloads(hub) -> int:
    return sum(1 for method, path in hub.requests if method == "GET" and path.endswith(f"{VARIANT}/model_299.pt"))


def test_download_converts_and_verifies(official_repo, checkpoint_bytes, tmp_path, capsys):
    out = tmp_path / "segface-mobilenet"
    assert main(["download", VARIANT, "--output-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "verified" in stdout and str(out) in stdout
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    # the same weights as converting the file directly
    (tmp_path / "local.pt").write_bytes(checkpoint_bytes)
    convert_original_checkpoint(tmp_path / "local.pt", VARIANT, tmp_path / "direct")
    downloaded, direct = load_file(out / "model.safetensors"), load_file(tmp_path / "direct" / "model.safetensors")
    assert downloaded.keys() == direct.keys() and all(torch.equal(downloaded[k], direct[k]) for k in direct)
    assert _downloads(official_repo) == 1
    # a second download comes from the huggingface_hub cache
    assert main(["download", VARIANT, "--output-dir", str(out), "--overwrite"]) == 0
    assert _downloads(official_repo) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_default_output_dir_and_existing_folder(official_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summary = download_official(VARIANT)
    assert summary.output_dir == "segface-mobilenet-celeba-512" and Path(summary.output_dir, "config.json").is_file()
    assert summary.verified_logits_shape == (1, 19, 64, 64)
    assert main(["download", VARIANT]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_unknown_variant(official_repo, tmp_path, capsys):
    assert main(["download", "swinb_celeba_999", "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an official SegFace variant" in err and "swinb_celeba_512" in err
    assert not (tmp_path / "x").exists()


def test_file_missing_on_the_hub(official_repo, tmp_path, capsys):
    assert main(["download", "resnet_celeba_512", "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot fetch kartiknarayan/SegFace/resnet_celeba_512/model_299.pt" in err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_file_leaves_nothing(official_repo, tmp_path, capsys):
    assert main(["download", "swinb_lapa_448", "--output-dir", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_offline_without_cache_is_a_clear_error(official_repo, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SegFaceDownloadError, match="not in the cache"):
        official_checkpoint(VARIANT, cache_dir=tmp_path / "empty-cache")


def test_console_script_uses_hf_endpoint(official_repo, tmp_path):
    script = Path(sys.executable).with_name("segface")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "segface_hf.cli"]
    env = {**os.environ, **official_repo.env(), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([*command, "download", VARIANT, "--output-dir", str(tmp_path / "model")], env=env,
                            check=False, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert any(path.endswith(f"{VARIANT}/model_299.pt") for _, path in official_repo.requests)
