"""`segface export --format litert / litert-int8`: the `.tflite` files run in the LiteRT interpreter and reproduce
PyTorch on real face crops within the formats' thresholds; the LaPa face warp converts into the graph; `segface
predict --exported` runs one. Bad-input cases shared with the other formats are in test_export.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from conftest import one_export_error_line, relax_export_gate, run_export_cli, save_export_model
from export_runtime_fixtures import faces, model, saved_model, warp_faces, warp_model  # noqa: F401

from segface_hf.release.export import export_model

# As in test_export_executorch.py: the tiny model's random weights leave its logits nearly tied almost everywhere, so
# its int8 argmax says little; what is held is the logits' distance, within this fraction of their scale.
TINY_MODEL_INT8_AGREEMENT = 0.0
TINY_MODEL_INT8_RELATIVE_DIFFERENCE = 0.05

# Converting takes a while even for a tiny model, so the module makes two files of the smallest backbone family
# (export_runtime_fixtures.py): the float32 one of a face-warp (LaPa) model, which also shows the warp in the graph,
# and the int8 one of a plain model.


@pytest.fixture(scope="module")
def exports(warp_model, warp_faces, saved_model, tmp_path_factory):
    """The face-warp model's float32 file through the API and the plain model's int8 one through the command line
    (with its JSON report), each exported once for the module."""
    folder = tmp_path_factory.mktemp("litert-out")
    float32 = export_model(warp_model, folder / "float" / "model.tflite", format="litert", faces=warp_faces,
                           threads=1)  # fmt: skip
    output, report = folder / "int8" / "model_int8.tflite", folder / "int8.json"
    with pytest.MonkeyPatch.context() as patch:
        relax_export_gate(patch, "litert-int8", TINY_MODEL_INT8_AGREEMENT)
        from segface_hf.cli import main

        code = main(["export", "--model", str(saved_model), "--format", "litert-int8", "--output", str(output),
                     "--json", str(report), "--threads", "1", "--quiet"])  # fmt: skip
    assert code == 0
    return {"litert": float32, "litert-int8": json.loads(report.read_text())}


def _reference_run(path, feed):
    """Logits of the file in the LiteRT interpreter, face by face, not through the code under test."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inputs = sorted(interpreter.get_input_details(), key=lambda detail: detail["index"])
    names = ["pixel_values"] + (["landmarks"] if "landmarks" in feed else [])
    logits = []
    for index in range(len(feed["pixel_values"])):
        for detail, name in zip(inputs, names):
            interpreter.set_tensor(detail["index"], feed[name][index : index + 1])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return np.concatenate(logits)


def _pytorch(model, feed):
    with torch.no_grad():
        return model(**{name: torch.from_numpy(array) for name, array in feed.items()}).logits.numpy()


@pytest.mark.parametrize(
    ("name", "max_difference", "min_agreement"),
    [("litert", 1e-3, 0.999), ("litert-int8", TINY_MODEL_INT8_RELATIVE_DIFFERENCE, TINY_MODEL_INT8_AGREEMENT)],
)
def test_each_file_runs_in_litert_and_matches_pytorch(model, faces, warp_model, warp_faces, exports, name,
                                                      max_difference, min_agreement):  # fmt: skip
    if name == "litert":
        model, faces = warp_model, warp_faces
    result = exports[name]
    record = result if isinstance(result, dict) else result.to_dict()
    path = Path(record["path"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging folder left behind
    assert record["format"] == name and record["size_bytes"] == path.stat().st_size
    assert record["fidelity"]["passed"] is True and record["fidelity"]["faces"] == 2 and record["latency_ms"] > 0
    assert record["calibration_faces"] == (3 if name == "litert-int8" else 0)
    inputs = ["pixel_values", "landmarks"] if name == "litert" else ["pixel_values"]
    assert record["input_names"] == inputs and record["image_size"] in ([64, 64], (64, 64))
    assert path.read_bytes()[4:8] == b"TFL3"  # a LiteRT (TFLite) flatbuffer

    feed = {key: np.concatenate([face[key] for face in faces[1:4]]) for key in inputs}
    got, expected = _reference_run(path, feed), _pytorch(model, feed)
    assert got.shape == expected.shape == (3, 5, 64, 64)
    assert np.abs(expected).max() > 0.5  # real logits
    difference = np.abs(got - expected).max()
    assert difference <= max_difference * (1 if name == "litert" else np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= min_agreement
    if name == "litert-int8":
        assert difference > 1e-3  # the precision really changed


def test_the_face_warp_is_inside_the_graph(warp_model, warp_faces, exports):
    """The LaPa head's grid_sample and closed-form 3x3 inverse are in the file: the landmarks are its second input,
    and other landmarks give other logits."""
    result = exports["litert"]
    feed = {name: np.concatenate([face[name] for face in warp_faces[:2]]) for name in ("pixel_values", "landmarks")}
    got = _reference_run(result.path, feed)
    moved = {**feed, "landmarks": feed["landmarks"] + np.float32(3.0)}
    assert np.abs(_reference_run(result.path, moved) - got).max() > 1e-2
    assert np.abs(got - _pytorch(warp_model, feed)).max() <= 1e-3


def test_predict_runs_a_litert_file(exports, warp_model, tmp_path):
    """`segface predict --exported FILE.tflite` parses a photo through the LiteRT file, with the labels of the model
    it came from."""
    from segface_hf.cli import main

    model_dir = save_export_model(warp_model, tmp_path / "model")
    photo = Path(__file__).resolve().parents[2] / "shared" / "images" / "grace_hopper.jpg"
    code = main(["predict", str(photo), "--model", str(model_dir), "--exported", str(exports["litert"].path),
                 "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"].endswith(f"({exports['litert'].path})")
    assert (tmp_path / "out" / "grace_hopper.png").is_file()


def test_a_calibration_folder_without_faces_is_refused(saved_model, tmp_path, capsys):
    import PIL.Image

    (tmp_path / "blank").mkdir()
    PIL.Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "blank" / "grey.png")
    code, out, err = run_export_cli(capsys, "--model", saved_model, "--format", "litert-int8", "--output",
                                    tmp_path / "m.tflite", "--calibration", tmp_path / "blank", "--quiet")  # fmt: skip
    assert code == 2 and out == "" and "no faces found in the 1 images of" in one_export_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank"]


def test_importing_litert_prints_none_of_its_native_notices():
    """litert-torch's native library writes two notices to file descriptor 2 on import (third_party_logging.py);
    `require_litert` filters them, in a fresh process where the import really happens."""
    import subprocess
    import sys

    code = "from segface_hf.release.litert_export import require_litert; require_litert()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "oneDNN custom operations" not in done.stderr and "InitializeLog" not in done.stderr, done.stderr


def test_stderr_filter_keeps_every_other_line(capfd):
    """Lines written to file descriptor 2 (as LiteRT's native library does) and through Python's `sys.stderr` (as
    ExecuTorch's runtime does) lose the notices and keep everything else."""
    import os
    import sys

    from segface_hf.third_party_logging import stderr_without

    with stderr_without("a notice"):
        os.write(2, b"first line\nthis is a notice to drop\nlast line\n")
        sys.stderr.write("python line\nalso a notice to drop\n")
    assert capfd.readouterr().err == "first line\nlast line\npython line\n"


def test_quiet_converter_drops_a_converters_chatter_and_restores_its_logger(capsys):
    """What litert-torch and coremltools print while converting (progress on one stream, notices as log records and
    warnings) is dropped inside the block; the logger's level is its own again afterwards, and errors still log."""
    import logging
    import sys
    import warnings

    from segface_hf.third_party_logging import quiet_converter

    logger = logging.getLogger("segface_test_converter")
    logger.setLevel(logging.INFO)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with quiet_converter("segface_test_converter", "stdout"):
            print("a progress tree")
            logger.info("a version notice")
            logger.error("a real error")
            warnings.warn("a deprecation notice")
            print("stderr stays", file=sys.stderr)
        assert logger.level == logging.INFO
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "stderr stays\n"
    assert [r.getMessage() for r in records] == ["a real error"]


def _weight_types(path) -> dict[tuple[str, tuple[int, ...]], set[str]]:
    """(operator name, weight shape) -> the element types of that operator's weights (its second input), read from
    the flatbuffer with LiteRT's own schema."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    operators = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    types = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    (graph,) = model.subgraphs
    found: dict[tuple[str, tuple[int, ...]], set[str]] = {}
    for operator in graph.operators:
        code = model.operatorCodes[operator.opcodeIndex]
        if len(operator.inputs) > 1 and operator.inputs[1] >= 0:
            weight = graph.tensors[operator.inputs[1]]
            key = (operators[max(code.builtinCode, code.deprecatedBuiltinCode)], tuple(int(n) for n in weight.shape))
            found.setdefault(key, set()).add(types[weight.type])
    return found


def test_int8_file_quantizes_the_linear_layers_and_keeps_the_convolutions_float(exports):
    """What `litert-int8` quantizes (litert_export's docstring says why): fully connected operators with int8
    weights (the linear layers), while the backbone's 3x3 convolutions keep float32 weights; in the float32 file every
    fully connected weight is float32. (This tiny ResNet's residual additions come out quantized as well, and the
    converter lowers the shortcuts' 1x1 convolutions between them to int8; MobileNetV3 at 512 has no int8
    convolution.)"""
    int8 = _weight_types(exports["litert-int8"]["path"])
    fully_connected = set().union(*(types for (name, _), types in int8.items() if name == "FULLY_CONNECTED"))
    assert "INT8" in fully_connected
    three_by_three = [types for (name, shape), types in int8.items() if name == "CONV_2D" and shape[1:3] == (3, 3)]
    assert three_by_three and all(types == {"FLOAT32"} for types in three_by_three)
    float32 = _weight_types(exports["litert"].path)
    assert set().union(*(types for (name, _), types in float32.items() if name == "FULLY_CONNECTED")) == {"FLOAT32"}
