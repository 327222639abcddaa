"""`segface predict`: detect the faces of each image, parse each one in the framing the model was trained on, and write
a label PNG per image at its original size (plus, on request, a coloured overlay, one mask per class and one label
map per face) and summary.json. Inputs that fail are reported in one line each; the exit status is 1 if any input
failed.

    segface predict photo.jpg 'albums/**/*.jpg' clip.mp4 --model segface-mobilenet-celeba-512 --output-dir out \\
        --overlay
    segface predict --dataset my-faces --split train --model MODEL --output-dir parsed --output-format dataset
    accelerate launch --num_processes 2 -m segface_hf.cli predict photos/ --model MODEL --output-dir parsed
"""

from __future__ import annotations

import argparse
import sys

HELP = "parse the faces in images, videos, folders or glob patterns"
FRAMING_CHOICES = ("auto", "celebamask-hq", "helen", "lapa")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders (searched recursively) or "
                        "glob patterns (quote them, e.g. 'photos/**/*.jpg'); or use --dataset")  # fmt: skip
    parser.add_argument("--model", required=True, help="a converted SegFace folder or a Hub model id")
    parser.add_argument("--output-dir", required=True, help="folder for the outputs (created if needed)")
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg and legend.png")
    parser.add_argument("--masks", action="store_true", help="also write <name>_masks/<index>_<class>.png")
    parser.add_argument("--per-face", action="store_true", help="also write <name>_face<i>.png, one label map per face")
    parser.add_argument("--batch-size", type=int, help="faces per forward pass (default: 1 on the CPU, 8 on a GPU)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    parser.add_argument("--exported", metavar="FILE", help="run this export of --model (a .onnx, .pte or .tflite "
                        "file from segface export, e.g. int8) in its own runtime on the CPU instead of the PyTorch "
                        "model")  # fmt: skip
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
    parser.add_argument("--rotations", default="auto", choices=["auto", "always", "never"],
                        help="search for rotated faces: auto (only when the upright pass finds none or finds rolled "
                        "faces; fast on upright photos), always (every photo turned in 45-degree steps), never "
                        "(default: auto)")  # fmt: skip
    video = parser.add_argument_group("videos", "inputs with a video extension (.mp4, .mov, .mkv, ...) are parsed "
                                      "frame by frame with tracked faces; see docs/video.md")  # fmt: skip
    video.add_argument("--video-labels", default="video", choices=["video", "png", "none"],
                       help="per video: a lossless label video, a folder of label PNGs, or neither (default: video)")  # fmt: skip
    video.add_argument("--detect-every", type=int, default=1,
                       help="run the detector every k-th frame, tracking in between (default: 1)")  # fmt: skip
    video.add_argument("--stabilize", default="polynomial", choices=["polynomial", "one-euro", "none"],
                       help="steady each face's landmarks over time (default: polynomial, a look-ahead fit)")  # fmt: skip
    video.add_argument("--window", type=int, default=10,
                       help="frames on either side for --stabilize polynomial (default: 10)")  # fmt: skip
    video.add_argument("--label-smoothing", type=float, default=0.0,
                       help="momentum in [0, 1) of the class-probability average along a track (default: 0, off)")  # fmt: skip
    video.add_argument("--cut-threshold", type=float, default=0.3,
                       help="colour histogram distance that counts as a scene cut (default: 0.3)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true",
                        help="parse every input again (default: skip the inputs whose complete outputs exist)")  # fmt: skip
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers that decode images and detect faces (default: 0, in the process)")  # fmt: skip
    data = parser.add_argument_group("datasets in and out")
    data.add_argument("--dataset", metavar="NAME_OR_PATH",
                      help="parse the rows of a dataset instead of INPUTs: a save_to_disk folder, a .parquet file, a "
                      "data folder or a Hub dataset id")  # fmt: skip
    data.add_argument("--split", default="train", help="the dataset split to parse (default: train)")
    data.add_argument("--image-column", default="image", help="the column holding the images (default: image)")
    data.add_argument("--id-column", help="the column naming each row (default: image_id or id if present, else the "
                      "row number)")  # fmt: skip
    data.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it whole")
    data.add_argument("--output-format", default="files", choices=["files", "dataset"],
                      help="files: PNGs and summary.json; dataset: parquet shards under data/ that "
                      "datasets.load_dataset(OUTPUT_DIR) opens (default: files)")  # fmt: skip
    data.add_argument("--shard-rows", type=int, default=1000, help="rows per parquet shard (default: 1000)")
    data.add_argument("--push-to-hub", metavar="REPO_ID",
                      help="upload the dataset (--output-format dataset) to this Hub dataset repo when done")  # fmt: skip
    data.add_argument("--public", action="store_true", help="create the --push-to-hub repo public (default: private)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..inference.bulk import current_processes
    from ..inference.loading import load_model
    from ..inference.predict import SegFacePredictOptions, predict
    from ..inference.video import SegFaceVideoOptions

    video = SegFaceVideoOptions(detect_every=args.detect_every, stabilize=args.stabilize, window=args.window,
                                label_smoothing=args.label_smoothing, cut_threshold=args.cut_threshold)  # fmt: skip
    options = SegFacePredictOptions(overlay=args.overlay, masks=args.masks, per_face=args.per_face,
                                    batch_size=args.batch_size, detect=not args.no_detect, framing=args.framing,
                                    if_no_face=args.if_no_face, alpha=args.alpha,
                                    min_face_size=args.min_face_size, overwrite=args.overwrite,
                                    num_workers=args.num_workers, output_format=args.output_format,
                                    shard_rows=args.shard_rows, rotations=args.rotations, video=video,
                                    video_labels=args.video_labels)  # fmt: skip
    options.check()
    if bool(args.inputs) == bool(args.dataset):
        raise ValueError("give either INPUT files, folders or patterns, or --dataset, not both."
                         if args.inputs else "nothing to parse: give INPUT files, folders or patterns, or --dataset.")  # fmt: skip
    if args.push_to_hub and args.output_format != "dataset":
        raise ValueError("--push-to-hub uploads a dataset: add --output-format dataset.")
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        disable_progress_bars()
    processes = current_processes()
    inputs = args.inputs
    if args.dataset:
        from ..inference.dataset_io import dataset_source

        inputs = dataset_source(args.dataset, split=args.split, image_column=args.image_column,
                                id_column=args.id_column, streaming=args.streaming)  # fmt: skip
    if args.exported and args.device != "cpu":
        raise ValueError("--exported files run on the CPU: drop --device cuda.")
    model, processor = load_model(args.model, device=processes.device(args.device))
    model_name = args.model
    if args.exported:
        from ..release.exported_model import SegFaceExportedModel

        model, model_name = SegFaceExportedModel(args.exported, model.config), f"{args.model} ({args.exported})"
    summary = predict(inputs, model, processor, args.output_dir, options=options, model_name=model_name,
                      progress=not args.quiet, report=lambda line: print(f"segface predict: {line}", file=sys.stderr),
                      processes=processes)  # fmt: skip
    if processes.is_main:
        skipped = f", {summary.skipped} skipped (already parsed)" if summary.skipped else ""
        print(f"segface predict: {summary.succeeded} succeeded, {summary.failed} failed{skipped}; outputs and "
              f"summary.json in {args.output_dir}")  # fmt: skip
        if args.push_to_hub:
            from ..inference.dataset_io import push_parses_to_hub

            url = push_parses_to_hub(args.output_dir, args.push_to_hub, private=not args.public)
            print(f"segface predict: uploaded to {url}" + ("" if args.public else " (private)"))
    return 1 if summary.failed else 0
