"""Time SegFace beside the original code and onnxruntime (interleaved, median of repeats).

The same as `segface benchmark` (arguments, output and exit status); `segface benchmark --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
