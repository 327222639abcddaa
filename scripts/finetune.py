"""Fine-tune a SegFace model on your own faces and labels with transformers.Trainer.

The same as `segface finetune` (arguments, output and exit status); `segface finetune --help` lists the options.
"""

from __future__ import annotations

import sys

from segface_hf.cli import main as segface_main


def main(argv: list[str] | None = None) -> int:
    return segface_main(["finetune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
