# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""PyTorch SegFace: face parsing with class tokens in a two-way transformer over multi-scale backbone features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .fast_path_segface import segment as fast_path_segment
from .configuration_segface import SegFaceConfig
from .face_warp import face_alignment_matrix, face_unwarp_grid, face_warp_grid

# Backbones whose `transformers` *Backbone class adds a norm to every output: for these the raw stage outputs
# (what the original taps) are read from the base model's encoder instead.
_RAW_STAGE_MODEL_TYPES = ("swin", "convnext")


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

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether timm checkpoints the model's blocks (set by `gradient_checkpointing_enable`)."""
        return bool(getattr(self.model, "grad_checkpointing", False))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.model.set_grad_checkpointing(enable)

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
            # The base model's final norm follows the last stage; SegFace taps the stages before it, so the norm
            # never runs: frozen, so that training (Trainer, DDP) does not look for its gradients.
            self.model.layernorm.requires_grad_(False)
        else:
            self.model = AutoBackbone.from_config(backbone_config)
            self.channels = list(self.model.channels)
        if len(self.channels) != 4:
            raise ValueError(
                f"SegFace needs 4 backbone feature maps (strides 4, 8, 16, 32), the backbone config gives "
                f"{len(self.channels)}; set its out_features/out_indices to four stages."
            )

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The four feature maps `(batch, channels, height / stride, width / stride)` for strides 4, 8, 16, 32."""
        if self.model_type == "timm_backbone":
            return self.model(pixel_values)
        # Swin and ConvNeXt: the stage outputs (Swin's before patch merging), without the final norm or pooling of
        # the base model; the stages are called one by one, as their encoders do (whose output-capturing wrappers
        # strict torch.export cannot trace).
        if self.model_type == "swin":
            hidden_states, dimensions = self.model.embeddings(pixel_values)
            features = []
            for stage in self.model.encoder.layers:
                hidden_states, before_downsampling, _ = stage(
                    hidden_states, dimensions, output_hidden_states_before_downsampling=True
                )
                features.append(before_downsampling)
                if stage.downsample is not None:
                    dimensions = ((dimensions[0] + 1) // 2, (dimensions[1] + 1) // 2)
            return features
        if self.model_type == "convnext":
            hidden_states = self.model.embeddings(pixel_values)
            features = []
            for stage in self.model.encoder.stages:
                hidden_states = stage(hidden_states)
                features.append(hidden_states)
            return features
        return list(self.model(pixel_values).feature_maps)

class SegFacePositionalEmbedding(nn.Module):
    """Random-Fourier positional encoding of a feature grid (SAM's), from a stored Gaussian matrix."""

    def __init__(self, config: SegFaceConfig):
        super().__init__()
        self.register_buffer("positional_embedding", self.initial_matrix(config.hidden_size // 2))

    @staticmethod
    def initial_matrix(num_features: int) -> torch.Tensor:
        """The Gaussian frequencies `(2, num_features)` of a new model: N(0, 1) as in the original, drawn from a fixed
        seed so that every initialisation (including on the meta device, by `_init_weights`) gives the same."""
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, num_features, generator=generator, device="cpu")

    def encode(self, height: int, width: int) -> torch.Tensor:
        """The encoding as a contiguous float32 `(1, height, width, hidden_size)` tensor."""
        matrix = self.positional_embedding
        # Cell centres normalised to [0, 1], x first, mapped to [-1, 1] and projected on the random frequencies.
        ones = torch.ones((height, width), device=matrix.device, dtype=torch.float32)
        y = (ones.cumsum(dim=0) - 0.5) / height
        x = (ones.cumsum(dim=1) - 0.5) / width
        coords = 2 * torch.stack([x, y], dim=-1) - 1
        coords = 2 * math.pi * (coords @ matrix.float())
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).unsqueeze(0)

    def encode_separably(self, height: int, width: int) -> torch.Tensor:
        """[`~SegFacePositionalEmbedding.encode`] through the angle-sum identities: each angle is a column's part plus
        a row's part, so `sin(c + r) = sin c cos r + cos c sin r` and `cos(c + r) = cos c cos r - sin c sin r` build
        the encoding from `(width, F)` and `(height, F)` tables. Equal to `encode` up to float rounding (a few 1e-6).
        Exporters that fold computations on constants into stored tensors then store those small tables (or
        nothing) instead of the `height * width * F` angles."""
        matrix = self.positional_embedding.float()
        x = 2 * ((torch.arange(width, device=matrix.device, dtype=torch.float32) + 0.5) / width) - 1
        y = 2 * ((torch.arange(height, device=matrix.device, dtype=torch.float32) + 0.5) / height) - 1
        columns = 2 * math.pi * (x[:, None] * matrix[0])  # (width, F)
        rows = 2 * math.pi * (y[:, None] * matrix[1])  # (height, F)
        sin_c, cos_c = torch.sin(columns)[None], torch.cos(columns)[None]
        sin_r, cos_r = torch.sin(rows)[:, None], torch.cos(rows)[:, None]
        sine = sin_c * cos_r + cos_c * sin_r
        cosine = cos_c * cos_r - sin_c * sin_r
        return torch.cat([sine, cosine], dim=-1).unsqueeze(0)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Encoding of a `height` x `width` grid, `(1, hidden_size, height, width)` (a channels-last view)."""
        return self.encode(height, width).permute(0, 3, 1, 2)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: `(batch, heads, tokens, head_dim)` inputs; returns the output `(batch, tokens, heads,
    head_dim)` and the attention probabilities `(batch, heads, query tokens, key tokens)`.

    The products are batched matrix products over `batch * heads`, which is what `torch.matmul` runs for these
    shapes; written out, they stay `bmm` in exported graphs, where a 4-D `matmul` decomposes into broadcasting copies
    that ExecuTorch runs outside XNNPACK (docs/deploy.md)."""
    batch, heads, query_tokens, head_dim = query.shape
    key_tokens = key.shape[2]
    query = query.reshape(batch * heads, query_tokens, head_dim)
    key = key.reshape(batch * heads, key_tokens, head_dim)
    value = value.reshape(batch * heads, key_tokens, value.shape[-1])
    attn_weights = torch.bmm(query, key.transpose(1, 2)).view(batch, heads, query_tokens, key_tokens) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attended = torch.bmm(attn_weights.reshape(batch * heads, query_tokens, key_tokens), value)
    attn_output = attended.view(batch, heads, query_tokens, -1).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SegFaceAttention(nn.Module):
    """Multi-head attention with an optional projection to a downsampled width (SAM's two-way attention), through
    transformers' attention interface (`config._attn_implementation`: "sdpa" by default, "eager", ...)."""

    def __init__(self, config: SegFaceConfig, downsample_rate: int = 1):
        super().__init__()
        self.config = config
        self.is_causal = False
        self.hidden_size = config.hidden_size
        self.internal_dim = config.hidden_size // downsample_rate
        self.num_attention_heads = config.num_attention_heads
        self.scaling = (self.internal_dim // self.num_attention_heads) ** -0.5
        self.q_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.k_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.v_proj = nn.Linear(self.hidden_size, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, self.hidden_size)

    def _split_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        return hidden_states.reshape(batch, tokens, self.num_attention_heads, -1).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attended `(batch, query tokens, hidden_size)` and, with `output_attentions`, the probabilities."""
        return self.attend(self.q_proj(query), self.k_proj(key), self.v_proj(value), output_attentions)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of already projected `(batch, tokens, internal_dim)` queries, keys and values, followed by the
        output projection; the probabilities `(batch, heads, query tokens, key tokens)` with `output_attentions`
        (computed by the eager implementation, whichever is configured: the fused kernels do not expose them)."""
        interface = eager_attention_forward
        if not output_attentions and self.config._attn_implementation != "eager":
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attended, weights = interface(
            self, self._split_heads(query), self._split_heads(key), self._split_heads(value), None,
            scaling=self.scaling, dropout=0.0,
        )  # fmt: skip
        batch, tokens = attended.shape[:2]
        return self.out_proj(attended.reshape(batch, tokens, -1)), weights if output_attentions else None


class SegFaceMLPBlock(nn.Module):
    def __init__(self, config: SegFaceConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.lin2 = nn.Linear(config.mlp_dim, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(hidden_states)))


class SegFaceTwoWayAttentionBlock(GradientCheckpointingLayer):
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

    def class_token_self_attention(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        """The block's first step: self-attention of the class tokens, residual and norm."""
        if self.skip_first_layer_pe:
            # As in SAM: the first block's self-attention has no residual connection.
            queries = self.self_attn(queries, queries, queries)[0]
        else:
            query = queries + query_pe
            queries = queries + self.self_attn(query, query, queries)[0]
        return self.layer_norm1(queries)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Updated class tokens `(batch, labels, hidden)` and image tokens `(batch, tokens, hidden)`, and with
        `output_attentions` the token-to-image `(batch, heads, labels, tokens)` and image-to-token `(batch, heads,
        tokens, labels)` attention maps (else an empty tuple)."""
        queries = self.class_token_self_attention(queries, query_pe)
        keys_with_pe = keys + key_pe
        attended, token_to_image = self.cross_attn_token_to_image(
            queries + query_pe, keys_with_pe, keys, output_attentions
        )
        queries = self.layer_norm2(queries + attended)
        queries = self.layer_norm3(queries + self.mlp(queries))
        attended, image_to_token = self.cross_attn_image_to_token(
            keys_with_pe, queries + query_pe, queries, output_attentions
        )
        keys = self.layer_norm4(keys + attended)
        return queries, keys, (token_to_image, image_to_token) if output_attentions else ()


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
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """`image_embeddings` and `image_pe` are `(batch, tokens, hidden)`; the class tokens are their own PE.
        Returns the class tokens, the image tokens and, with `output_attentions`, every layer's token-to-image and
        image-to-token maps followed by the final token-to-image map."""
        queries, keys = class_tokens, image_embeddings
        attentions = ()
        for layer in self.layers:
            queries, keys, maps = layer(queries, keys, class_tokens, image_pe, output_attentions)
            attentions += maps
        attended, final = self.final_attn_token_to_image(
            queries + class_tokens, keys + image_pe, keys, output_attentions
        )
        attentions += (final,) if output_attentions else ()
        return self.layer_norm_final_attn(queries + attended), keys, attentions


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
    """Class tokens attend to the fused image features; each token's hypernetwork output weights the upscaled map."""

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

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits `(batch, num_labels, 4 * height, 4 * width)` from the fused NCHW map `(batch, hidden, height,
        width)` and its encoding `(1, hidden, height, width)`, and the transformer's attention maps."""
        batch, channels, height, width = image_embeddings.shape
        class_tokens = self.class_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
        image_tokens = image_embeddings.flatten(2).transpose(1, 2)
        pe_tokens = image_pe.flatten(2).transpose(1, 2).to(image_tokens.dtype)
        class_tokens, image_tokens, attentions = self.transformer(image_tokens, pe_tokens, class_tokens,
                                                                  output_attentions)  # fmt: skip

        image_map = image_tokens.transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(image_map)))
        upscaled = self.activation(self.upscale_conv2(upscaled))
        mask_weights = self.output_hypernetwork_mlp(class_tokens)
        _, out_channels, out_height, out_width = upscaled.shape
        logits = mask_weights @ upscaled.reshape(batch, out_channels, out_height * out_width)
        return logits.reshape(batch, -1, out_height, out_width), attentions


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


def smallest_swin_input(backbone_config) -> int:
    """The smallest input side (pixels) a Swin backbone takes: its last stage's grid (the side divided by the patch
    size, then halved with rounding up at each later stage) must hold a whole window. 1 for other backbones."""
    if getattr(backbone_config, "model_type", None) != "swin":
        return 1
    stride = backbone_config.patch_size * 2 ** (len(backbone_config.depths) - 1)
    return stride * (backbone_config.window_size - 1) + 1


class SegFacePreTrainedModel(PreTrainedModel):
    config_class = SegFaceConfig
    config: SegFaceConfig
    # The backbone is the part that a checkpoint of its own (e.g. ImageNet weights) can fill.
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["SegFaceTwoWayAttentionBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, SegFacePositionalEmbedding):
            init.copy_(module.positional_embedding, module.initial_matrix(module.positional_embedding.shape[1]))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # timm's BatchNormAct2d too
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
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

    By default the forward pass runs the fast path (`fast_path_segface.py`), which computes what the original
    computes in fewer operations: the per-scale projections and the fusion convolution are folded and applied before
    upsampling, the decoder works on channels-last tokens, the transposed convolutions are per-pixel matrix
    products, and convolutional backbones run on channels-last inputs. The results agree with the original up to
    float rounding. Set `model.fast_path = False` to run the modules' own `forward`s instead (the reference
    computation: the original's operations, in its order and layouts), e.g. to compare the two.
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

    def fuse_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The original's fusion: every scale projected to `hidden_size`, upsampled bilinearly to the stride-4 grid,
        concatenated (coarsest first) and mixed by a 1x1 convolution; an NCHW map."""
        target_size = features[0].shape[2:]
        projected = []
        for feature, projection in zip(features, self.feature_projections):
            batch, _, height, width = feature.shape
            feature = projection(feature.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(batch, -1, height, width)
            projected.append(F.interpolate(feature, size=target_size, mode="bilinear", align_corners=False))
        return self.feature_fusion(torch.cat(projected[::-1], dim=1))

    def segment(
        self, pixel_values: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """Logits at 4x the stride-4 grid, the four backbone feature maps and the decoder's attention maps;
        `self.fast_path` (the one switch) picks [`fast_path_segface.segment`] or the modules' own computation."""
        if self.fast_path:
            return fast_path_segment(self, pixel_values, output_attentions)
        features = self.backbone(pixel_values)
        fused = self.fuse_features(features)
        image_pe = self.positional_embedding(fused.shape[2], fused.shape[3])
        logits, attentions = self.mask_decoder(fused, image_pe, output_attentions)
        return logits, features, attentions

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
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
            output_hidden_states (`bool` or `list[int]`, *optional*):
                Whether to return the four backbone feature maps (strides 4, 8, 16, 32) as `hidden_states`; a list
                of indices returns only those (the others are None).
            output_attentions (`bool`, *optional*):
                Whether to return the two-way transformer's attention maps as `attentions`: for every layer the
                token-to-image map `(batch_size, num_heads, num_labels, tokens)` and the image-to-token map
                `(batch_size, num_heads, tokens, num_labels)`, then the final token-to-image map, where `tokens` is
                the stride-4 grid in row-major order. They are computed by the eager attention.
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
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must have shape (batch_size, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[2:]
        if height < 32 or width < 32:
            raise ValueError(f"SegFace needs inputs of at least 32x32 pixels, got {height}x{width}.")
        smallest = smallest_swin_input(self.config.backbone_config)
        if min(height, width) < smallest:
            # transformers' Swin would shrink its last stage's window to the grid, which its position-bias table
            # cannot follow, and keep the shrunk window for every later call.
            raise ValueError(
                f"this Swin backbone needs inputs of at least {smallest}x{smallest} pixels (its last stage's "
                f"{self.config.backbone_config.window_size}x{self.config.backbone_config.window_size} window), "
                f"got {height}x{width}."
            )

        if self.config.use_face_warp:
            logits, features, attentions = self._segment_with_face_warp(pixel_values, landmarks, output_attentions)
        else:
            logits, features, attentions = self.segment(pixel_values, output_attentions)
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

        hidden_states = None
        if isinstance(output_hidden_states, (list, tuple)):
            kept = {index % len(features) for index in output_hidden_states}
            hidden_states = tuple(f if i in kept else None for i, f in enumerate(features))
        elif output_hidden_states:
            hidden_states = tuple(features)
        attentions = attentions if output_attentions else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states, attentions) if v is not None)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)

    def _segment_with_face_warp(
        self, pixel_values: torch.Tensor, landmarks: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...]]:
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
        logits, features, attentions = self.segment(warped, output_attentions)
        unwarp = face_unwarp_grid(matrix, self.config.face_warp_factor, size, (height, width))
        logits = F.grid_sample(logits, unwarp.to(logits.dtype), mode="bilinear", align_corners=False)
        return logits, features, attentions


__all__ = ["SegFaceForSemanticSegmentation", "SegFacePreTrainedModel"]
