"""`segface export --format executorch / executorch-int8`: the `.pte` files run in the ExecuTorch runtime and reproduce
PyTorch on real face crops within the formats' thresholds; the LaPa face warp runs inside the program, and nothing
heavy is left outside XNNPACK. Their bad-input cases are in test_export.py with the other formats'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import relax_export_gate
from executorch.runtime import Runtime
from export_runtime_fixtures import faces, model, saved_model, warp_faces, warp_model  # noqa: F401

from segface_hf.release.export import EXPORT_FORMATS, export_model

# As in test_export.py: the tiny model's random weights leave its logits nearly tied almost everywhere, so int8
# rounding flips much of its argmax (strict agreement 0.26 measured on the tiny ResNet) while the logits stay close:
# its argmax says nothing, and the format's gate (0.90) is meant for trained models. What is held here is the
# logits' distance, within TINY_MODEL_INT8_RELATIVE_DIFFERENCE of their scale.
TINY_MODEL_INT8_AGREEMENT = 0.0
TINY_MODEL_INT8_RELATIVE_DIFFERENCE = 0.05


@pytest.fixture(autouse=True)
def tiny_model_int8_gate(monkeypatch):
    relax_export_gate(monkeypatch, "executorch-int8", TINY_MODEL_INT8_AGREEMENT)


# Lowering to XNNPACK takes minutes even for a tiny model, so the module makes two programs only, of the smallest
# backbone family (export_runtime_fixtures.py): the float32 one of a face-warp (LaPa) model, which also shows the warp
# inside the program, and the int8 one of a plain model.


@pytest.fixture(scope="module")
def exports(warp_model, warp_faces, saved_model, tmp_path_factory):
    """The face-warp model's float32 program through the API and the plain model's int8 one through the command line
    (with its JSON report), each exported once for the module."""
    folder = tmp_path_factory.mktemp("executorch-out")
    float32 = export_model(warp_model, folder / "float" / "model.pte", format="executorch", faces=warp_faces,
                           threads=1)  # fmt: skip
    output, report = folder / "int8" / "model_int8.pte", folder / "int8.json"
    with pytest.MonkeyPatch.context() as patch:
        relax_export_gate(patch, "executorch-int8", TINY_MODEL_INT8_AGREEMENT)
        from segface_hf.cli import main

        code = main(["export", "--model", str(saved_model), "--format", "executorch-int8", "--output", str(output),
                     "--json", str(report), "--threads", "1", "--quiet"])  # fmt: skip
    assert code == 0
    return {"executorch": float32, "executorch-int8": json.loads(report.read_text())}


def _reference_run(path, feed):
    """Logits of the program in ExecuTorch's own runtime, not through the code under test, one face at a time (the
    program takes batch size 1)."""
    method = Runtime.get().load_program(str(path)).load_method("forward")
    names = ["pixel_values"] + (["landmarks"] if "landmarks" in feed else [])
    faces = []
    for index in range(len(feed["pixel_values"])):
        (logits,) = method.execute([torch.from_numpy(feed[name][index : index + 1]) for name in names])
        faces.append(logits.numpy())
    return np.concatenate(faces)


def _pytorch(model, feed):
    with torch.no_grad():
        return model(**{name: torch.from_numpy(array) for name, array in feed.items()}).logits.numpy()


@pytest.mark.parametrize(
    ("name", "max_difference", "min_agreement"),
    [("executorch", 1e-3, 0.999), ("executorch-int8", TINY_MODEL_INT8_RELATIVE_DIFFERENCE, TINY_MODEL_INT8_AGREEMENT)],
)
def test_each_program_runs_in_executorch_and_matches_pytorch(model, faces, warp_model, warp_faces, exports, name,
                                                             max_difference, min_agreement):  # fmt: skip
    if name == "executorch":
        model, faces = warp_model, warp_faces
    result = exports[name]
    record = result if isinstance(result, dict) else result.to_dict()
    path = Path(record["path"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging folder left behind
    assert record["format"] == name and record["size_bytes"] == path.stat().st_size
    assert record["fidelity"]["passed"] is True and record["fidelity"]["faces"] == 2 and record["latency_ms"] > 0
    assert record["calibration_faces"] == (3 if name == "executorch-int8" else 0)
    inputs = ["pixel_values", "landmarks"] if name == "executorch" else ["pixel_values"]
    assert record["input_names"] == inputs and record["image_size"] in ([64, 64], (64, 64))
    assert path.read_bytes()[4:8] == b"ET12"  # an ExecuTorch flatbuffer program

    # The held-out faces (the first and last of five), and three others.
    for chosen in ([faces[0], faces[4]], faces[1:4]):
        feed = {key: np.concatenate([face[key] for face in chosen]) for key in inputs}
        got, expected = _reference_run(path, feed), _pytorch(model, feed)
        assert got.shape == expected.shape == (len(chosen), 5, 64, 64)
        assert np.abs(expected).max() > 0.5  # real logits
        difference = np.abs(got - expected).max()
        assert difference <= max_difference * (1 if name == "executorch" else np.abs(expected).max())
        assert (got.argmax(1) == expected.argmax(1)).mean() >= min_agreement
        if name == "executorch-int8":
            assert difference > 1e-3  # the precision really changed


def test_the_face_warp_runs_inside_the_program(warp_model, warp_faces, exports):
    """The LaPa head's grid_sample and closed-form 3x3 inverse are in the program: it takes the landmarks as a
    second input and reproduces PyTorch on real faces with their detected landmarks."""
    result = exports["executorch"]
    assert result.fidelity.passed and result.input_names == ["pixel_values", "landmarks"]
    feed = {name: np.concatenate([face[name] for face in warp_faces[1:4]]) for name in ("pixel_values", "landmarks")}
    got, expected = _reference_run(result.path, feed), _pytorch(warp_model, feed)
    assert np.abs(got - expected).max() <= 1e-3
    # The landmarks matter: other landmarks give other logits.
    moved = {**feed, "landmarks": feed["landmarks"] + np.float32(3.0)}
    assert np.abs(_reference_run(result.path, moved) - got).max() > 1e-2


def test_the_card_lists_the_programs_at_their_hub_paths(saved_model, exports):
    from segface_hf import SegFaceConfig
    from segface_hf.release.model_card import build_model_card, check_model_card

    assert EXPORT_FORMATS["executorch"].hub_path == "executorch/model.pte"
    assert EXPORT_FORMATS["executorch-int8"].hub_path == "executorch/model_int8.pte"
    result = exports["executorch"]
    card = build_model_card(SegFaceConfig.from_pretrained(saved_model), "standin-user/tiny",
                            variant="mobilenet_celeba_512", exports=[result])  # fmt: skip
    check_model_card(card)
    row = next(line for line in card.splitlines() if line.startswith("| `executorch/model.pte` |"))
    assert "| executorch |" in row and f"{result.fidelity.argmax_agreement:.4f} (2 faces)" in row


def test_parameter_products_are_folded_before_lowering(model):
    """XNNPACK delegates a matrix product only when its weight is a constant: after `fold_parameter_products` every
    product's weight is a stored constant (the fusion matrices the fast path computes from two parameters are folded),
    the positional encoding's sine and cosine are still computed, and the program computes the same logits."""
    from segface_hf.release.executorch_export import fold_parameter_products
    from segface_hf.release.onnx_export import SegFaceLogitsOnly, example_inputs

    inputs = example_inputs(model.config, 2, (64, 64))
    with torch.no_grad():
        program = torch.export.export(SegFaceLogitsOnly(model, False).eval(), tuple(inputs.values()), strict=False)
        expected = program.module()(*inputs.values())
    products = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.linear.default)

    def computed_weights(graph):
        """The products in `graph` whose weight (seen through transposes) is computed rather than stored."""
        computed = []
        for node in graph.nodes:
            if node.op == "call_function" and node.target in products:
                weight = node.args[1] if node.target == torch.ops.aten.linear.default else node.args[-1]
                while weight.op == "call_function" and weight.target in (torch.ops.aten.t.default,
                                                                         torch.ops.aten.permute.default):  # fmt: skip
                    weight = weight.args[0]
                if weight.op != "placeholder" or weight.name == "pixel_values":
                    computed.append(node)
        return computed

    assert computed_weights(program.graph)  # the fusion matrices: products of the projection and fusion weights
    with torch.no_grad():
        folded = fold_parameter_products(program)  # (in place)
        got = folded.module()(*inputs.values())
    assert computed_weights(folded.graph) == []
    targets = {node.target for node in folded.graph.nodes if node.op == "call_function"}
    assert {torch.ops.aten.sin.default, torch.ops.aten.cos.default} <= targets
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_runner_keeps_the_runtimes_thread_pool_notices_off_stderr(exports, capfd):
    """Resizing ExecuTorch's thread pool writes a line through `sys.stderr` at every resize (and its CPU probing at
    the first): a runner with `threads` keeps them off the user's terminal, and the program still runs."""
    from segface_hf.release.executorch_export import executorch_runner

    capfd.readouterr()
    run = executorch_runner(exports["executorch"].path, threads=1)
    assert "[threadpool.cpp:" not in capfd.readouterr().err
    feed = {"pixel_values": np.zeros((1, 3, 64, 64), np.float32), "landmarks": np.zeros((1, 5, 2), np.float32)}
    assert run(feed).shape == (1, 5, 64, 64)


def test_a_fresh_process_loading_a_program_prints_nothing_of_the_runtimes_cpu_probing(exports):
    """The runtime probes the CPU and sizes its thread pool when a process loads its first delegated method, and
    writes what it read to stderr ("[cpuinfo_utils.cpp:...] Failed to open midr file ..."): the runner keeps it off,
    without `threads` too. A fresh interpreter, since the probing happens once per process."""
    script = (
        "import numpy as np\n"
        "from segface_hf.release.executorch_export import executorch_runner\n"
        f"run = executorch_runner({str(exports['executorch'].path)!r})\n"
        "feed = {'pixel_values': np.zeros((2, 3, 64, 64), np.float32), 'landmarks': np.zeros((2, 5, 2), np.float32)}\n"
        "print(run(feed).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(2, 5, 64, 64)")
    assert "[cpuinfo_utils.cpp:" not in done.stderr and "[threadpool.cpp:" not in done.stderr, done.stderr


def test_the_program_leaves_only_layer_norms_and_layout_copies_outside_xnnpack(model):
    """Every operator left out of the XNNPACK delegate runs on ExecuTorch's single-threaded portable kernels. After
    lowering, the only ones left are the layer norms (XNNPACK has none) and small layout copies: the upsamplings
    (static shapes), the attention (written out, no softmax guards), the encoding's products and the logits' slices
    are all delegated. Measured at full size, these moved MobileNetV3 at 512 from 0.39 s to 0.17 s per image."""
    from segface_hf.release.executorch_export import lower_to_xnnpack

    program = lower_to_xnnpack(model, (64, 64)).exported_program()
    # Operator names as "namespace.name.overload" ("aten.native_layer_norm.default"); Python built-ins and the
    # delegate call have a bare name.
    names = [node.target.__name__.split(".") for node in program.graph.nodes if node.op == "call_function"]
    left = {parts[-2] if len(parts) > 1 else parts[0] for parts in names}
    assert "executorch_call_delegate" in left
    left -= {"executorch_call_delegate", "getitem", "view_copy", "sym_size"}
    assert left <= {"native_layer_norm", "_to_dim_order_copy", "_clone_dim_order", "unsqueeze_copy"}, left
    assert "native_layer_norm" in left


def test_int8_programs_quantize_the_linear_layers_and_the_large_convolutions_only(model, monkeypatch):
    """`quantized_node_filter` keeps the output stage float and the convolutions whose weights have fewer than
    `SMALLEST_QUANTIZED_CONVOLUTION` values (the stem, the depthwise kernels): checked against the sizes of the
    backbone's own `nn.Conv2d` weights, with the bound moved to the middle of the tiny model's sizes."""
    import segface_hf.release.executorch_export as executorch_export
    from segface_hf.release.onnx_export import SegFaceLogitsOnly, example_inputs

    # The backbone's convolutions (the fusion's 1x1 convolution is a matrix product in the traced fast path).
    sizes = sorted(module.weight.numel() for module in model.backbone.modules() if isinstance(module, torch.nn.Conv2d))
    bound = sizes[len(sizes) // 2]
    assert sizes[0] < bound <= sizes[-1]
    monkeypatch.setattr(executorch_export, "SMALLEST_QUANTIZED_CONVOLUTION", bound)
    inputs = example_inputs(model.config, 1, (64, 64))
    with torch.no_grad():
        program = torch.export.export(SegFaceLogitsOnly(model, False).eval(), tuple(inputs.values()), strict=False)
        graph_module = executorch_export.fold_parameter_products(program).module()
    keep = executorch_export.quantized_node_filter(graph_module)
    nodes = [node for node in graph_module.graph.nodes if node.op == "call_function"]
    convolutions = [node for node in nodes if node.target == torch.ops.aten.conv2d.default]
    kept = sorted(graph_module.get_parameter(node.args[1].target).numel() for node in convolutions if keep(node))
    assert kept == [size for size in sizes if size >= bound]
    linear = [node for node in nodes if node.target == torch.ops.aten.linear.default]
    in_output_stage = [node for node in linear
                       if any(path.startswith(executorch_export.FLOAT_OUTPUT_MODULE)
                              for path, _ in node.meta["nn_module_stack"].values())]  # fmt: skip
    assert in_output_stage and not any(keep(node) for node in in_output_stage)
    assert [node for node in linear if node not in in_output_stage and keep(node)]  # the transformer's layers
