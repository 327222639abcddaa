"""`segface export-onnx`: export a SegFace model to an ONNX graph with a dynamic batch size at a fixed resolution, run
it with onnxruntime at batch sizes 1 and 3 and compare with PyTorch. The file is kept only if the logits differ by
at most 1e-3 and at least 99.9% of the predicted classes agree; a failed export leaves nothing on disk. Needs onnx,
onnxscript and onnxruntime.

    segface export-onnx --model segface-mobilenet-celeba-512 --output onnx/model.onnx
    python scripts/export_onnx.py --model MODEL --output model.onnx --opset 18
"""

from __future__ import annotations

import argparse
import sys

from . import export

HELP = (
    "export a model to float32 ONNX (dynamic batch size), checked with onnxruntime on random inputs; "
    "`segface export` also writes onnx-fp16 and onnx-int8"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a converted SegFace folder or a Hub model id")
    parser.add_argument("--output", required=True, help="the .onnx file to write (its folder is created if needed)")
    parser.add_argument("--image-size", type=int, nargs="+", metavar="PIXELS",
                        help="HEIGHT [WIDTH] the graph takes (default: the model's image_size)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (default: 20; 18 for older runtimes)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..inference.loading import load_segface_model
    from ..release.onnx_export import SegFaceOnnxError, export_onnx

    # Everything that can be checked without the model fails here, before a possibly long load or download.
    image_size = export.image_size_option(args.image_size)
    output = Path(args.output).expanduser()
    if output.suffix != ".onnx":
        raise ValueError(f"--output must name a .onnx file, got {args.output!r}.")
    if output.is_dir():
        raise ValueError(f"--output {args.output} is a folder; name the .onnx file to write.")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it.")
    export.prepare(args)

    steps = tqdm(total=2, desc="segface export-onnx", file=sys.stderr, disable=args.quiet)
    try:
        steps.set_postfix_str("loading the model")
        model = load_segface_model(args.model).float()
        steps.update()
        steps.set_postfix_str("tracing and converting" + ("" if args.no_verify else ", checking with onnxruntime"))
        result = export_onnx(model, output, image_size=image_size, opset_version=args.opset,
                             verify=not args.no_verify, overwrite=args.overwrite)  # fmt: skip
        steps.update()
    except (SegFaceOnnxError, OSError) as error:  # main() reports them in one line, like the other usage errors
        raise ValueError(str(error)) from error
    finally:
        steps.close()
    print("segface export-onnx: " + "; ".join(str(result).splitlines()))
    return 0
