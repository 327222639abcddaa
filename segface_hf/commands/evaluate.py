"""`segface evaluate`: score a SegFace model on a labelled dataset split with the paper's protocol.

    segface evaluate --model MODEL --dataset DATASET --split test [--at model|native]
    segface evaluate --model MODEL --dataset helen-built --split test --merged-entries helen --model-card
    segface evaluate --model MODEL --dataset DATASET --split test --constant-prediction background

Prints the per-class table with mean F1, writes the scores as JSON (--output-json, default
eval_<split>_<at>.json in the model folder, or in the current folder for a Hub model) and, with --model-card, records
them in the model's README.md. See docs/training.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..metrics.results import EvaluationResult

HELP = "score a model on a labelled dataset split with the paper's protocol (mean F1)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub repo")
    parser.add_argument("--dataset", required=True, help="dataset folder or Hub dataset repo")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--at", choices=["model", "native"], default="model",
                        help="compare at the model resolution with nearest-resized labels (the paper's protocol, "
                             "default) or at each label's native resolution")  # fmt: skip
    parser.add_argument("--labels", default=None, help="labels.json of the dataset (default: its id2label.json)")
    parser.add_argument("--dataset-config", default=None, help="configuration name of the dataset")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument(
        "--landmarks-column", default="auto", help="'auto' (landmarks_5 for LaPa models), a name, or 'none'"
    )
    parser.add_argument(
        "--crop-box-column", default="auto", help="'auto' (crop_box when present, Helen), a name, or 'none'"
    )
    parser.add_argument("--merged-entries", default=None, choices=["helen"], help="add Helen's merged F1 entries")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--output-json", default=None, help="where to write the scores as JSON")
    parser.add_argument("--model-card", nargs="?", const="auto", default=None,
                        help="record the scores in a model card: the model folder's README.md, or the given path")  # fmt: skip
    parser.add_argument("--exported", default=None, metavar="FILE",
                        help="score a file segface export wrote from --model (e.g. int8 ONNX) in its own runtime, "
                             "and report its pixel agreement with the PyTorch model")  # fmt: skip
    parser.add_argument("--constant-prediction", default=None, metavar="CLASS",
                        help="score the trivial predictor that outputs CLASS (a name of the model's classes) "
                             "everywhere instead of the model: a floor to compare against")  # fmt: skip


def _constant_baseline(args) -> EvaluationResult:
    from ..configuration_segface import SegFaceConfig
    from ..training.evaluation import constant_prediction_scores, model_label_mapping
    from ..training.sources import load_dataset_splits, resolve_label_spec

    config = SegFaceConfig.from_pretrained(args.model)
    names = [config.id2label[i] for i in range(config.num_labels)]
    spec = resolve_label_spec(args.dataset, args.labels)
    if spec is not None and args.constant_prediction not in names:
        names = [spec.id2label[v] for v in sorted(spec.id2label)]
    if args.constant_prediction not in names:
        raise ValueError(f"--constant-prediction {args.constant_prediction!r} is not one of the classes {names}.")
    splits = load_dataset_splits(args.dataset, args.dataset_config)
    if args.split not in splits:
        raise ValueError(f"the dataset has no split {args.split!r}; its splits are {sorted(splits)}.")
    mapping = model_label_mapping(dict(enumerate(names)), spec, config.loss_ignore_index)
    crop = (
        "crop_box"
        if args.crop_box_column == "auto"
        else (None if args.crop_box_column == "none" else args.crop_box_column)
    )
    if crop not in splits[args.split].column_names:
        crop = None
    start = time.time()
    scores = constant_prediction_scores(
        splits[args.split], mapping, names.index(args.constant_prediction), config.image_size, at=args.at,
        label_column=args.label_column, crop_box_column=crop, merged_entries=args.merged_entries,
    )  # fmt: skip
    return EvaluationResult(scores=scores, protocol=args.at, dataset=args.dataset, split=args.split,
                            model=f"constant prediction '{args.constant_prediction}'", seconds=time.time() - start,
                            settings={"image_size": config.image_size})  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..training.evaluation import evaluate_pretrained, format_scores_table, write_model_card

    if args.exported and (args.model_card is not None or args.constant_prediction is not None):
        raise ValueError("--exported scores an export of --model; leave out --model-card and --constant-prediction.")
    if args.constant_prediction is not None:
        result = _constant_baseline(args)
    else:
        result = evaluate_pretrained(
            args.model, args.dataset, split=args.split, at=args.at, labels=args.labels,
            dataset_config=args.dataset_config, image_column=args.image_column, label_column=args.label_column,
            landmarks_column=args.landmarks_column, crop_box_column=args.crop_box_column,
            merged_entries=args.merged_entries, batch_size=args.batch_size, num_workers=args.num_workers,
            device=args.device, exported=args.exported,
        )  # fmt: skip
    model_dir = Path(args.model)
    local = model_dir.is_dir()
    if args.constant_prediction:
        suffix = "_constant_" + args.constant_prediction
    else:
        suffix = "_" + Path(args.exported).stem if args.exported else ""
    default_json = (model_dir if local else Path.cwd()) / f"eval_{args.split}_{args.at}{suffix}.json"
    json_path = result.save(args.output_json or default_json)
    card_path = None
    if args.model_card is not None:
        if args.model_card == "auto" and not local:
            raise ValueError("--model-card without a path needs a local model folder; give the README.md path.")
        card_path = write_model_card(result, model_dir / "README.md" if args.model_card == "auto" else args.model_card)
    print(f"{result.model} on {args.dataset} [{args.split}], {result.scores['num_images']} images, "
          f"{args.at} resolution ({result.seconds:.1f} s)")  # fmt: skip
    print(format_scores_table(result.scores))
    mean_f1 = result.scores["mean_f1"]
    print(f"mean F1 {100 * mean_f1:.2f}" if mean_f1 is not None else "mean F1 undefined")
    if "argmax_agreement" in result.scores:
        agreement = 100 * result.scores["argmax_agreement"]
        print(f"pixels where the export predicts the PyTorch model's class: {agreement:.2f}%")
    print(f"scores written to {json_path}" + (f" and {card_path}" if card_path else ""))
    return 0
