"""`segface export`: write a SegFace model in a deployment format, checked in its runtime against PyTorch.

    segface export --model segface-mobilenet-celeba-512 --format onnx-int8 --output onnx/model_quantized.onnx
    segface export --model segface-mobilenet-celeba-512 --format onnx-int8 --quantization static --output qdq.onnx
    segface export --model ./my-model --format onnx-fp16 --output onnx/model_fp16.onnx --calibration ./photos
    segface export --model segface-mobilenet-celeba-512 --format executorch-int8 --output executorch/model_int8.pte
    segface export --model segface-mobilenet-celeba-512 --format litert-int8 --output litert/model_int8.tflite
    segface export --model segface-mobilenet-celeba-512 --format coreml-fp16 --output coreml/model_fp16.mlpackage

Formats: onnx (float32), onnx-fp16, onnx-int8 (dynamic int8, or --quantization static: QDQ calibrated on face crops);
executorch (float32 .pte, XNNPACK delegate) and executorch-int8 (PT2E, XNNPACK quantizer, calibrated); litert
(float32 .tflite) and litert-int8 (PT2E, litert-torch's quantizer, calibrated); coreml and coreml-fp16 (an ML
program .mlpackage, batch size 1; Core ML runs on Apple platforms only, so its spec is checked instead of running
it). The faces of the photos in --calibration (default: the public-domain photos bundled with the Space) are
detected and framed as the model expects; int8 ranges are calibrated on most of them and every export is run in its
runtime on the others and compared with PyTorch. The file is moved into place only if it passes the format's
thresholds (max |logit difference| and argmax agreement; see docs/deploy.md); a failed export leaves nothing on
disk. Needs onnx, onnxscript and onnxruntime (ONNX formats), executorch (ExecuTorch), litert-torch (LiteRT) or
coremltools (Core ML) and, for the faces, facenet-pytorch.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "export a model (ONNX, ExecuTorch, LiteRT or Core ML; float32, float16 or int8) and check it"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a converted SegFace folder or a Hub model id")
    parser.add_argument("--format", required=True, help="onnx, onnx-fp16, onnx-int8, executorch, executorch-int8, "
                        "litert, litert-int8, coreml or coreml-fp16")  # fmt: skip
    parser.add_argument("--output", required=True, help="the file to write (its folder is created if needed)")
    parser.add_argument("--calibration", help="folder of photos with faces (default: the bundled examples)")
    parser.add_argument("--quantization", help="onnx-int8: dynamic (default) or static (calibrated QDQ)")
    parser.add_argument("--image-size", type=int, nargs="+", metavar="PIXELS",
                        help="HEIGHT [WIDTH] the file takes (default: the model's image_size)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (default: 20)")
    parser.add_argument("--threads", type=int, help="runtime threads for the check and timing")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    parser.add_argument("--json", dest="json_path", help="also write the result (fidelity, size, latency) here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def image_size_option(values: list[int] | None) -> int | tuple[int, int] | None:
    """`--image-size HEIGHT [WIDTH]` as export functions take it."""
    if not values:
        return None
    if len(values) > 2:
        raise ValueError(f"--image-size takes HEIGHT or HEIGHT WIDTH, got {len(values)} numbers.")
    return tuple(values) if len(values) == 2 else values[0]


def load_processor(model_name_or_path: str):
    """The model's image processor, or `None` (the original's normalisation) when the folder has none."""
    import os

    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(os.path.expanduser(model_name_or_path))
    except (OSError, ValueError):
        return None


def prepare(args: argparse.Namespace, runtime: str = "onnxruntime") -> None:
    """The checks and settings every export command makes before loading the model: the model location, the
    packages of the format's `runtime` (one-line `ImportError`), and no progress bars with `--quiet`."""
    from ..inference.loading import check_model_location
    from ..release.coreml_export import require_coremltools
    from ..release.executorch_export import require_executorch
    from ..release.litert_export import require_litert
    from ..release.onnx_export import require_onnx

    check_model_location(args.model)
    requirements = {"executorch": require_executorch, "litert": require_litert, "coreml": require_coremltools}
    requirements.get(runtime, require_onnx)()
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        disable_progress_bars()


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..inference.loading import load_segface_model
    from ..release.export import check_output, check_quantization, export_format, export_model
    from ..release.onnx_export import SegFaceOnnxError

    # Everything that can be checked without the model fails here, before a possibly long load or download.
    export = export_format(args.format)
    quantization = check_quantization(export, args.quantization, "--quantization")
    image_size = image_size_option(args.image_size)
    check_output(args.output, export, args.overwrite)
    prepare(args, export.runtime)

    steps = tqdm(total=2, desc="segface export", file=sys.stderr, disable=args.quiet)
    try:
        steps.set_postfix_str("loading the model")
        model = load_segface_model(args.model).float()
        processor = load_processor(args.model)
        steps.update()
        checking = "" if args.no_verify else f", checking with {export.runtime}"
        steps.set_postfix_str(f"exporting to {export.name}{checking}")
        result = export_model(model, args.output, format=export.name, calibration=args.calibration,
                              processor=processor, image_size=image_size, quantization=quantization,
                              opset_version=args.opset, verify=not args.no_verify, overwrite=args.overwrite,
                              threads=args.threads)  # fmt: skip
        steps.update()
    except (SegFaceOnnxError, OSError) as error:  # main() reports them in one line, like the other usage errors
        raise ValueError(str(error)) from error
    finally:
        steps.close()
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result.to_dict(), handle, indent=2)
    print(f"segface export: {result}")
    return 0
