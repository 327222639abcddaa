"""Files: writing so that a failure never leaves a half-written one behind, and reading JSON with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder that replaces `path` only once
    complete; the folder is created if needed, and the temporary file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike, error_type: type[Exception] = ValueError, what: str = "file", expect=dict):
    """Read a UTF-8 JSON file, failing with one line of `error_type` when it is missing, not JSON, or (with
    `expect`, a type or tuple of types; `None` to accept anything) not of the expected top-level type.

    Args:
        path (`str` or `os.PathLike`): the file.
        error_type (`type[Exception]`, *optional*, defaults to `ValueError`): the error to raise.
        what (`str`, *optional*, defaults to `"file"`): how the message names the file, e.g. `"labels file"`.
        expect (`type`, *optional*, defaults to `dict`): the required type of the parsed value.

    Returns:
        The parsed value.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise error_type(f"{what} {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise error_type(f"{path} is not valid JSON ({error}).") from None
    if expect is not None and not isinstance(data, expect):
        expected = "object" if expect is dict else getattr(expect, "__name__", str(expect))
        raise error_type(f"{path}: expected a JSON {expected}, got {type(data).__name__}.")
    return data
