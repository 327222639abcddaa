"""The paper's training recipe as a dataclass: every default is the original's (spec sections 3-5), every field can
be overridden from the command line (`scripts/train.py --field value`) or a JSON file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..configuration_segface import parse_variant

AUGMENTATIONS = ("auto", "lapa_affine", "none")
MIXED_PRECISION = ("no", "fp16", "bf16")
DECODER_INITS = ("original", "config")


@dataclass
class SegFaceTrainingRecipe:
    """Settings of a SegFace training run. The defaults reproduce the paper: 0.5 CE + 0.5 Dice, AdamW (lr 1e-4,
    weight decay 1e-5), learning rate x0.1 after epochs 80 and 200 (stepped once per epoch), 300 epochs, 4 images per
    process (2 for Helen), LaPa's random affine for LaPa and no augmentation otherwise, no flips, seed 32.

    Fields that name a column or a split accept `"auto"` where documented; the training loop resolves them against
    the dataset and the model.
    """

    dataset: str = field(metadata={"help": "dataset folder (written by the segface-hf builders, or any `datasets` "
                                           "folder) or Hub dataset repo, with image and label-map columns"})  # fmt: skip
    output_dir: str = field(metadata={"help": "run folder: checkpoints, logs, and the final model"})
    variant: str = field(
        default="swinb_celeba_512",
        metadata={"help": "architecture as an official variant name <backbone>_<dataset>_<resolution>, e.g. "
                          "swinb_celeba_512, swinb_lapa_448, mobilenet_celeba_512"},
    )  # fmt: skip
    model_config: str | None = field(
        default=None,
        metadata={"help": "a SegFace config.json (or model folder) to build the model from instead of --variant"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "configuration name of the dataset, if any"})
    labels: str | None = field(
        default=None,
        metadata={"help": "labels.json ({'id2label': {...}, 'ignore_index': 255}) of the dataset; by default the "
                          "dataset's id2label.json, else the variant's label set"},
    )  # fmt: skip
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str = field(
        default="auto",
        metadata={"help": "split to validate on: 'auto' = validation if present, else test (Helen has no "
                          "validation split; the original validates on test), 'none' = no validation"},
    )  # fmt: skip
    image_column: str = field(default="image", metadata={"help": "column of the images"})
    label_column: str = field(default="label", metadata={"help": "column of the label maps"})
    landmarks_column: str = field(
        default="auto",
        metadata={"help": "column of the 5 face points; 'auto' = landmarks_5 for face-warp (LaPa) models, "
                          "'none' otherwise"},
    )  # fmt: skip
    crop_box_column: str = field(
        default="auto",
        metadata={"help": "column of a face crop (x1, y1, x2, y2) applied first; 'auto' = crop_box if the dataset "
                          "has it (Helen), 'none' to disable"},
    )  # fmt: skip
    augmentation: str = field(
        default="auto",
        metadata={"help": "'lapa_affine' (random rotation/scale/shift with landmarks), 'none', or 'auto' = "
                          "lapa_affine for LaPa variants, none otherwise (as the original)"},
    )  # fmt: skip
    max_rotation: float = field(default=30.0, metadata={"help": "LaPa affine: largest rotation in degrees"})
    min_scale: float = field(default=0.5, metadata={"help": "LaPa affine: smallest scale"})
    max_scale: float = field(default=3.0, metadata={"help": "LaPa affine: largest scale"})
    max_translation: float = field(default=20.0, metadata={"help": "LaPa affine: largest shift in pixels per axis"})
    epochs: int = field(default=300, metadata={"help": "number of epochs"})
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "images per process and step; default 4 (2 for Helen variants)"}
    )
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "images per process in validation"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    lr_milestones: list[int] = field(
        default_factory=lambda: [80, 200], metadata={"help": "epochs after which the learning rate is multiplied by "
                                                              "--lr-gamma (stepped once per epoch)"}
    )  # fmt: skip
    lr_gamma: float = field(default=0.1, metadata={"help": "learning-rate factor at each milestone"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip gradients to this norm (off by default)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches per optimizer step"})
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'fp16' or 'bf16' (overrides accelerate config)"}
    )
    seed: int = field(default=32, metadata={"help": "seed of initialisation, shuffling and augmentation"})
    num_workers: int = field(default=8, metadata={"help": "data-loader worker processes per training process"})
    eval_every_epochs: int = field(
        default=20, metadata={"help": "validate after every N-th epoch (epochs 0, N, 2N, ...) and after the last; 0 = "
                                      "only after the last"}
    )  # fmt: skip
    checkpoint_every_steps: int = field(
        default=0, metadata={"help": "also checkpoint every N optimizer steps (0 = at the end of each epoch only)"}
    )
    checkpoints_total_limit: int = field(
        default=2, metadata={"help": "checkpoints kept (oldest deleted first); 0 = all"}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (the newest checkpoint of --output-dir) or a checkpoint folder"}
    )
    logging_steps: int = field(default=50, metadata={"help": "log loss and learning rate every N optimizer steps"})
    report_to: str = field(
        default="tensorboard", metadata={"help": "trackers: tensorboard, wandb, ..., comma-separated, 'all' or 'none'"}
    )
    project_name: str = field(default="segface", metadata={"help": "tracker project / run name"})
    pretrained_backbone: str = field(
        default="auto",
        metadata={"help": "backbone initialisation: 'auto' (ImageNet weights of the variant's backbone from the Hub), "
                          "'none' (random), 'hf:<repo>', 'timm:<model>', or a local weights file/folder"},
    )  # fmt: skip
    decoder_init: str = field(
        default="original",
        metadata={"help": "decoder initialisation: 'original' (PyTorch defaults, as the original code: class tokens "
                          "from N(0, 1)) or 'config' (the model's _init_weights, N(0, initializer_range))"},
    )  # fmt: skip
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final model to the Hub"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo for --push-to-hub (namespace/name)"})
    hub_private_repo: bool = field(
        default=True, metadata={"help": "create the Hub repo private (face datasets are mostly non-commercial)"}
    )
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: saved login or HF_TOKEN)"})

    def __post_init__(self):
        self.validate()

    @property
    def dataset_kind(self) -> str | None:
        """The label set the variant was released for (`celebamask-hq`, `lapa`, `helen`), if the variant parses."""
        try:
            return parse_variant(self.variant)[1]
        except ValueError:
            return None

    @property
    def train_batch_size(self) -> int:
        """Images per process and step (the original: 4, and 2 for Helen)."""
        if self.per_device_train_batch_size is not None:
            return self.per_device_train_batch_size
        return 2 if self.dataset_kind == "helen" else 4

    def validate(self) -> None:
        """Check the values; raises `ValueError` with the offending field."""
        if not self.dataset:
            raise ValueError("--dataset is required: a dataset folder or Hub dataset repo.")
        if not self.output_dir:
            raise ValueError("--output-dir is required.")
        if self.model_config is None:
            parse_variant(self.variant)  # raises a clear error for unknown names
        positive = {"epochs": self.epochs, "per_device_eval_batch_size": self.per_device_eval_batch_size,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "logging_steps": self.logging_steps}  # fmt: skip
        if self.per_device_train_batch_size is not None:
            positive["per_device_train_batch_size"] = self.per_device_train_batch_size
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        for name in ("num_workers", "eval_every_epochs", "checkpoint_every_steps", "checkpoints_total_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.lr_gamma <= 0:
            raise ValueError("learning_rate and lr_gamma must be positive and weight_decay non-negative.")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing positive epochs, got {self.lr_milestones}.")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}.")
        if not (0 < self.min_scale <= self.max_scale) or self.max_rotation < 0 or self.max_translation < 0:
            raise ValueError("the affine needs 0 < min_scale <= max_scale and non-negative rotation and translation.")
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init must be one of {DECODER_INITS}, got {self.decoder_init!r}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push-to-hub needs --hub-model-id namespace/name.")

    def to_dict(self) -> dict:
        """The recipe as a JSON-serialisable dict (the hub token left out)."""
        values = asdict(self)
        values.pop("hub_token", None)
        values["train_batch_size"] = self.train_batch_size
        return values


__all__ = ["SegFaceTrainingRecipe"]
