"""SegFaceImageProcessorFast (the torchvision backend) against SegFaceImageProcessor (the PIL backend).

Truth is the PIL backend, which tests/test_image_processing.py and tests/test_parity.py prove bit-exact with the
original SegFace preprocessing. Without a resize the two backends must agree bit for bit; with one, within the bound
measured on the parity fixtures and stated in docs/porting.md.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import parity_module, require_shared
from transformers import AutoImageProcessor

from segface_hf import SegFaceImageError, SegFaceImageProcessor, SegFaceImageProcessorFast

PHOTOS = ["astronaut.png", "camera.png", "grace_hopper.jpg"]
RESOLUTIONS = [224, 448, 512]  # the official variants' resolutions
ONE_LEVEL = 1 / 255 / 0.224  # one 8-bit level after normalisation by the smallest ImageNet std


def photo(name: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(require_shared("images", name)).convert("RGB"))


def both(size, **kwargs):
    return SegFaceImageProcessor(size=size, **kwargs), SegFaceImageProcessorFast(size=size, **kwargs)


def test_parity_fixture_inputs_are_bit_exact_on_both_backends():
    """The fixtures' images are at the model resolution: no resize, so both backends give the original's input."""
    sp = parity_module()
    for path in sp.all_fixtures():
        fixture = sp.load_fixture(path)
        slow, fast = both(fixture.image.shape[0])
        expected = sp.normalized_input(fixture)
        assert np.array_equal(slow(fixture.image)["pixel_values"].numpy(), expected), path.name
        assert np.array_equal(fast(fixture.image)["pixel_values"].numpy(), expected), path.name
        as_tensor = torch.from_numpy(fixture.image.copy()).permute(2, 0, 1)
        assert np.array_equal(fast(as_tensor)["pixel_values"].numpy(), expected), path.name


def test_resized_inputs_agree_with_the_pil_backend_within_one_level():
    """Measured on the parity fixtures' images and the shared photos, at every official resolution: the antialiased
    torchvision bicubic differs from PIL's by at most one 8-bit level, on at most 0.5% of the values (measured
    maximum 0.35%)."""
    sp = parity_module()
    sources = [photo(name) for name in PHOTOS] + [sp.load_fixture(p).image for p in sp.all_fixtures()]
    for size in RESOLUTIONS:
        slow, fast = both(size)
        for image in sources:
            expected, given = slow(image)["pixel_values"], fast(image)["pixel_values"]
            difference = (expected - given).abs()
            assert difference.max().item() <= ONE_LEVEL * 1.0001
            assert (difference > 0).float().mean().item() <= 0.005


@pytest.mark.parametrize("name", ["mobilenet_celeba_512", "swinb_celeba_224"])
def test_parity_fixture_models_agree_on_the_argmax(name):
    """The parity fixtures' models (original weights layout, seeded weights) on the shared photos: the label maps
    from the two backends' inputs agree on at least 99.5% of the pixels (measured minimum 99.69%)."""
    from segface_hf import SegFaceConfig
    from segface_hf.configuration_segface import parse_variant
    from segface_hf.release.conversion import convert_state_dict

    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", name))
    backbone, dataset, resolution = parse_variant(name)
    model, _, _ = convert_state_dict(fixture.checkpoint["state_dict_backbone"], SegFaceConfig.from_variant(name),
                                     backbone, dataset)  # fmt: skip
    slow, fast = both(resolution)
    for image in (photo(name) for name in PHOTOS):
        with torch.no_grad():
            expected = model.eval()(**slow(image)).logits.argmax(1)
            given = model(**fast(image)).logits.argmax(1)
        assert (expected == given).float().mean().item() >= 0.995


def test_every_input_kind_is_read_as_the_pil_backend_reads_it():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((32, 32), 9, np.uint8)])
    sixteen = rgb.astype(np.uint16) * 257 + rng.integers(-100, 100, rgb.shape).clip(0, 200).astype(np.uint16)
    inputs = [
        rgb, rgba, rgb[..., 0], rgb[..., :1], sixteen, rgb.astype(np.float32) / 255, rgb.astype(np.float64) / 255 * 0.7,
        rgb > 128, rgb.astype(np.int32), PIL.Image.fromarray(rgba, mode="RGBA"),
    ]  # fmt: skip
    slow, fast = both(32)
    for image in inputs:
        expected = slow(image)["pixel_values"]
        assert torch.equal(fast(image)["pixel_values"], expected)
        assert torch.equal(fast(torch.from_numpy(np.array(image)))["pixel_values"], expected)
        if np.asarray(image).ndim == 3:
            first = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(image), -1, 0)))
            assert torch.equal(fast(first)["pixel_values"], expected)
            assert torch.equal(fast(first, input_data_format="channels_first")["pixel_values"], expected)
    bad_inputs = [torch.full((8, 8, 3), float("nan")), torch.full((8, 8), 70000, dtype=torch.int32), torch.zeros(8, 8, 5)]
    for bad in bad_inputs:
        with pytest.raises(SegFaceImageError):
            fast(bad)


def test_labels_landmarks_layouts_and_tensor_types_match_the_pil_backend():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (60, 41, 3), dtype=np.uint8)]
    labels = [rng.integers(0, 19, (37, 53)).astype(np.uint8), rng.integers(0, 70000, (60, 41)).astype(np.int32)]
    points = [rng.uniform(0, 37, (5, 2)).astype(np.float32), rng.uniform(0, 41, (5, 2)).astype(np.float32)]
    for size in (16, 37, 100):
        slow, fast = both(size)
        expected = slow(images, segmentation_maps=labels, landmarks=points)
        given = fast(images, segmentation_maps=[torch.from_numpy(m) for m in labels], landmarks=points)
        assert set(given) == {"pixel_values", "labels", "landmarks"}
        assert torch.equal(given["labels"], expected["labels"]) and given["labels"].dtype == torch.int64
        assert torch.equal(given["landmarks"], expected["landmarks"])
        assert given["pixel_values"].shape == expected["pixel_values"].shape
    slow, fast = both(16)
    last = fast(images, data_format="channels_last")["pixel_values"]
    assert torch.equal(last, fast(images)["pixel_values"].permute(0, 2, 3, 1))
    as_numpy = fast(images, return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, fast(images)["pixel_values"].numpy())
    unbatched = fast(images, do_resize=False, return_tensors=None)["pixel_values"]
    assert [tuple(v.shape) for v in unbatched] == [(3, 37, 53), (3, 60, 41)]
    assert torch.equal(unbatched[1], slow(images[1], do_resize=False)["pixel_values"][0])
    nearest = dict(resample=PIL.Image.NEAREST, size={"height": 37, "width": 23})  # PIL's rule: exact
    assert torch.equal(fast(images, **nearest)["pixel_values"], slow(images, **nearest)["pixel_values"])
    with pytest.raises(SegFaceImageError, match="different sizes"):
        fast(images, do_resize=False)
    with pytest.raises(SegFaceImageError, match="bicubic"):
        fast(images, resample=PIL.Image.LANCZOS)


def test_tensors_are_processed_on_their_device():
    """8-bit tensors never leave their device: on the meta device (no data, so any copy to the host or read of a
    value fails) the whole pipeline runs, and labels read from arrays and landmarks join the pixels' device."""
    fast = SegFaceImageProcessorFast(size=32)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    for kwargs in ({"images": image.to("meta")}, {"images": image, "device": "meta"}):
        out = fast(**kwargs, segmentation_maps=np.zeros((40, 50), np.uint8), landmarks=[[1.0, 2.0]])
        assert {key: value.device.type for key, value in out.items()} == dict.fromkeys(out, "meta")
        assert tuple(out["pixel_values"].shape) == (1, 3, 32, 32) and tuple(out["labels"].shape) == (1, 32, 32)
    moved = SegFaceImageProcessor(size=32)(image, landmarks=[[1.0, 2.0]], device="meta")  # PIL computes, then moves
    assert {value.device.type for value in moved.values()} == {"meta"}


def test_post_processing_has_one_home():
    assert SegFaceImageProcessorFast.post_process_semantic_segmentation is (
        SegFaceImageProcessor.post_process_semantic_segmentation
    )
    assert SegFaceImageProcessor().backend == "pil" and SegFaceImageProcessorFast().backend == "torchvision"


def test_auto_image_processor_keeps_pil_as_the_default_and_gives_torchvision_when_asked(tmp_path):
    SegFaceImageProcessor(size=448).save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is SegFaceImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is SegFaceImageProcessor
    for kwargs in ({"use_fast": True}, {"backend": "torchvision"}):
        loaded = AutoImageProcessor.from_pretrained(tmp_path, **kwargs)
        assert type(loaded) is SegFaceImageProcessorFast and loaded.size == {"height": 448, "width": 448}


def test_a_saved_processor_loads_either_backend_as_remote_code(tmp_path):
    """save_pretrained writes both classes into auto_map and copies both modules, so transformers alone (the
    package blocked) loads either backend with trust_remote_code=True."""
    import json

    SegFaceImageProcessorFast(size=64).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["auto_map"]["AutoImageProcessor"] == {
        "pil": "image_processing_segface.SegFaceImageProcessor",
        "torchvision": "image_processing_segface_fast.SegFaceImageProcessorFast",
    }
    assert {"image_processing_segface.py", "image_processing_segface_fast.py", "image_io.py", "errors.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    script = f"""
import sys
sys.modules["segface_hf"] = None
import numpy as np, torch
from transformers import AutoImageProcessor
image = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
pil = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, backend="pil")
fast = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, backend="torchvision")
assert type(pil).__module__.startswith("transformers_modules"), type(pil).__module__
difference = (pil(image)["pixel_values"] - fast(image)["pixel_values"]).abs().max().item()
print(type(pil).__name__, type(fast).__name__, difference <= 1 / 255 / 0.224 * 1.0001)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SegFaceImageProcessor", "SegFaceImageProcessorFast", "True"]
