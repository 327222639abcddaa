"""SegFaceForSemanticSegmentation on tiny configs of every backbone family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BACKBONE_FAMILIES, tiny_config

from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation
from segface_hf.face_warp import face_alignment_matrix, face_unwarp_grid, face_warp_grid
from segface_hf.modeling_segface import segface_loss


def build(family="timm-mobilenet", seed=0, **overrides):
    torch.manual_seed(seed)
    return SegFaceForSemanticSegmentation(tiny_config(family, **overrides)).eval()


@pytest.mark.parametrize("family", BACKBONE_FAMILIES)
def test_forward_shapes_loss_backward_and_round_trip(family, tmp_path):
    model = build(family)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
    assert outputs.logits.shape == (2, 5, 64, 64)
    strides = [64 // f.shape[-1] for f in outputs.hidden_states]
    assert strides == [4, 8, 16, 32]
    assert torch.isfinite(outputs.logits).all()

    model.train()
    labels = torch.randint(0, 5, (2, 64, 64))
    loss = model(pixel_values, labels=labels).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    decoder_grad = model.mask_decoder.class_embeddings.weight.grad
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert decoder_grad is not None and decoder_grad.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)

    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = SegFaceForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_tuple_output_and_hidden_states_flag():
    model = build()
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = torch.randint(0, 5, (1, 64, 64))
    with torch.no_grad():
        loss, logits = model(pixel_values, labels=labels, return_dict=False)
        only_logits = model(pixel_values, return_dict=False)
    assert loss.ndim == 0 and logits.shape == (1, 5, 64, 64)
    assert len(only_logits) == 1 and torch.equal(only_logits[0], logits)


def test_odd_input_sizes_work_at_input_resolution():
    model = build("swin")
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 66, 70)).logits
    assert logits.shape == (1, 5, 66, 70) and torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shapes_raise_clear_errors(shape):
    model = build()
    with pytest.raises(ValueError, match="pixel_values|at least 32x32"):
        model(torch.randn(*shape))


def test_labels_of_wrong_shape_or_label_set_are_rejected():
    model = build()
    pixel_values = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="do not match"):
        model(pixel_values, labels=torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the model's 5 classes"):
        model(pixel_values, labels=torch.full((1, 64, 64), 7))


def test_positional_encoding_follows_loaded_matrix():
    model = build()
    first = model.positional_embedding(16, 16).clone()
    assert torch.equal(model.positional_embedding(16, 16), first)  # cached, same values
    model.load_state_dict({**model.state_dict(), "positional_embedding.positional_embedding": torch.ones(2, 16)})
    changed = model.positional_embedding(16, 16)
    # With G = ones, channel 0 at cell (i, j) is sin(2*pi*(x + y)) of the cell-centre coordinates in [-1, 1].
    y, x = 2 * (0.5 / 16) - 1, 2 * (1.5 / 16) - 1
    assert not torch.equal(changed, first)
    assert math.isclose(changed[0, 0, 0, 1].item(), math.sin(2 * math.pi * (x + y)), abs_tol=1e-5)
    assert math.isclose(changed[0, 16, 0, 1].item(), math.cos(2 * math.pi * (x + y)), abs_tol=1e-5)


def test_fresh_class_tokens_are_drawn_like_the_originals_and_loaded_ones_are_kept(tmp_path):
    """The original's class tokens are an `nn.Embedding` at PyTorch's default N(0, 1); N(0, 0.02) tokens start
    nearly identical (every class with the same mask). Loading a checkpoint must not re-draw them."""
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(tiny_config(num_labels=19))
    tokens = model.mask_decoder.class_embeddings.weight  # 19 x 32 draws
    assert 0.85 < tokens.std().item() < 1.15 and abs(tokens.mean().item()) < 0.15
    # Pairwise distances of N(0, 1) tokens in 32 dimensions are about 8; N(0, 0.02) ones about 0.16.
    assert torch.pdist(tokens).min().item() > 3.0
    model.save_pretrained(tmp_path)
    reloaded = SegFaceForSemanticSegmentation.from_pretrained(tmp_path)
    assert torch.equal(reloaded.mask_decoder.class_embeddings.weight, tokens)


# ----------------------------------------------------------------------------------------------------------------
# Loss


def test_loss_matches_hand_computed_case():
    # Two classes, one image of 1x2 pixels: logits favour class 0 on the left pixel, class 1 on the right.
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    labels = torch.tensor([[[0, 0]]])
    p_left = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    p_right = [1 / (1 + math.e), math.e / (1 + math.e)]
    cross_entropy = -(math.log(p_left[0]) + math.log(p_right[0])) / 2
    smooth = 1e-5
    dice0 = (2 * (p_left[0] + p_right[0]) + smooth) / (p_left[0] ** 2 + p_right[0] ** 2 + 2 + smooth)
    dice1 = (0 + smooth) / (p_left[1] ** 2 + p_right[1] ** 2 + 0 + smooth)
    expected = 0.5 * cross_entropy + 0.5 * ((1 - dice0) + (1 - dice1)) / 2
    assert math.isclose(segface_loss(logits, labels).item(), expected, rel_tol=1e-6)


def _original_loss(logits, labels, num_classes):
    """The released code's loss, written as it is there: CE + a per-class Dice loop over the whole batch."""
    ce = torch.nn.CrossEntropyLoss()(logits, labels.long())
    score = torch.softmax(logits, dim=1)
    target = torch.cat([(labels.float() == i).unsqueeze(1) for i in range(num_classes)], dim=1).float()
    loss = 0.0
    for i in range(num_classes):
        intersect = torch.sum(score[:, i] * target[:, i])
        y_sum = torch.sum(target[:, i] * target[:, i])
        z_sum = torch.sum(score[:, i] * score[:, i])
        loss += 1 - (2 * intersect + 1e-5) / (z_sum + y_sum + 1e-5)
    return 0.5 * ce + 0.5 * loss / num_classes


def test_loss_equals_original_when_nothing_is_ignored():
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 17, 19)
    labels = torch.randint(0, 6, (3, 17, 19))
    ours = segface_loss(logits, labels)
    assert torch.allclose(ours, _original_loss(logits, labels, 6), rtol=1e-6, atol=1e-7)


def test_ignored_pixels_do_not_contribute():
    torch.manual_seed(2)
    logits = torch.randn(1, 4, 8, 8)
    labels = torch.randint(0, 4, (1, 8, 8))
    labels[0, :2] = 255
    other_logits = logits.clone()
    other_logits[0, :, :2] = torch.randn(4, 2, 8) * 10
    assert torch.allclose(segface_loss(logits, labels), segface_loss(other_logits, labels))
    # ...and equals the loss over the remaining rows alone.
    assert torch.allclose(segface_loss(logits, labels), segface_loss(logits[:, :, 2:], labels[:, 2:]), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# LaPa face warp


def _template(size: int) -> torch.Tensor:
    points = torch.tensor([[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]])
    return (points / 256.0 - 1.0 + 1) * (size - 1) / 2.0


@pytest.mark.parametrize("size", [(512, 512), (224, 224), (96, 80)])
def test_face_template_is_the_originals_template_formula(size):
    from segface_hf.face_warp import FACE_TEMPLATE_512, face_template

    # The original (design spec 1.10, `_standard_face_pts` and its use): these 512-canvas pixels, mapped p / 256 - 1
    # into [-1, 1], then (p_norm * face_scale 1.0 + 1) * [(w - 1), (h - 1)] / 2, computed here in float64.
    original = [(196.0, 226.0), (316.0, 226.0), (256.0, 286.0), (220.0, 360.4), (292.0, 360.4)]
    assert [tuple(p) for p in FACE_TEMPLATE_512] == original
    height, width = size
    expected = [((x / 256 - 1) * 1.0 + 1) * (width - 1) / 2 for x, _ in original]
    expected_y = [((y / 256 - 1) * 1.0 + 1) * (height - 1) / 2 for _, y in original]
    template = face_template(size, torch.float64)
    np.testing.assert_allclose(template[:, 0].numpy(), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(template[:, 1].numpy(), expected_y, rtol=0, atol=1e-4)
    if size == (512, 512):  # the spec's worked value for the first point
        assert math.isclose(template[0, 0].item(), 195.62, abs_tol=0.005)
        assert math.isclose(template[0, 1].item(), 225.56, abs_tol=0.005)


def test_alignment_of_template_points_is_identity_and_grids_span_the_documented_range():
    size = 512
    matrix = face_alignment_matrix(_template(size)[None], (size, size))
    assert torch.allclose(matrix[0], torch.eye(3), atol=1e-5)
    warp = face_warp_grid(matrix, 0.8, (size, size), (size, size))
    unwarp = face_unwarp_grid(matrix, 0.8, (size, size), (size, size))
    # The spec of the original (section 1.10) measured about [-3.24, 2.61] and +-0.81 for identity landmarks.
    assert warp.shape == (1, size, size, 2) and unwarp.shape == (1, size, size, 2)
    assert math.isclose(warp.min().item(), -3.24, abs_tol=0.01) and math.isclose(warp.max().item(), 2.61, abs_tol=0.01)
    assert math.isclose(unwarp.abs().max().item(), 0.81, abs_tol=0.01)


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    target = _template(64)
    angle, scale, shift = 0.3, 1.7, torch.tensor([5.0, -3.0])
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = (target @ rotation.T) * scale + shift  # landmarks of a rotated, scaled, shifted face
    matrix = face_alignment_matrix(source[None], (64, 64))[0]
    mapped = source @ matrix[:2, :2].T + matrix[:2, 2]
    assert torch.allclose(mapped, target, atol=1e-3)


def test_face_warp_model_requires_landmarks_and_leaves_inputs_untouched():
    model = build(use_face_warp=True)
    pixel_values = torch.randn(2, 3, 64, 64)
    landmarks = torch.stack([_template(64), _template(64) + 2.0])
    before, landmarks_before = pixel_values.clone(), landmarks.clone()
    with pytest.raises(ValueError, match="landmarks"):
        model(pixel_values)
    with pytest.raises(ValueError, match=r"shape \(2, 5, 2\)"):
        model(pixel_values, landmarks=landmarks[:, :4])
    with torch.no_grad():
        logits = model(pixel_values, landmarks=landmarks).logits
    assert logits.shape == (2, 5, 64, 64)
    assert torch.equal(pixel_values, before) and torch.equal(landmarks, landmarks_before)
    # Landmarks in the input frame: a larger input with scaled landmarks gives logits at that size.
    with torch.no_grad():
        big = model(torch.randn(1, 3, 96, 80), landmarks=landmarks[:1] * torch.tensor([80 / 64, 96 / 64])).logits
    assert big.shape == (1, 5, 96, 80)


def test_face_warp_grid_round_trip_is_close_to_identity_inside_the_face():
    landmarks = _template(128)[None] * 0.9 + 6.0
    matrix = face_alignment_matrix(landmarks, (128, 128))
    warp = face_warp_grid(matrix, 0.8, (128, 128), (128, 128))
    unwarp = face_unwarp_grid(matrix, 0.8, (128, 128), (128, 128))
    image = torch.linspace(0, 1, 128)[None, None, :, None].expand(1, 1, 128, 128) * torch.linspace(0, 1, 128)
    there = torch.nn.functional.grid_sample(image, warp, align_corners=False)
    back = torch.nn.functional.grid_sample(there, unwarp, align_corners=False)
    centre = (slice(None), slice(None), slice(40, 90), slice(40, 90))
    assert (back[centre] - image[centre]).abs().max() < 0.02


# ----------------------------------------------------------------------------------------------------------------
# Config


def test_every_official_variant_has_a_config():
    from segface_hf import OFFICIAL_VARIANTS

    assert len(OFFICIAL_VARIANTS) == 14
    for variant in OFFICIAL_VARIANTS:
        config = SegFaceConfig.from_variant(variant)
        assert config.image_size == int(variant.rsplit("_", 1)[1])
        assert config.num_labels == (19 if "celeba" in variant else 11)
        assert config.use_face_warp == ("lapa" in variant)
        assert config.label2id[config.id2label[4]] == 4
    assert SegFaceConfig.from_variant("swinb_celeba_512").id2label[4] == "l_ear"


@pytest.mark.parametrize("name", ["swinb_celeb_512", "swinb_celeba", "vit_celeba_512", "celeba"])
def test_unknown_variants_are_clear_errors(name):
    with pytest.raises(ValueError, match="Unknown SegFace"):
        SegFaceConfig.from_variant(name)


def test_swinv2_below_256_builds_its_last_stage_at_8x8():
    assert SegFaceConfig.from_backbone("swinv2_base", image_size=224).backbone_config.image_size == 256
    assert SegFaceConfig.from_backbone("swinv2_base", image_size=448).backbone_config.image_size == 448


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config("timm-efficientnet", use_face_warp=True)
    config.save_pretrained(tmp_path)
    loaded = SegFaceConfig.from_pretrained(tmp_path)
    assert loaded.backbone_config.model_args == {"bn_eps": 1e-3}
    assert loaded.backbone_config.final_features_as_last_tap is True
    assert loaded.use_face_warp and loaded.id2label == config.id2label


def test_auto_classes_know_segface(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

    from segface_hf import SegFaceImageProcessor

    model = build()
    model.save_pretrained(tmp_path)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SegFaceConfig)
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(tmp_path), SegFaceForSemanticSegmentation)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), SegFaceImageProcessor)
    assert np.array_equal(
        AutoModelForSemanticSegmentation.from_config(AutoConfig.for_model("segface", **{k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}))
        .mask_decoder.class_embeddings.weight.shape,
        (5, 32),
    )


def test_a_swin_backbone_refuses_inputs_smaller_than_its_last_window():
    """Swin-B (patch 4, 4 stages, window 7): the last stage's grid of a 192-pixel input is 6 tokens, less than one
    window; 193 pixels give 7 (rounded up at each stage). A refused input must leave the model working."""
    from segface_hf.modeling_segface import smallest_swin_input

    config = SegFaceConfig.from_backbone("swin_base", dataset="celebamask-hq", image_size=224)
    assert smallest_swin_input(config.backbone_config) == 193
    grid = math.ceil(193 / 4)
    for _ in range(3):
        grid = math.ceil(grid / 2)
    assert grid == 7
    assert smallest_swin_input(SegFaceConfig.from_backbone("convnext_base").backbone_config) == 1
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(config).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="at least 193x193 pixels"):
            model(torch.zeros(1, 3, 192, 256))
        assert model(torch.zeros(1, 3, 193, 193)).logits.shape == (1, config.num_labels, 193, 193)



def test_decoder_attention_dispatches_through_the_transformers_attention_interface(tmp_path, monkeypatch, one_thread):
    """An attention function registered with transformers' `AttentionInterface` and picked by name at loading runs
    every decoder attention: per two-way layer the class tokens' self-attention, token-to-image and image-to-token
    attention, then the final token-to-image attention (SAM's two-way transformer); on the reference path, the fast
    path and the fast path's CPU blocks (image-to-token attention once per block of image tokens). It wraps SDPA, so
    the logits are the SDPA model's (up to float rounding in CPU blocks, where SDPA's cross-attentions run as the
    folded products of `fast_path_segface.folded_attention_to_image`, which a registered function replaces). The maps of `output_attentions` come from eager attention, the one
    implementation that exposes them; the self-attentions, whose maps are not returned, keep the probe."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from segface_hf import fast_path_segface
    from segface_hf.modeling_segface import SegFaceAttention

    calls = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        calls.append((module, tuple(query.shape)))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    layers = 3
    model = build(num_hidden_layers=layers)  # a MobileNet backbone: no attention of its own
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 64, 64)  # 16 x 16 image tokens (stride 4), 5 class tokens
    AttentionInterface.register("segface_probe", probe)
    try:
        probed = SegFaceForSemanticSegmentation.from_pretrained(tmp_path, attn_implementation="segface_probe").eval()
        assert probed.config._attn_implementation == "segface_probe"
        transformer = probed.mask_decoder.transformer
        decoder_attentions = {id(module) for module in probed.modules() if isinstance(module, SegFaceAttention)}
        assert len(decoder_attentions) == 3 * layers + 1
        # (fast path, CPU block size, image-to-token calls per layer, their queries (batch, heads, tokens, head_dim)):
        # 128-token blocks are the two halves of each image's 16 rows
        paths = [(False, 1024, 1, (2, 2, 256, 8)), (True, 1024, 1, (2, 2, 256, 8)), (True, 128, 4, (1, 2, 128, 8))]
        for fast, block_tokens, image_calls, image_query in paths:
            monkeypatch.setattr(fast_path_segface, "CPU_BLOCK_TOKENS", block_tokens)
            model.fast_path = probed.fast_path = fast
            calls.clear()
            with torch.no_grad():
                expected, logits = model(pixel_values).logits, probed(pixel_values).logits
            assert {id(module) for module, _ in calls} == decoder_attentions
            assert len(calls) == layers * (2 + image_calls) + 1
            for layer in transformer.layers:
                assert [shape for module, shape in calls if module is layer.self_attn] == [(2, 2, 5, 16)]
                assert [shape for module, shape in calls if module is layer.cross_attn_token_to_image] == [
                    (2, 2, 5, 8)
                ]
                image_to_token = [shape for module, shape in calls if module is layer.cross_attn_image_to_token]
                assert image_to_token == [image_query] * image_calls
            if image_calls == 1:
                torch.testing.assert_close(logits, expected, rtol=0, atol=0)
            else:
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

        for fast in (False, True):
            probed.fast_path = fast
            calls.clear()
            with torch.no_grad():
                maps = probed(pixel_values, output_attentions=True).attentions
            assert len(maps) == 2 * layers + 1
            assert [module for module, _ in calls] == [layer.self_attn for layer in transformer.layers]
    finally:
        AttentionInterface._global_mapping.pop("segface_probe", None)
    assert "segface_probe" not in AttentionInterface()
