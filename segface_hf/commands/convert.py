"""`segface convert`: convert an official SegFace release checkpoint into a transformers folder (safetensors, config,
image processor and the remote code).

    segface convert --checkpoint model_299.pt --variant swinb_celeba_512 --output-dir segface-swinb-celeba-512
    python scripts/convert_original_checkpoint.py --checkpoint model_299.pt --variant mobilenet_celeba_512 \\
        --output-dir segface-mobilenet-celeba-512
"""

from __future__ import annotations

import argparse

from ..configuration_segface import OFFICIAL_VARIANTS

HELP = "convert an official SegFace checkpoint (model_299.pt) to a from_pretrained folder"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="path to the release file, e.g. model_299.pt")
    parser.add_argument(
        "--variant",
        required=True,
        help=f"the official variant the file belongs to: one of {', '.join(sorted(OFFICIAL_VARIANTS))} "
        "(or <backbone>_<dataset>_<resolution> for an unreleased backbone)",
    )
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..release.conversion import convert_original_checkpoint

    summary = convert_original_checkpoint(args.checkpoint, args.variant, args.output_dir, overwrite=args.overwrite)
    print(summary)
    return 0
