"""Training SegFace: the paper's recipe with `accelerate` ([`train`]), fine-tuning with `transformers.Trainer`
([`finetune`]), and the data pipeline they share. Needs the `train` extras (accelerate, datasets, evaluate)."""

from .backbone_weights import (
    IMAGENET_BACKBONE_SOURCES,
    BackboneInitialization,
    BackboneWeightsError,
    initialize_backbone,
)
from .data import (
    SegFaceEpochSampler,
    SegFaceLabelMapping,
    SegFaceRandomAffine,
    SegFaceSegmentationDataset,
    apply_affine,
    seed_worker,
    segface_collate,
)
from .finetune import SegFaceFinetuneArguments, SegFaceTrainerMetrics, adapt_class_tokens, build_trainer, finetune
from .initialization import initialize_decoder_like_original
from .loop import TrainingResult, train, validate
from .recipe import SegFaceTrainingRecipe
from .sources import load_dataset_splits, resolve_label_spec

__all__ = [
    "IMAGENET_BACKBONE_SOURCES",
    "BackboneInitialization",
    "BackboneWeightsError",
    "SegFaceEpochSampler",
    "SegFaceFinetuneArguments",
    "SegFaceLabelMapping",
    "SegFaceRandomAffine",
    "SegFaceSegmentationDataset",
    "SegFaceTrainerMetrics",
    "SegFaceTrainingRecipe",
    "TrainingResult",
    "adapt_class_tokens",
    "apply_affine",
    "build_trainer",
    "finetune",
    "initialize_backbone",
    "initialize_decoder_like_original",
    "load_dataset_splits",
    "resolve_label_spec",
    "seed_worker",
    "segface_collate",
    "train",
    "validate",
]
