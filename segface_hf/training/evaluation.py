"""Score a SegFace model on a labelled dataset split with the paper's metric protocol (spec section 6), print a
per-class table, and record the scores in JSON and in the model card.

Two protocols:

- `at="model"` (the paper's): images and labels are resized to the model resolution R (labels nearest-neighbour)
  and the argmax at R is compared with the R x R label. This is how every SegFace number was produced.
- `at="native"`: the logits are bilinearly resized to each label map's stored size before the argmax and compared
  with the untouched label (after Helen's crop, when the dataset has one). This is what a user of the predictions
  at full resolution gets.

The confusion matrix is accumulated over the whole split (one dataset-level matrix); the scores come from
`segface_hf.metrics` (the `face_parsing_f1` evaluate module).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..file_utils import atomic_write_text
from ..image_processing_segface import SegFaceImageProcessor, resized_argmax
from ..metrics import batch_confusion_matrices, confusion_matrix, scores_from_confusion
from ..metrics.results import EvaluationResult

PROTOCOLS = ("model", "native")
_SECTION_START = "<!-- segface-hf evaluation start: {key} -->"
_SECTION_END = "<!-- segface-hf evaluation end: {key} -->"


def model_label_mapping(model_id2label: dict[int, str], spec=None, ignore_index: int = 255):
    """The mapping from a dataset's label values to a model's classes: by class name when the dataset has a label
    set (`spec`, a `LabelSpec`), else the identity on the model's classes with 255 ignored.

    Raises:
        `ValueError`: the dataset has classes the model does not know, listing them.
    """
    from .data import SegFaceLabelMapping

    model_names = [model_id2label[i] for i in range(len(model_id2label))]
    if spec is None:
        return SegFaceLabelMapping(dict(enumerate(model_names)), ignore_values=[255], ignore_index=ignore_index)
    ignored = [spec.ignore_index] if spec.ignore_index is not None else [255]
    return SegFaceLabelMapping(spec.id2label, ignore_values=ignored, ignore_index=ignore_index, class_names=model_names)


def run_evaluation(
    model,
    dataset_split,
    label_mapping,
    processor: SegFaceImageProcessor | None = None,
    at: str = "model",
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    image_column: str = "image",
    label_column: str = "label",
    landmarks_column: str | None = None,
    crop_box_column: str | None = None,
    merged_entries=None,
    background_index: int | None = 0,
    show_progress: bool = True,
    reference_model=None,
) -> dict:
    """Run `model` over a split and score it.

    Args:
        model ([`SegFaceForSemanticSegmentation`]):
            The model (put in eval mode and moved to `device`).
        dataset_split (`datasets.Dataset`):
            The split, with image and label columns.
        label_mapping (`SegFaceLabelMapping`):
            Dataset label values -> the model's classes (see [`model_label_mapping`]).
        processor ([`SegFaceImageProcessor`], *optional*):
            Preprocessing; defaults to the original's at `model.config.image_size`.
        at (`str`, *optional*, defaults to `"model"`):
            `"model"` (the paper's protocol) or `"native"` (see the module docstring).
        batch_size (`int`, *optional*, defaults to 4):
            Images per forward pass (the scores do not depend on it; no image is dropped).
        num_workers (`int`, *optional*, defaults to 0):
            Data-loader worker processes.
        device (`str` or `torch.device`, *optional*):
            Defaults to CUDA when available.
        image_column, label_column, landmarks_column, crop_box_column (`str`, *optional*):
            Columns; landmarks are required by face-warp (LaPa) models, the crop box is Helen's.
        merged_entries (`dict` or `str`, *optional*):
            Extra merged F1 entries (`"helen"` for Helen's eyes/brows/mouth/overall).
        background_index (`int`, *optional*, defaults to 0):
            The class left out of mean F1.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        reference_model ([`SegFaceForSemanticSegmentation`], *optional*):
            A model to compare `model` with on the same inputs (e.g. the PyTorch model an exported `model` came
            from): the share of pixels where both predict the same class, at the protocol's resolution, is added as
            `argmax_agreement`.

    Returns:
        `dict`: the scores (see `segface_hf.metrics.scores_from_confusion`) plus `num_images` (and
        `argmax_agreement` with a `reference_model`).
    """
    from .data import SegFaceSegmentationDataset, model_inputs, segface_collate

    if at not in PROTOCOLS:
        raise ValueError(f"at must be one of {PROTOCOLS}, got {at!r}.")
    if model.config.use_face_warp and not landmarks_column:
        raise ValueError("this model aligns faces from 5 landmarks (a LaPa model): give the landmarks column.")
    if processor is None:
        processor = SegFaceImageProcessor(size={"height": model.config.image_size, "width": model.config.image_size})
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = SegFaceSegmentationDataset(
        dataset_split, processor, label_mapping, image_column=image_column, label_column=label_column,
        landmarks_column=landmarks_column, crop_box_column=crop_box_column, keep_native_labels=at == "native",
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=segface_collate,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    num_labels = model.config.num_labels
    ignore_index = label_mapping.ignore_index
    total = torch.zeros(num_labels, num_labels, dtype=torch.long, device=device)
    images = agreeing = compared = 0
    model.eval().to(device)
    if reference_model is not None:
        reference_model.eval().to(device)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"evaluate ({at} resolution)", disable=not show_progress):
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items() if k != "labels"}
            logits = model(**inputs).logits
            reference = reference_model(**inputs).logits if reference_model is not None else None
            if at == "model":
                labels = batch["labels"].to(device)
                predictions = logits.argmax(dim=1)
                total += batch_confusion_matrices(predictions, labels, num_labels, ignore_index).sum(dim=0)
                if reference is not None:
                    agreeing += int((predictions == reference.argmax(dim=1)).sum())
                    compared += predictions.numel()
            else:
                for index, (image_logits, native) in enumerate(zip(logits, batch["native_labels"])):
                    native = native.to(device)
                    prediction = resized_argmax(image_logits, tuple(native.shape))
                    total += batch_confusion_matrices(prediction[None], native[None], num_labels, ignore_index)[0]
                    if reference is not None:
                        agreeing += int((prediction == resized_argmax(reference[index], tuple(native.shape))).sum())
                        compared += prediction.numel()
            images += logits.shape[0]
    names = [model.config.id2label[i] for i in range(num_labels)]
    scores = scores_from_confusion(
        total.cpu().numpy(), label_names=names, background_index=background_index, merged_entries=merged_entries
    )
    scores["num_images"] = images
    if reference_model is not None:
        scores["argmax_agreement"] = agreeing / max(compared, 1)
    return scores


def constant_prediction_scores(
    dataset_split,
    label_mapping,
    class_index: int,
    image_size: int,
    at: str = "model",
    label_column: str = "label",
    crop_box_column: str | None = None,
    merged_entries=None,
    background_index: int | None = 0,
    show_progress: bool = True,
) -> dict:
    """Scores of the trivial predictor that outputs `class_index` everywhere (e.g. all background, all skin): the
    floor a trained model must clear. Labels are nearest-resized to `image_size` for `at="model"`."""
    from ..image_io import to_label_map
    from .data import checked_crop_box

    if at not in PROTOCOLS:
        raise ValueError(f"at must be one of {PROTOCOLS}, got {at!r}.")
    num_labels = len(label_mapping.names)
    if not 0 <= class_index < num_labels:
        raise ValueError(f"class index {class_index} is outside 0..{num_labels - 1}.")
    total = np.zeros((num_labels, num_labels), dtype=np.int64)
    images = 0
    for index in tqdm(range(len(dataset_split)), desc="constant baseline", disable=not show_progress):
        row = dataset_split[index]
        label = to_label_map(row[label_column])
        if crop_box_column:
            label = label.crop(checked_crop_box(row[crop_box_column], label.width, label.height, row.get("id", index)))
        if at == "model" and label.size != (image_size, image_size):
            label = label.resize((image_size, image_size), resample=0)  # nearest
        mapped = label_mapping(np.asarray(label), row.get("id", index))
        total += confusion_matrix(np.full_like(mapped, class_index), mapped, num_labels, label_mapping.ignore_index)
        images += 1
    scores = scores_from_confusion(
        total, label_names=label_mapping.names, background_index=background_index, merged_entries=merged_entries
    )
    scores["num_images"] = images
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_scores_table(scores: dict) -> str:
    """A Markdown table: F1 and IoU per class (x100), the merged entries, then mean F1 (over all classes but the
    background), mean IoU and pixel accuracy."""
    lines = ["| class | F1 | IoU |", "|---|---:|---:|"]
    for name, f1 in scores["f1"].items():
        lines.append(f"| {name} | {_percent(f1)} | {_percent(scores['iou'].get(name))} |")
    for name, f1 in scores.get("merged_f1", {}).items():
        lines.append(f"| {name} (merged) | {_percent(f1)} | |")
    lines.append(f"| **mean F1** (excl. background) | **{_percent(scores['mean_f1'])}** | |")
    lines.append(f"| mean IoU | | {_percent(scores['mean_iou'])} |")
    lines.append(f"| pixel accuracy | {_percent(scores['pixel_accuracy'])} | |")
    if scores.get("absent_classes"):
        lines.append("")
        lines.append(
            f"Absent from ground truth and prediction (left out of the means): {', '.join(scores['absent_classes'])}."
        )
    return "\n".join(lines)


def write_model_card(result: EvaluationResult, readme: str | Path, model_name: str | None = None) -> Path:
    """Record the scores in a model card (`README.md`): a section with the per-class table (replaced when the same
    dataset, split and protocol are evaluated again) and `model-index` entries in the metadata, for the Hub's
    evaluation widgets. Creates the card when there is none."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    readme = Path(readme)
    card = ModelCard(readme.read_text(encoding="utf-8")) if readme.is_file() else ModelCard("---\n---\n")
    data = card.data
    if not isinstance(data, ModelCardData):
        data = ModelCardData(**data.to_dict())
    data.library_name = data.library_name or "transformers"
    data.pipeline_tag = data.pipeline_tag or "image-segmentation"
    data.tags = sorted(set(data.tags or []) | {"segface", "face-parsing"})
    data.model_name = data.model_name or model_name or readme.parent.name
    dataset_name = Path(result.dataset).name if Path(result.dataset).exists() else result.dataset
    new = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=result.split,
            metric_type=metric_type,
            metric_name=f"{name} ({result.protocol} res.)",
            metric_value=round(100 * value, 2),
            task_name="Face parsing",
        )
        for metric_type, name, value in (
            ("f1", "Mean F1", result.scores["mean_f1"]),
            ("mean_iou", "Mean IoU", result.scores["mean_iou"]),
            ("accuracy", "Pixel accuracy", result.scores["pixel_accuracy"]),
        )
        if value is not None
    ]
    replaced = {(r.dataset_name, r.dataset_split, r.metric_name) for r in new}
    kept = [r for r in (data.eval_results or []) if (r.dataset_name, r.dataset_split, r.metric_name) not in replaced]
    data.eval_results = kept + new
    key = f"{dataset_name} / {result.split} / {result.protocol}"
    start, end = _SECTION_START.format(key=key), _SECTION_END.format(key=key)
    if result.protocol == "model":
        protocol = "at the model resolution, labels nearest-resized (the paper's protocol)"
    else:
        protocol = "at each label map's native resolution (logits bilinearly resized)"
    summary = (
        f"{result.scores['num_images']} images, scored {protocol}. F1 per class from one confusion matrix over the "
        "whole split; mean F1 over all classes but the background (SegFace's protocol)."
    )
    section = "\n".join(
        [
            start,
            f"## Evaluation: {dataset_name} ({result.split})",
            "",
            summary,
            "",
            format_scores_table(result.scores),
            end,
        ]
    )
    body = card.text
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    body = pattern.sub(lambda _: section, body) if pattern.search(body) else body.rstrip("\n") + "\n\n" + section + "\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    atomic_write_text(readme, str(card))
    return readme


def evaluate_pretrained(
    model_name_or_path: str,
    dataset: str,
    split: str = "test",
    at: str = "model",
    labels: str | None = None,
    dataset_config: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    landmarks_column: str = "auto",
    crop_box_column: str = "auto",
    merged_entries=None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | None = None,
    show_progress: bool = True,
    exported: str | Path | None = None,
) -> EvaluationResult:
    """Load a model (folder or Hub repo) and a dataset split and run [`run_evaluation`]. Column arguments accept
    `"auto"` (landmarks: `landmarks_5` for face-warp models; crop box: `crop_box` when the split has it) and
    `"none"`. With `exported` (a file `segface export` wrote from this model), the file is scored in its own runtime
    instead, and its argmax agreement with the PyTorch model is added to the scores."""
    from ..modeling_segface import SegFaceForSemanticSegmentation
    from .sources import load_dataset_splits, resolve_column, resolve_label_spec

    splits = load_dataset_splits(dataset, dataset_config)
    if split not in splits:
        raise ValueError(f"the dataset has no split {split!r}; its splits are {sorted(splits)}.")
    spec = resolve_label_spec(dataset, labels)
    model = SegFaceForSemanticSegmentation.from_pretrained(model_name_or_path)
    try:
        processor = SegFaceImageProcessor.from_pretrained(model_name_or_path)
    except OSError:
        processor = None
    columns = splits[split].column_names
    landmarks = resolve_column(landmarks_column, "landmarks_5" if model.config.use_face_warp else None, columns)
    crop_box = resolve_column(crop_box_column, "crop_box", columns)
    mapping = model_label_mapping(
        {int(k): v for k, v in model.config.id2label.items()}, spec, model.config.loss_ignore_index
    )
    evaluated, reference, name = model, None, model_name_or_path
    if exported is not None:
        from ..release.exported_model import SegFaceExportedModel

        evaluated, reference = SegFaceExportedModel(exported, model.config), model
        name = f"{exported} (exported from {model_name_or_path})"
        device = "cpu"  # the exported file's runtime runs on the CPU; the reference runs beside it
    start = time.time()
    scores = run_evaluation(
        evaluated, splits[split], mapping, processor=processor, at=at, batch_size=batch_size,
        num_workers=num_workers, device=device, image_column=image_column, label_column=label_column,
        landmarks_column=landmarks, crop_box_column=crop_box, merged_entries=merged_entries,
        show_progress=show_progress, reference_model=reference,
    )  # fmt: skip
    settings = {"image_size": model.config.image_size, "landmarks_column": landmarks, "crop_box_column": crop_box,
                "merged_entries": merged_entries if isinstance(merged_entries, str) else None,
                "labels": spec.source if spec is not None else None}  # fmt: skip
    if exported is not None:
        settings["exported"] = str(exported)
    return EvaluationResult(scores=scores, protocol=at, dataset=dataset, split=split, model=name,
                            seconds=time.time() - start, settings=settings)  # fmt: skip


__all__ = [
    "constant_prediction_scores",
    "evaluate_pretrained",
    "format_scores_table",
    "model_label_mapping",
    "run_evaluation",
    "write_model_card",
]
