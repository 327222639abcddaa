"""`segface export --format coreml / coreml-fp16`: Core ML packages (ML programs) of the tiny models. Core ML runs on
Apple platforms only, so what is checked here is what coremltools reads back from the written package: its inputs,
outputs and shapes, the face warp inside the program, float16 weights in the fp16 package, and that a package whose
spec is not the model's is refused with nothing left on disk."""

from __future__ import annotations

import json

import coremltools as ct
import pytest
from conftest import run_export_cli, one_export_error_line, save_export_model, scaled_model

from segface_hf.release import coreml_export
from segface_hf.release.coreml_export import SegFaceCoreMLError, check_coreml_spec
from segface_hf.release.export import export_model

FAMILY = "resnet"


@pytest.fixture(scope="module")
def warp_model():
    return scaled_model(FAMILY, use_face_warp=True, upscale_channels=[16, 8])


@pytest.fixture(scope="module")
def packages(warp_model, tmp_path_factory):
    """The face-warp model as a float32 package through the API and as a float16 one through the command line."""
    folder = tmp_path_factory.mktemp("coreml")
    float32 = export_model(warp_model, folder / "model.mlpackage", format="coreml")
    saved = save_export_model(warp_model, folder / "saved")
    report = folder / "fp16.json"
    from segface_hf.cli import main

    code = main(["export", "--model", str(saved), "--format", "coreml-fp16", "--output",
                 str(folder / "model_fp16.mlpackage"), "--json", str(report), "--quiet"])  # fmt: skip
    assert code == 0
    return {"coreml": float32, "coreml-fp16": json.loads(report.read_text()), "folder": folder}


def _program(path):
    spec = ct.utils.load_spec(str(path))
    return spec, {op.type for op in spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations}


def test_the_package_takes_the_faces_and_landmarks_and_gives_the_logits(packages, warp_model):
    result = packages["coreml"]
    spec, operations = _program(result.path)
    inputs = {feature.name: list(feature.type.multiArrayType.shape) for feature in spec.description.input}
    outputs = {feature.name: list(feature.type.multiArrayType.shape) for feature in spec.description.output}
    assert inputs == {"pixel_values": [1, 3, 64, 64], "landmarks": [1, 5, 2]}
    assert outputs == {"logits": [1, warp_model.config.num_labels, 64, 64]}
    # The LaPa warp is inside the program: the resampling of the image onto the aligned face and back.
    assert "resample" in operations
    assert result.fidelity is None and result.latency_ms is None
    assert result.notes and "not run" in result.notes[0] and "not run" in str(result)
    assert result.size_bytes == sum(f.stat().st_size for f in result.path.rglob("*") if f.is_file()) > 0


def test_the_fp16_package_stores_half_precision_weights(packages):
    weights = {name: sum(f.stat().st_size for f in (packages["folder"] / f"{stem}.mlpackage").rglob("*.bin"))
               for name, stem in (("float32", "model"), ("float16", "model_fp16"))}  # fmt: skip
    assert 0.4 < weights["float16"] / weights["float32"] < 0.6
    record = packages["coreml-fp16"]
    assert record["format"] == "coreml-fp16" and record["fidelity"] is None and "not run" in record["notes"][0]


def test_a_package_that_is_not_the_model_is_refused_and_nothing_is_left(packages, warp_model, tmp_path, monkeypatch):
    labels = {index: f"class_{index}" for index in range(7)}
    config = warp_model.config.__class__(**{**warp_model.config.to_dict(), "id2label": labels,
                                            "label2id": {name: index for index, name in labels.items()}})  # fmt: skip
    with pytest.raises(SegFaceCoreMLError, match=r"outputs are \{'logits': \[1, 5, 64, 64\]\}, expected"):
        check_coreml_spec(packages["coreml"].path, config, (64, 64))
    with pytest.raises(SegFaceCoreMLError, match="inputs are"):
        check_coreml_spec(packages["coreml"].path, warp_model.config, (32, 32))

    export_at_its_size = coreml_export.export_coreml

    def wrong_size(model, target, image_size, precision):
        return export_at_its_size(model, target, (32, 32), precision)

    monkeypatch.setattr(coreml_export, "export_coreml", wrong_size)
    with pytest.raises(SegFaceCoreMLError, match="inputs are"):
        export_model(warp_model, tmp_path / "m.mlpackage", format="coreml")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_package_is_replaced_only_with_overwrite(packages, capsys):
    saved = packages["folder"] / "saved"
    target = packages["folder"] / "model_fp16.mlpackage"
    code, out, err = run_export_cli(capsys, "--model", saved, "--format", "coreml-fp16", "--output", target, "--quiet")
    assert code == 2 and out == "" and "exists; pass --overwrite" in one_export_error_line(err)
