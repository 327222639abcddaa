"""Clear errors for the module paths of earlier releases.

The runtime modules moved into sub-packages by layer (`segface_hf.inference`, `segface_hf.release`,
`segface_hf.training`). Importing an old path raises `ModuleNotFoundError` naming the new one, instead of Python's
bare "No module named ...".
"""

from __future__ import annotations

import importlib.abc
import sys

MOVED_MODULES = {
    "segface_hf.faces": "segface_hf.inference.faces",
    "segface_hf.predict": "segface_hf.inference.predict",
    "segface_hf.visualization": "segface_hf.inference.visualization",
    "segface_hf.pipeline_support": "segface_hf.inference.pipeline",
    "segface_hf.conversion": "segface_hf.release.conversion",
    "segface_hf.hub": "segface_hf.release.hub",
    "segface_hf.publishing": "segface_hf.release.publishing",
    "segface_hf.model_card": "segface_hf.release.model_card",
    "segface_hf.onnx_export": "segface_hf.release.onnx_export",
    "segface_hf.evaluation": "segface_hf.training.evaluation",
    "segface_hf.benchmarking": "benchmarks.harness (in a source checkout, outside the package)",
}


class SegFaceMovedModuleFinder(importlib.abc.MetaPathFinder):
    """A finder consulted after all others: it only ever answers for a moved module, with an error."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED_MODULES.get(fullname)
        if new_name is not None:
            raise ModuleNotFoundError(f"{fullname} moved to {new_name}; import it from there.", name=fullname)
        return None


def install_moved_module_hints() -> None:
    """Append [`SegFaceMovedModuleFinder`] to `sys.meta_path` (idempotent)."""
    if not any(isinstance(finder, SegFaceMovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(SegFaceMovedModuleFinder())


__all__ = ["MOVED_MODULES", "SegFaceMovedModuleFinder", "install_moved_module_hints"]
