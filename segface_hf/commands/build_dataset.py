"""`segface build-dataset`: turn a raw face-parsing dataset into a `datasets` folder, and optionally upload it.

    segface build-dataset celebamask-hq --raw-dir CelebAMask-HQ --output-dir celebamask-hq-hf --num-proc 8
    segface build-dataset lapa --raw-dir LaPa --output-dir lapa-hf --push-to-hub me/lapa
    segface build-dataset helen --raw-dir helen --output-dir helen-hf
    segface build-dataset folder --images faces --masks faces --mask-suffix _seg --labels labels.json \\
        --output-dir my-faces-hf
    segface build-dataset push --output-dir lapa-hf --push-to-hub me/lapa   # upload an earlier build
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import error_summary
from ..file_utils import read_json

HELP = "build a datasets folder from CelebAMask-HQ, LaPa, Helen or your own images and label maps"

RAW_LAYOUTS = {
    "celebamask-hq": "CelebAMask-HQ folder with CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, "
    "CelebA-HQ-to-CelebA-mapping.txt and CelebA's list_eval_partition.txt",
    "lapa": "LaPa folder with {train,val,test}/{images,labels,landmarks}/",
    "helen": "Relabeled-HELEN folder with train/, test/ and landmarks.txt",
}
# Exit status when the local build is complete but its upload failed (the retry command is printed).
UPLOAD_FAILED = 3


def _add_upload_options(parser: argparse.ArgumentParser, licensed: bool, required: bool = False) -> None:
    parser.add_argument("--push-to-hub", metavar="REPO", required=required,
                        help="upload the folder to this Hub dataset repo")  # fmt: skip
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help="create a private repo (default)")  # fmt: skip
    public_help = "refused: the licence forbids redistribution" if licensed else "create a public repo (check your data's licence)"
    visibility.add_argument("--public", dest="private", action="store_false", help=public_help)
    parser.add_argument("--token", help="Hub token (defaults to the saved login or HF_TOKEN)")


def _add_build_options(parser: argparse.ArgumentParser, licensed: bool) -> None:
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write the dataset to")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for reading and encoding samples")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier build in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_upload_options(parser, licensed)


def configure(parser: argparse.ArgumentParser) -> None:
    from ..data import LICENSED_DATASETS

    layouts = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, layout in RAW_LAYOUTS.items():
        sub = layouts.add_parser(name, help=f"from the raw {name} release", description=f"Build {name}.")
        sub.add_argument("--raw-dir", required=True, type=Path, help=layout)
        _add_build_options(sub, licensed=name in LICENSED_DATASETS)
    folder = layouts.add_parser("folder", help="from your own images and label maps, matched by file stem",
                                description="Build a one-split dataset from a folder of images and a folder of label "
                                "maps.")  # fmt: skip
    folder.add_argument("--images", required=True, type=Path, help="folder of images")
    folder.add_argument("--masks", required=True, type=Path, help="folder of label maps (one class value per pixel)")
    folder.add_argument("--labels", required=True, type=Path,
                        help='labels.json: {"id2label": {"0": "background", ...}, "ignore_index": 255}')  # fmt: skip
    folder.add_argument("--mask-suffix", default="", help="text after the image stem in label map names, e.g. _seg")
    folder.add_argument("--landmarks", type=Path, help="folder of landmark .txt files (x y pairs), optional")
    folder.add_argument("--landmarks-suffix", default="", help="text after the image stem in landmark file names")
    folder.add_argument("--split", default="train", help="name of the split to write (default: train)")
    _add_build_options(folder, licensed=False)
    push = layouts.add_parser("push", help="upload an earlier build",
                              description="Upload a folder written by `segface build-dataset` to the Hub.")  # fmt: skip
    push.add_argument("--output-dir", required=True, type=Path, help="the folder an earlier build wrote")
    _add_upload_options(push, licensed=False, required=True)


def _built_dataset_name(output_dir: Path) -> str:
    from ..data import REPORT_FILE

    if not (output_dir / REPORT_FILE).is_file():
        raise ValueError(f"{output_dir} is not a folder written by `segface build-dataset` (no {REPORT_FILE}).")
    return read_json(output_dir / REPORT_FILE).get("builder", "")


def _push(args: argparse.Namespace) -> None:
    from ..data import push_dataset_to_hub

    url = push_dataset_to_hub(args.output_dir, args.push_to_hub, private=args.private, token=args.token)
    print(f"Uploaded {args.output_dir} to {url} ({'private' if args.private else 'public'}).")


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ..data import LICENSED_DATASETS, build_celebamask_hq, build_from_folder, build_helen, build_lapa

    dataset = _built_dataset_name(args.output_dir) if args.dataset == "push" else args.dataset
    if args.push_to_hub and not args.private and dataset in LICENSED_DATASETS:
        raise ValueError(f"--public is refused for {dataset}: its licence forbids redistribution; push to a private "
                         "repo.")  # fmt: skip
    try:
        if args.dataset == "push":
            _push(args)
            return 0
        common = {"num_proc": args.num_proc, "overwrite": args.overwrite, "progress": not args.no_progress}
        if args.dataset == "folder":
            summary = build_from_folder(args.images, args.masks, args.labels, args.output_dir,
                                        mask_suffix=args.mask_suffix, landmarks_dir=args.landmarks,
                                        landmarks_suffix=args.landmarks_suffix, split=args.split, **common)  # fmt: skip
        else:
            build = {"celebamask-hq": build_celebamask_hq, "lapa": build_lapa, "helen": build_helen}[args.dataset]
            summary = build(args.raw_dir, args.output_dir, **common)
        print(summary)
        if args.push_to_hub:
            _push(args)
    except HfHubHTTPError as error:
        retry = f"segface build-dataset push --output-dir {args.output_dir} --push-to-hub {args.push_to_hub}"
        print(f"segface build-dataset {args.dataset}: upload failed ({error_summary(error)}); the local folder is "
              f"complete, retry with: {retry}", file=sys.stderr)  # fmt: skip
        return UPLOAD_FAILED
    return 0
