"""Train SegFace with the paper's recipe (run it with accelerate launch for several devices).

The same as `segface train` (arguments, output and exit status); `segface train --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
