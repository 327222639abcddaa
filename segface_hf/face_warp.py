# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""The LaPa face warp: 5-landmark similarity alignment to a face template and the tanh warp around it.

The LaPa models of the original (as FaRL/facer's LaPa pipeline) align each face from 5 landmarks to a fixed template
and sample it through a tanh warp that keeps the face at full resolution and squeezes the surroundings into the
margin; the logits are warped back to the input frame. The arithmetic follows the original operation by operation,
so that warped images agree with it bit for bit.
"""

from __future__ import annotations

import torch

# The 5-point face template of FaRL/facer on a 512 canvas, as (x, y): image-left eye, image-right eye, nose tip,
# image-left and image-right mouth corners.
FACE_TEMPLATE_512 = ((196.0, 226.0), (316.0, 226.0), (256.0, 286.0), (220.0, 360.4), (292.0, 360.4))


def face_template(target_size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The template points `(5, 2)` as (x, y) pixels of a `target_size` (height, width) frame.

    As in the original: the 512-canvas points are normalised to [-1, 1] (`p / 256 - 1`), scaled by the face scale 1.0
    and mapped to `[0, size - 1]`. For a 512 frame the first point is about (195.62, 225.56).

    Args:
        target_size (`tuple[int, int]`): Height and width of the frame.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): The precision of the scaling.

    Returns:
        `torch.Tensor` of shape `(5, 2)`.
    """
    height, width = target_size
    # Normalised in float32 like the original's template, then carried on in `dtype`.
    normalised = (torch.tensor(FACE_TEMPLATE_512, dtype=torch.float32) / 256.0 - 1.0).to(dtype)
    return (normalised * 1.0 + 1) * torch.tensor([width - 1, height - 1], dtype=dtype) / 2.0


def face_alignment_matrix(landmarks: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """Least-squares similarity transform from 5 landmarks to the face template of a `target_size` frame.

    Args:
        landmarks (`torch.Tensor` of shape `(batch_size, 5, 2)`): (x, y) landmarks in the template's order.
        target_size (`tuple[int, int]`): Height and width of the aligned frame.

    Returns:
        `torch.Tensor` of shape `(batch_size, 3, 3)`: the matrices mapping input pixels to aligned pixels.
    """
    target = face_template(target_size, landmarks.dtype).to(landmarks.device)
    target = target.unsqueeze(0).broadcast_to(landmarks.shape)

    source_mean = landmarks.mean(dim=1, keepdim=True)
    target_mean = target.mean(dim=1, keepdim=True)
    source_delta = landmarks - source_mean
    target_delta = target - target_mean
    norm = source_delta.square().sum([1, 2])
    cos_part = (target_delta * source_delta).sum([1, 2]) / norm
    sin_part = (target_delta[:, :, 0] * source_delta[:, :, 1] - target_delta[:, :, 1] * source_delta[:, :, 0]).sum(
        [1]
    ) / norm
    shift_x = target_mean[:, 0, 0] - cos_part * source_mean[:, 0, 0] - sin_part * source_mean[:, 0, 1]
    shift_y = target_mean[:, 0, 1] + sin_part * source_mean[:, 0, 0] - cos_part * source_mean[:, 0, 1]
    ones, zeros = torch.ones_like(norm), torch.zeros_like(norm)
    rows = [cos_part, sin_part, shift_x, -sin_part, cos_part, shift_y, zeros, zeros, ones]
    return torch.stack(rows, dim=-1).reshape(-1, 3, 3)


def pixel_coordinates(batch: int, height: int, width: int, device) -> torch.Tensor:
    """Integer pixel coordinates `(batch, height * width, 2)` as (x, y), row-major."""
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    grid = torch.stack([xx, yy], dim=-1).to(device)
    return grid.reshape(1, height * width, 2).broadcast_to(batch, height * width, 2)


def apply_homography(coords: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Points `(batch, points, 2)` mapped by 3x3 matrices `(batch, 3, 3)`, with the homogeneous divide."""
    homogeneous = torch.cat([coords, torch.ones_like(coords[:, :, [0]])], dim=-1)
    homogeneous = torch.bmm(homogeneous, matrix.transpose(2, 1))
    return homogeneous[:, :, :2] / homogeneous[:, :, [2, 2]]


def inverse_3x3(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 3x3 matrices: `torch.linalg.inv`, or its closed form (adjugate over determinant) while
    exporting, since ONNX has no matrix inverse operator. The two agree up to float rounding."""
    if not (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
        return torch.linalg.inv(matrix)
    a, b, c = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    d, e, f = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    g, h, i = matrix[:, 2, 0], matrix[:, 2, 1], matrix[:, 2, 2]
    cofactors = [e * i - f * h, c * h - b * i, b * f - c * e,
                 f * g - d * i, a * i - c * g, c * d - a * f,
                 d * h - e * g, b * g - a * h, a * e - b * d]  # fmt: skip
    determinant = a * cofactors[0] + b * cofactors[3] + c * cofactors[6]
    return torch.stack(cofactors, dim=-1).reshape(-1, 3, 3) / determinant[:, None, None]


def face_warp_grid(
    matrix: torch.Tensor, warp_factor: float, warped_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """`grid_sample` grid that tanh-warps an `input_size` image onto the aligned face.

    The arithmetic, including its index/size normalisation with `align_corners=False`, follows the original
    (FaRL's) implementation operation by operation, so that warped images agree bit for bit.

    Args:
        matrix (`torch.Tensor` of shape `(batch_size, 3, 3)`): From [`face_alignment_matrix`].
        warp_factor (`float`): The share of the frame given to the tanh margin (0 for a plain similarity warp).
        warped_size (`tuple[int, int]`): Height and width of the aligned frame.
        input_size (`tuple[int, int]`): Height and width of the input image.

    Returns:
        `torch.Tensor` of shape `(batch_size, *warped_size, 2)`.
    """
    warped_h, warped_w = warped_size
    size = torch.tensor([[warped_w, warped_h]]).to(matrix)
    coords = pixel_coordinates(matrix.size(0), warped_h, warped_w, matrix.device)
    if warp_factor > 0:
        coords = coords / size * 2 - 1
        upper = torch.clamp((coords - 1.0 + warp_factor) / warp_factor, -1 + 1e-3, 1 - 1e-3).arctanh()
        lower = torch.clamp((coords + 1.0 - warp_factor) / warp_factor, -1 + 1e-3, 1 - 1e-3).arctanh()
        upper = upper * warp_factor + 1.0 - warp_factor
        lower = lower * warp_factor - 1.0 + warp_factor
        coords = torch.where(coords > 1.0 - warp_factor, upper, torch.where(coords < -1.0 + warp_factor, lower, coords))
        coords = (coords + 1) / 2 * size
    coords = apply_homography(coords, inverse_3x3(matrix))
    input_h, input_w = input_size
    input_scale = torch.tensor([input_w, input_h]).to(matrix).reshape(1, 1, 1, 2)
    return coords.reshape(matrix.size(0), warped_h, warped_w, 2) / input_scale * 2 - 1


def face_unwarp_grid(
    matrix: torch.Tensor, warp_factor: float, warped_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """`grid_sample` grid that maps the aligned, warped frame back to the input frame.

    Args:
        matrix (`torch.Tensor` of shape `(batch_size, 3, 3)`): From [`face_alignment_matrix`].
        warp_factor (`float`): As given to [`face_warp_grid`].
        warped_size (`tuple[int, int]`): Height and width of the aligned frame.
        input_size (`tuple[int, int]`): Height and width of the input image.

    Returns:
        `torch.Tensor` of shape `(batch_size, *input_size, 2)`.
    """
    warped_h, warped_w = warped_size
    input_h, input_w = input_size
    size = torch.tensor([[warped_w, warped_h]]).to(matrix)
    coords = apply_homography(pixel_coordinates(matrix.size(0), input_h, input_w, matrix.device), matrix)
    if warp_factor > 0:
        coords = coords / size * 2 - 1
        upper = torch.tanh((coords - 1.0 + warp_factor) / warp_factor) * warp_factor + 1.0 - warp_factor
        lower = torch.tanh((coords + 1.0 - warp_factor) / warp_factor) * warp_factor - 1.0 + warp_factor
        coords = torch.where(coords > 1.0 - warp_factor, upper, torch.where(coords < -1.0 + warp_factor, lower, coords))
        coords = (coords + 1) / 2 * size
    warped_scale = torch.tensor([warped_w, warped_h]).to(matrix).reshape(1, 1, 1, 2)
    return coords.reshape(matrix.size(0), input_h, input_w, 2) / warped_scale * 2 - 1


__all__ = [
    "FACE_TEMPLATE_512",
    "apply_homography",
    "face_alignment_matrix",
    "face_template",
    "face_unwarp_grid",
    "face_warp_grid",
    "inverse_3x3",
    "pixel_coordinates",
]
