"""Publishing to the Hugging Face Hub: one model repo per SegFace variant (converted safetensors, config, processor
config, the remote code referenced by `auto_map`, a model card), and the demo Space.

Every folder is assembled in a temporary sibling and moved into place only when complete and checked; uploads are
plain `huggingface_hub` calls (`create_repo`, `upload_folder`), so `HF_ENDPOINT`, `HF_TOKEN` and the usual login
apply, and `endpoint` / `token` can be passed explicitly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from tqdm.auto import tqdm

from ..errors import SegFaceError
from ..configuration_segface import OFFICIAL_VARIANTS, SegFaceConfig, parse_variant
from ..file_utils import read_json
from ..metrics.results import load_evaluation
from .model_card import EVALUATION_FILENAME, build_model_card, check_model_card

# What a published model repo must hold for `from_pretrained`, with or without the package.
MODEL_REPO_FILES = (
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_segface.py",
    "modeling_segface.py",
    "image_processing_segface.py",
    "image_processing_segface_fast.py",
    # imported by the files above, so saved beside them as remote code
    "fast_path_segface.py",
    "batch_norm_folding.py",
    "face_warp.py",
    "image_io.py",
    "errors.py",
)
CHECKPOINT_FILENAME = "model_299.pt"
# Files of the Space folder that are not part of the app (caches, local outputs).
_SPACE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "flagged", ".gradio", "*.log")


class SegFacePublishError(SegFaceError, ValueError):
    """A folder, checkpoint set or repo id that cannot be published as asked."""


@dataclass
class PublishedRepo:
    """What one upload produced.

    Args:
        repo_id (`str`): the Hub repository.
        repo_type (`str`): `"model"` or `"space"`.
        commit_url (`str`): the URL of the upload commit.
        files (`list[str]`): the uploaded files, relative to the repo root.
    """

    repo_id: str
    repo_type: str
    commit_url: str
    files: list[str]

    def __str__(self) -> str:
        return f"uploaded {len(self.files)} files to {self.repo_type} {self.repo_id}: {self.commit_url}"


def default_repo_name(variant: str) -> str:
    """The repo name of a variant: `swinb_celeba_512` -> `segface-swinb-celeba-512`."""
    parse_variant(variant)
    return "segface-" + variant.replace("_", "-")


def check_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it has the `namespace/name` form the Hub needs, else raise a one-line error."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo_id):
        raise SegFacePublishError(
            f"repo id {repo_id!r} must look like ORG/NAME (e.g. my-org/segface-swinb-celeba-512)."
        )
    return repo_id


def _staging_dir(output_dir: Path, overwrite: bool) -> Path:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))


def _move_into_place(staging: Path, output_dir: Path) -> None:
    if output_dir.is_dir():
        shutil.rmtree(output_dir)
    elif output_dir.exists():
        output_dir.unlink()
    staging.rename(output_dir)


def check_model_folder(folder: str | os.PathLike) -> list[str]:
    """Check that a folder holds a complete, loadable SegFace model repo; return its file names.

    The weights, config and processor config must be there, both configs must carry the `auto_map` that points
    `trust_remote_code=True` at the bundled code, every referenced code file must exist, and the card's YAML must
    parse with the required fields.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SegFacePublishError(f"{folder}: no such folder.")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    missing = [name for name in MODEL_REPO_FILES if name not in names]
    if missing:
        raise SegFacePublishError(f"{folder} is not a complete SegFace repo: {', '.join(missing)} missing.")
    for name, needed in (("config.json", ("AutoConfig", "AutoModelForSemanticSegmentation")),
                         ("preprocessor_config.json", ("AutoImageProcessor",))):  # fmt: skip
        data = read_json(folder / name, SegFacePublishError)
        auto_map = data.get("auto_map") or {}
        absent = [key for key in needed if key not in auto_map]
        if absent:
            raise SegFacePublishError(
                f"{folder / name} has no auto_map entry for {', '.join(absent)}; convert the model with segface_hf "
                "(it registers the classes for trust_remote_code)."
            )
        for reference in auto_map.values():
            if isinstance(reference, dict):  # one class per image-processor backend
                reference = list(reference.values())
            references = reference if isinstance(reference, (list, tuple)) else [reference]
            for item in references:
                if item is None:
                    continue
                module = item.split("--")[-1].rsplit(".", 1)[0] + ".py"
                if module not in names:
                    raise SegFacePublishError(f"{folder / name} refers to {module}, which is not in {folder}.")
    check_model_card((folder / "README.md").read_text(encoding="utf-8"))
    return names


def build_model_repo(
    checkpoint: str | os.PathLike,
    variant: str,
    output_dir: str | os.PathLike,
    repo_id: str,
    evaluation_json: str | os.PathLike | None = None,
    overwrite: bool = False,
    exports: Sequence[str] = (),
    calibration: str | os.PathLike | None = None,
) -> Path:
    """Convert an official checkpoint into a ready-to-upload repo folder with its model card.

    Args:
        checkpoint (`str` or `os.PathLike`):
            The official release file (`<variant>/model_299.pt`).
        variant (`str`):
            The variant the file belongs to, e.g. `swinb_celeba_512`.
        output_dir (`str` or `os.PathLike`):
            Where to write the folder (`README.md`, `config.json`, `model.safetensors`, `preprocessor_config.json`,
            the model code, and `evaluation.json` when given).
        repo_id (`str`):
            The Hub repo the folder is meant for; the card's snippets use it.
        evaluation_json (`str` or `os.PathLike`, *optional*):
            The JSON `scripts/evaluate.py` wrote for this checkpoint; its mean F1 goes into the card as our own
            score, and the file itself into the repo.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
        exports (`list[str]`, *optional*):
            Export formats (`EXPORT_FORMATS` of `segface_hf.release.export`) to add, each at its `hub_path` (e.g.
            `onnx/model_quantized.onnx`), checked against PyTorch before it is kept; the card lists them with
            their fidelity.
        calibration (`str` or `os.PathLike`, *optional*):
            Photos with faces for the exports' calibration and check (default: the bundled photos).

    Returns:
        `Path`: the folder.
    """
    from .conversion import convert_original_checkpoint

    check_repo_id(repo_id)
    parse_variant(variant)
    evaluation = load_evaluation(evaluation_json) if evaluation_json is not None else None
    output_dir = Path(output_dir)
    staging = _staging_dir(output_dir, overwrite)
    try:
        model_dir = staging / "repo"
        convert_original_checkpoint(checkpoint, variant, model_dir)
        config = SegFaceConfig.from_pretrained(model_dir)
        results = export_into_repo(model_dir, exports, calibration)
        card = build_model_card(config, repo_id, variant=variant, evaluation=evaluation, exports=results)
        (model_dir / "README.md").write_text(card, encoding="utf-8")
        if evaluation_json is not None:
            shutil.copyfile(evaluation_json, model_dir / EVALUATION_FILENAME)
        check_model_folder(model_dir)
        _move_into_place(model_dir, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def export_into_repo(folder: str | os.PathLike, formats: Sequence[str],
                     calibration: str | os.PathLike | None = None) -> list:  # fmt: skip
    """Export the model of a repo folder in each of `formats` into the folder, at the format's `hub_path`.

    Returns:
        list of [`~segface_hf.release.export.SegFaceExportResult`]: what was written, with its fidelity.
    """
    if not formats:
        return []
    from ..image_processing_segface import SegFaceImageProcessor
    from ..modeling_segface import SegFaceForSemanticSegmentation
    from .export import EXPORT_FORMATS, export_format, export_model, face_inputs

    folder = Path(folder)
    for name in formats:
        export_format(name)  # an unsupported name fails before anything is exported
    model = SegFaceForSemanticSegmentation.from_pretrained(folder).eval()
    processor = SegFaceImageProcessor.from_pretrained(folder)
    size = (model.config.image_size, model.config.image_size)
    faces = face_inputs(model.config, calibration, size, processor)
    return [export_model(model, folder / EXPORT_FORMATS[name].hub_path, format=name, processor=processor, faces=faces)
            for name in formats]  # fmt: skip


def _commit(api: HfApi, folder: Path, repo_id: str, repo_type: str, private: bool, commit_message: str,
            **create_kwargs) -> PublishedRepo:  # fmt: skip
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **create_kwargs)
    info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, commit_message=commit_message)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return PublishedRepo(repo_id=repo_id, repo_type=repo_type, commit_url=str(info.commit_url), files=files)


def upload_model_repo(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PublishedRepo:
    """Create the model repo (if needed) and upload a folder made by [`build_model_repo`] in one commit.

    Args:
        folder (`str` or `os.PathLike`): the repo folder; checked with [`check_model_folder`] first.
        repo_id (`str`): `ORG/NAME` on the Hub.
        private (`bool`, *optional*, defaults to `False`): create the repo private.
        token (`str`, *optional*): a Hub token; defaults to `HF_TOKEN` or the stored login.
        endpoint (`str`, *optional*): the Hub URL; defaults to `HF_ENDPOINT` or huggingface.co.
        commit_message (`str`, *optional*): the commit message.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    check_model_folder(folder)
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"Upload SegFace model converted with segface-hf ({folder.name})"
    return _commit(api, folder, repo_id, "model", private, message)


def publish_variant(
    variant: str,
    checkpoint: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    evaluation_json: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    output_dir: str | os.PathLike | None = None,
    exports: Sequence[str] = (),
    calibration: str | os.PathLike | None = None,
) -> PublishedRepo:
    """Convert one official checkpoint, write its card and upload it.

    The repo folder is built in `output_dir` (kept, e.g. for inspection) or in a temporary folder (removed);
    `exports` and `calibration` are passed to [`build_model_repo`].
    """
    if output_dir is not None:
        folder = build_model_repo(checkpoint, variant, output_dir, repo_id, evaluation_json, overwrite=True,
                                  exports=exports, calibration=calibration)  # fmt: skip
        return upload_model_repo(folder, repo_id, private=private, token=token, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="segface-publish-") as workdir:
        folder = build_model_repo(checkpoint, variant, Path(workdir) / default_repo_name(variant), repo_id,
                                  evaluation_json, exports=exports, calibration=calibration)  # fmt: skip
        return upload_model_repo(folder, repo_id, private=private, token=token, endpoint=endpoint)


def find_checkpoints(checkpoints_dir: str | os.PathLike, variants: Iterable[str] | None = None) -> dict[str, Path]:
    """Locate `<checkpoints_dir>/<variant>/model_299.pt` for each variant (default: the 14 official ones).

    Raises one error that names every missing file, so nothing is uploaded from an incomplete download.
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        raise SegFacePublishError(f"{checkpoints_dir}: no such folder of downloaded checkpoints.")
    variants = list(variants) if variants is not None else list(OFFICIAL_VARIANTS)
    found = {variant: checkpoints_dir / variant / CHECKPOINT_FILENAME for variant in variants}
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise SegFacePublishError(
            f"{len(missing)} of {len(found)} checkpoints are missing, e.g. {missing[:3]}; expected "
            f"<dir>/<variant>/{CHECKPOINT_FILENAME} as in kartiknarayan/SegFace (or use --from-official)."
        )
    return found


def _evaluation_for(evaluations_dir: Path | None, variant: str) -> Path | None:
    if evaluations_dir is None:
        return None
    for candidate in (evaluations_dir / f"{variant}.json", evaluations_dir / variant / EVALUATION_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def publish_all(
    org: str,
    checkpoints: dict[str, str | os.PathLike],
    private: bool = False,
    evaluations_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> list[PublishedRepo]:
    """Publish several variants to `ORG/segface-<variant>` repos, one after the other, with a progress bar.

    Args:
        org (`str`): the Hub user or organisation.
        checkpoints (`dict[str, path]`): variant -> checkpoint file, e.g. from [`find_checkpoints`].
        private (`bool`, *optional*, defaults to `False`): create the repos private.
        evaluations_dir (`str` or `os.PathLike`, *optional*): a folder with `<variant>.json` (or
            `<variant>/evaluation.json`) evaluation files; variants with one get our own score in the card.
    """
    if not org or "/" in org or any(c.isspace() for c in org):
        raise SegFacePublishError(f"org {org!r} must be a Hub user or organisation name, without '/'.")
    evaluations_dir = Path(evaluations_dir) if evaluations_dir is not None else None
    if evaluations_dir is not None and not evaluations_dir.is_dir():
        raise SegFacePublishError(f"{evaluations_dir}: no such folder of evaluation files.")
    results = []
    for variant, checkpoint in tqdm(list(checkpoints.items()), desc="publishing", unit="repo"):
        repo_id = f"{org}/{default_repo_name(variant)}"
        results.append(publish_variant(variant, checkpoint, repo_id, private=private,
                                       evaluation_json=_evaluation_for(evaluations_dir, variant), token=token,
                                       endpoint=endpoint))  # fmt: skip
        tqdm.write(str(results[-1]))
    return results


def publish_from_official(
    org: str,
    variants: Iterable[str] | None = None,
    private: bool = False,
    evaluations_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[PublishedRepo]:
    """Download each official checkpoint from `kartiknarayan/SegFace` (cached by `huggingface_hub`) and publish it."""
    from .hub import official_checkpoint

    variants = list(variants) if variants is not None else list(OFFICIAL_VARIANTS)
    for variant in variants:
        parse_variant(variant)
    checkpoints = {}
    for variant in tqdm(variants, desc="downloading", unit="checkpoint"):
        checkpoints[variant] = official_checkpoint(variant, cache_dir=cache_dir, token=token, endpoint=endpoint)
    return publish_all(org, checkpoints, private=private, evaluations_dir=evaluations_dir, token=token,
                       endpoint=endpoint)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The demo Space


def build_space_folder(space_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Assemble the Space repo: the app folder (`spaces/segface`) plus a copy of the `segface_hf` package.

    The Space then runs the same code as this checkout without depending on a package index: `app.py` imports
    `segface_hf` from the copy beside it, and `requirements.txt` lists the package's own dependencies.
    """
    space_dir, output_dir = Path(space_dir), Path(output_dir)
    for required in ("app.py", "requirements.txt", "README.md"):
        if not (space_dir / required).is_file():
            raise SegFacePublishError(f"{space_dir} is not a Space folder: {required} is missing.")
    package_dir = Path(__file__).resolve().parents[1]
    staging = _staging_dir(output_dir, overwrite)
    try:
        target = staging / "space"
        shutil.copytree(space_dir, target, ignore=_SPACE_IGNORE)
        if (target / "segface_hf").exists():
            raise SegFacePublishError(f"{space_dir} already holds a segface_hf folder; remove it first.")
        shutil.copytree(package_dir, target / "segface_hf", ignore=_SPACE_IGNORE)
        _move_into_place(target, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def upload_space(
    space_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PublishedRepo:
    """Build the Space folder (see [`build_space_folder`]) and upload it to a Gradio Space `repo_id`."""
    check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="segface-space-") as workdir:
        folder = build_space_folder(space_dir, Path(workdir) / "space")
        return _commit(api, folder, repo_id, "space", private, "Upload the SegFace demo", space_sdk="gradio")


__all__ = [
    "MODEL_REPO_FILES",
    "PublishedRepo",
    "SegFacePublishError",
    "build_model_repo",
    "export_into_repo",
    "build_space_folder",
    "check_model_folder",
    "check_repo_id",
    "default_repo_name",
    "find_checkpoints",
    "publish_all",
    "publish_from_official",
    "publish_variant",
    "upload_model_repo",
    "upload_space",
]
