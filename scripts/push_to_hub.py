"""Publish converted SegFace models (or the demo Space) to the Hugging Face Hub.

    python scripts/push_to_hub.py --variant swinb_celeba_512 --checkpoint model_299.pt --repo-id ORG/NAME \
        [--private] [--eval-json evaluation.json] [--output-dir DIR]
    python scripts/push_to_hub.py --all --checkpoints-dir DIR --org ORG [--eval-dir DIR]   # DIR/<variant>/model_299.pt
    python scripts/push_to_hub.py --from-official --org ORG [--variants a,b]              # from kartiknarayan/SegFace
    python scripts/push_to_hub.py --space --repo-id ORG/NAME [--space-dir spaces/segface]

The token comes from --token, HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segface_hf.configuration_segface import OFFICIAL_VARIANTS

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "segface"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--eval-json", help="evaluation JSON from scripts/evaluate.py (with --variant)")
    parser.add_argument("--eval-dir", help="folder of <variant>.json evaluation files (with --all/--from-official)")
    parser.add_argument("--output-dir", help="keep the built repo folder here (with --variant)")
    parser.add_argument("--space-dir", default=str(SPACE_DIR), help="the Space folder (with --space)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    return parser


def _require(args, parser, *names: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if not getattr(args, name)]
    if missing:
        parser.error(f"this mode needs {' and '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from segface_hf.release import publishing

    try:
        if args.variant:
            _require(args, parser, "checkpoint", "repo_id")
            results = [publishing.publish_variant(args.variant, args.checkpoint, args.repo_id, private=args.private,
                                                  evaluation_json=args.eval_json, token=args.token,
                                                  output_dir=args.output_dir)]  # fmt: skip
        elif args.all:
            _require(args, parser, "checkpoints_dir", "org")
            checkpoints = publishing.find_checkpoints(args.checkpoints_dir)
            results = publishing.publish_all(args.org, checkpoints, private=args.private,
                                             evaluations_dir=args.eval_dir, token=args.token)  # fmt: skip
        elif args.from_official:
            _require(args, parser, "org")
            variants = args.variants.split(",") if args.variants else None
            results = publishing.publish_from_official(args.org, variants, private=args.private,
                                                       evaluations_dir=args.eval_dir, token=args.token)  # fmt: skip
        else:
            _require(args, parser, "repo_id")
            results = [publishing.upload_space(args.space_dir, args.repo_id, private=args.private, token=args.token)]
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"push_to_hub: error: {message}", file=sys.stderr)
        return 2
    for result in results:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
