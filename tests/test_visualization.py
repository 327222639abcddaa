"""Palettes, coloured label maps, overlays, legends and class areas."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from segface_hf import CELEBAMASK_HQ_LABELS, LAPA_LABELS, SegFaceConfig
from segface_hf.inference.visualization import (
    CELEBAMASK_HQ_PALETTE,
    LAPA_PALETTE,
    class_areas,
    colorize,
    generate_palette,
    legend,
    overlay,
    palette_for,
)


def test_celebamask_hq_palette_gives_each_class_its_official_colour():
    # The official CelebAMask-HQ colours (by class name), from the dataset's colour list.
    official = {"background": (0, 0, 0), "skin": (204, 0, 0), "nose": (76, 153, 0), "eye_g": (204, 204, 0),
                "l_eye": (51, 51, 255), "r_eye": (204, 0, 204), "l_brow": (0, 255, 255), "r_brow": (255, 204, 204),
                "l_ear": (102, 51, 0), "r_ear": (255, 0, 0), "mouth": (102, 204, 0), "u_lip": (255, 255, 0),
                "l_lip": (0, 0, 153), "hair": (0, 0, 204), "hat": (255, 51, 153), "ear_r": (0, 204, 204),
                "neck_l": (0, 51, 0), "neck": (255, 153, 51), "cloth": (0, 204, 0)}  # fmt: skip
    palette = palette_for(dict(enumerate(CELEBAMASK_HQ_LABELS)))
    assert palette.shape == (19, 3) and palette.dtype == np.uint8
    for index, name in enumerate(CELEBAMASK_HQ_LABELS):
        assert tuple(palette[index]) == official[name], name
    # The original code's bug: indexing the official list by SegFace's order painted the neck (index 1) skin-red.
    assert tuple(palette[1]) != (204, 0, 0)
    assert np.array_equal(palette_for(SegFaceConfig.from_variant("mobilenet_celeba_512")), CELEBAMASK_HQ_PALETTE)


def test_lapa_and_helen_palette_is_the_original_one():
    expected = [(0, 0, 0), (0, 153, 255), (102, 255, 153), (0, 204, 153), (255, 255, 102), (255, 255, 204),
                (255, 153, 0), (255, 102, 255), (102, 0, 51), (255, 204, 255), (255, 0, 102)]  # fmt: skip
    assert [tuple(c) for c in LAPA_PALETTE] == expected
    assert np.array_equal(palette_for(list(LAPA_LABELS)), LAPA_PALETTE)
    assert np.array_equal(palette_for(SegFaceConfig.from_variant("swinb_helen_512")), LAPA_PALETTE)


@pytest.mark.parametrize("num_labels", [2, 7, 19, 64, 200])
def test_custom_palettes_are_deterministic_and_distinct(num_labels):
    names = ["background"] + [f"part_{i}" for i in range(1, num_labels)]
    palette = palette_for(names)
    assert palette.shape == (num_labels, 3)
    assert tuple(palette[0]) == (0, 0, 0)
    assert len({tuple(c) for c in palette}) == num_labels
    assert np.array_equal(palette, palette_for(names))
    assert np.array_equal(palette, palette_for({i: n for i, n in enumerate(names)}))


def test_custom_palette_without_background_has_no_black():
    palette = palette_for(["hair", "skin", "teeth"])
    assert (palette.sum(axis=1) > 0).all() and len({tuple(c) for c in palette}) == 3
    assert np.array_equal(generate_palette(3, background_index=None), palette)


def test_colorize_paints_each_pixel_with_its_class_colour():
    labels = np.array([[0, 2], [14, 1]])
    picture = np.asarray(colorize(labels, CELEBAMASK_HQ_PALETTE))
    assert picture.shape == (2, 2, 3)
    assert tuple(picture[0, 0]) == (0, 0, 0) and tuple(picture[0, 1]) == (204, 0, 0)
    assert tuple(picture[1, 0]) == (0, 0, 204) and tuple(picture[1, 1]) == (255, 153, 51)
    assert np.array_equal(np.asarray(colorize(torch.tensor(labels), CELEBAMASK_HQ_PALETTE)), picture)


def test_colorize_rejects_labels_outside_the_palette():
    with pytest.raises(ValueError, match="only 11 colours"):
        colorize(np.array([[0, 12]]), LAPA_PALETTE)
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2), dtype=int), LAPA_PALETTE)


def _photo(height=40, width=30):
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_overlay_opacity():
    photo = _photo()
    labels = np.zeros((40, 30), dtype=np.int64)
    labels[10:20, 5:15] = 2
    pixels = np.asarray(photo).astype(int)
    assert np.array_equal(np.asarray(overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=0.0)), pixels)
    full = np.asarray(overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=1.0)).astype(int)
    assert (full[10:20, 5:15] == [204, 0, 0]).all()
    assert np.array_equal(full[labels == 0], pixels[labels == 0])  # background untouched by default
    half = np.asarray(overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=0.5)).astype(int)
    assert np.abs(half[10:20, 5:15] - (pixels[10:20, 5:15] + [204, 0, 0]) / 2).max() <= 1
    darker = np.asarray(overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=0.5, include_background=True)).astype(int)
    assert np.abs(darker[labels == 0] - pixels[labels == 0] / 2).max() <= 1


def test_overlay_bands_give_the_same_picture():
    photo = _photo(37, 23)
    labels = np.random.default_rng(1).integers(0, 19, (37, 23))
    whole = overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=0.3)
    banded = overlay(photo, labels, CELEBAMASK_HQ_PALETTE, alpha=0.3, rows_per_band=4)
    assert np.array_equal(np.asarray(whole), np.asarray(banded))


def test_overlay_checks_its_arguments():
    with pytest.raises(ValueError, match="30x40"):
        overlay(_photo(), np.zeros((10, 10), dtype=int), LAPA_PALETTE)
    with pytest.raises(ValueError, match="alpha"):
        overlay(_photo(), np.zeros((40, 30), dtype=int), LAPA_PALETTE, alpha=1.5)


def test_legend_lists_the_classes_with_their_colours():
    full = legend(dict(enumerate(CELEBAMASK_HQ_LABELS)))
    some = legend(dict(enumerate(CELEBAMASK_HQ_LABELS)), present=[0, 2, 14])
    assert full.height > some.height > 0
    colours = {tuple(c) for c in np.asarray(some).reshape(-1, 3)}
    assert {(204, 0, 0), (0, 0, 204)} <= colours  # skin and hair swatches
    assert (255, 153, 51) not in colours  # neck is not listed
    with pytest.raises(ValueError, match="outside"):
        legend(["background", "skin"], present=[5])


def test_class_areas_counts_pixels_per_class():
    labels = np.array([[0, 0, 1, 1], [1, 1, 1, 3]])
    areas = class_areas(labels, ["background", "skin", "hair", "hat"])
    assert list(areas) == ["background", "skin", "hair", "hat"]
    assert areas["background"] == {"index": 0, "pixels": 2, "fraction": 0.25}
    assert areas["skin"]["pixels"] == 5 and areas["skin"]["fraction"] == 5 / 8
    assert areas["hair"]["pixels"] == 0 and areas["hat"]["pixels"] == 1
    with pytest.raises(ValueError, match="label set has only 2 classes"):
        class_areas(labels, ["background", "skin"])
