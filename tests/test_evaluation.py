"""Evaluation under the paper's protocol (model resolution) and at native resolution, the report formats, the model
card, and scripts/evaluate.py."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT, tiny_config

from segface_hf import SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.metrics.results import EvaluationResult
from segface_hf.training.evaluation import (
    constant_prediction_scores,
    format_scores_table,
    model_label_mapping,
    run_evaluation,
    write_model_card,
)
from segface_hf.data.labels import LabelSpec

NAMES = {0: "background", 1: "skin"}


class LeftHalfSkin(torch.nn.Module):
    """A stand-in model whose prediction is known: skin on the left half of its input, background on the right."""

    def __init__(self, image_size: int = 4):
        super().__init__()
        self.config = tiny_config(num_labels=2, image_size=image_size)
        self.config.id2label = dict(NAMES)

    def forward(self, pixel_values, **kwargs):
        batch, _, height, width = pixel_values.shape
        logits = torch.zeros(batch, 2, height, width)
        logits[:, 1, :, : width // 2] = 1.0
        logits[:, 0, :, width // 2 :] = 1.0
        return SimpleNamespace(logits=logits)


def _split(labels, crop_boxes=None):
    import datasets

    rows = []
    for index, label in enumerate(labels):
        label = np.asarray(label, np.uint8)
        row = {"id": f"i{index}", "image": PIL.Image.new("RGB", label.shape[::-1], (90, 60, 30)),
               "label": PIL.Image.fromarray(label)}  # fmt: skip
        if crop_boxes is not None:
            row["crop_box"] = crop_boxes[index]
        rows.append(row)
    return datasets.Dataset.from_list(rows)


def test_model_and_native_protocols_count_the_pixels_by_hand():
    # One 8x8 label: skin in columns 0..5, background in columns 6..7; rows 0 and 1 ignored (255).
    label = np.zeros((8, 8), np.uint8)
    label[:, :6] = 1
    label[:2] = 255
    split = _split([label])
    mapping = model_label_mapping(NAMES)

    # Native: the 4x4 prediction (skin in columns 0..1) resized to 8x8 is skin in columns 0..3.
    # Rows 2..7: skin gt 6 x 6 = 36, predicted skin 4 x 6 = 24, both 24; background gt 12, predicted 24, both 12.
    native = run_evaluation(LeftHalfSkin(), split, mapping, at="native", show_progress=False)
    assert native["num_pixels"] == 48
    assert native["f1"]["skin"] == pytest.approx(2 * 24 / (36 + 24))
    assert native["f1"]["background"] == pytest.approx(2 * 12 / (12 + 24))
    assert native["mean_f1"] == pytest.approx(2 * 24 / 60)

    # Model resolution: PIL's nearest 8 -> 4 samples rows/columns 1, 3, 5, 7: row 1 ignored; skin in columns 0..2
    # (source columns 1, 3, 5), background in column 3. Rows 3, 5, 7: skin gt 9, predicted 6, both 6.
    model = run_evaluation(LeftHalfSkin(), split, mapping, at="model", show_progress=False)
    assert model["num_pixels"] == 12
    assert model["f1"]["skin"] == pytest.approx(2 * 6 / (9 + 6))
    assert model["f1"]["background"] == pytest.approx(2 * 3 / (3 + 6))
    assert model["num_images"] == native["num_images"] == 1


def test_native_protocol_uses_the_cropped_label_and_batches_of_any_size():
    labels = [np.ones((10, 12), np.uint8), np.ones((6, 6), np.uint8)]
    split = _split(labels, crop_boxes=[[2, 0, 10, 8], [0, 0, 6, 6]])
    scores = run_evaluation(LeftHalfSkin(), split, model_label_mapping(NAMES), at="native", batch_size=2,
                            crop_box_column="crop_box", show_progress=False)  # fmt: skip
    # 8x8 crop: skin predicted on columns 0..3 -> 32 of 64 skin pixels; 6x6: columns 0..2 -> 18 of 36.
    assert scores["num_pixels"] == 64 + 36
    assert scores["f1"]["skin"] == pytest.approx(2 * 50 / (100 + 50))
    assert scores["f1"]["background"] == 0.0  # predicted, never in the ground truth


def test_constant_baselines_by_hand():
    label = np.zeros((4, 4), np.uint8)
    label[:, :3] = 1  # 12 skin, 4 background
    split = _split([label])
    mapping = model_label_mapping(NAMES)
    background = constant_prediction_scores(split, mapping, 0, image_size=4, show_progress=False)
    assert background["f1"] == {"background": pytest.approx(2 * 4 / (4 + 16)), "skin": 0.0}
    assert background["mean_f1"] == 0.0
    skin = constant_prediction_scores(split, mapping, 1, image_size=4, show_progress=False)
    assert skin["mean_f1"] == pytest.approx(2 * 12 / (12 + 16))
    assert skin["pixel_accuracy"] == pytest.approx(12 / 16)


def test_dataset_labels_are_matched_to_the_model_by_name():
    spec = LabelSpec(id2label={0: "background", 7: "skin"}, ignore_index=9)
    mapping = model_label_mapping({0: "background", 1: "hair", 2: "skin"}, spec)
    assert mapping(np.array([[0, 7, 9]])).tolist() == [[0, 2, 255]]
    with pytest.raises(ValueError, match=r"classes \['beard'\] are not among"):
        model_label_mapping({0: "background", 1: "skin"}, LabelSpec(id2label={0: "background", 1: "beard"}))


def _result(mean_f1=0.5, protocol="model"):
    scores = {"mean_f1": mean_f1, "f1": {"background": 0.9, "skin": mean_f1}, "merged_f1": {}, "iou": {"background": 0.8,
              "skin": 0.3}, "mean_iou": 0.55, "pixel_accuracy": 0.85, "mean_accuracy": 0.6, "absent_classes": [],
              "num_pixels": 100, "num_images": 3}  # fmt: skip
    return EvaluationResult(scores=scores, protocol=protocol, dataset="faces-built", split="test", model="m")


def test_table_lists_classes_and_mean_f1():
    table = format_scores_table({**_result().scores, "merged_f1": {"eyes": 0.75}, "absent_classes": ["hat"]})
    assert "| skin | 50.00 | 30.00 |" in table and "| eyes (merged) | 75.00 | |" in table
    assert "**mean F1** (excl. background) | **50.00**" in table and "left out of the means): hat" in table


def test_model_card_section_is_written_then_replaced(tmp_path):
    from huggingface_hub import ModelCard

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\n---\n# My face parser\n\nSome words.\n")
    write_model_card(_result(0.5), readme)
    write_model_card(_result(0.625), readme)  # same dataset, split and protocol: replaces
    write_model_card(_result(0.25, protocol="native"), readme)  # another protocol: added
    text = readme.read_text()
    assert "Some words." in text and text.count("## Evaluation: faces-built (test)") == 2
    assert "| skin | 62.50 |" in text and "| skin | 50.00 |" not in text
    card = ModelCard.load(readme)
    assert card.data.license == "mit" and card.data.pipeline_tag == "image-segmentation"
    f1 = sorted((r.metric_name, r.metric_value) for r in card.data.eval_results if r.metric_type == "f1")
    assert f1 == [("Mean F1 (model res.)", 62.5), ("Mean F1 (native res.)", 25.0)]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_script_prints_writes_json_and_model_card(tmp_path, capsys):
    import datasets

    torch.manual_seed(0)
    config = tiny_config(num_labels=2)
    config.id2label = dict(NAMES)
    config.label2id = {v: k for k, v in NAMES.items()}
    SegFaceForSemanticSegmentation(config).save_pretrained(tmp_path / "model")
    SegFaceImageProcessor(size=64).save_pretrained(tmp_path / "model")
    label = np.zeros((40, 48), np.uint8)
    label[8:30, 10:38] = 1
    folder = tmp_path / "data"
    datasets.DatasetDict({"test": _split([label, label])}).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "skin"}))

    script = _script("evaluate")
    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--num-workers", "0",
                        "--model-card"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "**mean F1** (excl. background)" in printed and "2 images, model resolution" in printed
    record = json.loads((tmp_path / "model" / "eval_test_model.json").read_text())
    assert record["protocol"] == "model" and record["scores"]["num_images"] == 2
    assert record["scores"]["num_pixels"] == 2 * 64 * 64
    assert "## Evaluation: data (test)" in (tmp_path / "model" / "README.md").read_text()

    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--at", "native",
                        "--num-workers", "0", "--output-json", str(tmp_path / "native.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "native.json").read_text())["scores"]["num_pixels"] == 2 * 40 * 48

    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--constant-prediction",
                        "skin", "--output-json", str(tmp_path / "skin.json")]) == 0  # fmt: skip
    skin = json.loads((tmp_path / "skin.json").read_text())["scores"]
    resized = np.asarray(PIL.Image.fromarray(label).resize((64, 64), PIL.Image.NEAREST))
    assert skin["f1"]["skin"] == pytest.approx(2 * (resized == 1).sum() / ((resized == 1).sum() + 64 * 64))

    capsys.readouterr()
    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--split", "validation"]) == 2
    assert "no split 'validation'" in capsys.readouterr().err
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "beard"}))
    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--num-workers", "0"]) == 2
    assert "['beard'] are not among" in capsys.readouterr().err


def test_an_exported_file_is_scored_in_its_runtime_beside_the_pytorch_model(tmp_path, capsys):
    """`segface evaluate --exported`: the ONNX file's scores are those of its own logits (counted here from an
    onnxruntime session of our own) and its agreement with PyTorch is the share of pixels with the same argmax."""
    import datasets

    from segface_hf.release.exported_model import SegFaceExportedModel, SegFaceExportedModelError
    from segface_hf.release.onnx_export import export_onnx, load_onnx_session

    torch.manual_seed(0)
    config = tiny_config(num_labels=2)
    config.id2label, config.label2id = dict(NAMES), {v: k for k, v in NAMES.items()}
    model = SegFaceForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path / "model")
    processor = SegFaceImageProcessor(size=64)
    processor.save_pretrained(tmp_path / "model")
    export_onnx(model, tmp_path / "model.onnx", image_size=(64, 64))
    # the labels: half the image skin, and images of two colours so that the predictions differ
    label = np.zeros((64, 64), np.uint8)
    label[:, :32] = 1
    rows = [{"image": PIL.Image.new("RGB", (64, 64), colour), "label": PIL.Image.fromarray(label)}
            for colour in ((200, 150, 120), (30, 40, 50))]  # fmt: skip
    folder = tmp_path / "data"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "skin"}))

    # the truth: our own onnxruntime session and PyTorch on the processor's inputs, counted by hand
    session = load_onnx_session(tmp_path / "model.onnx", threads=1)
    pixels = processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"]
    onnx_argmax = session.run(["logits"], {"pixel_values": pixels.numpy()})[0].argmax(axis=1)
    with torch.no_grad():
        torch_argmax = model(pixels).logits.argmax(dim=1).numpy()
    skin = onnx_argmax == 1
    truth = label[None].repeat(2, axis=0) == 1
    expected_f1 = 2 * (skin & truth).sum() / (skin.sum() + truth.sum())

    script = _script("evaluate")
    out = tmp_path / "exported.json"
    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--num-workers", "0",
                        "--exported", str(tmp_path / "model.onnx"), "--output-json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["settings"]["exported"] == str(tmp_path / "model.onnx")
    assert record["scores"]["f1"]["skin"] == pytest.approx(expected_f1)
    assert record["scores"]["argmax_agreement"] == pytest.approx((onnx_argmax == torch_argmax).mean())
    assert "pixels where the export predicts the PyTorch model's class" in printed

    # bad input: one line each
    for bad, message in ((tmp_path / "model.engine", "ending in .onnx or .pte or .tflite"),
                         (tmp_path / "missing.onnx", "does not exist")):  # fmt: skip
        with pytest.raises(SegFaceExportedModelError, match=message):
            SegFaceExportedModel(bad, config)
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    with pytest.raises(SegFaceExportedModelError, match="cannot be loaded with onnxruntime"):
        SegFaceExportedModel(tmp_path / "broken.onnx", config)
    wrong_size = SegFaceExportedModel(tmp_path / "model.onnx", config)
    with pytest.raises(SegFaceExportedModelError, match="the size it was exported at"):
        wrong_size(torch.zeros(1, 3, 32, 32))
    other_labels = tiny_config(num_labels=3)
    with pytest.raises(SegFaceExportedModelError, match="gives 2 classes, but the model it is paired with has 3"):
        SegFaceExportedModel(tmp_path / "model.onnx", other_labels)(pixels)
    assert script.main(["--model", str(tmp_path / "model"), "--dataset", str(folder), "--exported",
                        str(tmp_path / "model.onnx"), "--model-card"]) == 2  # fmt: skip
    assert "leave out --model-card" in capsys.readouterr().err


@pytest.mark.parametrize(("suffix", "runtime"), [(".onnx", "onnxruntime"), (".pte", "executorch"),
                                                 (".tflite", "litert")])  # fmt: skip
def test_a_corrupt_exported_file_is_refused_in_one_line_naming_its_runtime(tmp_path, suffix, runtime):
    from segface_hf.release.exported_model import SegFaceExportedModel, SegFaceExportedModelError

    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"\x00not an exported model" * 8)
    with pytest.raises(SegFaceExportedModelError, match=f"cannot be loaded with {runtime}: ") as caught:
        SegFaceExportedModel(broken, tiny_config())
    assert "\n" not in str(caught.value) and str(broken) in str(caught.value)
