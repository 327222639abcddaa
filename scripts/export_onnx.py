"""Export a SegFace model to ONNX (dynamic batch size) and check it against PyTorch with onnxruntime.

Example:
    python scripts/export_onnx.py --model segface-mobilenet-celeba-512 --output segface-mobilenet.onnx

The same as `segface export-onnx` (arguments, output and exit status): the file is kept only if onnxruntime reproduces
PyTorch (max logit difference <= 1e-3, argmax agreement >= 99.9%).
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["export-onnx", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
