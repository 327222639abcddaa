"""torch.export (strict and non-strict) and torch.compile(fullgraph=True) with a dynamic batch, for every backbone
family.

Nothing in a traced forward may touch `data_ptr` or Python-side caches keyed on tensor identity: while tracing, the
fast path keeps only its plain tensor functions (`fast_path_segface.plan_fast_path`). The exported programs must give
the eager model's logits (max difference at most 1e-4) at a batch size other than the traced one.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import BACKBONE_FAMILIES, tiny_config

from segface_hf import SegFaceForSemanticSegmentation, fast_path_segface


def _model(family):
    torch.manual_seed(0)
    return SegFaceForSemanticSegmentation(tiny_config(family)).eval()


class _CacheClosedToTracers(weakref.WeakKeyDictionary):
    """An eager-pass cache that fails the moment a tracer reads or writes it. A tracer that looks into a weak
    dictionary guards on its contents, which the garbage collector may change before the guards are built (that
    made strict export fail at random in CI)."""

    def _check(self):
        if fast_path_segface.is_tracing():
            raise AssertionError("a Python-side cache was touched while tracing")

    def get(self, key, default=None):
        self._check()
        return super().get(key, default)

    def __getitem__(self, key):
        self._check()
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def setdefault(self, key, default=None):
        self._check()
        return super().setdefault(key, default)


@pytest.fixture(autouse=True)
def caches_closed_to_tracers(monkeypatch):
    monkeypatch.setattr(fast_path_segface, "_ENCODING_CACHE", _CacheClosedToTracers())
    monkeypatch.setattr(fast_path_segface, "_SWIN_WINDOW_CACHE", _CacheClosedToTracers())


def _logits(output):
    return output.logits if hasattr(output, "logits") else output["logits"]


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("family", BACKBONE_FAMILIES)
def test_export_with_a_dynamic_batch_equals_eager(family, strict, one_thread):
    torch._dynamo.reset()
    model = _model(family)
    traced_input = torch.randn(2, 3, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(model, (traced_input,), dynamic_shapes={"pixel_values": {0: batch}}, strict=strict)
    pixel_values = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).logits
        exported = _logits(program.module()(pixel_values))
    assert exported.shape == expected.shape == (3, 5, 64, 64)
    assert (exported - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("family", BACKBONE_FAMILIES)
def test_compile_fullgraph_with_a_dynamic_batch_equals_eager(family, one_thread):
    """Dynamo captures the whole forward in one graph (fullgraph) with the batch dimension symbolic; the eager
    backend runs that graph (what is checked is the capture, not a code generator)."""
    torch._dynamo.reset()
    model = _model(family)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for batch in (2, 3):
            pixel_values = torch.randn(batch, 3, 64, 64)
            torch._dynamo.mark_dynamic(pixel_values, 0)
            torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
