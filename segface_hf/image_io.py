"""Reading images and label maps: every image enters the package through `to_rgb` (or `load_image` for a path)
and every label map through `to_label_map`, once, and is passed on as the PIL image these return."""

from __future__ import annotations

import io
import os

import numpy as np
import PIL.Image
import PIL.ImageOps

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the model, not of image reading
    torch = None

from .errors import SegFaceError


class SegFaceImageError(SegFaceError, ValueError):
    """An input that cannot be read or interpreted as an image, label map or landmark set."""


_ORIENTATION = 0x0112  # the EXIF orientation tag


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"input of type {type(source).__name__}"


def load_image(source) -> PIL.Image.Image:
    """Open an image path or encoded bytes (or take a PIL image) and return it upright (EXIF orientation applied), fully decoded."""
    if isinstance(source, PIL.Image.Image):
        image = source
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise SegFaceImageError(f"{source}: no such file.")
        if os.path.isdir(source):
            raise SegFaceImageError(f"{source}: is a directory, not an image.")
        try:
            image = PIL.Image.open(source)
            image.load()
        except PIL.UnidentifiedImageError as error:
            raise SegFaceImageError(f"{source}: not an image file PIL can read.") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise SegFaceImageError(f"{source}: corrupt or truncated image ({error}).") from error
    elif isinstance(source, (bytes, bytearray)) or (isinstance(source, dict) and source.get("bytes") is not None):
        # encoded bytes, or a `datasets` Image feature left undecoded ({"bytes": ..., "path": ...})
        data = source if isinstance(source, (bytes, bytearray)) else source["bytes"]
        try:
            image = PIL.Image.open(io.BytesIO(data))
            image.load()
        except PIL.UnidentifiedImageError as error:
            raise SegFaceImageError("not an image PIL can read.") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise SegFaceImageError(f"corrupt or truncated image ({error}).") from error
    elif isinstance(source, dict) and source.get("path"):
        return load_image(source["path"])
    else:
        raise SegFaceImageError(f"Expected a path, encoded bytes or a PIL image, got {_describe(source)}.")
    try:
        return PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise SegFaceImageError(f"{_describe(source)}: corrupt image data ({error}).") from error


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Bring integer or float pixel data into 0..255 (16-bit by /257, floats in [0, 1] by x255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise SegFaceImageError(f"integer pixel values must lie in 0..65535, got {array.min()}..{array.max()}.")
        if array.size and array.max() > 255:
            return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise SegFaceImageError("float pixel data contains NaN or infinity.")
        scale = 255.0 if array.size == 0 or array.max() <= 1.0 else 1.0
        return np.clip(np.round(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    raise SegFaceImageError(f"unsupported pixel data type {array.dtype}.")


def to_rgb(image) -> PIL.Image.Image:
    """Any supported image (path, PIL in any mode, HWC/CHW numpy or torch array) as an 8-bit RGB PIL image.

    An RGB PIL image without a pending EXIF rotation is returned as it is (so converting twice costs nothing).
    Grayscale is replicated to three channels, palette images are expanded, alpha is dropped (as the original's
    OpenCV reader does), CMYK is converted, and 16-bit data is scaled to 8 bits.
    """
    if isinstance(image, PIL.Image.Image) and image.mode == "RGB" and image.getexif().get(_ORIENTATION, 1) == 1:
        return image  # already converted: passed on as it is, not copied
    if isinstance(image, (str, os.PathLike, PIL.Image.Image)):
        image = load_image(image)
        if image.mode in ("RGB",):
            return image
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            return PIL.Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
        if image.mode == "P":
            image = image.convert("RGBA")
        return image.convert("RGB")
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise SegFaceImageError(f"Expected an image (path, PIL, numpy or torch array), got {_describe(image)}.")
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise SegFaceImageError(f"an image array must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels, got {array.shape}.")
    return PIL.Image.fromarray(np.ascontiguousarray(_to_uint8(array[..., :3])), mode="RGB")


def to_label_map(segmentation_map) -> PIL.Image.Image:
    """A single-channel label map (path, PIL `L`/`P`/`I`, or integer array) as a PIL image of class indices."""
    if isinstance(segmentation_map, (str, os.PathLike)):
        segmentation_map = load_image(segmentation_map)
    if isinstance(segmentation_map, PIL.Image.Image):
        if segmentation_map.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise SegFaceImageError(
                f"a segmentation map must hold one class index per pixel (mode L, P or I), got mode "
                f"{segmentation_map.mode}; colour masks must be converted to label indices first."
            )
        array = np.asarray(segmentation_map)
    elif torch is not None and isinstance(segmentation_map, torch.Tensor):
        array = segmentation_map.detach().cpu().numpy()
    elif isinstance(segmentation_map, np.ndarray):
        array = segmentation_map
    else:
        raise SegFaceImageError(f"Expected a segmentation map, got {_describe(segmentation_map)}.")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2:
        raise SegFaceImageError(f"a segmentation map must be 2-D (height, width), got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise SegFaceImageError("a segmentation map must hold integer class indices, got fractional values.")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise SegFaceImageError(f"a segmentation map must hold integers, got {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() > 2**31 - 1):
        raise SegFaceImageError(f"segmentation map values must be non-negative, got minimum {array.min()}.")
    return PIL.Image.fromarray(array.astype(np.int32), mode="I")


__all__ = ["SegFaceImageError", "load_image", "to_label_map", "to_rgb"]
