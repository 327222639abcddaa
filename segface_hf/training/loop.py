"""The `accelerate` training loop of the paper's recipe: one code path for one CPU, one GPU, N GPUs or several nodes.

Per epoch: shuffle (seeded by seed and epoch), train with AdamW on 0.5 CE + 0.5 Dice (the model's own loss), step
MultiStepLR once, validate on the whole validation split across all processes when due, and checkpoint with
`accelerator.save_state`. A killed run resumes exactly (model, optimizer, scheduler, RNG, epoch and step, also in
the middle of an epoch) with `resume_from_checkpoint="latest"`. At the end the model and its image processor are
saved with `save_pretrained` (and uploaded with `push_to_hub`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from ..configuration_segface import SegFaceConfig
from ..metrics import batch_confusion_matrices
from ..image_processing_segface import SegFaceImageProcessor
from ..metrics import flatten_scores, scores_from_confusion
from ..modeling_segface import SegFaceForSemanticSegmentation
from .backbone_weights import BackboneInitialization, initialize_backbone
from .data import (
    SegFaceEpochSampler,
    SegFaceLabelMapping,
    SegFaceRandomAffine,
    SegFaceSegmentationDataset,
    model_inputs,
    seed_worker,
    segface_collate,
)
from .initialization import initialize_decoder_like_original
from .recipe import SegFaceTrainingRecipe
from .sources import load_dataset_splits, pick_eval_split, resolve_column, resolve_label_spec

logger = get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINING_STATE_FILE = "training_state.json"
EVAL_RESULTS_FILE = "eval_results.json"


@dataclass
class TrainingProgress:
    """Where a run stands: `epoch` in progress, loader batches of it already consumed (`step_in_epoch`), optimizer
    steps taken in total (`global_step`), and the epochs validated so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    evaluated_epochs: list[int] = field(default_factory=list)


@dataclass
class TrainingResult:
    """What [`train`] produced.

    Args:
        output_dir (`Path`):
            The run folder, holding the final model.
        global_step (`int`):
            Optimizer steps taken.
        epochs (`int`):
            Epochs completed.
        eval_results (`dict`, *optional*):
            The last validation scores (see `segface_hf.metrics.scores_from_confusion`).
        backbone_init ([`BackboneInitialization`], *optional*):
            How the backbone was initialised (`None` when the run was resumed).
        resumed_from (`str`, *optional*):
            The checkpoint the run resumed from.
        is_main_process (`bool`, *optional*, defaults to `True`):
            Whether this process is the main one (the one that saved the model).
    """

    output_dir: Path
    global_step: int
    epochs: int
    eval_results: dict | None = None
    backbone_init: BackboneInitialization | None = None
    resumed_from: str | None = None
    is_main_process: bool = True


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def build_model(recipe: SegFaceTrainingRecipe, id2label: dict[int, str] | None) -> SegFaceForSemanticSegmentation:
    """The model of the recipe (from `model_config` or `variant`), with the dataset's label set when it has one."""
    if recipe.model_config is not None:
        path = Path(recipe.model_config).expanduser()
        if not path.exists():
            raise ValueError(f"--model-config {path}: no such file or folder.")
        config = SegFaceConfig.from_pretrained(str(path))
    else:
        config = SegFaceConfig.from_variant(recipe.variant)
    if id2label is not None and dict(config.id2label) != dict(id2label):
        if recipe.model_config is None:
            logger.warning(
                "The dataset's %d classes differ from the %d of variant %s; the model is built for the dataset's.",
                len(id2label), config.num_labels, recipe.variant,
            )  # fmt: skip
        config.id2label = dict(id2label)
        config.label2id = {name: index for index, name in id2label.items()}
    return SegFaceForSemanticSegmentation(config)


def build_datasets(recipe: SegFaceTrainingRecipe, splits, config, label_mapping: SegFaceLabelMapping):
    """The training and validation datasets (the latter `None` when there is none)."""
    if recipe.train_split not in splits:
        raise ValueError(f"the dataset has no split {recipe.train_split!r}; its splits are {sorted(splits)}.")
    eval_split = pick_eval_split(recipe.eval_split, splits)
    if recipe.eval_split == "auto" and eval_split == "test":
        logger.warning("The dataset has no validation split: validating on 'test' (as the original does for Helen).")
    columns = splits[recipe.train_split].column_names
    landmarks_default = "landmarks_5" if config.use_face_warp else None
    landmarks = resolve_column(recipe.landmarks_column, landmarks_default, columns)
    if config.use_face_warp and landmarks is None:
        raise ValueError(
            "this model aligns faces from 5 landmarks (a LaPa variant) and needs a landmarks column; the dataset has "
            f"columns {columns}; pass --landmarks-column."
        )
    crop_box = resolve_column(recipe.crop_box_column, "crop_box", columns)
    augmentation_name = recipe.augmentation
    if augmentation_name == "auto":
        augmentation_name = "lapa_affine" if recipe.model_config is None and recipe.dataset_kind == "lapa" else "none"
    augmentation = None
    if augmentation_name == "lapa_affine":
        augmentation = SegFaceRandomAffine(
            recipe.max_rotation, (recipe.min_scale, recipe.max_scale), recipe.max_translation
        )
    processor = SegFaceImageProcessor(size={"height": config.image_size, "width": config.image_size})
    common = {"processor": processor, "label_mapping": label_mapping, "image_column": recipe.image_column,
              "label_column": recipe.label_column, "landmarks_column": landmarks, "crop_box_column": crop_box,
              "seed": recipe.seed}  # fmt: skip
    train_data = SegFaceSegmentationDataset(splits[recipe.train_split], augmentation=augmentation, **common)
    eval_data = None
    if eval_split is not None:
        eval_data = SegFaceSegmentationDataset(splits[eval_split], **common)
    return train_data, eval_data, processor


def _trainable_parameters(model, config) -> list[torch.nn.Parameter]:
    """Parameters the forward pass uses. Parts of a backbone that are built but never run (e.g. the final norm of
    SwinModel, which SegFace does not tap) get no gradient; they are frozen so that DDP need not search for unused
    parameters every step. Found with one forward and backward pass on a small input, RNG untouched."""
    size = 64
    pixel_values = torch.zeros(1, 3, size, size)
    labels = torch.zeros(1, size, size, dtype=torch.long)
    kwargs = {}
    if config.use_face_warp:
        from ..face_warp import face_template

        kwargs["landmarks"] = face_template((size, size))[None]
    was_training = model.training
    model.eval()  # eval mode: BatchNorm statistics must not see this input
    with torch.random.fork_rng(devices=[]):
        model(pixel_values, labels=labels, **kwargs).loss.backward()
    model.train(was_training)
    used = []
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.requires_grad_(False)
        else:
            used.append(parameter)
        parameter.grad = None
    return used


# ----------------------------------------------------------------------------------------------------------------
# RNG and checkpoints


def _capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def _preserved_rng():
    """Run a block (validation) without changing any global RNG state, so that it never alters training."""
    state = _capture_rng()
    try:
        yield
    finally:
        _restore_rng(state)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        number = path.name[len(CHECKPOINT_PREFIX) :]
        complete = path.is_dir() and (path / TRAINING_STATE_FILE).is_file()
        if complete and path.name.startswith(CHECKPOINT_PREFIX) and number.isdigit():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from: `"latest"` = the newest complete one in `output_dir` (`None` if there is
    none yet), or an explicit folder."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint).expanduser()
    if not (path / TRAINING_STATE_FILE).is_file():
        raise ValueError(f"{path} is not a complete SegFace training checkpoint (no {TRAINING_STATE_FILE}).")
    return path


def _save_checkpoint(accelerator, recipe, progress: TrainingProgress) -> Path:
    """`accelerator.save_state` into a hidden folder, renamed into place once every process has written, so that a
    kill mid-save never leaves a checkpoint that looks complete; then delete the oldest beyond the limit."""
    root = Path(recipe.output_dir) / CHECKPOINTS_DIR
    final = root / f"{CHECKPOINT_PREFIX}{progress.global_step:08d}"
    staging = root / f".incomplete-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"progress": progress.__dict__, "recipe": recipe.to_dict(), "num_processes": accelerator.num_processes}
        (staging / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if recipe.checkpoints_total_limit:
            for old in list_checkpoints(recipe.output_dir)[: -recipe.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(accelerator, checkpoint: Path) -> TrainingProgress:
    """Restore model, optimizer, scheduler and RNG (`accelerator.load_state`, tensors read with weights_only) and
    return the progress recorded beside them."""
    state = json.loads((checkpoint / TRAINING_STATE_FILE).read_text(encoding="utf-8"))
    saved_processes = state.get("num_processes")
    if saved_processes != accelerator.num_processes:
        raise ValueError(
            f"{checkpoint} was written by {saved_processes} processes, this run has {accelerator.num_processes}; "
            "resume with the same number of processes (the batch order and per-process RNG depend on it)."
        )
    accelerator.load_state(str(checkpoint))
    from accelerate.utils import load

    # accelerate only logs when it cannot restore the RNG; an exact resume needs it, so check.
    saved = load(checkpoint / f"random_states_{accelerator.process_index}.pkl")
    if not torch.equal(saved["torch_manual_seed"], torch.get_rng_state()):
        raise RuntimeError(
            f"could not restore the random state of process {accelerator.process_index} from {checkpoint}."
        )
    progress = TrainingProgress(**state["progress"])
    return progress


# ----------------------------------------------------------------------------------------------------------------
# Validation


def validate(
    model, loader, accelerator, id2label: dict[int, str], ignore_index: int, show_progress: bool = True
) -> dict:
    """Scores of `model` on the whole split behind `loader` (a prepared loader: each process runs its share, the
    per-image confusion matrices are gathered and the padding `accelerate` adds to even out the shares is dropped).
    Compares at the model resolution, as the paper does."""
    num_labels = len(id2label)
    total = torch.zeros(num_labels, num_labels, dtype=torch.long, device=accelerator.device)
    images = 0
    model.eval()
    with torch.no_grad():
        for batch in tqdm(
            loader, desc="validate", leave=False, disable=not (show_progress and accelerator.is_local_main_process)
        ):
            inputs = {key: value for key, value in model_inputs(batch).items() if key != "labels"}
            logits = model(**inputs).logits
            confusions = batch_confusion_matrices(logits.argmax(dim=1), batch["labels"], num_labels, ignore_index)
            confusions = accelerator.gather_for_metrics(confusions)
            total += confusions.sum(dim=0)
            images += confusions.shape[0]
    model.train()
    scores = scores_from_confusion(total.cpu().numpy(), label_names=[id2label[i] for i in range(num_labels)])
    scores["num_images"] = images
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Saving and uploading


def save_final_model(model, processor, output_dir: str | Path) -> None:
    """`save_pretrained` of the model and processor into `output_dir`, written beside and moved into place file by
    file, so that an interrupted save never leaves a truncated `model.safetensors`."""
    output_dir = Path(output_dir)
    staging = output_dir / ".incomplete-final"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    processor.save_pretrained(staging)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def push_model_folder(output_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None,
                      commit_message: str = "Upload SegFace model trained with segface-hf") -> str:  # fmt: skip
    """Upload a run folder's final model (not its checkpoints) to a Hub model repo; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=url.repo_id,
        folder_path=str(output_dir),
        commit_message=commit_message,
        ignore_patterns=[f"{CHECKPOINTS_DIR}/*", ".incomplete-*", ".incomplete-*/*"],
    )
    return str(url)


def _tracker_config(recipe: SegFaceTrainingRecipe) -> dict:
    """The recipe with values TensorBoard's hparams accept (numbers, strings, booleans)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in recipe.to_dict().items()
    }


# ----------------------------------------------------------------------------------------------------------------
# The loop


def train(recipe: SegFaceTrainingRecipe, accelerator=None) -> TrainingResult:
    """Train SegFace with the recipe (see [`SegFaceTrainingRecipe`]); run it under `accelerate launch` for several
    processes.

    Args:
        recipe ([`SegFaceTrainingRecipe`]):
            All settings.
        accelerator (`accelerate.Accelerator`, *optional*):
            A ready accelerator; by default one is made from the recipe (mixed precision, gradient accumulation,
            trackers) and the launch environment.

    Returns:
        [`TrainingResult`].
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(recipe.output_dir).expanduser()
    if accelerator is None:
        report_to = None if recipe.report_to == "none" else recipe.report_to.split(",")
        accelerator = Accelerator(
            mixed_precision=recipe.mixed_precision,
            gradient_accumulation_steps=recipe.gradient_accumulation_steps,
            log_with=report_to,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
            step_scheduler_with_optimizer=False,
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes != world_size:
        raise ValueError(
            f"{world_size} processes were launched but accelerate runs them as {accelerator.num_processes} independent "
            "run(s) (no GPU found). On CPUs launch with ACCELERATE_USE_CPU=1, e.g. `ACCELERATE_USE_CPU=1 accelerate "
            "launch --multi_gpu --num_processes 2 scripts/train.py ...` (gloo backend)."
        )
    checkpoint = resolve_checkpoint(recipe.resume_from_checkpoint, output_dir)
    if checkpoint is None and list_checkpoints(output_dir):
        raise ValueError(
            f"{output_dir} already holds checkpoints of a run; pass --resume-from-checkpoint latest to continue it, "
            "or choose another --output-dir."
        )
    set_seed(recipe.seed)

    with accelerator.main_process_first():
        splits = load_dataset_splits(recipe.dataset, recipe.dataset_config)
        spec = resolve_label_spec(recipe.dataset, recipe.labels)
    if spec is not None:
        dataset_names = [spec.id2label[value] for value in sorted(spec.id2label)]
        model = build_model(recipe, dict(enumerate(dataset_names)))
    else:
        model = build_model(recipe, None)
    config = model.config
    ignore_values = [spec.ignore_index] if spec is not None and spec.ignore_index is not None else [255]
    label_source = spec.id2label if spec is not None else {int(k): v for k, v in config.id2label.items()}
    label_mapping = SegFaceLabelMapping(
        label_source, ignore_values=ignore_values, ignore_index=config.loss_ignore_index
    )
    train_data, eval_data, processor = build_datasets(recipe, splits, config, label_mapping)
    train_data.process_index = accelerator.process_index
    if accelerator.is_main_process:  # only now that data and model are known to be usable
        output_dir.mkdir(parents=True, exist_ok=True)

    if recipe.decoder_init == "original":
        initialize_decoder_like_original(model)
    backbone_init = None
    if checkpoint is None:
        # The backbone is loaded on every process (same weights); DDP also broadcasts rank 0's at wrap time.
        backbone_init = initialize_backbone(
            model, recipe.pretrained_backbone, recipe.variant if recipe.model_config is None else None
        )
    parameters = _trainable_parameters(model, config)

    batch_size = recipe.train_batch_size
    if len(train_data) < batch_size * accelerator.num_processes:
        raise ValueError(
            f"the train split has {len(train_data)} samples, fewer than one batch per process ({batch_size} x "
            f"{accelerator.num_processes}); lower --per-device-train-batch-size."
        )
    # Each loader has its own generator: starting an iteration then draws the workers' base seed from it instead of
    # from the global RNG, so the model's RNG stream (dropout, drop path) is the same whether or not a run resumed.
    # Workers are reseeded by `seed_worker` from (seed, epoch, process, worker) anyway.
    loader_options = {"collate_fn": segface_collate, "num_workers": recipe.num_workers,
                      "worker_init_fn": seed_worker, "pin_memory": torch.cuda.is_available()}  # fmt: skip
    sampler = SegFaceEpochSampler(len(train_data), shuffle=True, seed=recipe.seed)
    train_loader = torch.utils.data.DataLoader(
        train_data, batch_size=batch_size, sampler=sampler, drop_last=True,
        generator=torch.Generator().manual_seed(recipe.seed), **loader_options,
    )  # fmt: skip
    eval_loader = None
    if eval_data is not None:
        eval_loader = torch.utils.data.DataLoader(
            eval_data, batch_size=recipe.per_device_eval_batch_size, shuffle=False,
            generator=torch.Generator().manual_seed(recipe.seed), **loader_options,
        )  # fmt: skip
    optimizer = torch.optim.AdamW(
        parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay,
        betas=(recipe.adam_beta1, recipe.adam_beta2), eps=recipe.adam_epsilon,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(recipe.lr_milestones), gamma=recipe.lr_gamma
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    progress = TrainingProgress()
    if checkpoint is not None:
        progress = _load_checkpoint(accelerator, checkpoint)
        logger.info("Resumed from %s (epoch %d, batch %d, step %d).", checkpoint, progress.epoch,
                    progress.step_in_epoch, progress.global_step)  # fmt: skip
    elif recipe.resume_from_checkpoint == "latest":
        logger.info("No checkpoint in %s yet: starting a new run.", output_dir)

    accelerator.init_trackers(recipe.project_name, config=_tracker_config(recipe))
    steps_per_epoch = math.ceil(len(train_loader) / recipe.gradient_accumulation_steps)
    total_steps = steps_per_epoch * recipe.epochs
    bar = tqdm(total=total_steps, initial=progress.global_step, desc="train", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)  # fmt: skip
    id2label = {int(k): v for k, v in config.id2label.items()}
    eval_results = None
    if accelerator.is_main_process and (output_dir / EVAL_RESULTS_FILE).is_file() and checkpoint is not None:
        eval_results = json.loads((output_dir / EVAL_RESULTS_FILE).read_text(encoding="utf-8")).get("scores")
    start = time.time()

    for epoch in range(progress.epoch, recipe.epochs):
        model.train()
        train_data.set_epoch(epoch)
        loader = train_loader
        if progress.step_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, progress.step_in_epoch)
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        loss_count = 0
        window_sum = torch.zeros((), device=accelerator.device)
        window_count = 0
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**model_inputs(batch)).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and recipe.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(parameters, recipe.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            progress.step_in_epoch += 1
            loss_sum += loss.detach()
            loss_count += 1
            window_sum += loss.detach()
            window_count += 1
            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            bar.update(1)
            if progress.global_step % recipe.logging_steps == 0:
                mean_loss = accelerator.reduce(window_sum / window_count, reduction="mean").item()
                accelerator.log({"train/loss": mean_loss, "train/learning_rate": scheduler.get_last_lr()[0],
                                 "train/epoch": epoch}, step=progress.global_step)  # fmt: skip
                bar.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch)
                window_sum.zero_()
                window_count = 0
            at_epoch_end = progress.step_in_epoch >= len(train_loader)
            if (
                recipe.checkpoint_every_steps
                and progress.global_step % recipe.checkpoint_every_steps == 0
                and not at_epoch_end
            ):
                _save_checkpoint(accelerator, recipe, progress)
        scheduler.step()
        epoch_loss = accelerator.reduce(loss_sum / max(loss_count, 1), reduction="mean").item() if loss_count else None
        progress.epoch = epoch + 1
        progress.step_in_epoch = 0
        if epoch_loss is not None:
            accelerator.log({"train/epoch_loss": epoch_loss}, step=progress.global_step)
            logger.info("epoch %d/%d: mean loss %.5f", epoch, recipe.epochs, epoch_loss)

        due = epoch == recipe.epochs - 1 or (recipe.eval_every_epochs and epoch % recipe.eval_every_epochs == 0)
        if eval_loader is not None and due:
            with _preserved_rng():
                scores = validate(model, eval_loader, accelerator, id2label, config.loss_ignore_index)
            eval_results = scores
            progress.evaluated_epochs.append(epoch)
            accelerator.log(flatten_scores(scores, prefix="eval/"), step=progress.global_step)
            if accelerator.is_main_process:
                bar.write(f"epoch {epoch}: validation mean F1 {scores['mean_f1']}, mIoU {scores['mean_iou']} "
                          f"({scores['num_images']} images)")  # fmt: skip
                record = {"epoch": epoch, "global_step": progress.global_step, "protocol": "model", "scores": scores}
                (output_dir / EVAL_RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _save_checkpoint(accelerator, recipe, progress)
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_final_model(unwrapped, processor, output_dir)
        logger.info(
            "Saved the model and processor to %s (%.0f s of training in this session).", output_dir, time.time() - start
        )
        if recipe.push_to_hub:
            url = push_model_folder(
                output_dir, recipe.hub_model_id, private=recipe.hub_private_repo, token=recipe.hub_token
            )
            logger.info("Uploaded to %s", url)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingResult(
        output_dir=output_dir, global_step=progress.global_step, epochs=progress.epoch, eval_results=eval_results,
        backbone_init=backbone_init, resumed_from=str(checkpoint) if checkpoint is not None else None,
        is_main_process=accelerator.is_main_process,
    )  # fmt: skip


__all__ = [
    "TrainingProgress",
    "TrainingResult",
    "build_model",
    "list_checkpoints",
    "push_model_folder",
    "resolve_checkpoint",
    "save_final_model",
    "train",
    "validate",
]
