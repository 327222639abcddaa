"""Which models the demo offers, where each comes from, and loading them (cached, thread-safe).

`SEGFACE_MODEL` names the default model, or several separated by commas (the first is the default). Each entry is
a converted model folder, a Hub repo id (`ORG/NAME`), an official variant (`mobilenet_celeba_512`, ...) or one of
the short names in `ALIASES`. Official variants are downloaded from `kartiknarayan/SegFace` and converted once
(into `SEGFACE_CACHE`, by default `~/.cache/segface-hf/demo`); nothing is fetched at import time.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from segface_hf.configuration_segface import OFFICIAL_VARIANTS, parse_variant
from segface_hf.errors import SegFaceError, error_summary

DEFAULT_SOURCE = "mobilenet_celeba_512"
ALIASES = {
    "mobilenet": "mobilenet_celeba_512",
    "efficientnet": "efficientnet_celeba_512",
    "resnet": "resnet_celeba_512",
    "convnext": "convnext_celeba_512",
    "swinb": "swinb_celeba_512",
    "swinv2b": "swinv2b_celeba_512",
    "celebamask-hq": "mobilenet_celeba_512",
    "lapa": "swinb_lapa_448",
    "helen": "swinb_helen_512",
}
BACKBONE_LABELS = {
    "mobilenet_v3_large": "MobileNetV3", "efficientnet_v2_m": "EfficientNetV2-M", "resnet101": "ResNet-101",
    "convnext_base": "ConvNeXt-B", "swin_base": "Swin-B", "swinv2_base": "Swin-V2-B",
}  # fmt: skip
DATASET_LABELS = {
    "celebamask-hq": "CelebAMask-HQ, 19 classes",
    "lapa": "LaPa, 11 classes",
    "helen": "Helen, 11 classes",
}
# How the choices are ordered in the menu: the fast CelebAMask-HQ model first, LaPa and Helen last.
MENU_ORDER = (
    "mobilenet_celeba_512", "efficientnet_celeba_512", "resnet_celeba_512", "convnext_celeba_512",
    "swinb_celeba_224", "swinb_celeba_256", "swinb_celeba_448", "swinb_celeba_512", "swinv2b_celeba_512",
    "swinb_lapa_224", "swinb_lapa_256", "swinb_lapa_448", "swinb_lapa_512", "swinb_helen_512",
)  # fmt: skip
HOW_TO_POINT = (
    "Point the demo at a model with the `SEGFACE_MODEL` environment variable: a folder converted with "
    "`segface convert` (or `segface download VARIANT`), a Hub repo id such as `ORG/segface-mobilenet-celeba-512`, or "
    "an official variant such as `mobilenet_celeba_512`, e.g. "
    "`SEGFACE_MODEL=./segface-mobilenet-celeba-512 python spaces/segface/app.py`."
)


class ModelUnavailableError(SegFaceError, RuntimeError):
    """A model that cannot be loaded here; the message says why and how to point the demo at one."""


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model menu.

    Args:
        key (`str`): what the user wrote (`SEGFACE_MODEL`) or the official variant name.
        kind (`str`): `"folder"`, `"hub"` or `"official"`.
        location (`str`): the folder, the repo id or the variant.
        label (`str`): the menu text.
    """

    key: str
    kind: str
    location: str
    label: str


def official_label(variant: str) -> str:
    backbone, dataset, resolution = parse_variant(variant)
    score = OFFICIAL_VARIANTS.get(variant)
    extras = []
    if variant == "mobilenet_celeba_512":
        extras.append("fastest")
    if score is not None:
        extras.append(f"reported mean F1 {score:.2f}")
    suffix = f" ({', '.join(extras)})" if extras else ""
    return f"{DATASET_LABELS[dataset]} · {BACKBONE_LABELS.get(backbone, backbone)} · {resolution}px{suffix}"


def resolve(entry: str) -> ModelChoice:
    """Turn one `SEGFACE_MODEL` entry into a [`ModelChoice`]."""
    entry = entry.strip()
    if not entry:
        raise ValueError("empty model entry in SEGFACE_MODEL")
    variant = ALIASES.get(entry.lower(), entry)
    if variant in OFFICIAL_VARIANTS:
        return ModelChoice(key=variant, kind="official", location=variant, label=official_label(variant))
    path = Path(entry).expanduser()
    if path.exists() or entry.startswith((".", "/", "~")) or entry.strip("/").count("/") > 1:
        return ModelChoice(key=entry, kind="folder", location=str(path), label=f"Local model: {path.name or entry}")
    if entry.count("/") == 1:
        return ModelChoice(key=entry, kind="hub", location=entry, label=f"Hub model: {entry}")
    raise ValueError(
        f"SEGFACE_MODEL entry {entry!r} is neither a folder, a Hub repo id (ORG/NAME), an official variant "
        f"({', '.join(MENU_ORDER)}) nor a short name ({', '.join(ALIASES)})."
    )


def menu(environ_value: str | None) -> list[ModelChoice]:
    """The model menu: the `SEGFACE_MODEL` entries first (the first is the default), then the official variants."""
    entries = [e for e in (environ_value or DEFAULT_SOURCE).split(",") if e.strip()] or [DEFAULT_SOURCE]
    choices: list[ModelChoice] = []
    for entry in entries:
        choice = resolve(entry)
        if choice.key not in {c.key for c in choices}:
            choices.append(choice)
    for variant in MENU_ORDER:
        if variant not in {c.key for c in choices}:
            choices.append(resolve(variant))
    return choices


def cache_dir() -> Path:
    return Path(os.environ.get("SEGFACE_CACHE") or Path.home() / ".cache" / "segface-hf" / "demo").expanduser()


@dataclass
class LoadedModel:
    """A model ready to run: the model (eval mode), its processor, and what it is."""

    choice: ModelChoice
    model: object
    processor: object
    seconds: float

    @property
    def labels(self) -> list[str]:
        config = self.model.config
        return [config.id2label[i] for i in range(config.num_labels)]


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached from here (offline mode, or no connection within `timeout` seconds), or
    `None`. Checked before a download so that a machine without network fails at once instead of after the
    client's retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host} cannot be reached ({error.strerror or error})"
    return None


def _official_folder(variant: str) -> Path:
    """The converted folder of an official variant: from the demo's cache; else converted from the checkpoint in
    the `huggingface_hub` cache; else downloaded, converted and verified (`segface_hf.release.hub.download_official`,
    which writes the folder only when all of that succeeded)."""
    from huggingface_hub import try_to_load_from_cache

    from segface_hf.release.conversion import convert_original_checkpoint
    from segface_hf.release.hub import CHECKPOINT_FILENAME, OFFICIAL_REPO_ID, download_official

    folder = cache_dir() / variant
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    source = f"{OFFICIAL_REPO_ID}/{variant}/{CHECKPOINT_FILENAME}"
    unreachable = hub_unreachable()
    if unreachable is not None:
        cached = try_to_load_from_cache(OFFICIAL_REPO_ID, f"{variant}/{CHECKPOINT_FILENAME}")
        if not isinstance(cached, str):
            raise ModelUnavailableError(
                f"The official `{variant}` weights could not be fetched from {OFFICIAL_REPO_ID}: {source} is not on "
                f"this machine and {unreachable}. {HOW_TO_POINT}"
            )
        try:
            convert_original_checkpoint(cached, variant, folder, overwrite=True)
        except (ValueError, OSError) as error:
            raise ModelUnavailableError(
                f"The cached {source} could not be converted ({error}); delete it from the Hugging Face cache and "
                f"download it again. {HOW_TO_POINT}"
            ) from error
        return folder
    try:
        download_official(variant, output_dir=folder, overwrite=True)
    except Exception as error:  # Hub errors, a corrupt download: all mean "not usable from here"
        reason = error_summary(error)
        raise ModelUnavailableError(
            f"The official `{variant}` weights could not be fetched from {OFFICIAL_REPO_ID} and converted ({reason}). "
            f"{HOW_TO_POINT}"
        ) from error
    return folder


def load(choice: ModelChoice) -> LoadedModel:
    """Load a model choice on the CPU, in eval mode."""
    from segface_hf.inference.loading import SegFaceModelLoadError, load_model

    start = time.perf_counter()
    if choice.kind == "official":
        location = str(_official_folder(choice.location))
    elif choice.kind == "folder":
        if not Path(choice.location).is_dir():
            raise ModelUnavailableError(f"The model folder {choice.location} does not exist. {HOW_TO_POINT}")
        location = choice.location
    else:
        location = choice.location
    try:
        model, processor = load_model(location)
    except (SegFaceModelLoadError, OSError) as error:
        raise ModelUnavailableError(
            f"The model `{choice.key}` could not be loaded ({error_summary(error)}). {HOW_TO_POINT}"
        ) from error
    return LoadedModel(choice=choice, model=model, processor=processor, seconds=time.perf_counter() - start)


class ModelRegistry:
    """The menu and the loaded models: at most `max_loaded` stay in memory (least recently used goes first), each
    model is loaded once even when several requests ask for it at the same time, and failures are remembered (with
    their message) until `retry_after` seconds have passed.

    Args:
        environ_value (`str`, *optional*): the `SEGFACE_MODEL` value.
        max_loaded (`int`, *optional*, defaults to 2): models kept in memory.
        retry_after (`float`, *optional*, defaults to 60): seconds before a failed load is tried again.
    """

    def __init__(self, environ_value: str | None = None, max_loaded: int = 2, retry_after: float = 60.0):
        self.choices = menu(environ_value)
        self.max_loaded = max_loaded
        self.retry_after = retry_after
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._preload: threading.Thread | None = None

    @property
    def default(self) -> ModelChoice:
        return self.choices[0]

    def choice(self, key_or_label: str | None) -> ModelChoice:
        for choice in self.choices:
            if key_or_label in (choice.key, choice.label):
                return choice
        if key_or_label is None:
            return self.default
        raise ModelUnavailableError(f"Unknown model {key_or_label!r}; pick one from the menu.")

    def get(self, key_or_label: str | None = None) -> LoadedModel:
        """The loaded model of a menu entry (loading it if needed); raises [`ModelUnavailableError`]."""
        choice = self.choice(key_or_label)
        with self._lock:
            lock = self._locks.setdefault(choice.key, threading.Lock())
        with lock:
            with self._lock:
                if choice.key in self._loaded:
                    self._loaded.move_to_end(choice.key)
                    return self._loaded[choice.key]
                failed = self._failed.get(choice.key)
                if failed is not None and time.monotonic() - failed[0] < self.retry_after:
                    raise ModelUnavailableError(failed[1])
            try:
                loaded = load(choice)
            except ModelUnavailableError as error:
                with self._lock:
                    self._failed[choice.key] = (time.monotonic(), str(error))
                raise
            with self._lock:
                self._failed.pop(choice.key, None)
                self._loaded[choice.key] = loaded
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            return loaded

    def preload_default(self) -> threading.Thread:
        """Load the default model in a background thread, so that the page is served at once."""

        def run():
            try:
                loaded = self.get(self.default.key)
            except ModelUnavailableError as error:  # remembered in self._failed; the page shows it too
                print(f"SegFace demo: model not available: {error}", file=sys.stderr, flush=True)
            else:
                print(f"SegFace demo: model ready ({loaded.seconds:.1f} s): {loaded.choice.label}", flush=True)

        self._preload = threading.Thread(target=run, name="segface-preload", daemon=True)
        self._preload.start()
        return self._preload

    def status(self, key: str | None = None) -> tuple[str, str]:
        """(`"ready"`, `"loading"`, `"failed"` or `"not loaded"`, a Markdown line) for a menu entry."""
        choice = self.choice(key)
        with self._lock:
            if choice.key in self._loaded:
                loaded = self._loaded[choice.key]
                return "ready", f"**Model:** {choice.label} — ready (loaded in {loaded.seconds:.1f} s)."
            if choice.key in self._failed:
                return "failed", f"**Model not available:** {self._failed[choice.key][1]}"
        lock = self._locks.get(choice.key)
        if lock is not None and lock.locked():
            return "loading", f"**Model:** {choice.label} — loading…"
        return "not loaded", f"**Model:** {choice.label} — loads on first use."
