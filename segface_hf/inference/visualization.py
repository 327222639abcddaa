"""Pictures of face parses: palettes per label set, coloured label maps, overlays, legends and class areas."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ..configuration_segface import CELEBAMASK_HQ_LABELS, LAPA_LABELS

# The official CelebAMask-HQ colour of each class, by class name. The original SegFace code applied this list in the
# official class order to its own (different) class order, so that e.g. its neck got the official skin red (bug 28 of
# the original, see docs); here every class keeps its official colour whatever its index.
_CELEBAMASK_HQ_COLOURS = {
    "background": (0, 0, 0), "skin": (204, 0, 0), "nose": (76, 153, 0), "eye_g": (204, 204, 0),
    "l_eye": (51, 51, 255), "r_eye": (204, 0, 204), "l_brow": (0, 255, 255), "r_brow": (255, 204, 204),
    "l_ear": (102, 51, 0), "r_ear": (255, 0, 0), "mouth": (102, 204, 0), "u_lip": (255, 255, 0),
    "l_lip": (0, 0, 153), "hair": (0, 0, 204), "hat": (255, 51, 153), "ear_r": (0, 204, 204),
    "neck_l": (0, 51, 0), "neck": (255, 153, 51), "cloth": (0, 204, 0),
}  # fmt: skip

# The LaPa / Helen colours of the original code's `visualize_mask` (already in the LaPa class order).
_LAPA_COLOURS = {
    "background": (0, 0, 0), "skin": (0, 153, 255), "l_brow": (102, 255, 153), "r_brow": (0, 204, 153),
    "l_eye": (255, 255, 102), "r_eye": (255, 255, 204), "nose": (255, 153, 0), "u_lip": (255, 102, 255),
    "mouth": (102, 0, 51), "l_lip": (255, 204, 255), "hair": (255, 0, 102),
}  # fmt: skip

CELEBAMASK_HQ_PALETTE = np.array([_CELEBAMASK_HQ_COLOURS[name] for name in CELEBAMASK_HQ_LABELS], dtype=np.uint8)
LAPA_PALETTE = np.array([_LAPA_COLOURS[name] for name in LAPA_LABELS], dtype=np.uint8)
HELEN_PALETTE = LAPA_PALETTE

_BACKGROUND_NAMES = ("background", "bg", "_background_", "backdrop")
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def _label_names(labels) -> list[str]:
    """Class names in index order from an `id2label` mapping, a sequence of names, a config or a class count."""
    if hasattr(labels, "id2label"):
        labels = labels.id2label
    if isinstance(labels, (int, np.integer)):
        if labels < 1:
            raise ValueError(f"A label set needs at least one class, got {labels}.")
        return [f"class_{index}" for index in range(int(labels))]
    if isinstance(labels, Mapping):
        indices = sorted(int(key) for key in labels)
        if indices != list(range(len(indices))):
            raise ValueError(f"id2label must map the indices 0..N-1, got {indices[:10]}...")
        lookup = {int(key): value for key, value in labels.items()}
        return [str(lookup[index]) for index in indices]
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        return [str(name) for name in labels]
    raise TypeError(
        f"Expected id2label, a list of class names, a config or a class count, got {type(labels).__name__}."
    )


def generate_palette(num_labels: int, background_index: int | None = 0) -> np.ndarray:
    """Deterministic, pairwise distinct colours for a custom label set.

    Hues advance by the golden ratio around the colour wheel (so neighbouring indices differ strongly), with two
    saturations and two brightness levels alternating; the background class, if any, is black.

    Args:
        num_labels (`int`):
            Number of classes.
        background_index (`int`, *optional*, defaults to 0):
            Index that gets black; `None` for none.

    Returns:
        `np.ndarray` of shape `(num_labels, 3)` and dtype `uint8`.
    """
    palette = np.zeros((num_labels, 3), dtype=np.uint8)
    used = {(0, 0, 0)}
    step = 0
    for index in range(num_labels):
        if index == background_index:
            continue
        while True:
            step += 1
            hue = (step * _GOLDEN_RATIO_CONJUGATE) % 1.0
            saturation = (0.9, 0.6)[step % 2]
            value = (0.95, 0.72)[(step // 2) % 2]
            colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value))
            if colour not in used:
                break
        used.add(colour)
        palette[index] = colour
    return palette


def palette_for(labels) -> np.ndarray:
    """The palette of a label set: CelebAMask-HQ and LaPa/Helen get their datasets' colours, any other set
    generated colours ([`generate_palette`]).

    Args:
        labels (`dict[int, str]`, `list[str]`, [`SegFaceConfig`] or `int`):
            The label set: `config.id2label`, the class names in index order, a config, or a class count.

    Returns:
        `np.ndarray` of shape `(num_labels, 3)` and dtype `uint8`: the RGB colour of each class index.
    """
    names = _label_names(labels)
    if tuple(names) == CELEBAMASK_HQ_LABELS:
        return CELEBAMASK_HQ_PALETTE.copy()
    if tuple(names) == LAPA_LABELS:
        return LAPA_PALETTE.copy()
    background = 0 if names and names[0].lower() in _BACKGROUND_NAMES else None
    return generate_palette(len(names), background_index=background)


def as_label_array(label_map) -> np.ndarray:
    """A label map (numpy or torch integer array, or PIL image of mode L/P/I/I;16) as a 2-D integer numpy array."""
    if isinstance(label_map, PIL.Image.Image):
        if label_map.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
            raise ValueError(
                f"A label map image must hold one class index per pixel (mode L, P or I), got {label_map.mode}."
            )
        label_map = np.asarray(label_map)
    elif hasattr(label_map, "detach"):
        label_map = label_map.detach().cpu().numpy()
    array = np.asarray(label_map)
    if array.ndim != 2:
        raise ValueError(f"A label map must be 2-D (height, width), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"A label map must hold integer class indices, got {array.dtype}.")
    return array


def _check_range(labels: np.ndarray, num_classes: int, what: str = "the palette has only {n} colours") -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"The label map holds values {int(labels.min())}..{int(labels.max())}, but {what.format(n=num_classes)} "
            f"(0..{num_classes - 1}); is it the right label set?"
        )


def colorize(label_map, palette) -> PIL.Image.Image:
    """Paint a label map with a palette.

    Args:
        label_map (`np.ndarray`, `torch.Tensor` or `PIL.Image.Image`):
            `(height, width)` class indices.
        palette (`np.ndarray` or sequence of RGB triples):
            Colour per class index, e.g. from [`palette_for`].

    Returns:
        `PIL.Image.Image`: an RGB image of the label map's size.
    """
    labels = as_label_array(label_map)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    _check_range(labels, len(palette))
    return PIL.Image.fromarray(palette[labels], mode="RGB")


def overlay(image, label_map, palette, alpha: float = 0.5, include_background: bool = False,
            rows_per_band: int = 512) -> PIL.Image.Image:  # fmt: skip
    """Blend a coloured label map over the image.

    Args:
        image (`PIL.Image.Image` or path or array):
            The photo; converted to RGB. Must have the label map's size.
        label_map (`np.ndarray`, `torch.Tensor` or `PIL.Image.Image`):
            `(height, width)` class indices.
        palette (`np.ndarray` or sequence of RGB triples):
            Colour per class index.
        alpha (`float`, *optional*, defaults to 0.5):
            Opacity of the colours: 0 shows the photo only, 1 the colours only.
        include_background (`bool`, *optional*, defaults to `False`):
            Whether class 0 is blended too (with its colour, usually black, which darkens the background).
        rows_per_band (`int`, *optional*, defaults to 512):
            The blend runs over bands of this many rows, so very large photos need little extra memory.

    Returns:
        `PIL.Image.Image`: the RGB overlay, of the photo's size.
    """
    from ..image_io import to_rgb

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    photo = np.asarray(to_rgb(image))
    labels = as_label_array(label_map)
    if labels.shape != photo.shape[:2]:
        raise ValueError(f"The label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                         f"{photo.shape[1]}x{photo.shape[0]} (width x height).")  # fmt: skip
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    _check_range(labels, len(palette))
    weight = round(float(alpha) * 256)
    colours = palette.astype(np.uint32) * weight
    result = np.empty_like(photo)
    for start in range(0, photo.shape[0], rows_per_band):
        rows = slice(start, start + rows_per_band)
        band_labels = labels[rows]
        band = photo[rows].astype(np.uint32)
        blended = ((band * (256 - weight) + colours[band_labels] + 128) >> 8).astype(np.uint8)
        if not include_background:
            keep = band_labels == 0
            blended[keep] = photo[rows][keep]
        result[rows] = blended
    return PIL.Image.fromarray(result, mode="RGB")


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def legend(labels, palette=None, present=None, swatch_size: int = 18, font_size: int = 14) -> PIL.Image.Image:
    """A legend: one row per class with its colour swatch, index and name.

    Args:
        labels (`dict[int, str]`, `list[str]`, [`SegFaceConfig`] or `int`):
            The label set.
        palette (`np.ndarray`, *optional*):
            Colours per class; defaults to [`palette_for`]`(labels)`.
        present (iterable of `int`, *optional*):
            Only list these class indices (e.g. the classes found in an image).
        swatch_size (`int`, *optional*, defaults to 18):
            Side of each colour square in pixels.
        font_size (`int`, *optional*, defaults to 14):
            Text size in pixels.

    Returns:
        `PIL.Image.Image`: an RGB image on a white background.
    """
    names = _label_names(labels)
    palette = palette_for(names) if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) < len(names):
        raise ValueError(f"The palette has {len(palette)} colours for {len(names)} classes.")
    indices = list(range(len(names))) if present is None else sorted({int(i) for i in present})
    if any(not 0 <= index < len(names) for index in indices):
        raise ValueError(f"present holds indices outside 0..{len(names) - 1}: {indices}")
    font = _font(font_size)
    texts = [f"{index:>2}  {names[index]}" for index in indices]
    measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    text_width = max((measure.textlength(text, font=font) for text in texts), default=0)
    padding, row_height = 6, max(swatch_size, font_size) + 6
    width = int(padding * 3 + swatch_size + text_width)
    height = int(padding * 2 + row_height * max(len(indices), 1))
    picture = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(picture)
    for row, (index, text) in enumerate(zip(indices, texts)):
        top = padding + row * row_height
        colour = tuple(int(c) for c in palette[index])
        draw.rectangle(
            [padding, top, padding + swatch_size - 1, top + swatch_size - 1], fill=colour, outline=(96, 96, 96)
        )
        draw.text((padding * 2 + swatch_size, top + (swatch_size - font_size) / 2), text, fill=(0, 0, 0), font=font)
    return picture


def class_areas(label_map, labels) -> dict[str, dict]:
    """Per-class area of a label map.

    Args:
        label_map (`np.ndarray`, `torch.Tensor` or `PIL.Image.Image`):
            `(height, width)` class indices.
        labels (`dict[int, str]`, `list[str]`, [`SegFaceConfig`] or `int`):
            The label set.

    Returns:
        `dict[str, dict]`: for every class of the set, in index order, `{"index", "pixels", "fraction"}` with the
        fraction of all pixels of the map.
    """
    names = _label_names(labels)
    array = as_label_array(label_map)
    _check_range(array, len(names), what="the label set has only {n} classes")
    counts = np.bincount(array.ravel().astype(np.int64), minlength=len(names))
    total = max(int(array.size), 1)
    return {
        name: {"index": index, "pixels": int(counts[index]), "fraction": float(counts[index]) / total}
        for index, name in enumerate(names)
    }


__all__ = [
    "CELEBAMASK_HQ_PALETTE",
    "HELEN_PALETTE",
    "LAPA_PALETTE",
    "as_label_array",
    "class_areas",
    "colorize",
    "generate_palette",
    "legend",
    "overlay",
    "palette_for",
]
