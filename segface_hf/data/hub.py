"""Upload a built dataset folder to a Hub dataset repo."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi

from .labels import ID2LABEL_FILE
from .writer import DATA_DIR, REPORT_FILE

# The report lists local paths and is for the person who built the copy; everything else is uploaded.
NOT_UPLOADED = [REPORT_FILE]


def push_dataset_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a folder written by the builders to a Hub dataset repo.

    Creates the repo if needed, refuses to put data into an existing public repo when `private` is set, and
    replaces the repo's `data/` shards, `README.md` and `id2label.json` in one commit (stale shards of an earlier
    build are deleted). `build_report.json` stays local.

    Args:
        output_dir (`str` or `Path`):
            A folder written by `write_dataset` (or `build_*`).
        repo_id (`str`):
            `namespace/name` of the dataset repo.
        private (`bool`, *optional*, defaults to `True`):
            Create the repo private, and require an existing repo to be private.
        token (`str`, *optional*):
            Hub token; defaults to the saved login or `HF_TOKEN`.
        commit_message (`str`, *optional*):
            Defaults to "Upload <builder> built with segface-hf".
        endpoint (`str`, *optional*):
            Hub endpoint; defaults to `HF_ENDPOINT` or huggingface.co.

    Returns:
        `str`: the URL of the dataset repo.

    Raises:
        `ValueError`: `output_dir` is not a built dataset folder, or the existing repo is public while `private`
        is set.
    """
    folder = Path(output_dir).expanduser().resolve()
    report_path = folder / REPORT_FILE
    if not (report_path.is_file() and (folder / "README.md").is_file() and (folder / DATA_DIR).is_dir()):
        raise ValueError(
            f"{folder} is not a dataset folder written by the builder (needs README.md, {DATA_DIR}/ and {REPORT_FILE})."
        )
    builder = json.loads(report_path.read_text(encoding="utf-8")).get("builder", "dataset")
    return upload_dataset_folder(folder, repo_id, private=private, token=token, endpoint=endpoint,
                                 commit_message=commit_message or f"Upload {builder} built with segface-hf",
                                 ignore_patterns=NOT_UPLOADED,
                                 delete_patterns=[f"{DATA_DIR}/*", "README.md", ID2LABEL_FILE])  # fmt: skip


def upload_dataset_folder(folder: Path, repo_id: str, *, private: bool, token: str | None, endpoint: str | None,
                          commit_message: str, delete_patterns: list[str], ignore_patterns: list[str] | None = None,
                          allow_patterns: list[str] | None = None) -> str:  # fmt: skip
    """Upload `folder` to the dataset repo `repo_id` in one commit (created if needed; with `private`, an existing
    public repo is refused), replacing the repo files matching `delete_patterns`; returns the repo URL."""
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if private:
        info = api.repo_info(url.repo_id, repo_type="dataset")
        if not info.private:
            raise ValueError(
                f"dataset repo {url.repo_id} already exists and is public; make it private on the Hub or choose "
                "another repo before uploading licensed data."
            )
    api.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=folder, commit_message=commit_message,
                      allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                      delete_patterns=delete_patterns)  # fmt: skip
    return str(url)
