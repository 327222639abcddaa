"""Conversion of the official SegFace release checkpoints (`<variant>/model_299.pt`) to `SegFaceForSemanticSegmentation`.

Every key of the original state dict goes through an explicit rule: renamed (possibly split, e.g. Swin's fused
qkv), or dropped for a stated reason. Anything left unmatched, any target key left unfilled, and any shape
mismatch is an error, so a checkpoint of another variant cannot be converted by accident.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SegFaceError, error_summary
from ..configuration_segface import (
    BACKBONE_PRESETS,
    SegFaceConfig,
    parse_variant,
)

# Class-token attribute names of the original heads, in class-index order (token k predicts label k).
ORIGINAL_TOKENS = {
    "celebamask-hq": (
        "background", "neck", "face", "cloth", "rightear", "leftear", "rightbro", "leftbro", "righteye",
        "lefteye", "nose", "innermouth", "lowerlip", "upperlip", "hair", "glass", "hat", "earring", "necklace",
    ),
    "lapa": (
        "background", "face", "leftbro", "rightbro", "lefteye", "righteye", "nose", "upperlip", "innermouth",
        "lowerlip", "hair",
    ),
}  # fmt: skip
ORIGINAL_TOKENS["helen"] = ORIGINAL_TOKENS["lapa"]


class SegFaceCheckpointError(SegFaceError, ValueError):
    """The file is not an official SegFace checkpoint, or not one of the requested variant."""


@dataclass
class ConversionSummary:
    variant: str
    output_dir: str
    num_parameters: int
    num_source_keys: int
    dropped: dict[str, str] = field(default_factory=dict)
    kept_at_init: list[str] = field(default_factory=list)
    epoch: int | None = None

    def __str__(self) -> str:
        lines = [
            f"Converted SegFace variant {self.variant} (epoch {self.epoch}) to {self.output_dir}",
            f"  {self.num_source_keys} source tensors, {self.num_parameters:,} parameters in the converted model",
        ]
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  dropped {count} source tensors: {reason}" for reason, count in sorted(reasons.items())]
        if self.kept_at_init:
            lines.append(f"  kept at initial values (no source, never used in forward): {', '.join(self.kept_at_init)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_original_checkpoint(path: str | os.PathLike) -> dict:
    """Load a release file safely (`weights_only=True`, on the CPU) and return its `state_dict_backbone`."""
    path = Path(path)
    if not path.is_file():
        raise SegFaceCheckpointError(f"{path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as error:
        message = error_summary(error)
        raise SegFaceCheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({message}); the file may be truncated or corrupt, "
            "download it again."
        ) from error
    if not isinstance(checkpoint, dict):
        raise SegFaceCheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a SegFace release dict.")
    state_dict = checkpoint.get("state_dict_backbone")
    if not isinstance(state_dict, dict) or not state_dict:
        raise SegFaceCheckpointError(
            f"{path}: not an official SegFace checkpoint (no 'state_dict_backbone'; top-level keys: "
            f"{sorted(map(str, checkpoint))[:8]})."
        )
    if "linear_fuse.weight" not in state_dict or "pe_layer.positional_encoding_gaussian_matrix" not in state_dict:
        raise SegFaceCheckpointError(
            f"{path}: 'state_dict_backbone' lacks the SegFace decoder (linear_fuse, pe_layer); not a SegFace model."
        )
    return {"state_dict": state_dict, "epoch": checkpoint.get("epoch")}


# --------------------------------------------------------------------------------------------------------------
# What the checkpoint is


def describe_checkpoint(state_dict: dict) -> tuple[str, str]:
    """Guess (backbone preset, label set) from a SegFace state dict's keys and shapes."""
    tokens = [k[len("face_decoder.") : -len("_token.weight")] for k in state_dict if k.endswith("_token.weight")]
    dataset = "celebamask-hq" if len(tokens) == 19 else "lapa/helen" if len(tokens) == 11 else f"{len(tokens)}-class"
    width = tuple(state_dict["linear_c.0.proj.weight"].shape)[1] if "linear_c.0.proj.weight" in state_dict else None

    def blocks(stage_prefix: str) -> int:
        return len({k.split(".")[len(stage_prefix.split("."))] for k in state_dict if k.startswith(stage_prefix + ".")})

    if any("relative_position_bias_table" in k for k in state_dict):
        backbone = "swin_base" if width == 128 else f"swin (v1, width {width})"
    elif any("cpb_mlp" in k for k in state_dict):
        if width == 128:
            backbone = "swinv2_base"
        else:
            backbone = "swinv2_small" if blocks("backbone.0.5") == 18 else "swinv2_tiny"
    elif any(k.endswith("layer_scale") for k in state_dict):
        backbone = {128: "convnext_base", 96: "convnext_small"}.get(width, f"convnext (width {width})")
    elif "backbone.4.0.conv1.weight" in state_dict:
        backbone = "resnet101" if blocks("backbone.6") == 23 else f"resnet ({blocks('backbone.6')} blocks in layer3)"
    elif width == 24:
        backbone = "mobilenet_v3_large"
    elif width == 48:
        backbone = "efficientnet_v2_m"
    else:
        backbone = f"unknown (first projection width {width})"
    return backbone, dataset


# --------------------------------------------------------------------------------------------------------------
# Key rules. Each rule maps one source key to a list of (target key, tensor), or to a drop reason.

_DROP = object()


def _split_rows(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return [chunk.clone() for chunk in tensor.chunk(parts, dim=0)]


def _decoder_rules(key: str, tensor: torch.Tensor):
    rules = (
        (r"pe_layer\.positional_encoding_gaussian_matrix", "positional_embedding.positional_embedding"),
        (r"face_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.(weight|bias)",
         r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
        (r"face_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
         r"\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)", r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
        (r"face_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin1|lin2)\.(weight|bias)",
         r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
        (r"face_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)",
         r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
        (r"face_decoder\.transformer\.norm_final_attn\.(weight|bias)", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
        (r"face_decoder\.output_upscaling\.0\.(weight|bias)", r"mask_decoder.upscale_conv1.\1"),
        (r"face_decoder\.output_upscaling\.1\.(weight|bias)", r"mask_decoder.upscale_layer_norm.\1"),
        (r"face_decoder\.output_upscaling\.3\.(weight|bias)", r"mask_decoder.upscale_conv2.\1"),
        (r"face_decoder\.output_hypernetwork_mlps\.layers\.0\.(weight|bias)",
         r"mask_decoder.output_hypernetwork_mlp.proj_in.\1"),
        (r"face_decoder\.output_hypernetwork_mlps\.layers\.1\.(weight|bias)",
         r"mask_decoder.output_hypernetwork_mlp.layers.0.\1"),
        (r"face_decoder\.output_hypernetwork_mlps\.layers\.2\.(weight|bias)",
         r"mask_decoder.output_hypernetwork_mlp.proj_out.\1"),
        (r"linear_c\.(\d)\.proj\.(weight|bias)", r"feature_projections.\1.\2"),
        (r"linear_fuse\.weight", "feature_fusion.weight"),
    )  # fmt: skip
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return [(re.sub(pattern, target, key), tensor)]
    return None


def _swin_rules(key: str, tensor: torch.Tensor, v2: bool):
    prefix = "backbone.model."
    if m := re.fullmatch(r"backbone\.0\.0\.0\.(weight|bias)", key):
        return [(f"{prefix}embeddings.patch_embeddings.projection.{m[1]}", tensor)]
    if m := re.fullmatch(r"backbone\.0\.0\.2\.(weight|bias)", key):
        return [(f"{prefix}embeddings.norm.{m[1]}", tensor)]
    if m := re.fullmatch(r"backbone\.0\.([246])\.(reduction\.weight|norm\.weight|norm\.bias)", key):
        return [(f"{prefix}encoder.layers.{int(m[1]) // 2 - 1}.downsample.{m[2]}", tensor)]
    if m := re.fullmatch(r"backbone\.1\.(weight|bias)", key):
        # torchvision's final norm after stage 4: not on the tap path.
        return _DROP if v2 else [(f"{prefix}layernorm.{m[1]}", tensor)]
    m = re.fullmatch(r"backbone\.0\.([1357])\.(\d+)\.(.+)", key)
    if m is None:
        return None
    block = f"{prefix}encoder.layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}."
    name = m[3]
    if name in ("attn.relative_position_index", "attn.relative_coords_table"):
        return _DROP
    if v2:
        attention = block + "attention."
        simple = {
            "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "attn.logit_scale": "attention.self.logit_scale", "mlp.0": "intermediate.dense",
            "mlp.3": "output.dense", "attn.cpb_mlp.0": "attention.self.continuous_position_bias_mlp.0",
            "attn.cpb_mlp.2": "attention.self.continuous_position_bias_mlp.2",
        }  # fmt: skip
        if name == "attn.qkv.weight":
            q, k, v = _split_rows(tensor, 3)
            return [(attention + "self.query.weight", q), (attention + "self.key.weight", k),
                    (attention + "self.value.weight", v)]  # fmt: skip
        if name == "attn.qkv.bias":
            # torchvision zeroes the key bias at every forward; transformers' key projection has none.
            q, _, v = _split_rows(tensor, 3)
            return [(attention + "self.query.bias", q), (attention + "self.value.bias", v)]
    else:
        attention = block + "attention."
        simple = {
            "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
            "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
            "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2",
        }  # fmt: skip
        if name in ("attn.qkv.weight", "attn.qkv.bias"):
            suffix = name.rsplit(".", 1)[1]
            q, k, v = _split_rows(tensor, 3)
            return [(f"{attention}q_proj.{suffix}", q), (f"{attention}k_proj.{suffix}", k),
                    (f"{attention}v_proj.{suffix}", v)]  # fmt: skip
    module, _, suffix = name.rpartition(".")
    if name in simple:
        return [(block + simple[name], tensor)]
    if module in simple:
        return [(f"{block}{simple[module]}.{suffix}", tensor)]
    return None


def _convnext_rules(key: str, tensor: torch.Tensor):
    prefix = "backbone.model."
    if m := re.fullmatch(r"backbone\.0\.0\.0\.(weight|bias)", key):
        return [(f"{prefix}embeddings.patch_embeddings.{m[1]}", tensor)]
    if m := re.fullmatch(r"backbone\.0\.0\.1\.(weight|bias)", key):
        return [(f"{prefix}embeddings.layernorm.{m[1]}", tensor)]
    if m := re.fullmatch(r"backbone\.0\.([246])\.([01])\.(weight|bias)", key):
        return [(f"{prefix}encoder.stages.{int(m[1]) // 2}.downsampling_layer.{m[2]}.{m[3]}", tensor)]
    m = re.fullmatch(r"backbone\.0\.([1357])\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer = f"{prefix}encoder.stages.{(int(m[1]) - 1) // 2}.layers.{m[2]}."
    if m[3] == "layer_scale":
        return [(layer + "layer_scale_parameter", tensor.reshape(-1))]
    names = {"block.0": "dwconv", "block.2": "layernorm", "block.3": "pwconv1", "block.5": "pwconv2"}
    module, _, suffix = m[3].rpartition(".")
    return [(f"{layer}{names[module]}.{suffix}", tensor)] if module in names else None


def _resnet_rules(key: str, tensor: torch.Tensor):
    prefix = "backbone.model."
    if key == "backbone.0.weight":
        return [(f"{prefix}embedder.embedder.convolution.weight", tensor)]
    if m := re.fullmatch(r"backbone\.1\.(\w+)", key):
        return [(f"{prefix}embedder.embedder.normalization.{m[1]}", tensor)]
    m = re.fullmatch(r"backbone\.([4-7])\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer = f"{prefix}encoder.stages.{int(m[1]) - 4}.layers.{m[2]}."
    if c := re.fullmatch(r"conv([123])\.weight", m[3]):
        return [(f"{layer}layer.{int(c[1]) - 1}.convolution.weight", tensor)]
    if b := re.fullmatch(r"bn([123])\.(\w+)", m[3]):
        return [(f"{layer}layer.{int(b[1]) - 1}.normalization.{b[2]}", tensor)]
    if m[3] == "downsample.0.weight":
        return [(f"{layer}shortcut.convolution.weight", tensor)]
    if d := re.fullmatch(r"downsample\.1\.(\w+)", m[3]):
        return [(f"{layer}shortcut.normalization.{d[1]}", tensor)]
    return None


def _conv_bn(rest: str, conv: str, bn: str, prefix: str, tensor: torch.Tensor):
    """torchvision Conv2dNormActivation `K.0.weight` / `K.1.*` -> timm `conv.weight` / `bn.*`."""
    if rest == "0.weight":
        return [(f"{prefix}{conv}.weight", tensor)]
    if m := re.fullmatch(r"1\.(\w+)", rest):
        return [(f"{prefix}{bn}.{m[1]}", tensor)]
    return None


# torchvision mobilenet_v3_large.features index -> timm (stage, block) for features 1..15.
_MOBILENET_BLOCKS = {
    1: (0, 0), 2: (1, 0), 3: (1, 1), 4: (2, 0), 5: (2, 1), 6: (2, 2), 7: (3, 0), 8: (3, 1), 9: (3, 2),
    10: (3, 3), 11: (4, 0), 12: (4, 1), 13: (5, 0), 14: (5, 1), 15: (5, 2),
}  # fmt: skip


def _mobilenet_rules(key: str, tensor: torch.Tensor, state_dict: dict):
    prefix = "backbone.model.model."
    if m := re.fullmatch(r"backbone\.0\.(.+)", key):
        return _conv_bn(m[1], "conv_stem", "bn1", prefix, tensor)
    if m := re.fullmatch(r"backbone\.16\.(.+)", key):
        return _conv_bn(m[1], "blocks.6.0.conv", "blocks.6.0.bn1", prefix, tensor)
    m = re.fullmatch(r"backbone\.(\d+)\.block\.(\d)\.(.+)", key)
    if m is None or int(m[1]) not in _MOBILENET_BLOCKS:
        return None
    index, part, rest = int(m[1]), int(m[2]), m[3]
    stage, block = _MOBILENET_BLOCKS[index]
    block_prefix = f"{prefix}blocks.{stage}.{block}."
    if index == 1:  # depthwise-separable block without expansion
        layers = {0: ("conv_dw", "bn1"), 1: ("conv_pw", "bn2")}
    else:
        has_se = f"backbone.{index}.block.2.fc1.weight" in state_dict
        layers = {0: ("conv_pw", "bn1"), 1: ("conv_dw", "bn2"), (3 if has_se else 2): ("conv_pwl", "bn3")}
        if has_se and part == 2:
            names = {"fc1": "se.conv_reduce", "fc2": "se.conv_expand"}
            module, _, suffix = rest.rpartition(".")
            return [(f"{block_prefix}{names[module]}.{suffix}", tensor)] if module in names else None
    if part not in layers:
        return None
    return _conv_bn(rest, *layers[part], block_prefix, tensor)


def _efficientnet_rules(key: str, tensor: torch.Tensor):
    prefix = "backbone.model.model."
    if m := re.fullmatch(r"backbone\.0\.(.+)", key):
        return _conv_bn(m[1], "conv_stem", "bn1", prefix, tensor)
    if m := re.fullmatch(r"backbone\.8\.(.+)", key):
        return _conv_bn(m[1], "conv_head", "bn2", prefix, tensor)
    m = re.fullmatch(r"backbone\.([1-7])\.(\d+)\.block\.(\d)\.(.+)", key)
    if m is None:
        return None
    stage, block, part, rest = int(m[1]), m[2], int(m[3]), m[4]
    block_prefix = f"{prefix}blocks.{stage - 1}.{block}."
    if stage == 1:  # FusedMBConv without expansion
        layers = {0: ("conv", "bn1")}
    elif stage in (2, 3):  # FusedMBConv with expansion
        layers = {0: ("conv_exp", "bn1"), 1: ("conv_pwl", "bn2")}
    else:  # MBConv with squeeze-excitation
        layers = {0: ("conv_pw", "bn1"), 1: ("conv_dw", "bn2"), 3: ("conv_pwl", "bn3")}
        if part == 2:
            names = {"fc1": "se.conv_reduce", "fc2": "se.conv_expand"}
            module, _, suffix = rest.rpartition(".")
            return [(f"{block_prefix}{names[module]}.{suffix}", tensor)] if module in names else None
    if part not in layers:
        return None
    return _conv_bn(rest, *layers[part], block_prefix, tensor)


def _backbone_rule(backbone: str):
    model_type = BACKBONE_PRESETS[backbone]["model_type"]
    if model_type in ("swin", "swinv2"):
        return lambda key, tensor, state: _swin_rules(key, tensor, v2=model_type == "swinv2")
    if model_type == "convnext":
        return lambda key, tensor, state: _convnext_rules(key, tensor)
    if model_type == "resnet":
        return lambda key, tensor, state: _resnet_rules(key, tensor)
    if backbone == "mobilenet_v3_large":
        return _mobilenet_rules
    return lambda key, tensor, state: _efficientnet_rules(key, tensor)


# Target keys that have no source in a SegFace checkpoint and never take part in the forward pass.
_KEPT_AT_INIT = {"convnext": ("backbone.model.layernorm.weight", "backbone.model.layernorm.bias")}


def convert_state_dict(state_dict: dict, config: SegFaceConfig, backbone: str, dataset: str, model=None):
    """Map an original state dict onto `SegFaceForSemanticSegmentation(config)`; returns (model, dropped, kept)."""
    from ..modeling_segface import SegFaceForSemanticSegmentation

    expected_backbone, expected_dataset = backbone, dataset
    found_backbone, found_dataset = describe_checkpoint(state_dict)
    wanted_dataset = "lapa/helen" if expected_dataset in ("lapa", "helen") else expected_dataset
    if found_backbone != expected_backbone or found_dataset != wanted_dataset:
        raise SegFaceCheckpointError(
            f"the checkpoint holds a {found_backbone} backbone with a {found_dataset} head, but the variant asks for "
            f"{expected_backbone} with {wanted_dataset}; pass the --variant that matches the file."
        )
    tokens = ORIGINAL_TOKENS[dataset]
    token_keys = [f"face_decoder.{name}_token.weight" for name in tokens]
    missing_tokens = [k for k in token_keys if k not in state_dict]
    if missing_tokens:
        raise SegFaceCheckpointError(f"class tokens missing from the checkpoint: {missing_tokens}")

    converted: dict[str, torch.Tensor] = {"mask_decoder.class_embeddings.weight": torch.cat(
        [state_dict[k] for k in token_keys], dim=0)}  # fmt: skip
    dropped: dict[str, str] = {}
    backbone_rule = _backbone_rule(backbone)
    unmatched = []
    for key, tensor in state_dict.items():
        if key in token_keys:
            continue
        result = _decoder_rules(key, tensor) if not key.startswith("backbone.") else backbone_rule(key, tensor, state_dict)
        if result is _DROP:
            dropped[key] = _drop_reason(key)
            continue
        if result is None:
            unmatched.append(key)
            continue
        for target_key, value in result:
            if target_key in converted:
                raise SegFaceCheckpointError(f"two source tensors map to {target_key}")
            converted[target_key] = value
    if unmatched:
        raise SegFaceCheckpointError(
            f"{len(unmatched)} checkpoint tensors match no conversion rule for {backbone}, e.g. {unmatched[:5]}; "
            "the file does not come from the original SegFace code."
        )

    model = model if model is not None else SegFaceForSemanticSegmentation(config)
    target = model.state_dict()
    kept = [k for k in _KEPT_AT_INIT.get(BACKBONE_PRESETS[backbone]["model_type"], ()) if k in target]
    missing = sorted(set(target) - set(converted) - set(kept))
    extra = sorted(set(converted) - set(target))
    if missing or extra:
        raise SegFaceCheckpointError(
            f"conversion left {len(missing)} model tensors unfilled (e.g. {missing[:4]}) and produced {len(extra)} "
            f"unknown ones (e.g. {extra[:4]})."
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if mismatched:
        raise SegFaceCheckpointError(
            f"{len(mismatched)} tensors have the wrong shape for this variant, e.g. {mismatched[:3]}."
        )
    _check_rebuilt_buffers(state_dict, model, backbone)
    model.load_state_dict({**{k: target[k] for k in kept}, **converted}, strict=True)
    return model, dropped, kept


def _drop_reason(key: str) -> str:
    if key.endswith(("relative_position_index", "relative_coords_table")):
        return "index/coordinate buffers that transformers rebuilds (checked equal)"
    if key.startswith("backbone.1."):
        return "torchvision's final Swin norm, not on the tap path"
    return "not used by the converted model"


def _check_rebuilt_buffers(state_dict: dict, model, backbone: str) -> None:
    """Swin's dropped index and coordinate buffers must equal the ones transformers builds, or attention differs."""
    if BACKBONE_PRESETS[backbone]["model_type"] not in ("swin", "swinv2"):
        return
    buffers = dict(model.named_buffers())
    for key, tensor in state_dict.items():
        m = re.fullmatch(r"backbone\.0\.([1357])\.(\d+)\.attn\.(relative_position_index|relative_coords_table)", key)
        if m is None:
            continue
        block = f"backbone.model.encoder.layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.attention."
        matches = [k for k in buffers if k.startswith(block) and k.endswith("." + m[3])]
        if len(matches) != 1:
            raise SegFaceCheckpointError(f"{key}: the converted model has no matching buffer to check it against.")
        rebuilt = buffers[matches[0]]
        if m[3] == "relative_position_index":
            same = torch.equal(rebuilt.reshape(-1).long(), tensor.reshape(-1).long())
        else:
            same = rebuilt.shape == tensor.shape and torch.allclose(rebuilt.float(), tensor.float(), atol=1e-6)
        if not same:
            raise SegFaceCheckpointError(f"{key} differs from the buffer transformers builds for this window size.")


# --------------------------------------------------------------------------------------------------------------
# End to end


def convert_original_checkpoint(
    checkpoint_path: str | os.PathLike,
    variant: str,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
) -> ConversionSummary:
    """Convert an official `model_299.pt` into a folder that `from_pretrained` loads (model, config, processor).

    The folder is written to a temporary sibling and renamed into place only when complete.
    """
    from ..image_processing_segface import SegFaceImageProcessor
    from ..modeling_segface import SegFaceForSemanticSegmentation

    backbone, dataset, resolution = parse_variant(variant)  # a clear error for unknown names
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")

    loaded = load_original_checkpoint(checkpoint_path)
    config = SegFaceConfig.from_variant(variant)
    model, dropped, kept = convert_state_dict(loaded["state_dict"], config, backbone, dataset)
    model.eval()
    SegFaceForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    processor = SegFaceImageProcessor(size={"height": resolution, "width": resolution})
    SegFaceImageProcessor.register_for_auto_class("AutoImageProcessor")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConversionSummary(
        variant=variant,
        output_dir=str(output_dir),
        num_parameters=sum(p.numel() for p in model.parameters()),
        num_source_keys=len(loaded["state_dict"]),
        dropped=dropped,
        kept_at_init=kept,
        epoch=loaded["epoch"],
    )


__all__ = [
    "SegFaceCheckpointError",
    "ConversionSummary",
    "load_original_checkpoint",
    "describe_checkpoint",
    "convert_state_dict",
    "convert_original_checkpoint",
]
