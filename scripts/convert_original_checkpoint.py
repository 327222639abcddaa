"""Convert an official SegFace checkpoint to a transformers folder.

    python scripts/convert_original_checkpoint.py --checkpoint model_299.pt --variant swinb_celeba_512 --output-dir DIR

Same as `segface convert`; see `segface_hf.release.conversion.convert_original_checkpoint` for what is checked.
"""

import sys

from segface_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
