"""Train SegFace with the paper's recipe, on one device or many.

    accelerate launch scripts/train.py --dataset DIR_OR_REPO --variant swinb_celeba_512 --output-dir OUT
    accelerate launch --num_processes 8 scripts/train.py --dataset lapa-built --variant swinb_lapa_448 --output-dir run
    python scripts/train.py --dataset DIR --variant mobilenet_celeba_512 --output-dir OUT --resume-from-checkpoint latest

Every field of `segface_hf.training.SegFaceTrainingRecipe` is an option (`--help` lists them); `--recipe file.json`
reads them from a JSON file instead. See docs/training.md.
"""

import logging
import sys

from transformers import HfArgumentParser

from segface_hf.training import BackboneWeightsError, SegFaceTrainingRecipe, train


def main(argv=None) -> int:
    parser = HfArgumentParser(SegFaceTrainingRecipe, description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=None, help="JSON file with recipe fields (instead of options)")
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "--recipe" in argv:
            index = argv.index("--recipe")
            if index + 1 >= len(argv) or len(argv) != 2:
                parser.error("--recipe FILE takes the whole recipe; give no other options with it.")
            (recipe,) = parser.parse_json_file(argv[index + 1])
        else:
            recipe, _ = parser.parse_args_into_dataclasses(argv)
    except ValueError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        result = train(recipe)
    except (ValueError, BackboneWeightsError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    if not result.is_main_process:
        return 0
    print(f"Trained {result.global_step} steps ({result.epochs} epochs); model saved to {result.output_dir}")
    if result.eval_results is not None:
        print(f"validation mean F1 {result.eval_results['mean_f1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
