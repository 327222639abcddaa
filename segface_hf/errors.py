"""The package's error base class and the one-line summary that every command prints for an error."""

from __future__ import annotations


class SegFaceError(Exception):
    """Base class of every error segface-hf raises on purpose (bad input, wrong checkpoint, failed export, ...).

    Each subclass also derives from the built-in exception a caller would expect (`ValueError` for bad input,
    `ImportError` for a missing extra, ...), so `except ValueError` keeps working; `except SegFaceError` catches all.
    """


class SegFaceMissingDependencyError(SegFaceError, ImportError):
    """An optional dependency (the face detector, PyAV, torchvision, ...) is not installed."""


def error_summary(error: BaseException) -> str:
    """The first line of an error's message, or its class name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["SegFaceError", "SegFaceMissingDependencyError", "error_summary"]
