"""Export a SegFace model to ONNX (dynamic batch size) and check it against PyTorch with onnxruntime.

Example:
    python scripts/export_onnx.py --model segface-mobilenet-celeba-512 --output segface-mobilenet.onnx

The file is kept only if onnxruntime reproduces PyTorch (max logit difference <= 1e-3, argmax agreement >= 99.9%).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a converted SegFace folder or Hub repo id")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image-size", type=int, nargs="+", help="HEIGHT [WIDTH] (default: the model's)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from segface_hf import SegFaceForSemanticSegmentation
    from segface_hf.onnx_export import SegFaceOnnxError, export_onnx

    image_size = None
    if args.image_size:
        if len(args.image_size) > 2:
            print("export_onnx: error: --image-size takes HEIGHT or HEIGHT WIDTH.", file=sys.stderr)
            return 2
        image_size = tuple(args.image_size) if len(args.image_size) == 2 else args.image_size[0]
    steps = tqdm(total=2, desc="export", file=sys.stderr)
    try:
        steps.set_postfix_str("loading the model")
        model = SegFaceForSemanticSegmentation.from_pretrained(args.model).eval()
        steps.update()
        steps.set_postfix_str("tracing, converting and checking with onnxruntime")
        result = export_onnx(
            model, args.output, image_size=image_size, opset_version=args.opset, verify=not args.no_verify,
            overwrite=args.overwrite,
        )  # fmt: skip
        steps.update()
    except (ValueError, FileExistsError, OSError, SegFaceOnnxError) as error:
        steps.close()
        print(f"export_onnx: error: {error}", file=sys.stderr)
        return 2
    steps.close()
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
