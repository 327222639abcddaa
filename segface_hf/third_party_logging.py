"""Filters for third-party log records that say nothing to a user of this package. Imported first by the package.

- torchao (which ExecuTorch installs) registers two Enum classes with torch's pytree when transformers imports it,
  and torch 2.14 answers each registration with a deprecation warning on stderr: a note to torchao's developers.
- coremltools and litert-torch log version notices and print progress bars or pass trees while converting:
  [`quiet_converter`] keeps them out of `segface export`'s output.
- ExecuTorch's runtime writes its CPU probing (cpuinfo) through Python's `sys.stderr` the first time its thread
  pool is resized, and a line at every resize: [`stderr_without`] with `EXECUTORCH_THREADPOOL_NOTICES` drops them.
- litert-torch's native TensorFlow library writes absl's "before InitializeLog" warning and TensorFlow's "oneDNN custom
  operations are on" notice straight to file descriptor 2 when it is imported; neither `TF_CPP_MIN_LOG_LEVEL` nor an
  explicit `TF_ENABLE_ONEDNN_OPTS=1` silences them, so [`stderr_without`] filters them out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

TORCHAO_ENUM_NOTICE = "is an Enum subclass and is now natively supported"


def not_torchao_enum_notice(record: logging.LogRecord) -> bool:
    """False for torch's notice about torchao's Enum registrations, True for every other record."""
    return TORCHAO_ENUM_NOTICE not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(not_torchao_enum_notice)


EXECUTORCH_THREADPOOL_NOTICES = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")

LITERT_IMPORT_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)


@contextlib.contextmanager
def stderr_without(*notices: str):
    """Run the block with the process's file descriptor 2 going to a temporary file and Python's `sys.stderr` to a
    buffer, then write to stderr the lines of both that contain none of `notices`: for native libraries that log where
    Python's logging cannot reach, on the descriptor (LiteRT) or through `sys.stderr` (ExecuTorch's runtime)."""
    sys.stderr.flush()
    saved = os.dup(2)
    written = io.StringIO()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stderr(written):
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            lines += written.getvalue().splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(notice in line for notice in notices))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def quiet_converter(logger_name: str, stream: str):
    """Run the block with the `logger_name` logger at ERROR, warnings ignored and Python's `sys.<stream>`
    (`"stdout"` or `"stderr"`) captured and dropped: for converters that print progress a user did not ask for."""
    redirect = {"stdout": contextlib.redirect_stdout, "stderr": contextlib.redirect_stderr}[stream]
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
