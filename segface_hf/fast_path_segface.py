# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""The fast forward path of SegFace: the same function as the modules' `forward`s, in fewer operations.

[`SegFaceForSemanticSegmentation`] runs [`segment`] when `model.fast_path` is set (the default) and the modules'
own `forward`s (the original's operations, in its order and layouts) otherwise. What the fast path does:

- Convolutional backbones get channels-last inputs and, in eval mode without autograd, run with their batch norms
  folded into the convolutions before them (`batch_norm_folding.py`). Swin's window attention (in eval mode)
  projects the image's own tokens only, without the padding's work, and does its shift, partition and head split
  as row gathers.
- The per-scale projections and the fusion convolution are folded into one matrix per scale and applied before
  upsampling.
- The decoder works on channels-last tokens; each stride-2 transposed convolution is one matrix product per pixel.
- On the CPU, work on full-resolution maps runs in blocks of about `CPU_BLOCK_TOKENS` tokens that stay in cache.

All of it agrees with the reference computation up to float rounding (tests/test_speed_paths.py). Whether each
part runs is decided once per forward pass by [`plan_fast_path`]; while tracing (`torch.compile`, `torch.export`,
ONNX) the fast path keeps only the parts that are plain tensor functions (no blocks, caches or in-place writes).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batch_norm_folding import run_with_folded_batch_norms

# Work on full-resolution maps is split into blocks of about this many stride-4 tokens on the CPU, so that each
# block's intermediates stay in cache and reuse memory instead of faulting in fresh pages (0 turns blocks off).
CPU_BLOCK_TOKENS = 1024
# Convolutional backbones, which the fast path feeds channels-last inputs (oneDNN/cuDNN pick NHWC kernels and the
# channels-last layer norms of ConvNeXt need no copies); the transformers' patch embedding does not care.
CHANNELS_LAST_MODEL_TYPES = ("timm_backbone", "convnext", "convnextv2", "resnet")
# Backbones that may have batch norms after their convolutions (timm's MobileNetV3 and EfficientNetV2, ResNet).
BATCH_NORM_MODEL_TYPES = ("timm_backbone", "resnet")

# Per-module caches of eager forward passes (never used while tracing): Swin's window index maps, the encoding.
_SWIN_WINDOW_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENCODING_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SegFaceFastPathPlan:
    """Which parts of the fast path one forward pass may use.

    Args:
        cpu_blocks (`bool`): Split full-resolution work into blocks of `CPU_BLOCK_TOKENS` tokens (eager, on the CPU).
        in_place (`bool`): Write results into preallocated or already used tensors (autograd off, eager).
        swin_windows (`bool`): Run Swin's blocks through [`swin_block`] (eval mode, eager).
        caches (`bool`): Reuse the encoding and Swin's window indices between calls (eager).
        fold_batch_norms (`bool`): Run the backbone with its batch norms folded into the convolutions before them
            (eval mode, autograd off, eager).
    """

    cpu_blocks: bool
    in_place: bool
    swin_windows: bool
    caches: bool
    fold_batch_norms: bool


def is_tracing() -> bool:
    """Whether the forward pass is being traced (`torch.compile`, `torch.export`, TorchScript or ONNX export)."""
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def plan_fast_path(
    model: nn.Module, pixel_values: torch.Tensor, output_attentions: bool = False
) -> SegFaceFastPathPlan:
    """The one place where device, autograd, training and tracing state decide what the fast path does.

    CPU blocks are left out where the decoder's layers must run whole: when their attention maps are returned, and
    when they are checkpointed (gradient checkpointing wraps each layer's call)."""
    eager = not is_tracing()
    checkpointed = model.training and model.is_activation_checkpointing
    return SegFaceFastPathPlan(
        cpu_blocks=eager and CPU_BLOCK_TOKENS > 0 and pixel_values.device.type == "cpu" and not output_attentions
        and not checkpointed,
        in_place=eager and not torch.is_grad_enabled(),
        swin_windows=eager and not model.training,
        caches=eager,
        fold_batch_norms=eager and not model.training and not torch.is_grad_enabled(),
    )


def row_blocks(batch: int, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
    """Blocks `(first image, end image, first row, end row)` of about `CPU_BLOCK_TOKENS` tokens of a `batch` of
    `height` x `width` token maps, or None when everything fits in one block."""
    if CPU_BLOCK_TOKENS <= 0 or batch * height * width <= CPU_BLOCK_TOKENS:
        return None
    if height * width <= CPU_BLOCK_TOKENS:  # whole images, several at a time
        images = CPU_BLOCK_TOKENS // (height * width)
        return [(first, min(first + images, batch), 0, height) for first in range(0, batch, images)]
    rows = max(1, CPU_BLOCK_TOKENS // width)
    return [
        (image, image + 1, first, min(first + rows, height))
        for image in range(batch)
        for first in range(0, height, rows)
    ]


def segment(
    model: nn.Module, pixel_values: torch.Tensor, output_attentions: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Logits at 4x the stride-4 grid, the four backbone feature maps and (with `output_attentions`) the decoder's
    attention maps of a [`SegFaceForSemanticSegmentation`], computed as its reference path does."""
    plan = plan_fast_path(model, pixel_values, output_attentions)
    backbone = model.backbone
    if backbone.model_type in CHANNELS_LAST_MODEL_TYPES:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    features = backbone_features(backbone, pixel_values, plan)
    height, width = features[0].shape[2:]
    blocks = row_blocks(features[0].shape[0], height, width) if plan.cpu_blocks else None
    image_tokens = fuse_features(model.feature_projections, model.feature_fusion, features, blocks)
    image_pe = positional_tokens(model.positional_embedding, height, width, image_tokens.dtype, plan)
    logits, attentions = decode(model.mask_decoder, image_tokens, image_pe, height, width, blocks, plan,
                                output_attentions)  # fmt: skip
    return logits, features, attentions


# ----------------------------------------------------------------------------------------------------------------
# Backbone


def backbone_features(backbone: nn.Module, pixel_values: torch.Tensor, plan: SegFaceFastPathPlan) -> list:
    """The four feature maps of a `SegFaceBackbone`; Swin's blocks through [`swin_block`] when the plan allows it.
    The maps may then be channels-last views rather than contiguous NCHW tensors."""
    if backbone.model_type != "swin" or not plan.swin_windows:
        if plan.fold_batch_norms and backbone.model_type in BATCH_NORM_MODEL_TYPES:
            return run_with_folded_batch_norms(backbone, pixel_values)
        return backbone(pixel_values)
    encoder = backbone.model.encoder
    hidden_states, dimensions = backbone.model.embeddings(pixel_values)
    cache = _SWIN_WINDOW_CACHE.setdefault(encoder, {})
    features = []
    for stage in encoder.layers:
        for block in stage.blocks:
            hidden_states = swin_block(block, hidden_states, dimensions, cache, plan)
        batch, _, channels = hidden_states.shape
        features.append(hidden_states.view(batch, *dimensions, channels).permute(0, 3, 1, 2))
        if stage.downsample is not None:
            hidden_states = stage.downsample(hidden_states, dimensions)
            dimensions = ((dimensions[0] + 1) // 2, (dimensions[1] + 1) // 2)
    return features


def swin_window_indices(
    height: int, width: int, window: int, shift: int, batch: int, heads: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where Swin's padded, cyclically shifted, window-partitioned, head-split layout takes its values from.

    The projections of a batch of `height` x `width` token maps are viewed as rows of one head each: row
    `token * heads + head` of a `(batch * height * width + 1) * heads` matrix whose last `heads` rows hold the
    projection of a zero token (the bias), which is what Swin's zero padding projects to. Returns the rows that make
    the `(windows, heads, window positions)` layout (padding positions read the bias rows), and for every token and
    head the row of that layout that holds it.
    """
    padded_height = height + (window - height % window) % window
    padded_width = width + (window - width % window) % window
    # After torch.roll by -shift, position (i, j) of the padded map holds padded position (i + shift, j + shift).
    rows = (torch.arange(padded_height, device=device) + shift) % padded_height
    cols = (torch.arange(padded_width, device=device) + shift) % padded_width
    real = (rows[:, None] < height) & (cols[None, :] < width)
    source = torch.where(real, rows[:, None] * width + cols[None, :], -1)
    # Window partition: windows in row-major order, positions row-major within each window.
    area = window * window
    source = source.view(padded_height // window, window, padded_width // window, window).permute(0, 2, 1, 3)
    source = source.reshape(-1, area)
    num_windows = source.shape[0]
    tokens = height * width
    offsets = torch.arange(batch, device=device)[:, None, None] * tokens
    batched = torch.where(source[None] >= 0, source[None] + offsets, batch * tokens)  # (batch, windows, area)
    head_ids = torch.arange(heads, device=device)
    gather = batched[:, :, None, :] * heads + head_ids[None, None, :, None]  # (batch, windows, heads, area)
    window_rows = torch.empty(tokens, dtype=torch.long, device=device)
    positions = torch.arange(num_windows * area, device=device).view(num_windows, area)
    window_rows[source[source >= 0]] = positions[source >= 0]
    window_of, position_of = window_rows // area, window_rows % area
    inverse = (window_of[:, None] * heads + head_ids[None, :]) * area + position_of[:, None]  # (tokens, heads)
    inverse = inverse[None] + torch.arange(batch, device=device)[:, None, None] * (num_windows * heads * area)
    return gather.reshape(-1), inverse.reshape(-1)


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    position_bias: torch.Tensor,
    shift_mask: torch.Tensor | None,
    scaling: float,
    batched_matmuls: bool,
) -> torch.Tensor:
    """Attention within each window of `(batch * windows, heads, area, head_dim)` queries, keys and values, with
    the relative position bias `(1, heads, area, area)` and the shifted windows' mask `(windows, area, area)`;
    returns `(batch * windows, heads, area, head_dim)`, contiguous.

    With `batched_matmuls` the scores are two batched matrix products and a softmax (faster on CPUs for 49-token
    windows than SDPA's fused kernel, which is tuned for long sequences); otherwise SDPA.
    """
    area, head_dim = query.shape[2:]
    if not batched_matmuls:
        mask = position_bias
        if shift_mask is not None:
            mask = (position_bias + shift_mask[:, None]).repeat(query.shape[0] // shift_mask.shape[0], 1, 1, 1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling).contiguous()
    scores = torch.bmm(query.reshape(-1, area, head_dim), key.reshape(-1, area, head_dim).transpose(1, 2))
    scores = scores.view(query.shape[:2] + (area, area)).mul_(scaling).add_(position_bias)
    if shift_mask is not None:
        scores.view(-1, shift_mask.shape[0], *scores.shape[1:]).add_(shift_mask[:, None])
    probabilities = torch.softmax(scores, dim=-1).view(-1, area, area)
    return torch.bmm(probabilities, value.reshape(-1, area, head_dim)).view(query.shape)


def swin_block(
    block: nn.Module, hidden_states: torch.Tensor, dimensions: tuple[int, int], cache: dict, plan: SegFaceFastPathPlan
) -> torch.Tensor:
    """A `transformers` `SwinLayer` in eval mode, computing the same function with less work.

    The layer pads the normalised tokens with zeros to whole windows, shifts them cyclically, partitions them into
    windows and projects every window position to queries, keys and values; after attention it projects every
    position, reverses the partition and the shift and crops the padding. Projections are per token and a padding
    token's projection is just the bias, so here the projections run on the image's own tokens only (the padding
    share of Swin-B's stage 4 at 512 pixels is 42%), and the shift, partition, head split and their inverses are
    row gathers.
    """
    height, width = dimensions
    block.set_shift_and_window_size(dimensions)
    window, shift = int(block.window_size), int(block.shift_size)
    batch, tokens, channels = hidden_states.shape
    attention = block.attention
    heads, head_dim = attention.num_attention_heads, attention.head_dim
    key = (height, width, window, shift, batch, heads, hidden_states.device)
    if key not in cache:
        cache[key] = swin_window_indices(height, width, window, shift, batch, heads, hidden_states.device)
    gather, inverse = cache[key]

    normed = block.layernorm_before(hidden_states).view(batch * tokens, channels)
    area = window * window
    windows = []
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        bias = projection.bias if projection.bias is not None else normed.new_zeros(channels)
        if not plan.in_place:
            projected = torch.cat([projection(normed), bias[None].to(normed.dtype)])
        else:
            projected = normed.new_empty(batch * tokens + 1, channels)
            torch.addmm(bias, normed, projection.weight.t(), out=projected[:-1])
            projected[-1] = bias
        windows.append(projected.view(-1, head_dim).index_select(0, gather).view(-1, heads, area, head_dim))
    query, key_states, value = windows
    shift_mask = block.get_attn_mask(
        height + (window - height % window) % window, width + (window - width % window) % window,
        dtype=hidden_states.dtype, device=hidden_states.device,
    )  # fmt: skip
    attended = window_attention(
        query, key_states, value, attention.relative_position_bias(), shift_mask, attention.scaling,
        batched_matmuls=hidden_states.device.type == "cpu",
    )  # fmt: skip
    attended = attended.view(-1, head_dim).index_select(0, inverse).view(batch * tokens, channels)
    hidden_states = hidden_states + attention.o_proj(attended).view(batch, tokens, channels)
    if not (plan.in_place and plan.cpu_blocks):
        return hidden_states + block.mlp(block.layernorm_after(hidden_states))
    # The MLP is per token: on the CPU, blocks of tokens keep its 4x-wide intermediate in cache.
    rows = hidden_states.view(batch * tokens, channels)
    for start in range(0, batch * tokens, CPU_BLOCK_TOKENS):
        block_rows = rows[start : start + CPU_BLOCK_TOKENS]
        block_rows.add_(block.mlp(block.layernorm_after(block_rows)))
    return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Feature fusion


def fold_linear(
    outer: torch.Tensor, inner_weight: torch.Tensor, inner_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `x -> outer @ (inner_weight @ x + inner_bias)`, computed in at least float32 precision."""
    dtype = torch.promote_types(outer.dtype, torch.float32)
    weight = (outer.to(dtype) @ inner_weight.to(dtype)).to(outer.dtype)
    if inner_bias is None:
        return weight, torch.zeros(outer.shape[0], dtype=outer.dtype, device=outer.device)
    return weight, (outer.to(dtype) @ inner_bias.to(dtype)).to(outer.dtype)


def fuse_features(
    projections: nn.ModuleList, fusion: nn.Conv2d, features: list[torch.Tensor], blocks: list | None
) -> torch.Tensor:
    """Fused stride-4 features as row-major tokens `(batch, height * width, hidden_size)`.

    The original projects every scale to `hidden_size`, upsamples it bilinearly to the stride-4 grid,
    concatenates (coarsest first) and applies a 1x1 convolution. All three steps are linear per pixel and
    bilinear weights sum to 1, so they commute: each scale's projection and its block of the fusion
    convolution are folded into one matrix (computed from the parameters on every call, so training updates
    the original weights) and applied at the scale's own resolution; only the `hidden_size`-channel results
    are upsampled and summed. Equal to the original up to float rounding. `blocks` are [`row_blocks`] of the grid.
    """
    batch = features[0].shape[0]
    height, width = features[0].shape[2:]
    hidden = fusion.out_channels
    num_scales = len(features)
    fusion_weight = fusion.weight.reshape(hidden, num_scales * hidden)
    folded = []
    for index, (feature, projection) in enumerate(zip(features, projections)):
        # The concatenation runs from the coarsest scale to the finest: the fusion weights depend on that order.
        block = fusion_weight[:, (num_scales - 1 - index) * hidden : (num_scales - index) * hidden]
        weight, bias = fold_linear(block, projection.weight, projection.bias)
        # Pixels as rows: a view for both NCHW and channels-last maps of a single image.
        pixels = feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])
        folded.append((pixels, weight, bias))
    # The finest scale is already on the stride-4 grid; the others are projected there at their own resolution
    # and upsampled. All biases go into the finest scale's product.
    pixels, weight, _ = folded[0]
    bias = sum(b for _, _, b in folded)
    coarse = [torch.mm(p, w.t()).view(batch, *f.shape[2:], hidden) for (p, w, _), f in zip(folded[1:], features[1:])]
    if blocks is not None and all(height % c.shape[1] == 0 and width % c.shape[2] == 0 for c in coarse):
        return fuse_blockwise(pixels, weight, bias, coarse, batch, height, width, blocks)
    fused = torch.addmm(bias, pixels, weight.t()).view(batch, height, width, hidden)
    for projected in coarse:
        if projected.shape[1:3] != (height, width):
            projected = F.interpolate(
                projected.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        fused = fused.add_(projected)
    return fused.reshape(batch, height * width, hidden)


def fuse_blockwise(pixels, weight, bias, coarse, batch, height, width, blocks) -> torch.Tensor:
    """[`fuse_features`] a block of rows at a time, for coarse maps whose sizes divide the grid's.

    Each block upsamples only the coarse rows it needs, from the row above its first one, so that every output
    row is interpolated from the same two coarse rows with the same weights as in the whole-map upsampling
    (with an integer scale factor, row `r` upsampled from coarse rows `low:` is row `r + low * factor` of the
    whole map); the rows outside the block are cropped.
    """
    hidden = weight.shape[0]
    pixels = pixels.view(batch, height, width, -1)
    fused = pixels.new_empty(batch, height, width, hidden)
    for first, end, start, stop in blocks:
        block = torch.addmm(bias, pixels[first:end, start:stop].reshape(-1, pixels.shape[-1]), weight.t())
        block = block.view(end - first, stop - start, width, hidden)
        for projected in coarse:
            rows = projected.shape[1]
            factor = height // rows
            low = max(0, math.floor((start + 0.5) / factor - 0.5))
            high = min(rows, math.floor((stop - 0.5) / factor - 0.5) + 2)
            upsampled = F.interpolate(
                projected[first:end, low:high].permute(0, 3, 1, 2),
                scale_factor=(factor, width // projected.shape[2]),
                mode="bilinear",
                align_corners=False,
            )
            offset = start - low * factor
            block.add_(upsampled[:, :, offset : offset + stop - start].permute(0, 2, 3, 1))
        fused[first:end, start:stop] = block
    return fused.view(batch, height * width, hidden)


def positional_tokens(
    embedding: nn.Module, height: int, width: int, dtype: torch.dtype, plan: SegFaceFastPathPlan
) -> torch.Tensor:
    """The encoding of a `SegFacePositionalEmbedding` as row-major tokens `(1, height * width, hidden_size)` in
    `dtype`. It depends only on the grid size and the stored matrix, so eager passes reuse it while the matrix is
    unchanged (same storage, same version)."""
    if not plan.caches:
        # A tracer must not see the cache at all: dynamo would guard on the weak dictionary's contents, which the
        # garbage collector changes between tracing and building the guards. The separable form keeps exported
        # programs that fold constants small (ExecuTorch's would store 8 MB of angles at 512 pixels).
        encoding = embedding.encode_separably(height, width).to(dtype)
        return encoding.view(1, height * width, encoding.shape[-1])
    matrix = embedding.positional_embedding
    key = (height, width, dtype, matrix.device, matrix.data_ptr(), matrix._version)
    cached = _ENCODING_CACHE.get(embedding)
    if cached is not None and cached[0] == key:
        return cached[1]
    encoding = embedding.encode(height, width).to(dtype)
    tokens = encoding.view(1, height * width, encoding.shape[-1])
    _ENCODING_CACHE[embedding] = (key, tokens)
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# Mask decoder


def decode(
    decoder: nn.Module,
    image_tokens: torch.Tensor,
    image_pe: torch.Tensor,
    height: int,
    width: int,
    blocks: list | None,
    plan: SegFaceFastPathPlan,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`SegFaceMaskDecoder` on row-major image tokens `(batch, height * width, hidden)` and their encoding
    `(1, height * width, hidden)`: logits `(batch, num_labels, 4 * height, 4 * width)` and the transformer's
    attention maps (with `output_attentions`, which needs `blocks` None). `blocks` are [`row_blocks`] of the grid,
    or None."""
    batch = image_tokens.shape[0]
    class_tokens = decoder.class_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
    attentions = ()
    if blocks is None:
        class_tokens, image_tokens, attentions = decoder.transformer(image_tokens, image_pe, class_tokens,
                                                                     output_attentions)  # fmt: skip
    else:
        token_blocks = [(i, j, a * width, b * width) for i, j, a, b in blocks]
        class_tokens, image_tokens = two_way_transformer_blockwise(
            decoder.transformer, image_tokens, image_pe, class_tokens, token_blocks, plan.in_place
        )
    mask_weights = decoder.output_hypernetwork_mlp(class_tokens)
    return upscale_and_classify(decoder, image_tokens, mask_weights, height, width, blocks), attentions


def head_weights(layer: nn.Linear, heads: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection to `heads` heads as `(heads, head_dim, in_features)` weights and `(heads, head_dim)` biases."""
    return layer.weight.to(dtype).view(heads, -1, layer.in_features), layer.bias.to(dtype).view(heads, -1)


# The attention implementations the folded products below reproduce; any other one (a kernel registered with
# transformers' `AttentionInterface`) is called on projected queries, keys and values, as configured.
FOLDABLE_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def linear_into(layer: nn.Linear, inputs: torch.Tensor, out: torch.Tensor, in_place: bool) -> None:
    """`out[...] = layer(inputs)`, written in place by the matrix product when `in_place` allows it."""
    if not in_place or not out.is_contiguous() or layer.bias is None:
        out.copy_(layer(inputs))
        return
    torch.addmm(layer.bias, inputs.reshape(-1, inputs.shape[-1]), layer.weight.t(), out=out.view(-1, out.shape[-1]))


def attend_to_image_blockwise(
    attention: nn.Module, query: torch.Tensor, image_tokens: torch.Tensor, image_pe: torch.Tensor, blocks: list,
    in_place: bool,
) -> torch.Tensor:  # fmt: skip
    """`attention(query, image_tokens + image_pe, image_tokens)` for a few query tokens, the image tokens block by
    block: by [`folded_attention_to_image`] for the built-in attention implementations, else through the configured
    one on keys and values projected block by block."""
    if attention.config._attn_implementation in FOLDABLE_ATTENTION_IMPLEMENTATIONS:
        return folded_attention_to_image(attention, query, image_tokens, image_pe, blocks, in_place)
    batch, tokens, _ = image_tokens.shape
    key = image_tokens.new_empty(batch, tokens, attention.internal_dim)
    value = image_tokens.new_empty(batch, tokens, attention.internal_dim)
    for first, end, start, stop in blocks:
        block = image_tokens[first:end, start:stop]
        linear_into(attention.k_proj, block + image_pe[:, start:stop], key[first:end, start:stop], in_place)
        linear_into(attention.v_proj, block, value[first:end, start:stop], in_place)
    return attention.attend(attention.q_proj(query), key, value)[0]


def folded_attention_to_image(
    attention: nn.Module, query: torch.Tensor, image_tokens: torch.Tensor, image_pe: torch.Tensor, blocks: list,
    in_place: bool,
) -> torch.Tensor:  # fmt: skip
    """`attention(query, image_tokens + image_pe, image_tokens)` for a few query tokens, without projecting the image
    tokens.

    A head's score of image token `x` is `q_h . (W_h x + b_h)`, i.e. `(q_h W_h) . x + q_h . b_h`: the key projection
    folds into the queries, one `(heads * queries, hidden)` matrix whose product with each block of image tokens
    gives every head's scores at once. Likewise the values: the probabilities sum to 1 over the image tokens, so
    `sum_x p(x) (V_h x + c_h) = V_h (sum_x p(x) x) + c_h`, and only the attended image tokens are projected.
    """
    batch, tokens, hidden = image_tokens.shape
    heads, dtype = attention.num_attention_heads, torch.promote_types(query.dtype, torch.float32)
    queries = (attention.q_proj(query).to(dtype) * attention.scaling).view(batch, query.shape[1], heads, -1)
    key_weight, key_bias = head_weights(attention.k_proj, heads, dtype)
    # Rows (head, query): the keys' projection as seen by each head's query, and that query's score offset.
    score_weight = torch.einsum("bnhd,hdc->bhnc", queries, key_weight).reshape(batch, -1, hidden).to(query.dtype)
    score_bias = torch.einsum("bnhd,hd->bhn", queries, key_bias).reshape(batch, -1, 1).to(query.dtype)
    scores = image_tokens.new_empty(batch, score_weight.shape[1], tokens)
    for first, end, start, stop in blocks:
        block = (image_tokens[first:end, start:stop] + image_pe[:, start:stop]).transpose(1, 2)
        if in_place:
            torch.baddbmm(score_bias[first:end], score_weight[first:end], block, out=scores[first:end, :, start:stop])
        else:
            scores[first:end, :, start:stop] = torch.baddbmm(score_bias[first:end], score_weight[first:end], block)
    probabilities = F.softmax(scores, dim=-1, dtype=torch.float32).to(image_tokens.dtype)
    attended = torch.bmm(probabilities, image_tokens).view(batch, heads, query.shape[1], hidden).to(dtype)
    value_weight, value_bias = head_weights(attention.v_proj, heads, dtype)
    values = torch.einsum("bhnc,hdc->bnhd", attended, value_weight) + value_bias
    return attention.out_proj(values.reshape(batch, query.shape[1], -1).to(query.dtype))


def attend_to_tokens_blockwise(
    attention: nn.Module,
    layer_norm: nn.LayerNorm,
    image_tokens: torch.Tensor,
    image_pe: torch.Tensor,
    class_keys: torch.Tensor,
    class_values: torch.Tensor,
    blocks: list,
    updated: torch.Tensor,
) -> None:
    """`updated = layer_norm(image_tokens + attention(image_tokens + image_pe, class_keys, class_values))` block by
    block: by [`folded_attention_to_tokens`] for the built-in attention implementations, else through the configured
    one on each block's projected queries."""
    if attention.config._attn_implementation in FOLDABLE_ATTENTION_IMPLEMENTATIONS:
        folded_attention_to_tokens(attention, layer_norm, image_tokens, image_pe, class_keys, class_values, blocks,
                                   updated)  # fmt: skip
        return
    keys, values = attention.k_proj(class_keys), attention.v_proj(class_values)
    for first, end, start, stop in blocks:
        block = image_tokens[first:end, start:stop]
        attended = attention.attend(attention.q_proj(block + image_pe[:, start:stop]), keys[first:end],
                                    values[first:end])[0]  # fmt: skip
        updated[first:end, start:stop] = layer_norm(block + attended)


def folded_attention_to_tokens(
    attention: nn.Module,
    layer_norm: nn.LayerNorm,
    image_tokens: torch.Tensor,
    image_pe: torch.Tensor,
    class_keys: torch.Tensor,
    class_values: torch.Tensor,
    blocks: list,
    updated: torch.Tensor,
) -> None:
    """`updated = layer_norm(image_tokens + attention(image_tokens + image_pe, class_keys, class_values))` block by
    block, without projecting the image tokens.

    As in [`folded_attention_to_image`], the query projection folds into the few class tokens' keys (every head's
    scores of a block in one product), and the output projection into their values: head `h`'s output is
    `O_h (sum_n p_n v_n) = sum_n p_n (O_h v_n)`, and the output bias is shared out over the heads' probabilities,
    which sum to 1, so the attended block plus its residual is one more product.
    """
    batch, labels, hidden = class_keys.shape
    heads, dtype = attention.num_attention_heads, torch.promote_types(image_tokens.dtype, torch.float32)
    keys = attention.k_proj(class_keys).to(dtype).view(batch, labels, heads, -1)
    values = attention.v_proj(class_values).to(dtype).view(batch, labels, heads, -1)
    query_weight, query_bias = head_weights(attention.q_proj, heads, dtype)
    # Columns (head, class token).
    score_weight = torch.einsum("hdc,bnhd->bchn", query_weight, keys) * attention.scaling
    score_bias = torch.einsum("hd,bnhd->bhn", query_bias, keys) * attention.scaling
    output_weight = attention.out_proj.weight.to(dtype).view(hidden, heads, -1)
    output_values = torch.einsum("bnhd,chd->bhnc", values, output_weight) + attention.out_proj.bias.to(dtype) / heads
    score_weight = score_weight.reshape(batch, hidden, -1).to(image_tokens.dtype)
    score_bias = score_bias.reshape(batch, 1, -1).to(image_tokens.dtype)
    output_values = output_values.reshape(batch, -1, hidden).to(image_tokens.dtype)
    for first, end, start, stop in blocks:
        block = image_tokens[first:end, start:stop]
        scores = torch.baddbmm(score_bias[first:end], block + image_pe[:, start:stop], score_weight[first:end])
        probabilities = F.softmax(scores.view(end - first, stop - start, heads, labels), dim=-1, dtype=torch.float32)
        probabilities = probabilities.to(block.dtype).view(end - first, stop - start, heads * labels)
        attended = torch.baddbmm(block, probabilities, output_values[first:end])
        updated[first:end, start:stop] = F.layer_norm(
            attended, (hidden,), layer_norm.weight, layer_norm.bias, layer_norm.eps
        )


def two_way_block_blockwise(
    layer: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
    blocks: list,
    keys_writable: bool,
    in_place: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A `SegFaceTwoWayAttentionBlock` whose per-image-token work runs block by block (`(first image, end image,
    first token, end token)` blocks); with `keys_writable` and `in_place` the updated image tokens are written
    over `keys`."""
    queries = layer.class_token_self_attention(queries, query_pe)
    attended = attend_to_image_blockwise(layer.cross_attn_token_to_image, queries + query_pe, keys, key_pe, blocks,
                                         in_place)  # fmt: skip
    queries = layer.layer_norm2(queries + attended)
    queries = layer.layer_norm3(queries + layer.mlp(queries))
    # Image-to-token attention is per image token: each block goes through it, the residual and the norm alone.
    updated = keys if keys_writable and in_place else torch.empty_like(keys)
    attend_to_tokens_blockwise(layer.cross_attn_image_to_token, layer.layer_norm4, keys, key_pe, queries + query_pe,
                               queries, blocks, updated)  # fmt: skip
    return queries, updated


def two_way_transformer_blockwise(
    transformer: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    class_tokens: torch.Tensor,
    blocks: list,
    in_place: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`SegFaceTwoWayTransformer` with the work on image tokens block by block (`blocks` cover every image token),
    which keeps it in cache on CPUs; the result is the same up to float rounding. The caller's tensors are left
    alone."""
    queries, keys = class_tokens, image_embeddings
    for index, layer in enumerate(transformer.layers):
        # The first layer must not overwrite the caller's tensor; later ones own the keys they update.
        queries, keys = two_way_block_blockwise(
            layer, queries, keys, class_tokens, image_pe, blocks, keys_writable=index > 0, in_place=in_place
        )
    attended = attend_to_image_blockwise(
        transformer.final_attn_token_to_image, queries + class_tokens, keys, image_pe, blocks, in_place
    )
    return transformer.layer_norm_final_attn(queries + attended), keys


def upscale_and_classify(
    decoder: nn.Module,
    image_tokens: torch.Tensor,
    mask_weights: torch.Tensor,
    height: int,
    width: int,
    blocks: list | None,
) -> torch.Tensor:
    """The decoder's two transposed convolutions and the class products on channels-last tokens.

    Each stride-2, kernel-2 transposed convolution is one matrix product per input pixel (every input pixel owns
    its own 2x2 output block), the channel layer norm between them is a plain layer norm over the last dimension,
    and the only layout changes are block-wise copies that interleave the 2x2 blocks into rows.
    """
    batch, _, hidden = image_tokens.shape
    conv1, conv2 = decoder.upscale_conv1, decoder.upscale_conv2
    # Transposed-conv weights are (in, out, dy, dx): as a matrix from `in` to the 2x2 block's (dy, dx, out).
    # The second one's columns are ordered (dx, dy, out) so that, for a fixed dy, the pixels of an output row
    # are evenly strided in memory and the class products read them without a copy.
    weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(hidden, 4 * conv1.out_channels)
    weight2 = conv2.weight.permute(0, 3, 2, 1).reshape(conv1.out_channels, 4 * conv2.out_channels)
    weights = (weight1, conv1.bias.repeat(4), weight2, conv2.bias.repeat(4))
    num_labels = mask_weights.shape[1]
    grid = image_tokens.view(batch, height, width, hidden)
    if blocks is None:
        logits = torch.stack(upscale_rows(decoder, grid, mask_weights, *weights), dim=3)
    else:
        # On the CPU, a few token rows at a time: the full-resolution intermediates of each block stay in cache.
        logits = image_tokens.new_empty(batch, num_labels, 2 * height, 2, 4 * width)
        for first, end, start, stop in blocks:
            rows = upscale_rows(decoder, grid[first:end, start:stop], mask_weights[first:end], *weights)
            for dy, row in enumerate(rows):
                logits[first:end, :, 2 * start : 2 * stop, dy].copy_(row)
    return logits.view(batch, num_labels, 4 * height, 4 * width)


def upscale_rows(
    decoder: nn.Module,
    grid: torch.Tensor,
    mask_weights: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor,
    weight2: torch.Tensor,
    bias2: torch.Tensor,
) -> list[torch.Tensor]:
    """Logits of a block of token rows `(batch, rows, width, hidden)`: for the even and the odd output rows of
    each 2x2 block of the second upscaling, `(batch, num_labels, 2 * rows, 4 * width)`."""
    batch, rows, width, hidden = grid.shape
    mid, out = weight1.shape[1] // 4, weight2.shape[1] // 4
    norm = decoder.upscale_layer_norm
    upscaled = torch.addmm(bias1, grid.reshape(-1, hidden), weight1).view(batch, rows, width, 2, 2, mid)
    upscaled = decoder.activation(F.layer_norm(upscaled, (mid,), norm.weight, norm.bias, norm.eps))
    # Interleave the blocks: (batch, y, dy, x, dx, mid) is the 2h x 2w map with channels last.
    upscaled = upscaled.permute(0, 1, 3, 2, 4, 5).reshape(-1, mid)
    pixels = decoder.activation(torch.addmm(bias2, upscaled, weight2)).view(batch, 2 * rows, 4 * width, 2, out)
    # A slice rather than an index: the same view here, and in exported programs a strided slice, which ExecuTorch's
    # XNNPACK delegate runs (an index becomes a `select_copy` on its single-threaded portable kernels).
    return [
        torch.bmm(mask_weights, pixels[:, :, :, dy : dy + 1].reshape(batch, 8 * rows * width, out).transpose(1, 2))
        .view(batch, -1, 2 * rows, 4 * width)
        for dy in range(2)
    ]
