# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""Image processor for SegFace: the original's preprocessing (square PIL-bicubic resize, ImageNet normalisation)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension, PILImageResampling

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the model, not of preprocessing
    torch = None

from .image_io import SegFaceImageError, to_label_map, to_rgb


def _as_list(inputs) -> list:
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs)
    if torch is not None and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return list(inputs)
    return [inputs]


class SegFaceImageProcessor(BaseImageProcessor):
    r"""
    Prepares images (and optionally label maps and face landmarks) for [`SegFaceForSemanticSegmentation`] exactly
    as the original SegFace data pipeline does: conversion to RGB, a square resize to the model resolution with
    PIL's bicubic filter (aspect ratio not kept), scaling to [0, 1] and ImageNet normalisation. Label maps are
    resized with nearest neighbour; landmarks are rescaled into the resized frame.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize images to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 512, "width": 512}`):
            The model resolution.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter for resizing images. Label maps always use nearest neighbour.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to divide pixel values by `1 / rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale factor for pixel values.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`list[float]`, *optional*, defaults to the ImageNet mean):
            Per-channel mean.
        image_std (`list[float]`, *optional*, defaults to the ImageNet standard deviation):
            Per-channel standard deviation.
    """

    model_input_names = ["pixel_values"]
    # Class-level defaults, as transformers' processors declare them (an explicit `None` given to `__init__` is
    # then kept through save and load).
    do_resize = True
    resample = PILImageResampling.BICUBIC
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        resample: PILImageResampling | int = PILImageResampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(size, int):
            size = {"height": size, "width": size}
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else {"height": 512, "width": 512}
        self.resample = int(resample) if resample is not None else None
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std if image_std is not None else IMAGENET_DEFAULT_STD)

    @property
    def backend(self) -> str:
        """`str`: The backend this image processor computes with."""
        return "pil"

    # The per-image steps below are the only backend-specific parts of `preprocess`; the torchvision backend
    # ([`SegFaceImageProcessorFast`]) overrides them and inherits everything else.
    def _prepare_image(self, image, input_data_format, device):
        """One input image in the backend's working form (here an 8-bit RGB PIL image)."""
        return to_rgb(self._channels_last(image, input_data_format))

    @staticmethod
    def _image_size(image) -> tuple[int, int]:
        return image.height, image.width

    def _images_to_arrays(self, images: list, targets: list, *steps) -> list:
        return [self._image_to_array(image, target, *steps) for image, target in zip(images, targets)]

    def _image_to_array(self, image: PIL.Image.Image, target, resample, do_rescale, rescale_factor, do_normalize,
                        image_mean, image_std) -> np.ndarray:  # fmt: skip
        if (image.height, image.width) != target:
            image = image.resize((target[1], target[0]), resample=PILImageResampling(resample))
        array = np.asarray(image, dtype=np.float32)
        if do_rescale:
            # Divide (as torchvision's ToTensor does) rather than multiply, for bit-identical inputs.
            array = array / np.float32(1.0 / rescale_factor)
        if do_normalize:
            array = (array - np.asarray(image_mean, np.float32)) / np.asarray(image_std, np.float32)
        return array.transpose(2, 0, 1)

    def _label_to_array(self, segmentation_map, target, device) -> np.ndarray:
        label_map = to_label_map(segmentation_map)
        if (label_map.height, label_map.width) != target:
            label_map = label_map.resize((target[1], target[0]), resample=PIL.Image.NEAREST)
        return np.asarray(label_map).astype(np.int64)

    @staticmethod
    def _to_channels_last(array):
        return array.transpose(1, 2, 0)

    def _batch(self, data: dict, return_tensors, device) -> BatchFeature:
        """Stack each list of per-image arrays (or keep the lists when `return_tensors` is `None`)."""
        if return_tensors in ("pt", "np"):
            data = {key: np.stack(value) for key, value in data.items()}
        features = BatchFeature(data=data, tensor_type=return_tensors if return_tensors in ("pt", "np") else None)
        return features.to(device) if device is not None and return_tensors == "pt" else features

    def preprocess(
        self,
        images,
        segmentation_maps=None,
        landmarks=None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        resample: PILImageResampling | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        return_tensors: str | None = "pt",
        do_convert_rgb: bool | None = None,
        data_format: str | ChannelDimension | None = ChannelDimension.FIRST,
        input_data_format: str | ChannelDimension | None = None,
        device: "str | torch.device | None" = None,
        **kwargs,
    ) -> BatchFeature:
        """Preprocess one image or a batch.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, path, or a list of them):
                The image(s). Arrays may be HxW, HxWxC or CxHxW, 8-bit, 16-bit or float in [0, 1].
            segmentation_maps (same kinds, *optional*):
                Label maps of class indices, one per image; returned as `labels`.
            landmarks (array-like of shape `(num_points, 2)` per image, *optional*):
                (x, y) pixel coordinates in each original image; returned as `landmarks` in the resized frame.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"`, `"np"` or `None` (lists of numpy arrays).
            do_convert_rgb (`bool`, *optional*):
                Accepted for transformers' standard arguments; images are always converted to 3-channel RGB (alpha
                dropped, grayscale replicated), which is what the model takes.
            data_format (`str` or `ChannelDimension`, *optional*, defaults to `"channels_first"`):
                Layout of the returned `pixel_values`: `"channels_first"` (what the model takes) or
                `"channels_last"`.
            input_data_format (`str` or `ChannelDimension`, *optional*):
                Layout of array inputs, `"channels_first"` or `"channels_last"`; inferred when not given.
            device (`str` or `torch.device`, *optional*):
                Device of the returned tensors (with `return_tensors="pt"`). This PIL backend computes on the CPU
                and moves the result; [`SegFaceImageProcessorFast`] computes on the device.
        """
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else ({"height": size, "width": size} if isinstance(size, int) else size)
        resample = self.resample if resample is None else resample
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else rescale_factor
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        image_mean = self.image_mean if image_mean is None else image_mean
        image_std = self.image_std if image_std is None else image_std
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}.")
        data_format = ChannelDimension(data_format) if data_format is not None else ChannelDimension.FIRST
        input_data_format = ChannelDimension(input_data_format) if input_data_format is not None else None

        image_list = [self._prepare_image(image, input_data_format, device) for image in _as_list(images)]
        if not image_list:
            raise SegFaceImageError("No images given.")
        original_sizes = [self._image_size(image) for image in image_list]
        targets = [(size["height"], size["width"]) if do_resize else original for original in original_sizes]
        pixel_values = self._images_to_arrays(image_list, targets, resample, do_rescale, rescale_factor,
                                              do_normalize, image_mean, image_std)  # fmt: skip
        data = {"pixel_values": pixel_values}

        if segmentation_maps is not None:
            map_list = _as_list(segmentation_maps)
            if len(map_list) != len(image_list):
                raise SegFaceImageError(f"Got {len(map_list)} segmentation maps for {len(image_list)} images.")
            data["labels"] = [self._label_to_array(m, target, device) for m, target in zip(map_list, targets)]

        if data_format == ChannelDimension.LAST:
            data["pixel_values"] = [self._to_channels_last(array) for array in pixel_values]

        if landmarks is not None:
            points = self._landmark_list(landmarks, len(image_list))
            data["landmarks"] = [
                (p * np.asarray([t[1] / o[1], t[0] / o[0]], np.float32)).astype(np.float32)
                for p, t, o in zip(points, targets, original_sizes)
            ]

        if return_tensors in ("pt", "np"):
            shapes = {tuple(array.shape) for array in data["pixel_values"]}
            if len(shapes) > 1:
                raise SegFaceImageError(f"Cannot batch images of different sizes {sorted(shapes)} with do_resize=False.")
        return self._batch(data, return_tensors, device)

    @staticmethod
    def _channels_last(image, input_data_format):
        """An array image in HWC layout when its layout is given as channels-first; anything else as it is."""
        if input_data_format != ChannelDimension.FIRST or isinstance(image, (str, os.PathLike, PIL.Image.Image)):
            return image
        if torch is not None and isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        array = np.asarray(image)
        return array.transpose(1, 2, 0) if array.ndim == 3 else array

    @staticmethod
    def _landmark_list(landmarks, batch_size: int) -> list[np.ndarray]:
        if torch is not None and isinstance(landmarks, torch.Tensor):
            landmarks = landmarks.detach().cpu().numpy()
        try:
            as_array = np.asarray(landmarks, dtype=np.float32)
        except (ValueError, TypeError):
            as_array = None  # ragged: one array per image with different point counts
        if as_array is not None and as_array.ndim == 2:
            landmarks = [as_array]  # one image's (num_points, 2), as an array or a nested list
        elif as_array is not None and as_array.ndim == 3:
            landmarks = list(as_array)
        points = [np.asarray(p, dtype=np.float32) for p in landmarks]
        if len(points) != batch_size:
            raise SegFaceImageError(f"Got landmarks for {len(points)} images, but {batch_size} images.")
        shapes = {p.shape for p in points}
        if len(shapes) != 1 or any(len(s) != 2 or s[1] != 2 for s in shapes):
            raise SegFaceImageError(f"landmarks must be (num_points, 2) per image, got shapes {sorted(shapes)}.")
        if not all(np.isfinite(p).all() for p in points):
            raise SegFaceImageError("landmarks contain NaN or infinity.")
        return points

    def to_dict(self) -> dict:
        output = super().to_dict()
        # Both backends save the model's processor type, as transformers' own PIL/torchvision pairs do: the backend
        # is chosen when loading (`backend=`), so a saved config loads with either.
        output["image_processor_type"] = SegFaceImageProcessor.__name__
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict) and isinstance(auto_map.get("AutoImageProcessor"), str):
            # Saved remote code names both backends, so `trust_remote_code=True` loads either. This import also
            # makes `save_pretrained` copy the torchvision module beside this one (it copies relative imports).
            from .image_processing_segface_fast import SegFaceImageProcessorFast

            output["auto_map"] = {**auto_map, "AutoImageProcessor": {
                backend: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
                for backend, cls in (("pil", SegFaceImageProcessor), ("torchvision", SegFaceImageProcessorFast))
            }}  # fmt: skip
        return output

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False) -> list:
        """Turn model outputs into one label map per image.

        Args:
            outputs ([`~transformers.modeling_outputs.SemanticSegmenterOutput`] or logits tensor):
                The model's output.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                (height, width) per image, e.g. the original image sizes. The logits are bilinearly resized to each
                before the argmax; without it the maps are at the model resolution.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Whether to return, per image, a `SemanticSegmentationPostProcessorOutput` holding the label map
                (`segmentation`) and the logits at the same size (`segmentation_scores`, `(num_labels, height,
                width)`, bilinearly resized like the label map's) instead of the label map alone.

        Returns:
            `list[torch.LongTensor]`: a `(height, width)` label map per image (or the outputs described above).
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for {len(logits)} images.")
        results = []
        for index in range(len(logits)):
            if target_sizes is None:
                results.append(logits[index].argmax(dim=0))
            else:
                height, width = (int(v) for v in target_sizes[index])
                results.append(resized_argmax(logits[index], (height, width)))
        if not return_segmentation_scores:
            return results
        import torch.nn.functional as F
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

        scored = []
        for index, label_map in enumerate(results):
            scores = logits[index]
            if tuple(scores.shape[1:]) != tuple(label_map.shape):
                scores = F.interpolate(scores[None], size=tuple(label_map.shape), mode="bilinear",
                                       align_corners=False)[0]  # fmt: skip
            scored.append(SemanticSegmentationPostProcessorOutput({"segmentation": label_map,
                                                                   "segmentation_scores": scores}))  # fmt: skip
        return scored


def _bilinear_taps(output_size: int, input_size: int, device) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Source neighbours and weights of `F.interpolate(bilinear, align_corners=False)` along one axis, computed in
    float32 as PyTorch's kernel does: `source = (dst + 0.5) * in / out - 0.5`, clamped at 0."""
    import torch

    scale = torch.tensor(input_size / output_size, dtype=torch.float32, device=device)
    source = ((torch.arange(output_size, dtype=torch.float32, device=device) + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=input_size - 1)
    upper = (lower + 1).clamp(max=input_size - 1)
    return lower, upper, source - lower


def resized_argmax(logits: "torch.Tensor", size: tuple[int, int], max_chunk_elements: int = 2**25) -> "torch.Tensor":
    """`argmax` over classes of `logits` `(num_labels, h, w)` bilinearly resized (`align_corners=False`) to `size`.

    Small targets are resized with `F.interpolate`. For large ones (e.g. an 8000x6000 photo) the interpolation is
    only computed where it can matter: an interpolated pixel is a convex combination of its 4 source neighbours, so
    where all 4 have the same argmax, so does the pixel. Elsewhere (class borders) the logits are interpolated with
    `F.interpolate`'s sampling positions and float32 weights, row band by row band, so memory stays small.
    """
    import torch
    import torch.nn.functional as F

    num_labels, in_height, in_width = logits.shape
    height, width = size
    if (height, width) == (in_height, in_width):
        return logits.argmax(dim=0)
    if num_labels * height * width <= max_chunk_elements:
        resized = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)
        return resized[0].argmax(dim=0)
    device = logits.device
    left, right, x_weight = _bilinear_taps(width, in_width, device)
    top, bottom, y_weight = _bilinear_taps(height, in_height, device)
    source = logits.float()
    hard = source.argmax(0)
    rows = None  # logits interpolated along x for every source row, made on first need
    output = torch.empty((height, width), dtype=torch.long, device=device)
    band = max(1, max_chunk_elements // (num_labels * width))
    for start in range(0, height, band):
        stop = min(height, start + band)
        upper, lower = top[start:stop, None], bottom[start:stop, None]
        corners = hard[upper, left], hard[upper, right], hard[lower, left], hard[lower, right]
        labels = corners[0].clone()
        mixed = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
        count = int(mixed.sum())
        if count:
            if rows is None:
                rows = torch.lerp(source.index_select(2, left), source.index_select(2, right), x_weight)
            if count > mixed.numel() // 8:  # many borders (e.g. a noisy map): interpolate the whole band
                above = rows.index_select(1, top[start:stop])
                below = rows.index_select(1, bottom[start:stop])
                labels = torch.lerp(above, below, y_weight[start:stop, None]).argmax(0)
            else:
                ys, xs = mixed.nonzero(as_tuple=True)
                weight = y_weight[start:stop][ys]
                above, below = rows[:, top[start:stop][ys], xs], rows[:, bottom[start:stop][ys], xs]
                labels[ys, xs] = torch.lerp(above, below, weight).argmax(0)
        output[start:stop] = labels
    return output


__all__ = ["SegFaceImageProcessor"]
