"""Score a SegFace model on a labelled dataset split with the paper's protocol.

The same as `segface evaluate` (arguments, output and exit status); `segface evaluate --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
