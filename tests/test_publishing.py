"""Publishing: the repo folder, the model card, uploads to a local Hub stand-in, and loading the upload back."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, parity_module, require_shared
from hub_standin import hub_standin  # noqa: F401  (the fixture)
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from segface_hf import SegFaceConfig
from segface_hf.metrics.results import EvaluationResult, SegFaceEvaluationFileError, load_evaluation
from segface_hf.release.model_card import SegFaceModelCardError, build_model_card, check_model_card
from segface_hf.release.publishing import (
    MODEL_REPO_FILES,
    SegFacePublishError,
    build_model_repo,
    check_model_folder,
    find_checkpoints,
    publish_all,
    publish_from_official,
    upload_space,
)

VARIANT = "mobilenet_celeba_512"
REPO_ID = "standin-user/segface-mobilenet-celeba-512"
SCRIPT = REPO_ROOT / "scripts" / "push_to_hub.py"


def push_to_hub():
    """scripts/push_to_hub.py as a module, to call its `main` in this process."""
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", VARIANT))
    path = tmp_path_factory.mktemp("release") / VARIANT / "model_299.pt"
    path.parent.mkdir()
    torch.save({**fixture.checkpoint, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture(scope="module")
def evaluation_json(tmp_path_factory):
    # The layout segface_hf.metrics.results.EvaluationResult.save writes: fractions, as the metric reports them, and
    # `r_ear` absent from both sides (None).
    path = tmp_path_factory.mktemp("eval") / "evaluation.json"
    scores = {"mean_f1": 0.8123, "f1": {"neck": 0.75, "skin": 0.9, "r_ear": None}, "num_images": 2824}
    path.write_text(json.dumps({"model": "converted", "dataset": "data/celebamask-hq", "split": "test",
                                "protocol": "model", "seconds": 12.5, "settings": {}, "scores": scores}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def repo_folder(checkpoint, evaluation_json, tmp_path_factory):
    return build_model_repo(checkpoint, VARIANT, tmp_path_factory.mktemp("built") / "repo", REPO_ID, evaluation_json)


def _metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_repo_folder_is_complete(repo_folder):
    names = sorted(p.name for p in repo_folder.iterdir())
    assert names == sorted([*MODEL_REPO_FILES, "evaluation.json"])
    config = json.loads((repo_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_segface.SegFaceForSemanticSegmentation"
    assert config["id2label"]["4"] == "l_ear" and len(config["id2label"]) == 19
    processor = json.loads((repo_folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"] == {
        "pil": "image_processing_segface.SegFaceImageProcessor",
        "torchvision": "image_processing_segface_fast.SegFaceImageProcessorFast",
    }
    assert check_model_folder(repo_folder) == names
    assert [p.name for p in repo_folder.parent.iterdir()] == ["repo"]  # no staging folder left behind


def test_card_metadata_and_sections(repo_folder):
    text = (repo_folder / "README.md").read_text()
    metadata = _metadata(text)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["license"] == "mit" and metadata["datasets"] == ["celebamask-hq"]
    assert {"segface", "face-parsing"} <= set(metadata["tags"])
    results = metadata["model-index"][0]["results"]
    assert metadata["model-index"][0]["name"] == "segface-mobilenet-celeba-512"
    authors, ours = results
    assert authors["metrics"][0]["value"] == 87.91  # the README's MobileNet score
    assert "reported by the authors" in authors["source"]["name"]
    assert "arxiv.org/abs/2412.08647" in authors["source"]["url"]
    assert ours["metrics"][0]["value"] == 81.23 and "evaluate.py" in ours["source"]["name"]
    assert ours["source"]["url"].endswith(f"{REPO_ID}/blob/main/evaluation.json")
    # huggingface_hub's own parser reads both results with their sources
    card = ModelCard(text, ignore_metadata_errors=False)
    assert sorted(r.metric_value for r in card.data.eval_results) == [81.23, 87.91]
    assert all(r.source_name for r in card.data.eval_results)
    for heading in ("## Scores", "## Labels and palette", "## Usage", "## Evaluation protocol", "## Limitations",
                    "## Licence", "## Citation"):  # fmt: skip
        assert heading in text
    assert "trust_remote_code=True" in text and "import segface_hf" in text
    assert "non-commercial" in text and "MIT" in text and "@inproceedings{narayan2025segface" in text
    assert "our evaluation of this checkpoint (test split, 2,824 images, compared at the model resolution)" in text
    assert "| `skin` | 90.00 |" in text and "| `r_ear` | absent (no pixels in the ground truth" in text
    assert "all 18 classes except background" in text


def test_card_palette_matches_the_visualisation(repo_folder):
    from segface_hf.inference.visualization import palette_for

    config = SegFaceConfig.from_pretrained(repo_folder)
    text = (repo_folder / "README.md").read_text()
    palette = palette_for(config.id2label)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`#" in line]
    assert len(rows) == 19
    for index, row in enumerate(rows):
        red, green, blue = (int(c) for c in palette[index][:3])
        assert row.startswith(f"| {index} | `{config.id2label[index]}` |")
        assert f"`#{red:02x}{green:02x}{blue:02x}`" in row


def test_lapa_and_helen_cards():
    lapa = str(build_model_card(SegFaceConfig.from_variant("swinb_lapa_448"), "me/lapa", variant="swinb_lapa_448"))
    metadata = _metadata(lapa)
    assert metadata["datasets"] == ["lapa"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 93.03
    assert "LaPa models need landmarks" in lapa and "landmarks=[landmarks]" in lapa
    assert "all 10 classes except background" in lapa
    helen = str(build_model_card(SegFaceConfig.from_variant("swinb_helen_512"), "me/helen", variant="swinb_helen_512"))
    assert "model-index" not in _metadata(helen)  # the authors report no Helen score, and we measured none
    assert "not reported for this checkpoint" in helen and "overall score" in helen
    check_model_card(helen)


def test_card_checks_reject_incomplete_metadata():
    with pytest.raises(SegFaceModelCardError, match="lacks pipeline_tag, datasets"):
        check_model_card("---\nlibrary_name: transformers\nlicense: mit\ntags: [x]\n---\n# card\n")
    with pytest.raises(SegFaceModelCardError, match="does not parse"):
        check_model_card("---\nlibrary_name: [unclosed\n---\n# card\n")
    with pytest.raises(SegFaceModelCardError, match="must say library_name: transformers"):
        check_model_card("---\nlibrary_name: timm\npipeline_tag: image-segmentation\nlicense: mit\ndatasets: [a]\n"
                         "tags: [x]\n---\n")  # fmt: skip


def test_evaluation_json_errors(tmp_path):
    with pytest.raises(SegFaceEvaluationFileError, match="evaluation file .* does not exist"):
        load_evaluation(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SegFaceEvaluationFileError, match="not valid JSON"):
        load_evaluation(bad)
    bad.write_text(json.dumps({"mean_iou": 0.5}))
    with pytest.raises(SegFaceEvaluationFileError, match="has no 'mean_f1'"):
        load_evaluation(bad)
    bad.write_text(json.dumps({"mean_f1": 250}))
    with pytest.raises(SegFaceEvaluationFileError, match="not a score"):
        load_evaluation(bad)
    percent = tmp_path / "percent.json"
    percent.write_text(json.dumps({"scores": {"mean_f1": 88.5, "f1": {"skin": 95.0}}}))
    result = load_evaluation(percent)
    assert result.mean_f1 == 88.5 and result.per_class_f1 == {"skin": 95.0}


def test_bad_inputs_leave_nothing_on_disk(checkpoint, tmp_path, evaluation_json):
    with pytest.raises(SegFacePublishError, match="must look like ORG/NAME"):
        build_model_repo(checkpoint, VARIANT, tmp_path / "a", "no-namespace")
    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    with pytest.raises(SegFaceEvaluationFileError, match="expected a JSON object"):
        build_model_repo(checkpoint, VARIANT, tmp_path / "b", REPO_ID, broken)
    with pytest.raises(ValueError, match="mobilenet_v3_large backbone"):
        build_model_repo(checkpoint, "swinb_celeba_512", tmp_path / "c", REPO_ID)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


def test_incomplete_folder_is_refused(repo_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(repo_folder, copy)
    (copy / "modeling_segface.py").unlink()
    with pytest.raises(SegFacePublishError, match="modeling_segface.py missing"):
        check_model_folder(copy)
    shutil.copyfile(repo_folder / "modeling_segface.py", copy / "modeling_segface.py")
    config = json.loads((copy / "config.json").read_text())
    del config["auto_map"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SegFacePublishError, match="no auto_map entry for AutoConfig"):
        check_model_folder(copy)


def test_find_checkpoints_names_every_missing_file(checkpoint, tmp_path):
    found = find_checkpoints(checkpoint.parent.parent, [VARIANT])
    assert found == {VARIANT: checkpoint}
    with pytest.raises(SegFacePublishError, match="13 of 14 checkpoints are missing"):
        find_checkpoints(checkpoint.parent.parent)


def test_script_uploads_and_the_download_loads_without_the_package(hub_standin, checkpoint, evaluation_json,  # noqa: F811
                                                                    tmp_path, capsys):  # fmt: skip
    code = push_to_hub().main(["--variant", VARIANT, "--checkpoint", str(checkpoint), "--repo-id", REPO_ID,
                               "--eval-json", str(evaluation_json), "--private"])  # fmt: skip
    assert code == 0
    assert f"to model {REPO_ID}" in capsys.readouterr().out
    repo = hub_standin.repo(REPO_ID)
    assert repo.private
    assert sorted(repo.files) == sorted([".gitattributes", "evaluation.json", *MODEL_REPO_FILES])
    assert repo.files["model.safetensors"].lfs and len(repo.files["model.safetensors"].data) > 25_000_000

    # The card as the Hub serves it parses, and passes the Hub's YAML check (the stand-in's /api/validate-yaml)
    card = ModelCard.load(REPO_ID)
    card.validate()
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert HfApi().model_info(REPO_ID).card_data["license"] == "mit"

    # A fresh interpreter that cannot import segface_hf loads the model from the stand-in with remote code
    probe = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "probe.npy", probe)
    script = f"""
import sys
sys.modules["segface_hf"] = None
try:
    import segface_hf
except ImportError:
    pass
else:
    raise SystemExit("segface_hf is importable")
import numpy as np, torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
model = AutoModelForSemanticSegmentation.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
# as the model card says: backend="pil" is the original's preprocessing; transformers alone defaults to torchvision
processor = AutoImageProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True, backend="pil")
default = AutoImageProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert (type(processor).__name__, type(default).__name__) == ("SegFaceImageProcessor", "SegFaceImageProcessorFast")
with torch.no_grad():
    logits = model(**processor(np.load("probe.npy"))).logits
np.save("remote_logits.npy", logits.numpy())
print(type(model).__name__, tuple(logits.shape), model.config.id2label[18])
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), **hub_standin.env()}
    child_env = {**env, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_CACHE": str(tmp_path / "hub-cache")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=child_env, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SegFaceForSemanticSegmentation (1, 19, 512, 512) neck_l" in result.stdout

    # ... and computes what the package computes from the same weights
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    local = tmp_path / "download"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        hf_hub_download(REPO_ID, name, local_dir=local)
    model = AutoModelForSemanticSegmentation.from_pretrained(local).eval()
    processor = AutoImageProcessor.from_pretrained(local)
    with torch.no_grad():
        expected = model(**processor(probe)).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "remote_logits.npy"), expected, rtol=0, atol=1e-5)


def test_publish_all_names_repos_by_variant(hub_standin, checkpoint, evaluation_json, tmp_path):  # noqa: F811
    evaluations = tmp_path / "evals"
    evaluations.mkdir()
    (evaluations / f"{VARIANT}.json").write_text(evaluation_json.read_text())
    results = publish_all("standin-user", {VARIANT: checkpoint}, evaluations_dir=evaluations)
    assert [r.repo_id for r in results] == [REPO_ID]
    text = hub_standin.file(REPO_ID, "README.md").decode()
    assert "81.23" in text and not hub_standin.repo(REPO_ID).private


def test_publish_from_the_official_repo(hub_standin, checkpoint):  # noqa: F811
    """--from-official: fetch <variant>/model_299.pt from kartiknarayan/SegFace (the stand-in), convert, publish."""
    hub_standin.create_repo("kartiknarayan/SegFace")
    hub_standin.add_files("kartiknarayan/SegFace", {f"{VARIANT}/model_299.pt": checkpoint.read_bytes()})
    results = publish_from_official("standin-user", [VARIANT])
    assert [r.repo_id for r in results] == [REPO_ID]
    assert sorted(hub_standin.repo(REPO_ID).files) == sorted([".gitattributes", *MODEL_REPO_FILES])
    assert "87.91" in hub_standin.file(REPO_ID, "README.md").decode()


def test_script_all_refuses_an_incomplete_download(hub_standin, checkpoint, capsys):  # noqa: F811
    code = push_to_hub().main(["--all", "--checkpoints-dir", str(checkpoint.parent.parent), "--org", "standin-user"])
    err = capsys.readouterr().err
    assert code == 2
    assert "13 of 14 checkpoints are missing" in err and len(err.strip().splitlines()) == 1
    assert not hub_standin.repos  # nothing was created


def test_script_help_and_mode_errors(capsys):
    script = push_to_hub()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--variant", VARIANT])
    assert exit_info.value.code == 2 and "this mode needs --checkpoint and --repo-id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--help"])
    usage = capsys.readouterr().out
    assert "--from-official" in usage and "--space" in usage and "--checkpoints-dir" in usage


def test_space_upload(hub_standin):  # noqa: F811
    result = upload_space(REPO_ROOT / "spaces" / "segface", "standin-user/segface-demo")
    files = set(hub_standin.repo("standin-user/segface-demo", repo_type="space").files)
    assert {"app.py", "requirements.txt", "README.md", "segface_hf/__init__.py", "segface_hf/inference/faces.py",
            "segface_hf/inference/visualization.py", "segface_hf/modeling_segface.py"} <= files  # fmt: skip
    assert not any("__pycache__" in name for name in files)
    assert set(result.files) == files - {".gitattributes"}
    readme = hub_standin.file("standin-user/segface-demo", "README.md", repo_type="space").decode()
    metadata = _metadata(readme)
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"


def test_reads_the_json_that_the_evaluation_writes(tmp_path):
    scores = {"mean_f1": 0.5, "f1": {"background": 0.9, "skin": 0.5, "hair": None}, "num_images": 3}
    written = EvaluationResult(scores=scores, protocol="native", dataset="d", split="validation", model="m")
    result = load_evaluation(written.save(tmp_path / "evaluation.json"))
    assert result.mean_f1 == 50.0 and result.split == "validation" and result.protocol == "native"
    assert result.num_images == 3 and result.per_class_f1 == {"background": 90.0, "skin": 50.0, "hair": None}
