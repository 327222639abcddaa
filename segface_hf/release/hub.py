"""Fetch an official SegFace checkpoint from the Hub, convert it and check that the result runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..configuration_segface import OFFICIAL_VARIANTS
from ..errors import SegFaceError, error_summary

OFFICIAL_REPO_ID = "kartiknarayan/SegFace"
CHECKPOINT_FILENAME = "model_299.pt"


class SegFaceDownloadError(SegFaceError, ValueError):
    """The official checkpoint could not be fetched, converted or verified."""


def _check_variant(variant: str) -> None:
    if variant not in OFFICIAL_VARIANTS:
        raise SegFaceDownloadError(
            f"{variant!r} is not an official SegFace variant; choose one of {', '.join(sorted(OFFICIAL_VARIANTS))}."
        )


def default_output_dir(variant: str) -> str:
    """The folder `segface download VARIANT` writes to by default, e.g. `segface-swinb-celeba-512`."""
    return "segface-" + variant.replace("_", "-")


def official_checkpoint(
    variant: str,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
) -> Path:
    """Download `VARIANT/model_299.pt` from `kartiknarayan/SegFace` (or take it from the `huggingface_hub` cache).

    Args:
        variant (`str`): an official variant, e.g. `mobilenet_celeba_512`.
        cache_dir (`str` or `os.PathLike`, *optional*): the `huggingface_hub` cache to use.
        token (`str`, *optional*): a Hub token (the repo is public; not needed normally).
        endpoint (`str`, *optional*): another Hub endpoint (`HF_ENDPOINT` works too).
        revision (`str`, *optional*): a branch or commit of the repo.

    Returns:
        `Path` of the cached file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    _check_variant(variant)
    filename = f"{variant}/{CHECKPOINT_FILENAME}"
    try:
        path = hf_hub_download(OFFICIAL_REPO_ID, filename, cache_dir=cache_dir, token=token, endpoint=endpoint,
                               revision=revision)  # fmt: skip
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise SegFaceDownloadError(
            f"cannot fetch {OFFICIAL_REPO_ID}/{filename}: it is not in the cache and the Hub cannot be reached "
            f"(offline mode, or no network); {error_summary(error)}"
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise SegFaceDownloadError(f"cannot fetch {OFFICIAL_REPO_ID}/{filename}: {error_summary(error)}") from error
    return Path(path)


@dataclass
class SegFaceDownloadSummary:
    """What [`download_official`] did."""

    variant: str
    output_dir: str
    checkpoint: str
    num_parameters: int
    verified_logits_shape: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"Downloaded {OFFICIAL_REPO_ID}/{self.variant}/{CHECKPOINT_FILENAME} and converted it to {self.output_dir}\n"
            f"  {self.num_parameters:,} parameters; verified: a forward pass gives logits of shape "
            f"{self.verified_logits_shape}"
        )


def verify_model_folder(folder: str | os.PathLike, size: int = 64) -> tuple[int, ...]:
    """Load a converted folder with the Auto classes and run one forward pass on a small synthetic image.

    Returns:
        The logits' shape; raises [`SegFaceDownloadError`] when loading fails or the logits are wrong.
    """
    import PIL.Image
    import torch
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from ..inference.faces import template_landmarks

    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise SegFaceDownloadError(f"the converted model in {folder} does not load: {error_summary(error)}") from error
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = PIL.Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)),
                                          np.tile(ramp[:, None], (1, size))], axis=-1).astype(np.uint8))  # fmt: skip
    kwargs = {}
    if model.config.use_face_warp:
        kwargs["landmarks"] = [template_landmarks(size, size, size)]
    inputs = processor(image, do_resize=False, return_tensors="pt", **kwargs)
    with torch.inference_mode():
        logits = model(**inputs).logits
    expected = (1, model.config.num_labels, size, size)
    if tuple(logits.shape) != expected or not torch.isfinite(logits).all():
        raise SegFaceDownloadError(
            f"the converted model in {folder} gives logits of shape {tuple(logits.shape)} (expected {expected})"
            f"{'' if torch.isfinite(logits).all() else ' with NaN or infinite values'}."
        )
    return tuple(logits.shape)


def download_official(
    variant: str,
    output_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> SegFaceDownloadSummary:
    """Fetch an official checkpoint, convert it to a `from_pretrained` folder, and verify it.

    The folder is converted and verified in a temporary sibling and renamed into place only when both succeed, so a
    failure leaves nothing behind.

    Args:
        variant (`str`): an official variant, e.g. `swinb_celeba_512` (see `OFFICIAL_VARIANTS`).
        output_dir (`str` or `os.PathLike`, *optional*): defaults to [`default_output_dir`]`(variant)`.
        cache_dir (`str` or `os.PathLike`, *optional*): the `huggingface_hub` cache for the original file.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output_dir`.
        token (`str`, *optional*): a Hub token.
        endpoint (`str`, *optional*): another Hub endpoint.
    """
    from .conversion import convert_original_checkpoint

    _check_variant(variant)
    output_dir = Path(output_dir if output_dir is not None else default_output_dir(variant))
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    checkpoint = official_checkpoint(variant, cache_dir=cache_dir, token=token, endpoint=endpoint)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.download-", dir=output_dir.parent))
    try:
        staged = staging_root / "model"
        summary = convert_original_checkpoint(checkpoint, variant, staged)
        shape = verify_model_folder(staged)
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        staged.rename(output_dir)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return SegFaceDownloadSummary(variant=variant, output_dir=str(output_dir), checkpoint=str(checkpoint),
                                  num_parameters=summary.num_parameters, verified_logits_shape=shape)  # fmt: skip


__all__ = [
    "CHECKPOINT_FILENAME",
    "OFFICIAL_REPO_ID",
    "SegFaceDownloadError",
    "SegFaceDownloadSummary",
    "default_output_dir",
    "download_official",
    "official_checkpoint",
    "verify_model_folder",
]
