"""Fine-tune a SegFace model with `transformers.Trainer` on any dataset with image and label-map columns and any
label set.

The model keeps everything but its class tokens, which are adapted to the new label set: a new class whose name
means the same as one of the model's classes (exactly, or through the synonym table below, e.g. `left_eye` =
`l_eye`) starts from that class's token; the others start from a fresh draw from a normal distribution with the
standard deviation of the model's existing tokens (so that new and kept tokens have the same scale). Matching is by name only, so the two label sets must use the
same left/right convention (both the person's left, or both image-left) for the matched eye, brow and ear tokens to
mean the same thing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..image_processing_segface import SegFaceImageProcessor
from ..metrics import confusion_matrix, flatten_scores, scores_from_confusion
from ..modeling_segface import SegFaceForSemanticSegmentation
from .data import SegFaceLabelMapping, SegFaceRandomAffine, SegFaceSegmentationDataset, model_inputs, segface_collate

logger = logging.getLogger(__name__)

# Names that mean the same class. The first name of each group is the one segface-hf's label sets use.
CLASS_SYNONYMS = (
    ("background", "bg", "_background_"),
    ("skin", "face", "face_skin", "facial_skin", "face_lr_rr"),
    ("l_brow", "left_brow", "left_eyebrow", "l_eyebrow", "lb"),
    ("r_brow", "right_brow", "right_eyebrow", "r_eyebrow", "rb"),
    ("l_eye", "left_eye", "le"),
    ("r_eye", "right_eye", "re"),
    ("l_ear", "left_ear"),
    ("r_ear", "right_ear"),
    ("nose",),
    ("mouth", "inner_mouth", "mouth_interior", "imouth", "im"),
    ("u_lip", "upper_lip", "top_lip", "ulip", "ul"),
    ("l_lip", "lower_lip", "bottom_lip", "llip", "ll"),
    ("hair",),
    ("neck",),
    ("cloth", "clothes", "clothing"),
    ("eye_g", "glasses", "eyeglasses", "eye_glasses", "glass", "spectacles"),
    ("hat", "headwear", "cap"),
    ("ear_r", "earring", "earrings"),
    ("neck_l", "necklace"),
)
_CANONICAL = {name: group[0] for group in CLASS_SYNONYMS for name in group}


def canonical_class_name(name: str) -> str:
    """The name a class is matched by: lower case, spaces and dashes as underscores, synonyms resolved."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return _CANONICAL.get(key, key)


def match_class_tokens(old_id2label: Mapping[int, str], new_id2label: Mapping[int, str]) -> dict[int, int | None]:
    """For each new class index, the old class index whose token it inherits (`None`: fresh token).

    Exact names are matched first, then synonyms; each old token is inherited by at most one new class.
    """
    old = {int(index): str(name) for index, name in old_id2label.items()}
    new = {int(index): str(name) for index, name in new_id2label.items()}
    matches: dict[int, int | None] = dict.fromkeys(new, None)
    used: set[int] = set()
    for key in (lambda name: name, canonical_class_name):
        by_key: dict[str, int] = {}
        for index in sorted(old):
            by_key.setdefault(key(old[index]), index)
        for index in sorted(new):
            if matches[index] is not None:
                continue
            candidate = by_key.get(key(new[index]))
            if candidate is not None and candidate not in used:
                matches[index] = candidate
                used.add(candidate)
    return matches


def adapt_class_tokens(
    model: SegFaceForSemanticSegmentation, id2label: Mapping[int, str], seed: int | None = None
) -> dict[str, str | None]:
    """Give `model` the label set `id2label` (indices 0..K-1), in place: matched class tokens are kept, the others
    drawn from a normal distribution with the standard deviation of the existing tokens; `config.id2label` /
    `label2id` are updated.

    Args:
        model ([`SegFaceForSemanticSegmentation`]):
            The model to adapt.
        id2label (`dict[int, str]`):
            The new classes, indices 0..K-1.
        seed (`int`, *optional*):
            Seed for the new tokens' initialisation (default: the global RNG).

    Returns:
        `dict[str, str | None]`: new class name -> the old class whose token it kept (`None` = initialised).
    """
    indices = sorted(int(index) for index in id2label)
    if indices != list(range(len(indices))):
        raise ValueError(f"id2label must have the indices 0..{len(indices) - 1}, got {indices}.")
    old_id2label = {int(k): v for k, v in model.config.id2label.items()}
    matches = match_class_tokens(old_id2label, id2label)
    old_embedding = model.mask_decoder.class_embeddings
    hidden = old_embedding.embedding_dim
    weight = torch.empty(len(indices), hidden, dtype=old_embedding.weight.dtype, device=old_embedding.weight.device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        scale = float(old_embedding.weight.float().std()) if old_embedding.weight.numel() > 1 else 1.0
    fresh = torch.randn(len(indices), hidden, generator=generator) * scale
    with torch.no_grad():
        for new_index, old_index in matches.items():
            weight[new_index] = old_embedding.weight[old_index] if old_index is not None else fresh[new_index]
    embedding = nn.Embedding(len(indices), hidden).to(device=weight.device, dtype=weight.dtype)
    embedding.weight = nn.Parameter(weight)
    model.mask_decoder.class_embeddings = embedding
    model.config.id2label = {index: str(id2label[index]) for index in indices}
    model.config.label2id = {name: index for index, name in model.config.id2label.items()}
    report = {str(id2label[new]): (old_id2label[old] if old is not None else None) for new, old in matches.items()}
    kept = {new: old for new, old in report.items() if old is not None}
    logger.info("class tokens kept: %s; initialised: %s", kept, [name for name, old in report.items() if old is None])
    return report


class SegFaceTrainerMetrics:
    """`compute_metrics` for `Trainer`: the paper's face-parsing scores (`segface_hf.metrics`, the `face_parsing_f1`
    evaluate module) from one confusion matrix over the evaluation set.

    Works both ways `Trainer` calls it: once with every prediction, or batch by batch with `compute_result`
    (`batch_eval_metrics=True`, which avoids holding all label maps in memory). Pair it with
    [`argmax_logits`] as `preprocess_logits_for_metrics`.

    Args:
        id2label (`dict[int, str]`):
            The model's classes.
        ignore_index (`int`, *optional*, defaults to 255):
            Label value to ignore.
        merged_entries (`dict` or `str`, *optional*):
            Extra merged F1 entries (`"helen"`).
    """

    def __init__(self, id2label: Mapping[int, str], ignore_index: int = 255, merged_entries=None):
        self.names = [str(id2label[index]) for index in range(len(id2label))]
        self.ignore_index = ignore_index
        self.merged_entries = merged_entries
        self._total = np.zeros((len(self.names), len(self.names)), dtype=np.int64)

    def _add(self, predictions, labels) -> None:
        predictions = (
            predictions.detach().cpu().numpy() if isinstance(predictions, torch.Tensor) else np.asarray(predictions)
        )
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if predictions.ndim == labels.ndim + 1:  # logits were not reduced by argmax_logits
            predictions = predictions.argmax(axis=1)
        for prediction, label in zip(predictions, labels):
            self._total += confusion_matrix(prediction, label, len(self.names), self.ignore_index)

    def __call__(self, eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        self._add(eval_prediction.predictions, eval_prediction.label_ids)
        if compute_result is False:
            return {}
        scores = scores_from_confusion(self._total, label_names=self.names, merged_entries=self.merged_entries)
        self._total = np.zeros_like(self._total)
        return flatten_scores(scores)


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics`: keep the predicted label maps, not the logits (K times smaller)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=1).to(torch.int16)


def trainer_collate(examples: list[dict]) -> dict:
    """Data collator for `Trainer`: the model inputs of a batch (`pixel_values`, `labels`, `landmarks`)."""
    return model_inputs(segface_collate(examples))


@dataclass
class SegFaceFinetuneArguments:
    """What to fine-tune on what (the optimisation settings are `transformers.TrainingArguments`)."""

    model: str = field(metadata={"help": "SegFace model folder or Hub repo to start from"})
    dataset: str = field(metadata={"help": "dataset folder or Hub dataset repo with image and label-map columns"})
    labels: str | None = field(
        default=None,
        metadata={"help": "labels.json of the dataset ({'id2label': {...}, 'ignore_index': 255}); default: the "
                          "dataset's id2label.json, else the model's label set"},
    )  # fmt: skip
    dataset_config: str | None = field(default=None, metadata={"help": "configuration name of the dataset"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str = field(
        default="auto", metadata={"help": "split to evaluate on: 'auto' (validation, else test), a name, or 'none'"}
    )
    image_column: str = field(default="image", metadata={"help": "column of the images"})
    label_column: str = field(default="label", metadata={"help": "column of the label maps"})
    landmarks_column: str = field(
        default="auto", metadata={"help": "column of 5 face points ('auto': landmarks_5 for face-warp models)"}
    )
    crop_box_column: str = field(
        default="auto", metadata={"help": "column of a face crop ('auto': crop_box if present)"}
    )
    augmentation: str = field(default="none", metadata={"help": "'none' or 'lapa_affine'"})
    merged_entries: str | None = field(default=None, metadata={"help": "extra merged F1 entries, e.g. 'helen'"})


def build_trainer(args: SegFaceFinetuneArguments, training_args, splits=None):
    """A `Trainer` that fine-tunes `args.model` on `args.dataset` (see the module docstring).

    Args:
        args ([`SegFaceFinetuneArguments`]):
            Model, data and label settings.
        training_args (`transformers.TrainingArguments`):
            Optimisation, logging, saving; `batch_eval_metrics` is switched on (the metric accumulates a confusion
            matrix batch by batch).
        splits (`datasets.DatasetDict`, *optional*):
            The data, if already loaded (otherwise read from `args.dataset`).

    Returns:
        `transformers.Trainer`, with `trainer.token_report` (new class -> inherited class) attached.
    """
    from transformers import Trainer, TrainerCallback

    from .sources import load_dataset_splits, pick_eval_split, resolve_column, resolve_label_spec

    if args.augmentation not in ("none", "lapa_affine"):
        raise ValueError(f"augmentation must be 'none' or 'lapa_affine', got {args.augmentation!r}.")
    if splits is None:
        splits = load_dataset_splits(args.dataset, args.dataset_config)
    if args.train_split not in splits:
        raise ValueError(f"the dataset has no split {args.train_split!r}; its splits are {sorted(splits)}.")
    model = SegFaceForSemanticSegmentation.from_pretrained(args.model)
    try:
        processor = SegFaceImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = SegFaceImageProcessor(size={"height": model.config.image_size, "width": model.config.image_size})
    spec = resolve_label_spec(args.dataset, args.labels) if isinstance(args.dataset, str) else None
    if args.labels is not None and spec is None:
        from ..data.labels import read_label_spec

        spec = read_label_spec(args.labels, plain_mapping=True)
    if spec is not None:
        new_names = [spec.id2label[value] for value in sorted(spec.id2label)]
        report = adapt_class_tokens(model, dict(enumerate(new_names)), seed=training_args.seed)
        ignore_values = [spec.ignore_index] if spec.ignore_index is not None else [255]
        mapping = SegFaceLabelMapping(spec.id2label, ignore_values, model.config.loss_ignore_index)
    else:
        report = {name: name for name in model.config.id2label.values()}
        mapping = SegFaceLabelMapping(
            {int(k): v for k, v in model.config.id2label.items()}, [255], model.config.loss_ignore_index
        )

    columns = splits[args.train_split].column_names
    landmarks = resolve_column(args.landmarks_column, "landmarks_5" if model.config.use_face_warp else None, columns)
    if model.config.use_face_warp and landmarks is None:
        raise ValueError(f"{args.model} aligns faces from 5 landmarks (a LaPa model); the dataset needs a landmarks "
                         f"column (columns: {columns}).")  # fmt: skip
    common = {"processor": processor, "label_mapping": mapping, "image_column": args.image_column,
              "label_column": args.label_column, "landmarks_column": landmarks,
              "crop_box_column": resolve_column(args.crop_box_column, "crop_box", columns), "seed": training_args.seed}  # fmt: skip
    augmentation = SegFaceRandomAffine() if args.augmentation == "lapa_affine" else None
    train_data = SegFaceSegmentationDataset(splits[args.train_split], augmentation=augmentation, **common)
    eval_split = pick_eval_split(args.eval_split, splits)
    eval_data = SegFaceSegmentationDataset(splits[eval_split], **common) if eval_split else None

    class _EpochCallback(TrainerCallback):
        """Keeps the augmentation's epoch in step with the Trainer's (so it differs per epoch)."""

        def on_epoch_begin(self, arguments, state, control, **kwargs):
            train_data.set_epoch(int(state.epoch or 0))

    training_args.batch_eval_metrics = True
    if training_args.remove_unused_columns:
        training_args.remove_unused_columns = False  # the items are built by our dataset, not datasets columns
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=trainer_collate,
        processing_class=processor,
        compute_metrics=SegFaceTrainerMetrics(
            model.config.id2label, model.config.loss_ignore_index, args.merged_entries
        ),
        preprocess_logits_for_metrics=argmax_logits,
        callbacks=[_EpochCallback()],
    )
    trainer.token_report = report
    return trainer


def finetune(args: SegFaceFinetuneArguments, training_args, splits=None) -> dict:
    """Fine-tune, evaluate (when there is an evaluation split), and save the model and processor to
    `training_args.output_dir` (and push them when `training_args.push_to_hub`).

    Returns:
        `dict` with `train` (the train metrics), `eval` (the evaluation metrics, or `None`) and `tokens` (new class
        -> inherited class).
    """
    trainer = build_trainer(args, training_args, splits)
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else None
    trainer.save_model()
    trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return {"train": train_output.metrics, "eval": eval_metrics, "tokens": trainer.token_report}


__all__ = [
    "CLASS_SYNONYMS",
    "SegFaceFinetuneArguments",
    "SegFaceTrainerMetrics",
    "adapt_class_tokens",
    "argmax_logits",
    "build_trainer",
    "canonical_class_name",
    "finetune",
    "match_class_tokens",
    "trainer_collate",
]
