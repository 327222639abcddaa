"""SegFaceImageProcessor: every image mode, label maps, landmarks, batching and post-processing."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import torch

from segface_hf import SegFaceImageError, SegFaceImageProcessor
from segface_hf.image_processing_segface import resized_argmax

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def reference(rgb: np.ndarray, size: int = 32) -> np.ndarray:
    """The original pipeline on an RGB uint8 array: PIL bicubic to size x size, /255, ImageNet normalisation."""
    resized = np.asarray(PIL.Image.fromarray(rgb).resize((size, size), PIL.Image.BICUBIC), np.float32)
    return ((resized / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)


@pytest.fixture
def processor():
    return SegFaceImageProcessor(size={"height": 32, "width": 32})


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)


def test_rgb_matches_the_original_pipeline_bit_for_bit(processor, rgb):
    out = processor(PIL.Image.fromarray(rgb))
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert np.array_equal(out["pixel_values"][0].numpy(), reference(rgb))


def test_grayscale_is_replicated(processor, rgb):
    gray = rgb[..., 0]
    expected = reference(np.stack([gray] * 3, -1))
    for image in (PIL.Image.fromarray(gray), gray, gray[None], torch.from_numpy(gray)):
        assert np.array_equal(processor(image)["pixel_values"][0].numpy(), expected)


def test_rgba_and_la_drop_alpha(processor, rgb):
    alpha = np.full(rgb.shape[:2], 7, np.uint8)
    rgba = PIL.Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    assert np.array_equal(processor(rgba)["pixel_values"][0].numpy(), reference(rgb))
    la = PIL.Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA")
    assert np.array_equal(processor(la)["pixel_values"][0].numpy(), reference(np.stack([rgb[..., 0]] * 3, -1)))


def test_palette_image_is_expanded(processor):
    palette_image = PIL.Image.new("P", (20, 20))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (0, 0, 10, 20))
    expected = np.zeros((20, 20, 3), np.uint8)
    expected[:, :10] = (0, 0, 255)
    expected[:, 10:] = (255, 0, 0)
    assert np.array_equal(processor(palette_image)["pixel_values"][0].numpy(), reference(expected))


def test_16_bit_images_are_scaled_to_8_bit(processor, rgb):
    sixteen = rgb[..., 0].astype(np.uint16) * 257
    image = PIL.Image.fromarray(sixteen)
    assert image.mode.startswith("I;16")
    expected = reference(np.stack([rgb[..., 0]] * 3, -1))
    assert np.array_equal(processor(image)["pixel_values"][0].numpy(), expected)
    assert np.array_equal(processor(np.stack([sixteen] * 3, -1))["pixel_values"][0].numpy(), expected)


def test_cmyk_is_converted(processor, rgb):
    cmyk = PIL.Image.fromarray(rgb).convert("CMYK")
    expected = reference(np.asarray(cmyk.convert("RGB")))
    assert np.array_equal(processor(cmyk)["pixel_values"][0].numpy(), expected)


def test_exif_orientation_is_applied(processor, rgb, tmp_path):
    image = PIL.Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    upright = np.asarray(image.transpose(PIL.Image.Transpose.ROTATE_270))
    assert np.array_equal(processor(str(path))["pixel_values"][0].numpy(), reference(upright))


def test_a_converted_image_is_passed_on_not_copied(rgb, tmp_path):
    from segface_hf.image_io import to_rgb

    image = PIL.Image.fromarray(rgb)
    assert to_rgb(image) is image
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    opened = PIL.Image.open(path)  # an RGB image whose EXIF rotation is still pending is turned, not passed on
    upright = to_rgb(opened)
    assert upright.size == (40, 50) and to_rgb(upright) is upright


def test_float_and_channels_first_arrays(processor, rgb):
    chw_float = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert np.array_equal(processor(chw_float)["pixel_values"][0].numpy(), reference(rgb))
    assert np.array_equal(processor(torch.from_numpy(chw_float))["pixel_values"][0].numpy(), reference(rgb))


def test_batches_of_mixed_inputs(processor, rgb):
    other = rgb[::-1].copy()
    out = processor([PIL.Image.fromarray(rgb), other, torch.from_numpy(rgb).permute(2, 0, 1)])
    assert out["pixel_values"].shape == (3, 3, 32, 32)
    assert np.array_equal(out["pixel_values"][1].numpy(), reference(other))
    stacked = processor(np.stack([rgb, other]))
    assert np.array_equal(stacked["pixel_values"].numpy(), out["pixel_values"][:2].numpy())
    assert isinstance(processor(rgb, return_tensors="np")["pixel_values"], np.ndarray)


def test_segmentation_maps_use_nearest_and_keep_values(processor):
    labels = np.zeros((40, 50), np.uint8)
    labels[:20] = 3
    labels[20:, 25:] = 18
    out = processor(np.zeros((40, 50, 3), np.uint8), segmentation_maps=PIL.Image.fromarray(labels))
    expected = np.asarray(PIL.Image.fromarray(labels).resize((32, 32), PIL.Image.NEAREST)).astype(np.int64)
    assert out["labels"].dtype == torch.int64 and out["labels"].shape == (1, 32, 32)
    assert np.array_equal(out["labels"][0].numpy(), expected)
    assert set(np.unique(out["labels"].numpy())) == {0, 3, 18}
    with_ignore = labels.copy()
    with_ignore[0, 0] = 255
    assert 255 in processor(np.zeros((40, 50, 3), np.uint8), segmentation_maps=with_ignore)["labels"].numpy()


def test_colour_masks_and_mismatched_counts_are_rejected(processor, rgb):
    with pytest.raises(SegFaceImageError, match="one class index per pixel"):
        processor(rgb, segmentation_maps=PIL.Image.fromarray(rgb))
    with pytest.raises(SegFaceImageError, match="2 segmentation maps for 1 images"):
        processor(rgb, segmentation_maps=[rgb[..., 0], rgb[..., 0]])
    with pytest.raises(SegFaceImageError, match="integer class indices"):
        processor(rgb, segmentation_maps=np.full((40, 50), 0.5))


def test_landmarks_are_rescaled_into_the_resized_frame(processor):
    points = np.array([[10.0, 20.0], [40.0, 30.0], [25.0, 25.0], [12.0, 35.0], [38.0, 35.0]], np.float32)
    out = processor(np.zeros((40, 50, 3), np.uint8), landmarks=points)
    assert out["landmarks"].shape == (1, 5, 2)
    assert np.allclose(out["landmarks"][0].numpy(), points * np.array([32 / 50, 32 / 40]))
    as_list = processor(np.zeros((40, 50, 3), np.uint8), landmarks=points.tolist())["landmarks"]
    assert torch.equal(as_list, out["landmarks"])
    batch = processor([np.zeros((40, 50, 3), np.uint8)] * 2, landmarks=[points.tolist(), (points + 1).tolist()])
    assert batch["landmarks"].shape == (2, 5, 2)
    with pytest.raises(SegFaceImageError, match="landmarks for 1 images, but 2 images"):
        processor([np.zeros((40, 50, 3), np.uint8)] * 2, landmarks=points)
    with pytest.raises(SegFaceImageError, match=r"\(num_points, 2\)"):
        processor(np.zeros((40, 50, 3), np.uint8), landmarks=np.zeros((1, 5, 3)))


def test_missing_corrupt_and_non_image_files(processor, tmp_path):
    with pytest.raises(SegFaceImageError, match="no such file"):
        processor(str(tmp_path / "missing.jpg"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SegFaceImageError, match="not an image"):
        processor(str(tmp_path / "notes.txt"))
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(SegFaceImageError, match="corrupt or truncated"):
        processor(str(tmp_path / "truncated.png"))
    with pytest.raises(SegFaceImageError, match="directory"):
        processor(str(tmp_path))


def test_unresized_batches_of_different_sizes_are_a_clear_error(processor):
    with pytest.raises(SegFaceImageError, match="different sizes"):
        processor([np.zeros((40, 40, 3), np.uint8), np.zeros((30, 40, 3), np.uint8)], do_resize=False)


def test_post_process_returns_label_maps_at_requested_sizes(processor):
    logits = torch.zeros(2, 4, 8, 8)
    logits[0, 2] = 1.0
    logits[1, 3, :, 4:] = 1.0
    maps = processor.post_process_semantic_segmentation(logits, target_sizes=[(16, 20), (8, 8)])
    assert maps[0].shape == (16, 20) and (maps[0] == 2).all()
    assert maps[1].shape == (8, 8) and (maps[1][:, 4:] == 3).all() and (maps[1][:, :4] == 0).all()
    native = processor.post_process_semantic_segmentation(logits)
    assert native[0].shape == (8, 8)


def test_standard_arguments_data_formats_and_four_channel_input(processor):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    expected = processor(rgba[..., :3])["pixel_values"]  # alpha is dropped
    channels_first = np.ascontiguousarray(rgba.transpose(2, 0, 1))
    given = processor(channels_first, input_data_format="channels_first", do_convert_rgb=True)["pixel_values"]
    assert torch.equal(given, expected)
    assert torch.equal(processor(rgba, input_data_format="channels_last")["pixel_values"], expected)
    last = processor(rgba, data_format="channels_last")["pixel_values"]
    assert torch.equal(last, expected.permute(0, 2, 3, 1))


def test_post_process_with_segmentation_scores_returns_the_resized_logits(processor):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    maps = processor.post_process_semantic_segmentation(logits, target_sizes=[(16, 20), (8, 8)])
    scored = processor.post_process_semantic_segmentation(
        logits, target_sizes=[(16, 20), (8, 8)], return_segmentation_scores=True
    )
    expected = torch.nn.functional.interpolate(logits[:1], size=(16, 20), mode="bilinear", align_corners=False)[0]
    assert torch.equal(scored[0].segmentation, maps[0]) and torch.equal(scored[1].segmentation, maps[1])
    assert torch.equal(scored[0].segmentation_scores, expected)
    assert torch.equal(scored[1].segmentation_scores, logits[1])  # already at the requested size
    assert torch.equal(scored[0].segmentation_scores.argmax(0), maps[0])


def test_banded_resize_matches_interpolate():
    """The large-target path (forced by a small chunk) gives F.interpolate's argmax exactly, both on noisy logits
    (whole bands interpolated) and on smooth ones (only the class borders interpolated)."""
    torch.manual_seed(0)
    noisy = torch.randn(5, 13, 17)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 5, 3, 3), size=(13, 17), mode="bilinear")[0]
    for logits in (noisy, smooth):
        full = torch.nn.functional.interpolate(logits[None], size=(61, 47), mode="bilinear", align_corners=False)
        banded = resized_argmax(logits, (61, 47), max_chunk_elements=5 * 47 * 7)
        assert torch.equal(banded, full[0].argmax(0))


def test_processor_config_round_trip(tmp_path):
    processor = SegFaceImageProcessor(size={"height": 448, "width": 448})
    processor.save_pretrained(tmp_path)
    loaded = SegFaceImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"height": 448, "width": 448} and loaded.resample == PIL.Image.BICUBIC
