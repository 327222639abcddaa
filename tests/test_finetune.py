"""Fine-tuning with `transformers.Trainer`: class-token adaptation to a new label set, the Trainer metrics, and a
fine-tune of a tiny model on the FaceSynthetics samples."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, require_shared, tiny_config

from segface_hf import CELEBAMASK_HQ_LABELS, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.training.finetune import (
    SegFaceTrainerMetrics,
    adapt_class_tokens,
    canonical_class_name,
    match_class_tokens,
)

FACESYNTHETICS = [
    "background", "skin", "nose", "right_eye", "left_eye", "right_brow", "left_brow", "right_ear", "left_ear",
    "mouth_interior", "top_lip", "bottom_lip", "neck", "hair", "beard", "clothing", "glasses", "headwear", "facewear",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def test_class_names_match_through_the_synonym_table():
    assert canonical_class_name("Left Eye") == canonical_class_name("left-eye") == "l_eye"
    assert canonical_class_name("mouth_interior") == "mouth" and canonical_class_name("beard") == "beard"
    celeb = dict(enumerate(CELEBAMASK_HQ_LABELS))
    matches = match_class_tokens(celeb, dict(enumerate(FACESYNTHETICS)))
    inherited = {FACESYNTHETICS[new]: (celeb[old] if old is not None else None) for new, old in matches.items()}
    assert inherited == {
        "background": "background", "skin": "skin", "nose": "nose", "right_eye": "r_eye", "left_eye": "l_eye",
        "right_brow": "r_brow", "left_brow": "l_brow", "right_ear": "r_ear", "left_ear": "l_ear",
        "mouth_interior": "mouth", "top_lip": "u_lip", "bottom_lip": "l_lip", "neck": "neck", "hair": "hair",
        "beard": None, "clothing": "cloth", "glasses": "eye_g", "headwear": "hat", "facewear": None,
    }  # fmt: skip
    # An exact name wins over a synonym, and an old token is inherited once.
    assert match_class_tokens({0: "skin", 1: "face"}, {0: "face", 1: "skin", 2: "facial_skin"}) == {0: 1, 1: 0, 2: None}


def test_adapted_model_keeps_matched_tokens_and_initialises_the_others():
    config = tiny_config(num_labels=19)
    config.id2label = dict(enumerate(CELEBAMASK_HQ_LABELS))
    config.label2id = {name: index for index, name in config.id2label.items()}
    model = SegFaceForSemanticSegmentation(config).eval()
    old_tokens = model.mask_decoder.class_embeddings.weight.detach().clone()
    report = adapt_class_tokens(model, {0: "background", 1: "beard", 2: "left_eye", 3: "hair"}, seed=0)
    assert report == {"background": "background", "beard": None, "left_eye": "l_eye", "hair": "hair"}
    tokens = model.mask_decoder.class_embeddings.weight
    assert torch.equal(tokens[0], old_tokens[0]) and torch.equal(tokens[2], old_tokens[8])
    assert torch.equal(tokens[3], old_tokens[14])
    assert not any(torch.equal(tokens[1], row) for row in old_tokens)
    assert tokens[1].std().item() == pytest.approx(old_tokens.std().item(), rel=0.5)  # the existing tokens' scale
    assert model.config.num_labels == 4 and model.config.label2id["left_eye"] == 2
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 4, 64, 64)
    with pytest.raises(ValueError, match="indices 0..1"):
        adapt_class_tokens(model, {0: "background", 2: "skin"})


def test_trainer_metrics_batch_by_batch_equal_all_at_once():
    from transformers import EvalPrediction

    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 3, (6, 8, 8))
    labels = rng.integers(0, 3, (6, 8, 8))
    labels[:, 0] = 255
    metrics = SegFaceTrainerMetrics({0: "background", 1: "skin", 2: "hair"})
    at_once = metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics(EvalPrediction(predictions=torch.tensor(predictions[:4]), label_ids=torch.tensor(labels[:4])),
                   compute_result=False) == {}  # fmt: skip
    batched = metrics(EvalPrediction(predictions=torch.tensor(predictions[4:]), label_ids=torch.tensor(labels[4:])),
                      compute_result=True)  # fmt: skip
    assert batched == at_once
    valid = labels != 255
    skin_tp = ((predictions == 1) & (labels == 1) & valid).sum()
    skin_f1 = 2 * skin_tp / ((labels == 1).sum() + ((predictions == 1) & valid).sum())
    assert at_once["f1_skin"] == pytest.approx(skin_f1)
    # Logits (not reduced by argmax_logits) are reduced here.
    logits = np.eye(3)[predictions].transpose(0, 3, 1, 2)
    assert metrics(EvalPrediction(predictions=logits, label_ids=labels)) == at_once


@pytest.fixture(scope="module")
def facesynthetics(tmp_path_factory):
    """8 train + 4 evaluation FaceSynthetics samples as a dataset folder (in a temporary folder: the licence
    forbids copying them into the repository), with their labels.json."""
    import datasets

    root = require_shared("data", "facesynthetics")
    stems = sorted(p.stem for p in root.glob("*.png") if not p.stem.endswith("_seg"))[:12]
    assert len(stems) == 12, f"expected FaceSynthetics samples in {root}"

    def split(names):
        rows = [{"id": s, "image": str(root / f"{s}.png"), "label": str(root / f"{s}_seg.png")} for s in names]
        features = datasets.Features(
            {"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Image()}
        )
        return datasets.Dataset.from_list(rows, features=features)

    folder = tmp_path_factory.mktemp("facesynthetics") / "dataset"
    datasets.DatasetDict({"train": split(stems[:8]), "validation": split(stems[8:])}).save_to_disk(str(folder))
    labels = folder.parent / "labels.json"
    labels.write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(FACESYNTHETICS)}, "ignore_index": 255}))
    return folder, labels


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_finetunes_a_tiny_model_on_facesynthetics(facesynthetics, tmp_path, capsys):
    import datasets

    from segface_hf.training.evaluation import model_label_mapping, run_evaluation
    from segface_hf.data.labels import read_label_spec

    folder, labels = facesynthetics
    config = tiny_config(num_labels=19)
    config.id2label = dict(enumerate(CELEBAMASK_HQ_LABELS))
    config.label2id = {name: index for index, name in config.id2label.items()}
    base = SegFaceForSemanticSegmentation(config)
    base.save_pretrained(tmp_path / "base")
    SegFaceImageProcessor(size=64).save_pretrained(tmp_path / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}

    output = tmp_path / "finetuned"
    code = _script("finetune").main([
        "--model", str(tmp_path / "base"), "--dataset", str(folder), "--labels", str(labels),
        "--output_dir", str(output), "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "2", "--learning_rate", "1e-3", "--eval_strategy", "epoch",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--logging_steps", "1", "--seed", "3",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert '"left_eye": "l_eye"' in printed and "'beard', 'facewear'" in printed

    model = SegFaceForSemanticSegmentation.from_pretrained(output)
    assert [model.config.id2label[i] for i in range(19)] == FACESYNTHETICS
    assert SegFaceImageProcessor.from_pretrained(output).size == {"height": 64, "width": 64}
    changed = [k for k in before if k in model.state_dict() and not torch.equal(before[k], model.state_dict()[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("mask_decoder.") for k in changed)
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    evaluations = [entry for entry in state["log_history"] if "eval_mean_f1" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses)) and len(evaluations) == 3  # 2 epochs + the final one
    assert {"eval_f1_skin", "eval_iou_hair", "eval_pixel_accuracy"} <= set(evaluations[-1])

    # The Trainer's score equals the evaluation library's on the saved model (same batches of 2).
    split = datasets.load_from_disk(str(folder))["validation"]
    mapping = model_label_mapping(model.config.id2label, read_label_spec(labels))
    scores = run_evaluation(model, split, mapping, batch_size=2, show_progress=False)
    assert scores["mean_f1"] == pytest.approx(evaluations[-1]["eval_mean_f1"], abs=1e-12)
    assert scores["num_images"] == 4


def test_finetune_rejects_a_face_warp_model_without_landmarks(facesynthetics, tmp_path, capsys):
    folder, labels = facesynthetics
    model = SegFaceForSemanticSegmentation(tiny_config(num_labels=4, use_face_warp=True))
    model.save_pretrained(tmp_path / "lapa")
    code = _script("finetune").main(["--model", str(tmp_path / "lapa"), "--dataset", str(folder), "--labels",
                                     str(labels), "--output_dir", str(tmp_path / "out"), "--use_cpu"])  # fmt: skip
    assert code == 2 and "needs a landmarks column" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
