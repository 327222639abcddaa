"""Build a datasets folder from CelebAMask-HQ, LaPa, Helen or your own data (and optionally upload it).

The same as `segface build-dataset` (arguments, output and exit status); `segface build-dataset --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["build-dataset", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
