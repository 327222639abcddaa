"""`segface train`: train SegFace with the paper's recipe, on one device or many.

    accelerate launch -m segface_hf.cli train --dataset DIR_OR_REPO --variant swinb_celeba_512 --output-dir OUT
    accelerate launch --num_processes 8 -m segface_hf.cli train --dataset lapa-built --variant swinb_lapa_448 \\
        --output-dir run
    segface train --dataset DIR --variant mobilenet_celeba_512 --output-dir OUT --resume-from-checkpoint latest

Every field of `segface_hf.training.SegFaceTrainingRecipe` is an option (`--help` lists them); `--recipe file.json`
reads them from a JSON file instead. See docs/training.md.
"""

from __future__ import annotations

import logging

HELP = "train with the paper's recipe (accelerate: one device or many); every recipe field is an option"


def run_argv(argv: list[str], prog: str) -> int:
    from transformers import HfArgumentParser

    from ..training import SegFaceTrainingRecipe, train

    parser = HfArgumentParser(SegFaceTrainingRecipe, prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=None, help="JSON file with recipe fields (instead of options)")
    if "--recipe" in argv:
        index = argv.index("--recipe")
        if index + 1 >= len(argv) or len(argv) != 2:
            parser.error("--recipe FILE takes the whole recipe; give no other options with it.")
        (recipe,) = parser.parse_json_file(argv[index + 1])
    else:
        recipe, _ = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    result = train(recipe)
    if not result.is_main_process:
        return 0
    print(f"Trained {result.global_step} steps ({result.epochs} epochs); model saved to {result.output_dir}")
    if result.eval_results is not None:
        print(f"validation mean F1 {result.eval_results['mean_f1']}")
    return 0
