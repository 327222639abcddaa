"""The `segface` subcommands that are more than a few lines of argument handling, one module each.

Each module has `configure(parser)`, which adds its options to an `argparse` parser, and `run(args) -> int`; the
`train` and `finetune` modules parse their own arguments with `transformers.HfArgumentParser` and have
`run_argv(argv, prog) -> int` instead. `segface_hf.cli` puts them together.
"""
