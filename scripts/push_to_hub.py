"""Publish converted official variants with their model cards, or the demo Space, to the Hub.

The same as `segface push` (arguments, output and exit status); `segface push --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["push", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
