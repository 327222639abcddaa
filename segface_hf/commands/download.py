"""`segface download`: fetch VARIANT/model_299.pt from the Hub repo kartiknarayan/SegFace (cached by huggingface_hub),
convert it to a from_pretrained folder and check that it loads and runs.

    segface download swinb_celeba_512 --output-dir segface-swinb-celeba-512
"""

from __future__ import annotations

import argparse

from ..configuration_segface import OFFICIAL_VARIANTS

HELP = "download an official checkpoint from kartiknarayan/SegFace, convert and verify it"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", metavar="VARIANT", help=f"one of {', '.join(sorted(OFFICIAL_VARIANTS))}")
    parser.add_argument("--output-dir", help="folder to write (default: segface-<variant with dashes>)")
    parser.add_argument("--cache-dir", help="huggingface_hub cache folder (default: the usual HF cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..release.hub import download_official

    print(download_official(args.variant, args.output_dir, cache_dir=args.cache_dir, overwrite=args.overwrite))
    return 0
