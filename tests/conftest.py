"""Shared test helpers: the location of ../shared and tiny SegFace configs for every backbone family."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def require_shared(*relative: str) -> Path:
    """Path into ../shared; fails (never skips) with a clear message when the checkout has no ../shared beside it."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        pytest.fail(
            f"This test needs {path}: the project's shared material (parity fixtures, test photos, FaceSynthetics "
            f"samples) must be checked out at ../shared beside the repository root {REPO_ROOT}."
        )
    return path


def parity_module():
    """The shared parity harness (../shared/parity/segface_parity.py)."""
    parity_dir = require_shared("parity")
    if str(parity_dir) not in sys.path:
        sys.path.insert(0, str(parity_dir))
    import segface_parity

    return segface_parity


TINY_DECODER = {
    "hidden_size": 32, "num_attention_heads": 2, "mlp_dim": 64, "upscale_channels": [8, 4], "image_size": 64,
}  # fmt: skip


def tiny_backbone_config(family: str):
    """A few-thousand-parameter backbone config of each supported family."""
    from transformers import ConvNextConfig, ResNetConfig, SwinConfig, Swinv2Config, TimmBackboneConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if family == "swin":
        return SwinConfig(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=64,
                          out_features=stages)  # fmt: skip
    if family == "swinv2":
        return Swinv2Config(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=64,
                            pretrained_window_sizes=[0, 0, 0, 0], out_features=stages)  # fmt: skip
    if family == "convnext":
        return ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=stages)
    if family == "resnet":
        return ResNetConfig(layer_type="bottleneck", hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1],
                            embedding_size=8, downsample_in_bottleneck=False, out_features=stages)  # fmt: skip
    if family == "timm-mobilenet":
        return TimmBackboneConfig(backbone="mobilenetv3_small_050", out_indices=[1, 2, 3, 4],
                                  model_args={"bn_eps": 1e-3}, final_features_as_last_tap=False)  # fmt: skip
    if family == "timm-efficientnet":
        return TimmBackboneConfig(backbone="test_efficientnet", out_indices=[1, 2, 3],
                                  model_args={"bn_eps": 1e-3}, final_features_as_last_tap=True)  # fmt: skip
    if family == "convnextv2":  # any other transformers backbone, through AutoBackbone
        from transformers import ConvNextV2Config

        return ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=stages)
    raise ValueError(family)


BACKBONE_FAMILIES = ["swin", "swinv2", "convnext", "resnet", "timm-mobilenet", "timm-efficientnet", "convnextv2"]


def tiny_config(family: str = "timm-mobilenet", num_labels: int = 5, **overrides):
    from segface_hf import SegFaceConfig

    labels = {i: f"class_{i}" for i in range(num_labels)}
    return SegFaceConfig(backbone_config=tiny_backbone_config(family), id2label=labels, **{**TINY_DECODER, **overrides})
