# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""Torchvision backend of the SegFace image processor: the same steps as `SegFaceImageProcessor`, on torch tensors
(on any device), with torchvision's antialiased resize in place of PIL's."""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling
from transformers.utils import is_torchvision_available

from .errors import SegFaceMissingDependencyError
from .image_io import SegFaceImageError, to_label_map
from .image_processing_segface import SegFaceImageProcessor

if is_torchvision_available():  # a guarded import: remote code that only uses the PIL class does not need torchvision
    from torchvision.transforms.v2 import functional as tvF
    from torchvision.transforms.v2.functional import InterpolationMode

    # PIL's filters by the torchvision mode that computes the same filter.
    _INTERPOLATION = {
        PILImageResampling.NEAREST: None,  # PIL's own rule, by `_nearest_resize`
        PILImageResampling.BILINEAR: InterpolationMode.BILINEAR,
        PILImageResampling.BICUBIC: InterpolationMode.BICUBIC,
    }


def _tensor_to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Pixel data of any dtype as 8-bit values, on its device, by the rules of the PIL backend's array reader
    (`segface_hf.image_io.to_rgb`): 16-bit by /257, floats in [0, 1] by x255, both rounded half to even."""
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8) * 255
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise SegFaceImageError("float pixel data contains NaN or infinity.")
        scale = 255.0 if tensor.numel() == 0 or tensor.max() <= 1.0 else 1.0
        return torch.round(tensor.double() * scale).clamp(0, 255).to(torch.uint8)
    if tensor.dtype.is_complex:
        raise SegFaceImageError(f"unsupported pixel data type {tensor.dtype}.")
    wide = tensor.to(torch.int64)  # torch has no min/max for its unsigned types beyond uint8
    if wide.numel() and (wide.min() < 0 or wide.max() > 65535):
        low, high = wide.min().item(), wide.max().item()
        raise SegFaceImageError(f"integer pixel values must lie in 0..65535, got {low}..{high}.")
    if wide.numel() and wide.max() > 255:
        return torch.round(wide.double() / 257.0).to(torch.uint8)
    return wide.to(torch.uint8)


def _nearest_sources(output_size: int, input_size: int, device) -> torch.Tensor:
    """The source index of each output pixel in PIL's nearest-neighbour resize: the pixel centre `(i + 0.5) * step`,
    accumulated step by step in float64 as PIL does (so ties at exact pixel borders fall as PIL's), truncated."""
    step = input_size / output_size
    centres = np.cumsum(np.concatenate([[step * 0.5], np.full(output_size - 1, step)]))
    return torch.from_numpy(np.minimum(centres.astype(np.int64), input_size - 1)).to(device)


def _nearest_resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's nearest-neighbour resize of the last two dimensions, as a gather (exact for any dtype and value)."""
    rows = _nearest_sources(size[0], tensor.shape[-2], tensor.device)
    columns = _nearest_sources(size[1], tensor.shape[-1], tensor.device)
    return tensor[..., rows[:, None], columns[None, :]]


class SegFaceImageProcessorFast(SegFaceImageProcessor):
    r"""
    The torchvision backend of [`SegFaceImageProcessor`]: the same arguments, outputs and post-processing, computed
    on torch tensors. Tensor inputs stay on their device (or move to `device`), so a batch on the GPU is resized and
    normalised there. Images are resized with torchvision's antialiased bicubic filter, which is close to, but not
    bit for bit, PIL's filter that the original SegFace (and [`SegFaceImageProcessor`]) uses; the agreement measured
    on the parity fixtures is in the README ("Image processor backends"). Label maps (and images with
    `resample=NEAREST`) are resized by PIL's nearest-neighbour rule, so they match the PIL backend exactly; without a
    resize the two backends are bit-identical.

    Paths, PIL images and numpy arrays are read as by [`SegFaceImageProcessor`] (EXIF rotation, every PIL mode,
    16-bit data) and then moved to the device; label maps are checked on the CPU the same way.

    Args:
        (the arguments of [`SegFaceImageProcessor`])
    """

    def __init__(self, **kwargs):
        if not is_torchvision_available():
            raise SegFaceMissingDependencyError(
                "SegFaceImageProcessorFast needs torchvision: pip install 'segface-hf[fast]', or use "
                "SegFaceImageProcessor (the PIL backend)."
            )
        super().__init__(**kwargs)

    @property
    def backend(self) -> str:
        """`str`: The backend this image processor computes with."""
        return "torchvision"

    def _prepare_image(self, image, input_data_format, device) -> torch.Tensor:
        """One input image as an 8-bit RGB `(3, height, width)` tensor on `device` (or on its own device)."""
        if not isinstance(image, torch.Tensor):
            rgb = np.asarray(super()._prepare_image(image, input_data_format, device))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device)
        tensor = image.detach()
        if device is not None:
            tensor = tensor.to(device)
        # The layout rules of the PIL backend (channels-first given: to HWC; then CHW inferred as `to_rgb` does).
        if input_data_format == ChannelDimension.FIRST and tensor.dim() == 3:
            tensor = tensor.permute(1, 2, 0)
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        if tensor.dim() == 3 and tensor.shape[-1] == 1:
            tensor = tensor[..., 0]
        if tensor.dim() == 2:
            tensor = tensor[..., None].expand(-1, -1, 3)
        if tensor.dim() != 3 or tensor.shape[-1] not in (3, 4):
            raise SegFaceImageError(
                f"an image array must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels, got {tuple(tensor.shape)}."
            )
        return _tensor_to_uint8(tensor[..., :3]).permute(2, 0, 1).contiguous()

    @staticmethod
    def _image_size(image: torch.Tensor) -> tuple[int, int]:
        return int(image.shape[-2]), int(image.shape[-1])

    def _images_to_arrays(self, images: list, targets: list, resample, do_rescale, rescale_factor, do_normalize,
                          image_mean, image_std) -> list:  # fmt: skip
        resample = PILImageResampling(resample)
        if resample not in _INTERPOLATION:
            raise SegFaceImageError(
                f"the torchvision backend resizes with nearest, bilinear or bicubic, not {resample.name}; "
                "use SegFaceImageProcessor (the PIL backend) for that filter."
            )
        # Images of one size and device (and target) are resized as one batch.
        groups: dict = {}
        for index, (image, target) in enumerate(zip(images, targets)):
            groups.setdefault((tuple(image.shape), image.device, target), []).append(index)
        outputs: list = [None] * len(images)
        for (_, device, target), indices in groups.items():
            batch = torch.stack([images[i] for i in indices])
            if tuple(batch.shape[-2:]) != target and resample == PILImageResampling.NEAREST:
                batch = _nearest_resize(batch, target)
            elif tuple(batch.shape[-2:]) != target:
                batch = tvF.resize(batch, list(target), interpolation=_INTERPOLATION[resample], antialias=True)
            batch = batch.to(torch.float32)
            # The PIL backend's arithmetic, in the same float32 order, so equal 8-bit pixels give equal values.
            if do_rescale:
                batch = batch / torch.tensor(1.0 / rescale_factor, dtype=torch.float32, device=device)
            if do_normalize:
                mean = torch.tensor(image_mean, dtype=torch.float32, device=device)[:, None, None]
                std = torch.tensor(image_std, dtype=torch.float32, device=device)[:, None, None]
                batch = (batch - mean) / std
            for position, index in enumerate(indices):
                outputs[index] = batch[position]
        return outputs

    def _label_to_array(self, segmentation_map, target, device) -> torch.Tensor:
        if isinstance(segmentation_map, torch.Tensor):
            device = segmentation_map.device if device is None else device
        labels = torch.from_numpy(np.asarray(to_label_map(segmentation_map)).astype(np.int64)).to(device)
        return _nearest_resize(labels, target) if tuple(labels.shape) != target else labels

    @staticmethod
    def _to_channels_last(array: torch.Tensor) -> torch.Tensor:
        return array.permute(1, 2, 0)

    def _batch(self, data: dict, return_tensors, device) -> BatchFeature:
        # Every output on the device of the pixel values (labels read from arrays or landmarks start on the CPU).
        pixel_device = data["pixel_values"][0].device
        if "landmarks" in data:
            data["landmarks"] = [torch.from_numpy(points) for points in data["landmarks"]]
        data = {key: [value.to(pixel_device) for value in values] for key, values in data.items()}
        if return_tensors == "pt":
            data = {key: torch.stack(value) for key, value in data.items()}
        elif return_tensors == "np":
            data = {key: torch.stack(value).cpu().numpy() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors if return_tensors in ("pt", "np") else None)


__all__ = ["SegFaceImageProcessorFast"]
