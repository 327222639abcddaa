#!/usr/bin/env python
"""Turn a raw face-parsing dataset into a `datasets` folder, and optionally upload it to a Hub dataset repo.

Examples:

    python scripts/build_dataset.py celebamask-hq --raw-dir CelebAMask-HQ --output-dir celebamask-hq-hf --num-proc 8
    python scripts/build_dataset.py lapa --raw-dir LaPa --output-dir lapa-hf --push-to-hub me/lapa
    python scripts/build_dataset.py helen --raw-dir helen --output-dir helen-hf
    python scripts/build_dataset.py folder --images faces --masks faces --mask-suffix _seg --labels labels.json \\
        --output-dir my-faces-hf
    python scripts/build_dataset.py push --output-dir lapa-hf --push-to-hub me/lapa   # upload an earlier build
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if (REPO_ROOT / "segface_hf").is_dir():
    sys.path.insert(0, str(REPO_ROOT))

from huggingface_hub.errors import HfHubHTTPError  # noqa: E402

from segface_hf.data import (  # noqa: E402
    LICENSED_DATASETS,
    REPORT_FILE,
    RawLayoutError,
    build_celebamask_hq,
    build_from_folder,
    build_helen,
    build_lapa,
    push_dataset_to_hub,
)

RAW_LAYOUTS = {
    "celebamask-hq": (
        build_celebamask_hq,
        "CelebAMask-HQ folder with CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, CelebA-HQ-to-CelebA-mapping.txt and "
        "CelebA's list_eval_partition.txt",
    ),
    "lapa": (build_lapa, "LaPa folder with {train,val,test}/{images,labels,landmarks}/"),
    "helen": (build_helen, "Relabeled-HELEN folder with train/, test/ and landmarks.txt"),
}


def _add_common(parser: argparse.ArgumentParser, licensed: bool) -> None:
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write the dataset to")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for reading and encoding samples")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier build in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub dataset repo")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private", dest="private", action="store_true", default=True, help="create a private repo (default)"
    )
    public_help = (
        "refused: the licence forbids redistribution"
        if licensed
        else "create a public repo (check your data's licence)"
    )
    visibility.add_argument("--public", dest="private", action="store_false", help=public_help)
    parser.add_argument("--token", help="Hub token (defaults to the saved login or HF_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_dataset.py",
        description="Build a datasets folder (parquet shards, dataset card, build report) from raw face-parsing data.",
    )
    subparsers = parser.add_subparsers(dest="dataset", required=True)
    for name, (_, layout) in RAW_LAYOUTS.items():
        sub = subparsers.add_parser(name, help=f"from the raw {name} release", description=f"Build {name}.")
        sub.add_argument("--raw-dir", required=True, type=Path, help=layout)
        _add_common(sub, licensed=name in LICENSED_DATASETS)
    folder = subparsers.add_parser(
        "folder",
        help="from your own images and label maps, matched by file stem",
        description="Build a one-split dataset from a folder of images and a folder of label maps.",
    )
    folder.add_argument("--images", required=True, type=Path, help="folder of images")
    folder.add_argument("--masks", required=True, type=Path, help="folder of label maps (one class value per pixel)")
    folder.add_argument(
        "--labels",
        required=True,
        type=Path,
        help='labels.json: {"id2label": {"0": "background", ...}, "ignore_index": 255}',
    )
    folder.add_argument("--mask-suffix", default="", help="text after the image stem in label map names, e.g. _seg")
    folder.add_argument("--landmarks", type=Path, help="folder of landmark .txt files (x y pairs), optional")
    folder.add_argument("--landmarks-suffix", default="", help="text after the image stem in landmark file names")
    folder.add_argument("--split", default="train", help="name of the split to write (default: train)")
    _add_common(folder, licensed=False)
    push = subparsers.add_parser(
        "push", help="upload an earlier build", description="Upload a folder written by this script to the Hub."
    )
    push.add_argument("--output-dir", required=True, type=Path, help="the folder an earlier build wrote")
    push.add_argument("--push-to-hub", metavar="REPO", required=True, help="Hub dataset repo to upload to")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True, help="private (default)")
    visibility.add_argument("--public", dest="private", action="store_false", help="public (not for licensed data)")
    push.add_argument("--token", help="Hub token (defaults to the saved login or HF_TOKEN)")
    return parser


def _built_dataset_name(output_dir: Path) -> str:
    report = output_dir / REPORT_FILE
    if not report.is_file():
        raise ValueError(f"{output_dir} is not a folder written by this script (no {REPORT_FILE}).")
    return json.loads(report.read_text(encoding="utf-8")).get("builder", "")


def _push(args: argparse.Namespace, dataset: str) -> None:
    url = push_dataset_to_hub(args.output_dir, args.push_to_hub, private=args.private, token=args.token)
    print(f"Uploaded {args.output_dir} to {url} ({'private' if args.private else 'public'}).")


def run(args: argparse.Namespace) -> int:
    dataset = _built_dataset_name(args.output_dir) if args.dataset == "push" else args.dataset
    if args.push_to_hub and not args.private and dataset in LICENSED_DATASETS:
        raise ValueError(
            f"--public is refused for {dataset}: its licence forbids redistribution; push to a private repo."
        )
    if args.dataset == "push":
        _push(args, dataset)
        return 0
    common = {"num_proc": args.num_proc, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.dataset == "folder":
        summary = build_from_folder(
            args.images,
            args.masks,
            args.labels,
            args.output_dir,
            mask_suffix=args.mask_suffix,
            landmarks_dir=args.landmarks,
            landmarks_suffix=args.landmarks_suffix,
            split=args.split,
            **common,
        )
    else:
        build, _ = RAW_LAYOUTS[args.dataset]
        summary = build(args.raw_dir, args.output_dir, **common)
    print(summary)
    if args.push_to_hub:
        _push(args, dataset)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except HfHubHTTPError as error:
        retry = f"python {sys.argv[0]} push --output-dir {args.output_dir} --push-to-hub {args.push_to_hub}"
        print(
            f"build_dataset.py {args.dataset}: upload failed ({str(error).splitlines()[0]}); the local folder is "
            f"complete, retry with: {retry}",
            file=sys.stderr,
        )
        return 3
    except (RawLayoutError, ValueError, FileExistsError, OSError) as error:
        print(f"build_dataset.py {args.dataset}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
