"""PyTorch SegFace: face parsing with class tokens in a two-way transformer over multi-scale backbone features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_segface import SegFaceConfig

# Backbones whose `transformers` *Backbone class adds a norm to every output: for these the raw stage outputs
# (what the original taps) are read from the base model's encoder instead.
_RAW_STAGE_MODEL_TYPES = ("swin", "convnext")
# Convolutional backbones, which the fast path feeds channels-last inputs.
_CHANNELS_LAST_MODEL_TYPES = ("timm_backbone", "convnext", "convnextv2", "resnet")


class SegFaceTimmBackbone(nn.Module):
    """A timm model tapped at `out_indices` of its `feature_info`, optionally plus its final (pre-pooling) features.

    Unlike `transformers.TimmBackbone`, this passes `model_args` to `timm.create_model` (the original's
    BatchNorm epsilon must be set at construction) and can tap the head convolution, which timm's `features_only`
    models drop (EfficientNetV2's fourth SegFace tap is `conv_head` + `bn2`).
    """

    def __init__(self, config):
        super().__init__()
        import timm

        self.out_indices = list(config.out_indices)
        self.final_features_as_last_tap = bool(getattr(config, "final_features_as_last_tap", False))
        model_args = dict(getattr(config, "model_args", None) or {})
        self.model = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, in_chans=config.num_channels, **model_args
        )
        feature_info = self.model.feature_info
        self.channels = [feature_info[i]["num_chs"] for i in self.out_indices]
        if self.final_features_as_last_tap:
            self.channels.append(self.model.num_features)
        else:
            # Drop the blocks and head that no tap needs, so they are neither stored nor run.
            self.model.prune_intermediate_layers(self.out_indices, prune_head=True)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        if self.final_features_as_last_tap:
            final, taps = self.model.forward_intermediates(pixel_values, indices=self.out_indices)
            return [*taps, final]
        return self.model.forward_intermediates(
            pixel_values, indices=self.out_indices, intermediates_only=True, stop_early=True
        )


class SegFaceBackbone(nn.Module):
    """Runs the configured backbone and returns its four feature maps (strides 4, 8, 16, 32, NCHW)."""

    def __init__(self, backbone_config):
        super().__init__()
        model_type = backbone_config.model_type
        self.model_type = model_type
        # Convolutional networks run faster on channels-last inputs (oneDNN/cuDNN pick NHWC kernels and the
        # channels-last layer norms of ConvNeXt need no copies); the transformers' patch embedding does not care.
        self.prefers_channels_last = model_type in _CHANNELS_LAST_MODEL_TYPES
        if model_type == "timm_backbone":
            self.model = SegFaceTimmBackbone(backbone_config)
            self.channels = self.model.channels
        elif model_type in _RAW_STAGE_MODEL_TYPES:
            from transformers import AutoModel

            kwargs = {"add_pooling_layer": False} if model_type == "swin" else {}
            self.model = AutoModel.from_config(backbone_config, **kwargs)
            if model_type == "swin":
                self.channels = [backbone_config.embed_dim * 2**i for i in range(len(backbone_config.depths))]
            else:
                self.channels = list(backbone_config.hidden_sizes)
        else:
            self.model = AutoBackbone.from_config(backbone_config)
            self.channels = list(self.model.channels)
        if len(self.channels) != 4:
            raise ValueError(
                f"SegFace needs 4 backbone feature maps (strides 4, 8, 16, 32), the backbone config gives "
                f"{len(self.channels)}; set its out_features/out_indices to four stages."
            )

    def forward(self, pixel_values: torch.Tensor, fast: bool = False) -> list[torch.Tensor]:
        """The four feature maps. With `fast` (in eval mode, outside `torch.compile`/export), Swin's window attention
        runs its projections on the image's own tokens only (see `_SwinWindows`); the maps may then be channels-last
        views rather than contiguous NCHW tensors."""
        if self.model_type == "timm_backbone":
            return self.model(pixel_values)
        if self.model_type == "swin":
            # The stage outputs before patch merging, without the final norm or pooling of SwinModel.forward.
            embeddings, dimensions = self.model.embeddings(pixel_values)
            if fast and not self.training and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
                return self._swin_stages(embeddings, dimensions)
            outputs = self.model.encoder(
                embeddings, dimensions, output_hidden_states=True, output_hidden_states_before_downsampling=True
            )
            return list(outputs.reshaped_hidden_states[1:])
        if self.model_type == "convnext":
            embeddings = self.model.embeddings(pixel_values)
            outputs = self.model.encoder(embeddings, output_hidden_states=True)
            return list(outputs.hidden_states[1:])
        return list(self.model(pixel_values).feature_maps)

    def _swin_stages(self, hidden_states: torch.Tensor, dimensions: tuple[int, int]) -> list[torch.Tensor]:
        """`SwinEncoder` in eval mode, each block through `_swin_block`; returns the pre-merging stage maps."""
        features = []
        for stage in self.model.encoder.layers:
            for block in stage.blocks:
                hidden_states = _swin_block(block, hidden_states, dimensions, self._swin_windows)
            batch, _, channels = hidden_states.shape
            features.append(hidden_states.view(batch, *dimensions, channels).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                hidden_states = stage.downsample(hidden_states, dimensions)
                dimensions = ((dimensions[0] + 1) // 2, (dimensions[1] + 1) // 2)
        return features

    @property
    def _swin_windows(self) -> dict:
        if not hasattr(self, "_swin_window_cache"):
            self._swin_window_cache = {}
        return self._swin_window_cache


def _swin_window_indices(
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


def _window_attention(
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


def _swin_block(block: nn.Module, hidden_states: torch.Tensor, dimensions: tuple[int, int], cache: dict):
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
        cache[key] = _swin_window_indices(height, width, window, shift, batch, heads, hidden_states.device)
    gather, inverse = cache[key]

    normed = block.layernorm_before(hidden_states).view(batch * tokens, channels)
    area = window * window
    windows = []
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        bias = projection.bias if projection.bias is not None else normed.new_zeros(channels)
        if torch.is_grad_enabled():
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
    attended = _window_attention(
        query, key_states, value, attention.relative_position_bias(), shift_mask, attention.scaling,
        batched_matmuls=hidden_states.device.type == "cpu",
    )  # fmt: skip
    attended = attended.view(-1, head_dim).index_select(0, inverse).view(batch * tokens, channels)
    hidden_states = hidden_states + attention.o_proj(attended).view(batch, tokens, channels)
    if torch.is_grad_enabled() or hidden_states.device.type != "cpu":
        return hidden_states + block.mlp(block.layernorm_after(hidden_states))
    # The MLP is per token: on the CPU, blocks of tokens keep its 4x-wide intermediate in cache.
    rows = hidden_states.view(batch * tokens, channels)
    step = _CPU_CHUNK_TOKENS if _CPU_CHUNK_TOKENS > 0 else batch * tokens
    for start in range(0, batch * tokens, step):
        block_rows = rows[start : start + step]
        block_rows.add_(block.mlp(block.layernorm_after(block_rows)))
    return hidden_states


# Work on full-resolution maps is split into blocks of about this many stride-4 tokens on the CPU, so that each
# block's intermediates stay in cache and reuse memory instead of faulting in fresh pages (0 turns blocks off).
_CPU_CHUNK_TOKENS = 1024


def _cpu_row_chunks(tensor: torch.Tensor, batch: int, height: int, width: int) -> list[tuple[int, ...]] | None:
    """Blocks `(first image, end image, first row, end row)` of about `_CPU_CHUNK_TOKENS` tokens for eager CPU work,
    or None to process everything at once (accelerators, and tracing for `torch.compile`/export, where one large
    operation serves better and the batch size may be symbolic)."""
    if _CPU_CHUNK_TOKENS <= 0 or tensor.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if batch * height * width <= _CPU_CHUNK_TOKENS:
        return None
    if height * width <= _CPU_CHUNK_TOKENS:  # whole images, several at a time
        images = _CPU_CHUNK_TOKENS // (height * width)
        return [(first, min(first + images, batch), 0, height) for first in range(0, batch, images)]
    rows = max(1, _CPU_CHUNK_TOKENS // width)
    return [
        (image, image + 1, first, min(first + rows, height))
        for image in range(batch)
        for first in range(0, height, rows)
    ]


def _fold_linear(
    outer: torch.Tensor, inner_weight: torch.Tensor, inner_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `x -> outer @ (inner_weight @ x + inner_bias)`, computed in at least float32 precision."""
    dtype = torch.promote_types(outer.dtype, torch.float32)
    weight = (outer.to(dtype) @ inner_weight.to(dtype)).to(outer.dtype)
    if inner_bias is None:
        return weight, torch.zeros(outer.shape[0], dtype=outer.dtype, device=outer.device)
    return weight, (outer.to(dtype) @ inner_bias.to(dtype)).to(outer.dtype)


class SegFacePositionalEmbedding(nn.Module):
    """Random-Fourier positional encoding of a feature grid (SAM's), from a stored Gaussian matrix.

    The encoding depends only on the grid size and the stored matrix, so it is computed once per size, dtype and
    matrix state and reused (except while tracing for `torch.compile`/export, where it becomes part of the graph).
    """

    def __init__(self, config: SegFaceConfig):
        super().__init__()
        self.register_buffer("positional_embedding", torch.randn(2, config.hidden_size // 2))
        self._cache: dict = {}

    def _channels_last(self, height: int, width: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The encoding as a contiguous `(1, height, width, hidden_size)` tensor."""
        matrix = self.positional_embedding
        dtype = dtype or torch.float32
        compiling = torch.compiler.is_compiling()
        key = (height, width, dtype, matrix.device, matrix.data_ptr(), matrix._version)
        if not compiling and key in self._cache:
            return self._cache[key]
        # Cell centres normalised to [0, 1], x first, mapped to [-1, 1] and projected on the random frequencies.
        ones = torch.ones((height, width), device=matrix.device, dtype=torch.float32)
        y = (ones.cumsum(dim=0) - 0.5) / height
        x = (ones.cumsum(dim=1) - 0.5) / width
        coords = 2 * torch.stack([x, y], dim=-1) - 1
        coords = 2 * math.pi * (coords @ matrix.float())
        encoding = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).unsqueeze(0).to(dtype)
        if not compiling:
            self._cache = {key: encoding}
        return encoding

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Encoding of a `height` x `width` grid, `(1, hidden_size, height, width)` (a channels-last view)."""
        return self._channels_last(height, width).permute(0, 3, 1, 2)

    def tokens(self, height: int, width: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Encoding of a `height` x `width` grid as row-major tokens, `(1, height * width, hidden_size)`."""
        encoding = self._channels_last(height, width, dtype)
        return encoding.view(1, height * width, encoding.shape[-1])


def _linear_into(layer: nn.Linear, inputs: torch.Tensor, out: torch.Tensor) -> None:
    """`out[...] = layer(inputs)`, written in place by the matrix product when autograd allows it."""
    if torch.is_grad_enabled() or not out.is_contiguous() or layer.bias is None:
        out.copy_(layer(inputs))
        return
    torch.addmm(layer.bias, inputs.reshape(-1, inputs.shape[-1]), layer.weight.t(), out=out.view(-1, out.shape[-1]))


class SegFaceAttention(nn.Module):
    """Multi-head attention with an optional projection to a downsampled width (SAM's two-way attention)."""

    def __init__(self, config: SegFaceConfig, downsample_rate: int = 1):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.internal_dim = config.hidden_size // downsample_rate
        self.num_attention_heads = config.num_attention_heads
        self.q_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.k_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.v_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, self.hidden_size)

    def _split_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        return hidden_states.reshape(batch, tokens, self.num_attention_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(query), self.k_proj(key), self.v_proj(value))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attention of already projected `(batch, tokens, internal_dim)` queries, keys and values."""
        attended = F.scaled_dot_product_attention(
            self._split_heads(query), self._split_heads(key), self._split_heads(value)
        )
        batch, heads, tokens, head_dim = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def attend_to_image(
        self, query: torch.Tensor, image_tokens: torch.Tensor, image_pe: torch.Tensor, chunks: list | None
    ) -> torch.Tensor:
        """`forward(query, image_tokens + image_pe, image_tokens)`, projecting the image tokens block by block."""
        if chunks is None:
            return self(query, image_tokens + image_pe, image_tokens)
        batch, tokens, _ = image_tokens.shape
        key = image_tokens.new_empty(batch, tokens, self.internal_dim)
        value = image_tokens.new_empty(batch, tokens, self.internal_dim)
        for first, end, start, stop in chunks:
            block = image_tokens[first:end, start:stop]
            _linear_into(self.k_proj, block + image_pe[:, start:stop], key[first:end, start:stop])
            _linear_into(self.v_proj, block, value[first:end, start:stop])
        return self.attend(self.q_proj(query), key, value)

    def image_queries(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, token_keys: torch.Tensor, token_values: torch.Tensor
    ) -> torch.Tensor:
        """`forward(image_tokens + image_pe, token_keys, token_values)` with the tokens' projections hoisted out, so
        that the image tokens can be processed block by block without recomputing them."""
        return self.attend(self.q_proj(image_tokens + image_pe), token_keys, token_values)


class SegFaceMLPBlock(nn.Module):
    def __init__(self, config: SegFaceConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.lin2 = nn.Linear(config.mlp_dim, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(hidden_states)))


class SegFaceTwoWayAttentionBlock(nn.Module):
    """Self-attention of the class tokens, then token-to-image attention, an MLP, and image-to-token attention."""

    def __init__(self, config: SegFaceConfig, skip_first_layer_pe: bool = False):
        super().__init__()
        rate = config.attention_downsample_rate
        self.self_attn = SegFaceAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn_token_to_image = SegFaceAttention(config, downsample_rate=rate)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SegFaceMLPBlock(config)
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm4 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn_image_to_token = SegFaceAttention(config, downsample_rate=rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        chunks: list | None = None,
        keys_writable: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`chunks` (`(first image, end image, first token, end token)` blocks) makes the per-image-token work run
        block by block;
        with `keys_writable` (and autograd off) the updated image tokens are written over `keys`."""
        if self.skip_first_layer_pe:
            # As in SAM: the first block's self-attention has no residual connection.
            queries = self.self_attn(queries, queries, queries)
        else:
            query = queries + query_pe
            queries = queries + self.self_attn(query, query, queries)
        queries = self.layer_norm1(queries)

        if chunks is None:
            keys_with_pe = keys + key_pe
            attended = self.cross_attn_token_to_image(queries + query_pe, keys_with_pe, keys)
        else:
            attended = self.cross_attn_token_to_image.attend_to_image(queries + query_pe, keys, key_pe, chunks)
        queries = self.layer_norm2(queries + attended)
        queries = self.layer_norm3(queries + self.mlp(queries))
        if chunks is None:
            keys = self.layer_norm4(keys + self.cross_attn_image_to_token(keys_with_pe, queries + query_pe, queries))
            return queries, keys

        # Image-to-token attention is per image token: each block goes through it, the residual and the norm alone.
        attention = self.cross_attn_image_to_token
        token_keys, token_values = attention.k_proj(queries + query_pe), attention.v_proj(queries)
        updated = keys if keys_writable and not torch.is_grad_enabled() else torch.empty_like(keys)
        for first, end, start, stop in chunks:
            block = keys[first:end, start:stop]
            attended = attention.image_queries(
                block, key_pe[:, start:stop], token_keys[first:end], token_values[first:end]
            )
            updated[first:end, start:stop] = self.layer_norm4(block + attended)
        return queries, updated


class SegFaceTwoWayTransformer(nn.Module):
    def __init__(self, config: SegFaceConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            SegFaceTwoWayAttentionBlock(config, skip_first_layer_pe=i == 0) for i in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = SegFaceAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        class_tokens: torch.Tensor,
        chunks: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`image_embeddings` and `image_pe` are `(batch, tokens, hidden)`; the class tokens are their own PE.

        With `chunks` (`(first image, end image, first token, end token)` blocks covering every image token), the work on image
        tokens runs block by block, which keeps it in cache on CPUs; the result is the same up to float rounding.
        """
        queries, keys = class_tokens, image_embeddings
        for index, layer in enumerate(self.layers):
            # The first layer must not overwrite the caller's tensor; later ones own the keys they update.
            queries, keys = layer(
                queries, keys, query_pe=class_tokens, key_pe=image_pe, chunks=chunks, keys_writable=index > 0
            )
        attended = self.final_attn_token_to_image.attend_to_image(queries + class_tokens, keys, image_pe, chunks)
        return self.layer_norm_final_attn(queries + attended), keys


class SegFaceLayerNorm2d(nn.Module):
    """Layer norm over the channels of an NCHW map."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mean = hidden_states.mean(1, keepdim=True)
        variance = (hidden_states - mean).pow(2).mean(1, keepdim=True)
        hidden_states = (hidden_states - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * hidden_states + self.bias[:, None, None]


class SegFaceFeedForward(nn.Module):
    """The hypernetwork MLP, shared by all class tokens: maps a token to the weights of its mask."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.proj_in = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 2))
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.relu(self.proj_in(hidden_states))
        for layer in self.layers:
            hidden_states = F.relu(layer(hidden_states))
        return self.proj_out(hidden_states)


class SegFaceMaskDecoder(nn.Module):
    """Class tokens attend to the fused image features; each token's hypernetwork output weights the upscaled map.

    `forward` works on channels-last tokens throughout: each stride-2, kernel-2 transposed convolution is one matrix
    product per input pixel (every input pixel owns its own 2x2 output block), the channel layer norm between them
    is a plain layer norm over the last dimension, and the only layout changes are two block-wise copies that
    interleave the 2x2 blocks into rows. `forward_reference` is the original's NCHW computation, kept to check
    that both agree.
    """

    def __init__(self, config: SegFaceConfig):
        super().__init__()
        hidden, (mid, out) = config.hidden_size, config.upscale_channels
        self.class_embeddings = nn.Embedding(config.num_labels, hidden)
        self.transformer = SegFaceTwoWayTransformer(config)
        self.upscale_conv1 = nn.ConvTranspose2d(hidden, mid, kernel_size=2, stride=2)
        self.upscale_layer_norm = SegFaceLayerNorm2d(mid, eps=config.upscale_layer_norm_eps)
        self.upscale_conv2 = nn.ConvTranspose2d(mid, out, kernel_size=2, stride=2)
        self.activation = nn.GELU()
        self.output_hypernetwork_mlp = SegFaceFeedForward(hidden, hidden, out, config.hypernetwork_num_layers)

    def forward(self, image_tokens: torch.Tensor, image_pe: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Logits `(batch, num_labels, 4 * height, 4 * width)` from row-major image tokens `(batch, height * width,
        hidden)` and their positional encoding `(1, height * width, hidden)`."""
        batch = image_tokens.shape[0]
        class_tokens = self.class_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
        row_chunks = _cpu_row_chunks(image_tokens, batch, height, width)
        token_chunks = None if row_chunks is None else [(i, j, a * width, b * width) for i, j, a, b in row_chunks]
        class_tokens, image_tokens = self.transformer(image_tokens, image_pe, class_tokens, chunks=token_chunks)
        mask_weights = self.output_hypernetwork_mlp(class_tokens)
        return self._upscale_and_classify(image_tokens, mask_weights, height, width, row_chunks)

    def _upscale_and_classify(
        self, image_tokens: torch.Tensor, mask_weights: torch.Tensor, height: int, width: int, chunks: list | None
    ) -> torch.Tensor:
        batch, _, hidden = image_tokens.shape
        conv1, conv2 = self.upscale_conv1, self.upscale_conv2
        # Transposed-conv weights are (in, out, dy, dx): as a matrix from `in` to the 2x2 block's (dy, dx, out).
        # The second one's columns are ordered (dx, dy, out) so that, for a fixed dy, the pixels of an output row
        # are evenly strided in memory and the class products read them without a copy.
        weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(hidden, 4 * conv1.out_channels)
        weight2 = conv2.weight.permute(0, 3, 2, 1).reshape(conv1.out_channels, 4 * conv2.out_channels)
        bias1, bias2 = conv1.bias.repeat(4), conv2.bias.repeat(4)
        num_labels = mask_weights.shape[1]
        grid = image_tokens.view(batch, height, width, hidden)
        if chunks is None:
            rows = self._upscale_rows(grid, mask_weights, weight1, bias1, weight2, bias2)
            logits = torch.stack(rows, dim=3)
        else:
            # On the CPU, a few token rows at a time: the full-resolution intermediates of each block stay in cache.
            logits = image_tokens.new_empty(batch, num_labels, 2 * height, 2, 4 * width)
            for first, end, start, stop in chunks:
                rows = self._upscale_rows(
                    grid[first:end, start:stop], mask_weights[first:end], weight1, bias1, weight2, bias2
                )
                for dy, row in enumerate(rows):
                    logits[first:end, :, 2 * start : 2 * stop, dy].copy_(row)
        return logits.view(batch, num_labels, 4 * height, 4 * width)

    def _upscale_rows(
        self,
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
        norm = self.upscale_layer_norm
        upscaled = torch.addmm(bias1, grid.reshape(-1, hidden), weight1).view(batch, rows, width, 2, 2, mid)
        upscaled = self.activation(F.layer_norm(upscaled, (mid,), norm.weight, norm.bias, norm.eps))
        # Interleave the blocks: (batch, y, dy, x, dx, mid) is the 2h x 2w map with channels last.
        upscaled = upscaled.permute(0, 1, 3, 2, 4, 5).reshape(-1, mid)
        pixels = self.activation(torch.addmm(bias2, upscaled, weight2)).view(batch, 2 * rows, 4 * width, 2, out)
        return [
            torch.bmm(mask_weights, pixels[:, :, :, dy].reshape(batch, 8 * rows * width, out).transpose(1, 2)).view(
                batch, -1, 2 * rows, 4 * width
            )
            for dy in range(2)
        ]

    def forward_reference(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """The original's computation: `image_embeddings` and `image_pe` are NCHW maps; returns the logits."""
        batch, channels, height, width = image_embeddings.shape
        class_tokens = self.class_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
        image_tokens = image_embeddings.flatten(2).transpose(1, 2)
        pe_tokens = image_pe.flatten(2).transpose(1, 2).to(image_tokens.dtype)
        class_tokens, image_tokens = self.transformer(image_tokens, pe_tokens, class_tokens)

        image_map = image_tokens.transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(image_map)))
        upscaled = self.activation(self.upscale_conv2(upscaled))
        mask_weights = self.output_hypernetwork_mlp(class_tokens)
        _, out_channels, out_height, out_width = upscaled.shape
        logits = mask_weights @ upscaled.reshape(batch, out_channels, out_height * out_width)
        return logits.reshape(batch, -1, out_height, out_width)


# The 5-point face template of FaRL/facer (eyes, nose tip, mouth corners, image-left first) on a 512 canvas.
_FACE_TEMPLATE_512 = (196.0, 226.0, 316.0, 226.0, 256.0, 286.0, 220.0, 360.4, 292.0, 360.4)


def face_alignment_matrix(landmarks: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """Least-squares similarity transform `(batch, 3, 3)` from 5 landmarks `(batch, 5, 2)` to the face template
    placed in a `target_size` (height, width) frame."""
    template = torch.tensor(_FACE_TEMPLATE_512, dtype=torch.float32) / 256.0 - 1.0
    template = template.reshape(5, 2).to(landmarks)
    height, width = target_size
    target = (template * 1.0 + 1) * torch.tensor([width - 1, height - 1]).to(landmarks) / 2.0
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


def _pixel_coordinates(batch: int, height: int, width: int, device) -> torch.Tensor:
    """Integer pixel coordinates `(batch, height * width, 2)` as (x, y), row-major."""
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    grid = torch.stack([xx, yy], dim=-1).to(device)
    return grid.reshape(1, height * width, 2).broadcast_to(batch, height * width, 2)


def _apply_homography(coords: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    homogeneous = torch.cat([coords, torch.ones_like(coords[:, :, [0]])], dim=-1)
    homogeneous = torch.bmm(homogeneous, matrix.transpose(2, 1))
    return homogeneous[:, :, :2] / homogeneous[:, :, [2, 2]]


def _inverse_3x3(matrix: torch.Tensor) -> torch.Tensor:
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
    """`grid_sample` grid `(batch, *warped_size, 2)` that tanh-warps an `input_size` image onto the aligned face.

    The arithmetic, including its index/size normalisation with `align_corners=False`, follows the original
    (FaRL's) implementation operation by operation, so that warped images agree bit for bit.
    """
    warped_h, warped_w = warped_size
    size = torch.tensor([[warped_w, warped_h]]).to(matrix)
    coords = _pixel_coordinates(matrix.size(0), warped_h, warped_w, matrix.device)
    if warp_factor > 0:
        coords = coords / size * 2 - 1
        upper = torch.clamp((coords - 1.0 + warp_factor) / warp_factor, -1 + 1e-3, 1 - 1e-3).arctanh()
        lower = torch.clamp((coords + 1.0 - warp_factor) / warp_factor, -1 + 1e-3, 1 - 1e-3).arctanh()
        upper = upper * warp_factor + 1.0 - warp_factor
        lower = lower * warp_factor - 1.0 + warp_factor
        coords = torch.where(coords > 1.0 - warp_factor, upper, torch.where(coords < -1.0 + warp_factor, lower, coords))
        coords = (coords + 1) / 2 * size
    coords = _apply_homography(coords, _inverse_3x3(matrix))
    input_h, input_w = input_size
    input_scale = torch.tensor([input_w, input_h]).to(matrix).reshape(1, 1, 1, 2)
    return coords.reshape(matrix.size(0), warped_h, warped_w, 2) / input_scale * 2 - 1


def face_unwarp_grid(
    matrix: torch.Tensor, warp_factor: float, warped_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """`grid_sample` grid `(batch, *input_size, 2)` that maps the aligned, warped frame back to the input frame."""
    warped_h, warped_w = warped_size
    input_h, input_w = input_size
    size = torch.tensor([[warped_w, warped_h]]).to(matrix)
    coords = _apply_homography(_pixel_coordinates(matrix.size(0), input_h, input_w, matrix.device), matrix)
    if warp_factor > 0:
        coords = coords / size * 2 - 1
        upper = torch.tanh((coords - 1.0 + warp_factor) / warp_factor) * warp_factor + 1.0 - warp_factor
        lower = torch.tanh((coords + 1.0 - warp_factor) / warp_factor) * warp_factor - 1.0 + warp_factor
        coords = torch.where(coords > 1.0 - warp_factor, upper, torch.where(coords < -1.0 + warp_factor, lower, coords))
        coords = (coords + 1) / 2 * size
    warped_scale = torch.tensor([warped_w, warped_h]).to(matrix).reshape(1, 1, 1, 2)
    return coords.reshape(matrix.size(0), input_h, input_w, 2) / warped_scale * 2 - 1


def segface_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
    ignore_index: int = 255,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """The original's training loss: `ce_weight` x cross-entropy + `dice_weight` x soft Dice.

    Dice is computed per class over the whole batch on the softmax probabilities, background included, and averaged
    over all classes; pixels labelled `ignore_index` are left out of both terms.
    """
    num_labels = logits.shape[1]
    labels = labels.long()
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= num_labels)).logical_and(valid).any()):
        found = sorted(torch.unique(labels[valid]).tolist())
        raise ValueError(
            f"labels hold values {found} outside the model's {num_labels} classes (0..{num_labels - 1}) "
            f"and the ignore value {ignore_index}; check the label set."
        )
    logits = logits.float()
    cross_entropy = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    probabilities = logits.softmax(dim=1)
    one_hot = F.one_hot(labels.where(valid, 0), num_labels).permute(0, 3, 1, 2).float()
    if not bool(valid.all()):
        mask = valid.unsqueeze(1).float()
        probabilities = probabilities * mask
        one_hot = one_hot * mask
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    target_sum = (one_hot * one_hot).sum(dim=(0, 2, 3))
    prediction_sum = (probabilities * probabilities).sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (prediction_sum + target_sum + smooth)
    dice_loss = (1 - dice).mean()
    return ce_weight * cross_entropy + dice_weight * dice_loss


class SegFacePreTrainedModel(PreTrainedModel):
    config_class = SegFaceConfig
    config: SegFaceConfig
    base_model_prefix = "segface"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, SegFacePositionalEmbedding):
            init.normal_(module.positional_embedding, std=1.0)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # The class tokens, drawn from N(0, 1) as in the original: tokens drawn with a small std start out
            # nearly identical, so every class starts with the same mask and training from scratch stalls.
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, (nn.LayerNorm, SegFaceLayerNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class SegFaceForSemanticSegmentation(SegFacePreTrainedModel):
    """SegFace: a backbone, per-scale projections fused at stride 4, and a class-token two-way transformer decoder.

    With `config.use_face_warp` (the LaPa head) every image is first aligned from its 5 `landmarks` with a tanh
    warp to `config.image_size`, and the logits are warped back to the input frame.

    The forward pass computes what the original computes in fewer operations: the per-scale projections and the
    fusion convolution are folded and applied before upsampling, the decoder works on channels-last tokens, the
    transposed convolutions are per-pixel matrix products, and convolutional backbones run on channels-last
    inputs. The results agree with the original up to float rounding. Set `model.fast_path = False` to run the
    reference computation (the original's operations, in its order and layouts) instead, e.g. to compare the two.
    """

    def __init__(self, config: SegFaceConfig):
        super().__init__(config)
        self.backbone = SegFaceBackbone(config.backbone_config)
        self.feature_projections = nn.ModuleList(nn.Linear(c, config.hidden_size) for c in self.backbone.channels)
        self.feature_fusion = nn.Conv2d(
            config.hidden_size * len(self.backbone.channels), config.hidden_size, kernel_size=1, bias=False
        )
        self.positional_embedding = SegFacePositionalEmbedding(config)
        self.mask_decoder = SegFaceMaskDecoder(config)
        self.fast_path = True
        self.post_init()

    def _fuse_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Fused stride-4 features as row-major tokens `(batch, height * width, hidden_size)`.

        The original projects every scale to `hidden_size`, upsamples it bilinearly to the stride-4 grid,
        concatenates (coarsest first) and applies a 1x1 convolution. All three steps are linear per pixel and
        bilinear weights sum to 1, so they commute: each scale's projection and its block of the fusion
        convolution are folded into one matrix (computed from the parameters on every call, so training updates
        the original weights) and applied at the scale's own resolution; only the `hidden_size`-channel results
        are upsampled and summed. Equal to the original up to float rounding.
        """
        batch = features[0].shape[0]
        height, width = features[0].shape[2:]
        hidden = self.config.hidden_size
        num_scales = len(features)
        fusion = self.feature_fusion.weight.reshape(hidden, num_scales * hidden)
        folded = []
        for index, (feature, projection) in enumerate(zip(features, self.feature_projections)):
            # The concatenation runs from the coarsest scale to the finest: the fusion weights depend on that order.
            block = fusion[:, (num_scales - 1 - index) * hidden : (num_scales - index) * hidden]
            weight, bias = _fold_linear(block, projection.weight, projection.bias)
            # Pixels as rows: a view for both NCHW and channels-last maps of a single image.
            pixels = feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])
            folded.append((pixels, weight, bias))
        # The finest scale is already on the stride-4 grid; the others are projected there at their own resolution
        # and upsampled. All biases go into the finest scale's product.
        pixels, weight, _ = folded[0]
        bias = sum(b for _, _, b in folded)
        coarse = [
            torch.mm(p, w.t()).view(batch, *f.shape[2:], hidden) for (p, w, _), f in zip(folded[1:], features[1:])
        ]
        chunks = _cpu_row_chunks(pixels, batch, height, width)
        if chunks is not None and all(height % c.shape[1] == 0 and width % c.shape[2] == 0 for c in coarse):
            return self._fuse_blockwise(pixels, weight, bias, coarse, batch, height, width, chunks)
        fused = torch.addmm(bias, pixels, weight.t()).view(batch, height, width, hidden)
        for projected in coarse:
            if projected.shape[1:3] != (height, width):
                projected = F.interpolate(
                    projected.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            fused = fused.add_(projected)
        return fused.reshape(batch, height * width, hidden)

    @staticmethod
    def _fuse_blockwise(pixels, weight, bias, coarse, batch, height, width, chunks) -> torch.Tensor:
        """`_fuse_features` a block of rows at a time, for coarse maps whose sizes divide the grid's.

        Each block upsamples only the coarse rows it needs, from the row above its first one, so that every output
        row is interpolated from the same two coarse rows with the same weights as in the whole-map upsampling
        (with an integer scale factor, row `r` upsampled from coarse rows `low:` is row `r + low * factor` of the
        whole map); the rows outside the block are cropped.
        """
        hidden = weight.shape[0]
        pixels = pixels.view(batch, height, width, -1)
        fused = pixels.new_empty(batch, height, width, hidden)
        for first, end, start, stop in chunks:
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

    def _fuse_features_reference(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The original's fusion (project, upsample, concatenate, 1x1 convolution), as an NCHW map."""
        target_size = features[0].shape[2:]
        projected = []
        for feature, projection in zip(features, self.feature_projections):
            batch, _, height, width = feature.shape
            feature = projection(feature.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(batch, -1, height, width)
            projected.append(F.interpolate(feature, size=target_size, mode="bilinear", align_corners=False))
        return self.feature_fusion(torch.cat(projected[::-1], dim=1))

    def _segment(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.fast_path:
            features = self.backbone(pixel_values)
            fused = self._fuse_features_reference(features)
            image_pe = self.positional_embedding(fused.shape[2], fused.shape[3])
            return self.mask_decoder.forward_reference(fused, image_pe), features
        if self.backbone.prefers_channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        features = self.backbone(pixel_values, fast=True)
        height, width = features[0].shape[2:]
        image_tokens = self._fuse_features(features)
        image_pe = self.positional_embedding.tokens(height, width, image_tokens.dtype)
        return self.mask_decoder(image_tokens, image_pe, height, width), features

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | SemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalised images, as produced by [`SegFaceImageProcessor`].
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Ground-truth label maps; pixels equal to `config.loss_ignore_index` are ignored by the loss.
            landmarks (`torch.FloatTensor` of shape `(batch_size, 5, 2)`, *optional*):
                Five (x, y) face landmarks per image in the pixel frame of `pixel_values`: image-left eye,
                image-right eye, nose tip, image-left and image-right mouth corners. Required when
                `config.use_face_warp` is set (the LaPa models), ignored otherwise.
            output_hidden_states (`bool`, *optional*):
                Whether to return the four backbone feature maps as `hidden_states`.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.SemanticSegmenterOutput`] or a tuple.

        Returns:
            [`~transformers.modeling_outputs.SemanticSegmenterOutput`] with `logits` of shape
            `(batch_size, num_labels, height, width)` at the input resolution, and `loss` when `labels` are given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must have shape (batch_size, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[2:]
        if height < 32 or width < 32:
            raise ValueError(f"SegFace needs inputs of at least 32x32 pixels, got {height}x{width}.")

        if self.config.use_face_warp:
            logits, features = self._segment_with_face_warp(pixel_values, landmarks)
        else:
            logits, features = self._segment(pixel_values)
        if logits.shape[2:] != (height, width):
            # Inputs whose sides are not multiples of 4: the decoder works at 4x the stride-4 grid.
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

        loss = None
        if labels is not None:
            if labels.shape[-2:] != logits.shape[-2:] or labels.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} do not match the logits' (batch, height, width) = "
                    f"{(logits.shape[0], *logits.shape[2:])}."
                )
            loss = segface_loss(
                logits,
                labels,
                ce_weight=self.config.ce_loss_weight,
                dice_weight=self.config.dice_loss_weight,
                ignore_index=self.config.loss_ignore_index,
            )

        hidden_states = tuple(features) if output_hidden_states else None
        if not return_dict:
            output = (logits,) + ((hidden_states,) if output_hidden_states else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def _segment_with_face_warp(
        self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _, height, width = pixel_values.shape
        if landmarks is None:
            raise ValueError(
                "This SegFace model aligns faces from 5 landmarks (config.use_face_warp=True, the LaPa head): pass "
                "`landmarks` of shape (batch_size, 5, 2) in the pixel frame of `pixel_values`, e.g. from the image "
                "processor's `landmarks=` argument or segface_hf's face detector."
            )
        if landmarks.shape != (batch, 5, 2):
            raise ValueError(f"landmarks must have shape ({batch}, 5, 2), got {tuple(landmarks.shape)}.")
        size = (self.config.image_size, self.config.image_size)
        matrix = face_alignment_matrix(landmarks.to(pixel_values.device, torch.float32), size)
        warp = face_warp_grid(matrix, self.config.face_warp_factor, size, (height, width))
        warped = F.grid_sample(pixel_values, warp.to(pixel_values.dtype), mode="bilinear", align_corners=False)
        logits, features = self._segment(warped)
        unwarp = face_unwarp_grid(matrix, self.config.face_warp_factor, size, (height, width))
        logits = F.grid_sample(logits, unwarp.to(logits.dtype), mode="bilinear", align_corners=False)
        return logits, features


__all__ = ["SegFaceForSemanticSegmentation", "SegFacePreTrainedModel"]
