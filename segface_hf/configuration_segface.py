# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""SegFace model configuration, label sets and the presets of the official SegFace variants."""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Label sets in the index order of the original heads. Names say what the class is: the original CelebAMask-HQ
# head calls token 4 "rightear" although it learns label 4 = `l_ear` (the person's left ear); we name by the label.
CELEBAMASK_HQ_LABELS = (
    "background", "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye",
    "nose", "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
)  # fmt: skip
LAPA_LABELS = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "mouth", "l_lip", "hair",
)  # fmt: skip
HELEN_LABELS = LAPA_LABELS

LABEL_SETS = {"celebamask-hq": CELEBAMASK_HQ_LABELS, "lapa": LAPA_LABELS, "helen": HELEN_LABELS}

# The backbones of the original code, as (library, settings) that reproduce torchvision's four stage outputs.
# Swin, Swin-V2, ConvNeXt and ResNet come from `transformers`; MobileNetV3 and EfficientNetV2 from timm, with
# torchvision's BatchNorm epsilon (1e-3). See docs/porting.md for the measurements behind each choice.
BACKBONE_PRESETS = {
    "swin_base": {
        "model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
        "window_size": 7, "drop_path_rate": 0.5,
    },
    "swinv2_base": {
        "model_type": "swinv2", "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
        "window_size": 8, "pretrained_window_sizes": [0, 0, 0, 0], "drop_path_rate": 0.5,
    },
    "swinv2_small": {
        "model_type": "swinv2", "embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24],
        "window_size": 8, "pretrained_window_sizes": [0, 0, 0, 0], "drop_path_rate": 0.3,
    },
    "swinv2_tiny": {
        "model_type": "swinv2", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
        "window_size": 8, "pretrained_window_sizes": [0, 0, 0, 0], "drop_path_rate": 0.2,
    },
    "convnext_base": {
        "model_type": "convnext", "hidden_sizes": [128, 256, 512, 1024], "depths": [3, 3, 27, 3],
        "drop_path_rate": 0.5,
    },
    "convnext_small": {
        "model_type": "convnext", "hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 27, 3],
        "drop_path_rate": 0.4,
    },
    "resnet101": {
        "model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 23, 3],
        "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64, "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False, "hidden_act": "relu",
    },
    "mobilenet_v3_large": {
        "model_type": "timm_backbone", "backbone": "mobilenetv3_large_100", "out_indices": [1, 2, 3, 4],
        "model_args": {"bn_eps": 1e-3, "bn_momentum": 0.01}, "final_features_as_last_tap": False,
    },
    "efficientnet_v2_m": {
        "model_type": "timm_backbone", "backbone": "efficientnetv2_m", "out_indices": [1, 2, 3],
        "model_args": {"bn_eps": 1e-3, "drop_path_rate": 0.2}, "final_features_as_last_tap": True,
    },
}

# The original `--model` names and the names the official checkpoint folders use, mapped to our presets.
BACKBONE_ALIASES = {
    "swin_base": "swin_base", "swinb": "swin_base",
    "swinv2_base": "swinv2_base", "swinv2b": "swinv2_base",
    "swinv2_small": "swinv2_small", "swinv2_tiny": "swinv2_tiny",
    "convnext_base": "convnext_base", "convnext": "convnext_base", "convnext_small": "convnext_small",
    "resnet": "resnet101", "resnet101": "resnet101",
    "mobilenet": "mobilenet_v3_large", "mobilenet_v3_large": "mobilenet_v3_large",
    "efficientnet": "efficientnet_v2_m", "efficientnet_v2_m": "efficientnet_v2_m",
}  # fmt: skip

DATASET_ALIASES = {"celeba": "celebamask-hq", "celebamask-hq": "celebamask-hq", "lapa": "lapa", "helen": "helen"}

# The 14 checkpoints released in the Hub repo `kartiknarayan/SegFace`, with the mean F1 the authors report.
OFFICIAL_VARIANTS = {
    "convnext_celeba_512": 89.22,
    "efficientnet_celeba_512": 88.94,
    "mobilenet_celeba_512": 87.91,
    "resnet_celeba_512": 87.50,
    "swinb_celeba_224": 87.47,
    "swinb_celeba_256": 87.66,
    "swinb_celeba_448": 88.77,
    "swinb_celeba_512": 88.96,
    "swinv2b_celeba_512": 88.73,
    "swinb_lapa_224": 92.50,
    "swinb_lapa_256": 92.61,
    "swinb_lapa_448": 93.03,
    "swinb_lapa_512": 93.03,
    "swinb_helen_512": None,
}


def backbone_config_for(backbone: str, image_size: int = 512) -> PreTrainedConfig:
    """Build the backbone config of one of the original SegFace backbones.

    Args:
        backbone (`str`):
            A preset name (`swin_base`, `swinv2_base`, `swinv2_small`, `swinv2_tiny`, `convnext_base`,
            `convnext_small`, `resnet101`, `mobilenet_v3_large`, `efficientnet_v2_m`) or an original `--model` name.
        image_size (`int`, *optional*, defaults to 512):
            The square input resolution. Swin backbones fix their window and shift per stage from it.
    """
    name = BACKBONE_ALIASES.get(backbone)
    if name is None:
        raise ValueError(f"Unknown SegFace backbone {backbone!r}; choose one of {sorted(BACKBONE_PRESETS)}.")
    preset = copy.deepcopy(BACKBONE_PRESETS[name])
    model_type = preset.pop("model_type")
    if model_type == "timm_backbone":
        from transformers import TimmBackboneConfig

        return TimmBackboneConfig(**preset)
    if model_type == "swin":
        preset["image_size"] = image_size
    elif model_type == "swinv2":
        # torchvision keeps window 8 and pads smaller grids; transformers shrinks the window to the grid built
        # from image_size instead, so below 256 the stage-4 grid must be built as exactly 8x8.
        preset["image_size"] = image_size if image_size >= 256 else 256
    preset["out_features"] = ["stage1", "stage2", "stage3", "stage4"]
    return AutoConfig.for_model(model_type, **preset)


def parse_variant(variant: str) -> tuple[str, str, int]:
    """Split an official variant name such as `swinb_lapa_448` into (backbone preset, dataset, resolution)."""
    parts = variant.split("_")
    if len(parts) < 3 or not parts[-1].isdigit():
        raise ValueError(
            f"Unknown SegFace variant {variant!r}: expected <backbone>_<dataset>_<resolution>, "
            f"e.g. one of {sorted(OFFICIAL_VARIANTS)}."
        )
    backbone, dataset, resolution = "_".join(parts[:-2]), parts[-2], int(parts[-1])
    if backbone not in BACKBONE_ALIASES or dataset not in DATASET_ALIASES:
        raise ValueError(
            f"Unknown SegFace variant {variant!r}: backbone must be one of {sorted(BACKBONE_ALIASES)} and "
            f"dataset one of {sorted(DATASET_ALIASES)}."
        )
    return BACKBONE_ALIASES[backbone], DATASET_ALIASES[dataset], resolution


@strict
class SegFaceConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SegFaceForSemanticSegmentation`]: a backbone tapped at strides 4, 8, 16 and 32, per-scale
    projections fused into one stride-4 map, and a SAM-style two-way transformer in which one learnable token per
    class attends to the image; a shared hypernetwork turns each class token into the weights of its mask.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            The backbone's config: any `transformers` backbone config, or a `TimmBackboneConfig`. Defaults to the
            Swin-B of the original. Use [`backbone_config_for`] for the original backbones.
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the fused features, the class tokens and the two-way transformer.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of two-way attention blocks.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of attention heads in the two-way transformer.
        mlp_dim (`int`, *optional*, defaults to 2048):
            Width of the MLP inside each two-way block.
        attention_downsample_rate (`int`, *optional*, defaults to 2):
            The token-image cross-attentions project to `hidden_size // attention_downsample_rate` channels.
        hidden_act (`str`, *optional*, defaults to `"relu"`):
            Activation of the two-way blocks' MLP.
        layer_norm_eps (`float`, *optional*, defaults to 1e-05):
            Epsilon of the two-way transformer's layer norms.
        upscale_channels (`list[int]`, *optional*, defaults to `[64, 32]`):
            Output widths of the two stride-2 transposed convolutions that bring the stride-4 map to full size.
        upscale_layer_norm_eps (`float`, *optional*, defaults to 1e-06):
            Epsilon of the channel layer norm between the two upscaling convolutions.
        hypernetwork_num_layers (`int`, *optional*, defaults to 3):
            Depth of the MLP shared by all class tokens that maps a token to its mask weights.
        image_size (`int`, *optional*, defaults to 512):
            The square resolution the model was trained at; the image processor resizes to it.
        use_face_warp (`bool`, *optional*, defaults to `False`):
            Whether the model aligns each face from 5 landmarks with a tanh warp before the backbone and warps the
            logits back afterwards (the LaPa head of the original). The model then requires `landmarks`.
        face_warp_factor (`float`, *optional*, defaults to 0.8):
            Strength of the tanh warp: 0 is a plain similarity crop, 1 a full tanh warp.
        ce_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the cross-entropy term of the loss.
        dice_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the Dice term of the loss.
        loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value that the loss ignores.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the initialiser of the decoder's linear layers.

    Example:

    ```python
    >>> from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation

    >>> config = SegFaceConfig.from_variant("mobilenet_celeba_512")
    >>> model = SegFaceForSemanticSegmentation(config)
    ```
    """

    model_type = "segface"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="swin",
            init_kwargs={**{k: v for k, v in BACKBONE_PRESETS["swin_base"].items() if k != "model_type"},
                         "image_size": 512, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
        ),
    }  # fmt: skip

    backbone_config: dict | PreTrainedConfig | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5
    upscale_channels: list[int] | tuple[int, ...] = (64, 32)
    upscale_layer_norm_eps: float = 1e-6
    hypernetwork_num_layers: int = 3
    image_size: int = 512
    use_face_warp: bool = False
    face_warp_factor: float = 0.8
    ce_loss_weight: float = 0.5
    dice_loss_weight: float = 0.5
    loss_ignore_index: int = 255
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(CELEBAMASK_HQ_LABELS))
        super().__post_init__(**kwargs)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {name: index for index, name in self.id2label.items()}
        self.upscale_channels = list(self.upscale_channels)

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if (self.hidden_size // self.attention_downsample_rate) % self.num_attention_heads:
            raise ValueError("hidden_size // attention_downsample_rate must be divisible by num_attention_heads.")
        if len(self.upscale_channels) != 2:
            raise ValueError(f"upscale_channels must hold two widths, got {self.upscale_channels}.")

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> SegFaceConfig:
        """Build the config of an official SegFace variant, e.g. `swinb_celeba_512` or `swinb_lapa_448`.

        The name is `<backbone>_<dataset>_<resolution>`: backbone one of the original `--model` names or the short
        names of the release (`swinb`, `swinv2b`, `convnext`, `resnet`, `mobilenet`, `efficientnet`,
        `swinv2_small`, ...), dataset one of `celeba`, `lapa`, `helen`.
        """
        backbone, dataset, resolution = parse_variant(variant)
        return cls.from_backbone(backbone, dataset=dataset, image_size=resolution, **kwargs)

    @classmethod
    def from_backbone(
        cls, backbone: str, dataset: str = "celebamask-hq", image_size: int = 512, **kwargs
    ) -> SegFaceConfig:
        """Build a config from an original backbone name and a label set (`celebamask-hq`, `lapa` or `helen`)."""
        dataset = DATASET_ALIASES.get(dataset, dataset)
        if dataset not in LABEL_SETS:
            raise ValueError(f"Unknown label set {dataset!r}; choose one of {sorted(LABEL_SETS)}.")
        labels = LABEL_SETS[dataset]
        return cls(
            backbone_config=backbone_config_for(backbone, image_size),
            image_size=image_size,
            id2label=dict(enumerate(labels)),
            label2id={name: index for index, name in enumerate(labels)},
            use_face_warp=dataset == "lapa",
            **kwargs,
        )


__all__ = ["SegFaceConfig"]
