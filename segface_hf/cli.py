"""The `segface` command line."""

from __future__ import annotations

import argparse
import sys

from .configuration_segface import OFFICIAL_VARIANTS

FRAMING_CHOICES = ("auto", "celebamask-hq", "helen", "lapa")


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


def _add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="parse the faces in images, folders or glob patterns",
        description="Detect the faces of each image, parse each one in the framing the model was trained on, and "
        "write a label PNG per image at its original size (plus, on request, a coloured overlay, one mask per class "
        "and one label map per face) and summary.json. Inputs that fail are reported in one line each; the exit "
        "status is 1 if any input failed.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or "
                        "glob patterns (quote them, e.g. 'photos/**/*.jpg')")  # fmt: skip
    parser.add_argument("--model", required=True, help="a converted SegFace folder or a Hub model id")
    parser.add_argument("--output-dir", required=True, help="folder for the outputs (created if needed)")
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg and legend.png")
    parser.add_argument("--masks", action="store_true", help="also write <name>_masks/<index>_<class>.png")
    parser.add_argument("--per-face", action="store_true", help="also write <name>_face<i>.png, one label map per face")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per forward pass (default: 4)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    parser.add_argument("--no-detect", action="store_true",
                        help="skip face detection: each image is one already-aligned face crop")  # fmt: skip
    parser.add_argument("--if-no-face", default="error", choices=["error", "whole-image"],
                        help="what to do with an image without a detected face (default: error)")  # fmt: skip
    parser.add_argument("--framing", default="auto", choices=FRAMING_CHOICES,
                        help="face crop to cut (default: auto, from the model's label set)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default: 0.5)")
    parser.add_argument(
        "--min-face-size", type=int, default=20, help="smallest face to detect, in pixels (default: 20)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_predict)


def _run_predict(args) -> int:
    from .predict import SegFacePredictOptions, load_model, predict

    options = SegFacePredictOptions(overlay=args.overlay, masks=args.masks, per_face=args.per_face,
                                    batch_size=args.batch_size, detect=not args.no_detect, framing=args.framing,
                                    if_no_face=args.if_no_face, alpha=args.alpha,
                                    min_face_size=args.min_face_size)  # fmt: skip
    options.check()
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        disable_progress_bars()
    model, processor = load_model(args.model, device=args.device)
    summary = predict(args.inputs, model, processor, args.output_dir, options=options, model_name=args.model,
                      progress=not args.quiet, report=lambda line: print(f"segface predict: {line}", file=sys.stderr))  # fmt: skip
    print(f"segface predict: {summary.succeeded} succeeded, {summary.failed} failed; outputs and summary.json in "
          f"{args.output_dir}")  # fmt: skip
    return 1 if summary.failed else 0


def _add_download_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download an official checkpoint from kartiknarayan/SegFace, convert and verify it",
        description="Fetch VARIANT/model_299.pt from the Hub repo kartiknarayan/SegFace (cached by huggingface_hub), "
        "convert it to a from_pretrained folder and check that it loads and runs.",
    )
    parser.add_argument("variant", metavar="VARIANT", help=f"one of {', '.join(sorted(OFFICIAL_VARIANTS))}")
    parser.add_argument("--output-dir", help="folder to write (default: segface-<variant with dashes>)")
    parser.add_argument("--cache-dir", help="huggingface_hub cache folder (default: the usual HF cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(handler=_run_download)


def _run_download(args) -> int:
    from .hub import download_official

    print(download_official(args.variant, args.output_dir, cache_dir=args.cache_dir, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segface", description="SegFace face parsing.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_download_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError, ImportError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"segface {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
