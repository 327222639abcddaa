"""`segface finetune`: fine-tune a SegFace model on your own faces and labels with `transformers.Trainer`.

    segface finetune --model MODEL --dataset DATASET --labels labels.json --output_dir OUT \\
        --num_train_epochs 20 --per_device_train_batch_size 4 --learning_rate 1e-4 --eval_strategy epoch

The class tokens are adapted to the dataset's label set (same-meaning classes keep their token, e.g. left_eye =
l_eye); every `TrainingArguments` option is accepted. See docs/training.md.
"""

from __future__ import annotations

import json

HELP = "fine-tune on your own faces and labels with transformers.Trainer (every TrainingArguments option)"


def run_argv(argv: list[str], prog: str) -> int:
    from transformers import HfArgumentParser, TrainingArguments

    from ..training.finetune import SegFaceFinetuneArguments, finetune

    parser = HfArgumentParser((SegFaceFinetuneArguments, TrainingArguments), prog=prog,
                              description=__doc__.split("\n\n")[0])  # fmt: skip
    args, training_args = parser.parse_args_into_dataclasses(argv)
    result = finetune(args, training_args)
    if training_args.process_index == 0:
        kept = {new: old for new, old in result["tokens"].items() if old is not None}
        fresh = [new for new, old in result["tokens"].items() if old is None]
        print(f"class tokens kept from the model: {json.dumps(kept)}; initialised: {fresh}")
        if result["eval"] is not None:
            print(f"evaluation mean F1 {result['eval'].get('eval_mean_f1')}")
        print(f"model and processor saved to {training_args.output_dir}")
    return 0
