"""The fast forward path computes what the reference (the original's operations, order and layouts) computes.

The fast path folds the per-scale projections into the fusion convolution and applies them before upsampling,
runs the decoder on channels-last tokens with the transposed convolutions as per-pixel matrix products, and on the
CPU works through the image tokens in blocks. These tests compare it with `model.fast_path = False` on tiny models
of every backbone family, with decoder weights scaled so that the logits are of order 1, and on the MobileNet parity
fixture; gradients must agree too, since training runs the fast path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BACKBONE_FAMILIES, parity_module, require_shared, scaled_model, tiny_config

import segface_hf.fast_path_segface as fast_path
from segface_hf.face_warp import inverse_3x3
from segface_hf import SegFaceForSemanticSegmentation


def both_paths(model, *args, **kwargs):
    outputs = []
    for fast in (True, False):
        model.fast_path = fast
        outputs.append(model(*args, **kwargs).logits)
    model.fast_path = True
    return outputs


@pytest.mark.parametrize("family", BACKBONE_FAMILIES)
def test_fast_path_matches_reference_on_every_backbone_family(family):
    model = scaled_model(family)
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (1, 3, 66, 70)]:
            fast, reference = both_paths(model, torch.randn(*shape))
            assert fast.shape == reference.shape == (shape[0], 5, shape[2], shape[3])
            assert reference.abs().max() > 0.1  # a meaningful comparison, not of near-zero logits
            torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
            assert fast.is_contiguous()


@pytest.mark.parametrize("chunk_tokens", [0, 40, 800, 100_000])
def test_cpu_blocks_of_any_size_give_the_same_logits(monkeypatch, chunk_tokens):
    # 96x64 inputs give a 24x16 token grid (384 tokens per image): 40 splits images into 2-row blocks, 800 groups
    # two images per block, 0 turns blocks off and 100000 covers the whole batch at once.
    monkeypatch.setattr(fast_path, "CPU_BLOCK_TOKENS", chunk_tokens)
    model = scaled_model("swin")
    pixel_values = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        fast, reference = both_paths(model, pixel_values)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_block_boundaries_cover_every_token_once():
    cases = [(1, 128, 128), (3, 24, 16), (8, 7, 9), (2, 5, 1000)]
    for batch, height, width in cases:
        chunks = fast_path.row_blocks(batch, height, width)
        covered = np.zeros((batch, height), dtype=int)
        for first, end, start, stop in chunks or [(0, batch, 0, height)]:
            covered[first:end, start:stop] += 1
        assert (covered == 1).all(), (batch, height, width, chunks)


@pytest.mark.parametrize("family", ["swin", "timm-mobilenet"])
def test_gradients_of_fast_path_match_reference(family, monkeypatch):
    monkeypatch.setattr(fast_path, "CPU_BLOCK_TOKENS", 100)  # exercise the blockwise path under autograd
    model = scaled_model(family)
    pixel_values = torch.randn(2, 3, 64, 64)
    weights = torch.randn(2, 5, 64, 64)  # a loss with well-conditioned gradients: a fixed linear functional
    gradients = []
    for fast in (True, False):
        model.fast_path = fast
        model.zero_grad()
        (model(pixel_values).logits * weights).sum().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fast_grads, reference_grads = gradients
    assert fast_grads.keys() == reference_grads.keys()
    # The folded fusion trains the original parameters.
    for name in ["feature_fusion.weight", "feature_projections.0.weight", "feature_projections.3.bias",
                 "mask_decoder.upscale_conv1.weight", "mask_decoder.upscale_layer_norm.weight"]:  # fmt: skip
        assert fast_grads[name].abs().sum() > 0
    scale = max(g.abs().max() for g in reference_grads.values())
    for name, reference in reference_grads.items():
        torch.testing.assert_close(fast_grads[name], reference, rtol=1e-3, atol=1e-5 * scale, msg=name)


def test_face_warp_model_fast_path_matches_reference():
    model = scaled_model(use_face_warp=True, upscale_channels=[16, 8])
    template = torch.tensor([[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]]) / 8
    landmarks = torch.stack([template, template * 0.9 + 3.0])
    with torch.no_grad():
        fast, reference = both_paths(model, torch.randn(2, 3, 64, 64), landmarks=landmarks)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_blockwise_update_leaves_the_callers_tokens_alone():
    model = scaled_model("swin")
    decoder = model.mask_decoder
    tokens = torch.randn(2, 256, 32)
    before = tokens.clone()
    pe = model.positional_embedding(16, 16).flatten(2).transpose(1, 2)
    class_tokens = decoder.class_embeddings.weight.unsqueeze(0).expand(2, -1, -1)
    chunks = [(0, 1, 0, 100), (0, 1, 100, 256), (1, 2, 0, 256)]
    with torch.no_grad():
        queries, keys = fast_path.two_way_transformer_blockwise(
            decoder.transformer, tokens, pe, class_tokens, chunks, in_place=True
        )
        reference_queries, reference_keys, _ = decoder.transformer(tokens, pe, class_tokens)
    assert torch.equal(tokens, before)
    torch.testing.assert_close(keys, reference_keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(queries, reference_queries, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [4096, 30])
def test_fused_tokens_equal_the_reference_fusion_map(monkeypatch, chunk_tokens):
    # 30 tokens: one-row blocks of the 16x16 grid, each upsampling only the coarse rows it needs.
    monkeypatch.setattr(fast_path, "CPU_BLOCK_TOKENS", chunk_tokens)
    model = scaled_model("convnext")
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 64))
        tokens = fast_path.fuse_features(model.feature_projections, model.feature_fusion, features,
                                         fast_path.row_blocks(2, 16, 16))  # fmt: skip
        reference = model.fuse_features(features)
    assert tokens.shape == (2, 16 * 16, 32)
    torch.testing.assert_close(tokens, reference.flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-5)


def test_positional_encoding_tokens_are_the_map_in_row_major_order():
    model = scaled_model()
    plan = fast_path.plan_fast_path(model, torch.empty(0))
    grid = model.positional_embedding(12, 20)
    tokens = fast_path.positional_tokens(model.positional_embedding, 12, 20, torch.float32, plan)
    assert grid.shape == (1, 32, 12, 20) and tokens.shape == (1, 240, 32)
    assert torch.equal(tokens, grid.flatten(2).transpose(1, 2))
    again = fast_path.positional_tokens(model.positional_embedding, 12, 20, torch.float32, plan)
    assert again is tokens  # cached while the matrix is unchanged
    with torch.no_grad():
        model.positional_embedding.positional_embedding.mul_(2)
    changed = fast_path.positional_tokens(model.positional_embedding, 12, 20, torch.float32, plan)
    assert torch.equal(changed, model.positional_embedding(12, 20).flatten(2).transpose(1, 2))
    assert not torch.equal(changed, tokens)
    bf16 = fast_path.positional_tokens(model.positional_embedding, 12, 20, torch.bfloat16, plan)
    assert bf16.dtype == torch.bfloat16


def test_traced_passes_build_the_encoding_from_row_and_column_tables():
    """While tracing, the encoding comes from `encode_separably` (the angle-sum identities), which must give the
    original's encoding: checked against the direct formula, and against float64 sines of the summed angles."""
    model = scaled_model()
    embedding = model.positional_embedding
    with torch.no_grad():  # frequencies as large as a trained model's (|g| up to about 4): angles up to ~50 radians
        embedding.positional_embedding.copy_(torch.randn(2, 16, generator=torch.Generator().manual_seed(1)) * 2)
    for height, width in ((12, 20), (128, 128), (7, 3)):
        direct = embedding.encode(height, width)
        separable = embedding.encode_separably(height, width)
        assert separable.shape == direct.shape == (1, height, width, 32) and separable.is_contiguous()
        torch.testing.assert_close(separable, direct, rtol=0, atol=2e-5)
        # Independent truth: the angles of cell centres, in float64.
        matrix = embedding.positional_embedding.double()
        y, x = torch.meshgrid((torch.arange(height, dtype=torch.float64) + 0.5) / height * 2 - 1,
                              (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1, indexing="ij")
        angles = 2 * math.pi * (x[..., None] * matrix[0] + y[..., None] * matrix[1])
        exact = torch.cat([angles.sin(), angles.cos()], dim=-1)[None]
        torch.testing.assert_close(separable.double(), exact, rtol=0, atol=2e-5)
    traced_plan = fast_path.SegFaceFastPathPlan(cpu_blocks=False, in_place=False, swin_windows=False, caches=False,
                                                fold_batch_norms=False)  # fmt: skip
    tokens = fast_path.positional_tokens(embedding, 12, 20, torch.float32, traced_plan)
    assert torch.equal(tokens, embedding.encode_separably(12, 20).view(1, 240, 32))


def test_closed_form_inverse_used_for_export_matches_linalg(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    matrices = torch.randn(16, 3, 3, generator=generator) + 3 * torch.eye(3)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(inverse_3x3(matrices), torch.linalg.inv(matrices), rtol=1e-5, atol=1e-5)


def test_mobilenet_parity_fixture_on_both_paths():
    """The cheap real model: both paths reproduce the original's output, and each other."""
    from segface_hf import SegFaceConfig
    from segface_hf.release.conversion import convert_state_dict

    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", "mobilenet_celeba_512"))
    model, _, _ = convert_state_dict(fixture.checkpoint["state_dict_backbone"],
                                     SegFaceConfig.from_variant("mobilenet_celeba_512"), "mobilenet_v3_large",
                                     "celebamask-hq")  # fmt: skip
    pixel_values = torch.from_numpy(sp.normalized_input(fixture))
    with torch.no_grad():
        fast, reference = both_paths(model.eval(), pixel_values)
    for logits in (fast, reference):
        report = sp.compare(logits, fixture.expected)
        assert report.ok, report
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() > 0.999


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_by_batched_matmuls_equals_sdpa_with_the_combined_mask(shifted):
    """The CPU's matmul-and-softmax windows and SDPA (used elsewhere) compute the same attention; both equal the
    attention written out with the mask Swin builds (relative position bias plus the shifted windows' mask)."""
    torch.manual_seed(0)
    batch, windows, heads, area, head_dim = 2, 3, 4, 9, 8
    query, key, value = (torch.randn(batch * windows, heads, area, head_dim) for _ in range(3))
    position_bias = torch.randn(1, heads, area, area)
    shift_mask = torch.where(torch.rand(windows, area, area) < 0.3, -100.0, 0.0) if shifted else None
    mask = position_bias if shift_mask is None else position_bias + shift_mask.repeat(batch, 1, 1)[:, None]
    expected = torch.softmax(query @ key.transpose(-1, -2) * 0.3 + mask, dim=-1) @ value
    for batched_matmuls in (True, False):
        attended = fast_path.window_attention(query, key, value, position_bias, shift_mask, 0.3, batched_matmuls)
        assert attended.shape == expected.shape and attended.is_contiguous()
        torch.testing.assert_close(attended, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window_size, size, chunk_tokens", [(3, (112, 112), 100), (5, (176, 176), 4096),
                                                             (3, (112, 144), 0)])  # fmt: skip
def test_swin_blocks_without_padding_work_equal_the_transformers_layers(window_size, size, chunk_tokens, monkeypatch):
    """Window sizes that do not divide the token grid: Swin pads it, and the fast blocks skip the padding's work."""
    from transformers import SwinConfig

    monkeypatch.setattr(fast_path, "CPU_BLOCK_TOKENS", chunk_tokens)

    backbone = SwinConfig(embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 1, 2, 2], window_size=window_size,
                          image_size=size[0], out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    config = tiny_config("swin")
    config.backbone_config = backbone
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, *size)
    plan = fast_path.plan_fast_path(model, pixel_values)
    with torch.no_grad():
        fast = fast_path.backbone_features(model.backbone, pixel_values, plan)
        reference = model.backbone(pixel_values)
        again = fast_path.backbone_features(model.backbone, pixel_values, plan)  # from the cached window indices
    for fast_map, reference_map, again_map in zip(fast, reference, again):
        assert fast_map.shape == reference_map.shape
        torch.testing.assert_close(fast_map, reference_map, rtol=1e-5, atol=1e-5)
        assert torch.equal(fast_map, again_map)
    model.train()  # training runs the transformers layers (drop path, gradient checkpointing)
    training_plan = fast_path.plan_fast_path(model, pixel_values)
    assert not training_plan.swin_windows
    with torch.no_grad():
        trained = fast_path.backbone_features(model.backbone, pixel_values, training_plan)
    assert [t.shape for t in trained] == [t.shape for t in reference]


@pytest.mark.parametrize("chunk_tokens", [0, 100])
def test_bfloat16_fast_path_matches_bfloat16_reference(monkeypatch, chunk_tokens):
    """bfloat16 as on a GPU (0 = the accelerator's unblocked path), here on the CPU: same dtype handling."""
    monkeypatch.setattr(fast_path, "CPU_BLOCK_TOKENS", chunk_tokens)
    model = scaled_model("swin").to(torch.bfloat16)
    pixel_values = torch.randn(2, 3, 64, 64).bfloat16()
    with torch.no_grad():
        fast, reference = both_paths(model, pixel_values)
    assert fast.dtype == reference.dtype == torch.bfloat16 and fast.shape == reference.shape
    difference = (fast.float() - reference.float()).abs()
    scale = reference.float().abs().max()
    assert difference.max() < 0.05 * scale and difference.mean() < 0.005 * scale
