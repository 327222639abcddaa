"""`segface push`: publish converted official variants (with their model cards) or the demo Space to the Hub.

    segface push --variant swinb_celeba_512 --checkpoint model_299.pt --repo-id ORG/segface-swinb-celeba-512
    segface push --all --checkpoints-dir checkpoints --org ORG
    segface push --from-official --org ORG [--variants a,b]
    segface push --space --repo-id ORG/segface-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..configuration_segface import OFFICIAL_VARIANTS

HELP = "publish converted official variants with their model cards, or the demo Space, to the Hub"
# The Space folder of a source checkout (the Space is not part of the installed package).
SPACE_DIR = Path(__file__).resolve().parents[2] / "spaces" / "segface"
# Options each mode needs, checked after parsing (argparse cannot tie them to one member of the mode group).
REQUIRED_OPTIONS = {"variant": ("checkpoint", "repo_id"), "all": ("checkpoints_dir", "org"),
                    "from_official": ("org",), "space": ("repo_id",)}  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--variant", help=f"the official variant of --checkpoint: {', '.join(OFFICIAL_VARIANTS)}")
    mode.add_argument("--all", action="store_true", help="publish all 14 official variants from --checkpoints-dir")
    mode.add_argument("--from-official", action="store_true", help="download the official checkpoints and publish")
    mode.add_argument("--space", action="store_true", help="upload the demo Space (spaces/segface + the package)")
    parser.add_argument("--checkpoint", help="the release file model_299.pt (with --variant)")
    parser.add_argument("--repo-id", help="ORG/NAME of the target repo (with --variant or --space)")
    parser.add_argument("--checkpoints-dir", help="folder with <variant>/model_299.pt (with --all)")
    parser.add_argument("--org", help="Hub user or organisation; repos are named ORG/segface-<variant>")
    parser.add_argument("--variants", help="comma-separated subset of variants (with --from-official)")
    parser.add_argument("--eval-json", help="evaluation JSON from `segface evaluate` (with --variant)")
    parser.add_argument("--eval-dir", help="folder of <variant>.json evaluation files (with --all/--from-official)")
    parser.add_argument("--output-dir", help="keep the built repo folder here (with --variant)")
    parser.add_argument("--space-dir", default=str(SPACE_DIR), help="the Space folder (with --space)")
    parser.add_argument("--exports", nargs="+", default=[], metavar="FORMAT",
                        help="with --variant: also put these `segface export` formats in the repo (e.g. onnx "
                        "onnx-int8 executorch-int8), each checked against PyTorch, listed in the card with its "
                        "fidelity")  # fmt: skip
    parser.add_argument("--calibration", help="photos with faces for --exports (default: the bundled photos)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")


def run(args: argparse.Namespace) -> int:
    from ..release import publishing

    mode = next(name for name in REQUIRED_OPTIONS if getattr(args, name))
    missing = [f"--{name.replace('_', '-')}" for name in REQUIRED_OPTIONS[mode] if not getattr(args, name)]
    if missing:
        args.parser.error(f"this mode needs {' and '.join(missing)}")
    if mode == "variant":
        results = [publishing.publish_variant(args.variant, args.checkpoint, args.repo_id, private=args.private,
                                              evaluation_json=args.eval_json, token=args.token,
                                              output_dir=args.output_dir, exports=args.exports,
                                              calibration=args.calibration)]  # fmt: skip
    elif mode == "all":
        checkpoints = publishing.find_checkpoints(args.checkpoints_dir)
        results = publishing.publish_all(args.org, checkpoints, private=args.private, evaluations_dir=args.eval_dir,
                                         token=args.token)  # fmt: skip
    elif mode == "from_official":
        variants = args.variants.split(",") if args.variants else None
        results = publishing.publish_from_official(args.org, variants, private=args.private,
                                                   evaluations_dir=args.eval_dir, token=args.token)  # fmt: skip
    else:
        results = [publishing.upload_space(args.space_dir, args.repo_id, private=args.private, token=args.token)]
    for result in results:
        print(result)
    return 0
