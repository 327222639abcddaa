"""The `segface` command line."""

from __future__ import annotations

import argparse
import sys

from .configuration_segface import OFFICIAL_VARIANTS


def _add_convert_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official SegFace checkpoint (model_299.pt) to a from_pretrained folder",
        description="Convert an official SegFace release checkpoint into a transformers folder (safetensors, config, "
        "image processor and the remote code).",
    )
    parser.add_argument("--checkpoint", required=True, help="path to the release file, e.g. model_299.pt")
    parser.add_argument(
        "--variant",
        required=True,
        help=f"the official variant the file belongs to: one of {', '.join(sorted(OFFICIAL_VARIANTS))} "
        "(or <backbone>_<dataset>_<resolution> for an unreleased backbone)",
    )
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(handler=_run_convert)


def _run_convert(args) -> int:
    from .conversion import convert_original_checkpoint

    summary = convert_original_checkpoint(args.checkpoint, args.variant, args.output_dir, overwrite=args.overwrite)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segface", description="SegFace face parsing.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"segface {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
