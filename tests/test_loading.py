"""Loading a saved SegFace with `dtype=torch.bfloat16` and with `device_map="auto"` (accelerate's big-model loading)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from segface_hf import SegFaceForSemanticSegmentation


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(tiny_config("swin")).eval()
    folder = tmp_path_factory.mktemp("tiny-swin")
    model.save_pretrained(folder)
    return folder, model


def test_bfloat16_loading_runs_in_bfloat16_and_follows_float32(saved):
    folder, reference = saved
    model = SegFaceForSemanticSegmentation.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(pixel_values.bfloat16()).logits
        expected = reference(pixel_values).logits
    assert logits.dtype == torch.bfloat16 and logits.shape == expected.shape
    difference = (logits.float() - expected).abs()
    assert difference.max() < 0.05 * expected.abs().max()


def test_device_map_auto_loads_every_weight_and_matches(saved):
    import accelerate  # noqa: F401  (device_map needs accelerate, in the train extra)

    folder, reference = saved
    model = SegFaceForSemanticSegmentation.from_pretrained(folder, device_map="auto").eval()
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in model.parameters()} == {expected_device}
    assert {b.device.type for b in model.buffers()} == {expected_device}
    reference = reference.to(expected_device)
    pixel_values = torch.randn(1, 3, 64, 64, device=expected_device)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reference(pixel_values).logits)
    reference.to("cpu")
