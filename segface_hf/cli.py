"""The `segface` command line."""

from __future__ import annotations

import argparse
import sys

from .commands import (
    benchmark,
    build_dataset,
    convert,
    download,
    evaluate,
    export,
    export_onnx,
    finetune,
    predict,
    push,
    train,
)
from .errors import SegFaceError, error_summary

# Subcommands whose options live in their own module (configure + run), in the order `segface --help` lists them.
MODULE_COMMANDS = {"convert": convert, "predict": predict, "download": download, "export-onnx": export_onnx,
                   "export": export, "build-dataset": build_dataset, "evaluate": evaluate, "push": push,
                   "benchmark": benchmark}  # fmt: skip
# Subcommands that parse their own arguments with transformers.HfArgumentParser (run_argv).
PASSTHROUGH_COMMANDS = {"train": train, "finetune": finetune}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segface", description="SegFace face parsing.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module in MODULE_COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0],
                                    epilog=module.__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        module.configure(sub)
        sub.set_defaults(handler=module.run, parser=sub)
    for name, module in PASSTHROUGH_COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, add_help=False)
        sub.set_defaults(handler=None, passthrough=module)
    return parser


# What a command may raise for bad input: reported in one line, exit status 2.
USAGE_ERRORS = (SegFaceError, ValueError, FileExistsError, FileNotFoundError, ImportError, OSError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", None)
    if extra and passthrough is None:
        parser.parse_args(argv)  # reports the unknown arguments the usual way and exits 2
    try:
        if passthrough is not None:
            return passthrough.run_argv(argv[argv.index(args.command) + 1 :], prog=f"segface {args.command}")
        return args.handler(args)
    except USAGE_ERRORS as error:
        print(f"segface {args.command}: error: {error_summary(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
