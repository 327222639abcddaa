"""The model card (README.md) of a published SegFace model: Hub YAML metadata, label map and palette, usage,
evaluation protocol, limitations, licence and citation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from huggingface_hub import ModelCard

from ..errors import SegFaceError
from ..configuration_segface import OFFICIAL_VARIANTS, SegFaceConfig, parse_variant
from ..metrics.results import EvaluationResult
from ..references import CELEBAMASK_HQ_CITATION, HELEN_CITATION, LAPA_CITATION, SEGFACE_CITATION

PAPER_URL = "https://arxiv.org/abs/2412.08647"
CODE_URL = "https://github.com/Kartik-3004/SegFace"
OFFICIAL_REPO_ID = "kartiknarayan/SegFace"
# How a user installs this package; the card's "with the package" usage starts with it.
PACKAGE_INSTALL_COMMAND = "pip install segface-hf"
# Our own evaluation JSON travels in the model repo under this name; the card's model-index links to it.
EVALUATION_FILENAME = "evaluation.json"

BACKBONE_NAMES = {
    "swin_base": "Swin-B", "swinv2_base": "Swin-V2-B", "swinv2_small": "Swin-V2-S", "swinv2_tiny": "Swin-V2-T",
    "convnext_base": "ConvNeXt-B", "convnext_small": "ConvNeXt-S", "resnet101": "ResNet-101",
    "mobilenet_v3_large": "MobileNetV3-Large", "efficientnet_v2_m": "EfficientNetV2-M",
}  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """What the card says about a training dataset."""

    name: str
    hub_type: str
    url: str
    license_summary: str
    test_images: str
    citation: str


DATASETS = {
    "celebamask-hq": DatasetInfo(
        name="CelebAMask-HQ",
        hub_type="celebamask-hq",
        url="https://github.com/switchablenorms/CelebAMask-HQ",
        license_summary="non-commercial research and educational use only; no redistribution of the images or "
        "of data derived from them",
        test_images="2,824 test images (CelebA's `list_eval_partition.txt` joined through "
        "`CelebA-HQ-to-CelebA-mapping.txt`)",
        citation=CELEBAMASK_HQ_CITATION,
    ),
    "lapa": DatasetInfo(
        name="LaPa",
        hub_type="lapa",
        url="https://github.com/jd-opensource/lapa-dataset",
        license_summary="non-commercial research use only; no redistribution",
        test_images="the 2,000 test images",
        citation=LAPA_CITATION,
    ),
    "helen": DatasetInfo(
        name="Helen",
        hub_type="helen",
        url="https://github.com/JPlin/Relabeled-HELEN-Dataset",
        license_summary="Flickr images that remain their owners' property; the releases are for non-commercial "
        "research use",
        test_images="the test split of the Relabeled-HELEN layout",
        citation=HELEN_CITATION,
    ),
}

_YAML_HEADER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
REQUIRED_METADATA = ("library_name", "pipeline_tag", "license", "datasets", "tags")


class SegFaceModelCardError(SegFaceError, ValueError):
    """A model card or an evaluation file that does not have what a published SegFace card needs."""


def _label_set(config: SegFaceConfig, variant: str | None) -> str:
    if variant is not None:
        return parse_variant(variant)[1]
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    from ..configuration_segface import LABEL_SETS

    for label_set, labels in LABEL_SETS.items():
        if names == labels:
            return "lapa" if config.use_face_warp else label_set
    return "custom"


def _backbone_name(config: SegFaceConfig, variant: str | None) -> str:
    if variant is not None:
        return BACKBONE_NAMES[parse_variant(variant)[0]]
    backbone = config.backbone_config
    model_type = getattr(backbone, "model_type", "custom")
    if model_type == "timm_backbone":
        return {"mobilenetv3_large_100": "MobileNetV3-Large", "efficientnetv2_m": "EfficientNetV2-M"}.get(
            backbone.backbone, f"timm {backbone.backbone}"
        )
    width = getattr(backbone, "embed_dim", None) or (getattr(backbone, "hidden_sizes", None) or [None])[0]
    known = {("swin", 128): "Swin-B", ("swinv2", 128): "Swin-V2-B", ("convnext", 128): "ConvNeXt-B",
             ("convnext", 96): "ConvNeXt-S", ("resnet", 256): "ResNet"}  # fmt: skip
    return known.get((model_type, width), f"{model_type} backbone")


def _hex(color) -> str:
    red, green, blue = (int(c) for c in color[:3])
    return f"#{red:02x}{green:02x}{blue:02x}"


def label_table(config: SegFaceConfig) -> str:
    """The label map as a Markdown table: index, name, palette colour (hex and a swatch)."""
    from ..inference.visualization import palette_for

    palette = palette_for(config.id2label)
    lines = ["| index | label | colour |", "|---:|---|---|"]
    for index in range(config.num_labels):
        colour = _hex(palette[index])
        swatch = f'<span style="display:inline-block;width:1em;height:1em;background:{colour}"></span>'
        lines.append(f"| {index} | `{config.id2label[index]}` | {swatch} `{colour}` |")
    return "\n".join(lines)


def _eval_entry(dataset: DatasetInfo, split: str, metrics: list, source_name: str, source_url: str) -> dict:
    entry = {
        "task": {"type": "image-segmentation", "name": "Face parsing"},
        "dataset": {"type": dataset.hub_type, "name": dataset.name, "split": split},
        "metrics": metrics,
        "source": {"name": source_name, "url": source_url},
    }
    return entry


def model_card_metadata(
    config: SegFaceConfig,
    repo_id: str,
    variant: str | None = None,
    reported_mean_f1: float | None = None,
    evaluation: EvaluationResult | None = None,
) -> dict:
    """The card's YAML metadata as a plain dict (in the order it is written)."""
    model_name = repo_id.split("/")[-1]
    label_set = _label_set(config, variant)
    dataset = DATASETS.get(label_set)
    tags = ["segface", "face-parsing", "face-segmentation", "semantic-segmentation", "vision", "custom_code"]
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "license": "mit",
        "datasets": [dataset.hub_type] if dataset else [],
        "tags": tags,
    }
    if variant is not None:
        metadata["base_model"] = OFFICIAL_REPO_ID
    results = []
    if dataset is not None and reported_mean_f1 is not None:
        results.append(_eval_entry(
            dataset, "test",
            [{"type": "f1", "name": "Mean F1 (reported by the authors)", "value": round(float(reported_mean_f1), 2),
              "verified": False}],
            "SegFace paper and official README (Narayan et al., AAAI 2025), reported by the authors", PAPER_URL,
        ))  # fmt: skip
    if dataset is not None and evaluation is not None:
        metrics = [{"type": "f1", "name": "Mean F1 (our evaluation)", "value": round(evaluation.mean_f1, 2),
                    "verified": False}]  # fmt: skip
        results.append(_eval_entry(
            dataset, evaluation.split, metrics,
            "segface-hf scripts/evaluate.py on this checkpoint (not verified by the Hub)",
            f"https://huggingface.co/{repo_id}/blob/main/{EVALUATION_FILENAME}",
        ))  # fmt: skip
    if results:
        metadata["model-index"] = [{"name": model_name, "results": results}]
    return metadata


def _usage(repo_id: str, config: SegFaceConfig, label_set: str) -> str:
    size = config.image_size
    if label_set == "lapa":
        call = (
            "# LaPa models align the face from 5 landmarks (image-left eye, image-right eye, nose tip, image-left and\n"
            "# image-right mouth corners, in the photo's pixels), e.g. from a face detector.\n"
            "landmarks = [[180.0, 220.0], [330.0, 220.0], [255.0, 300.0], [195.0, 380.0], [315.0, 380.0]]\n"
            "inputs = processor(image, landmarks=[landmarks])\n"
        )
    else:
        call = "inputs = processor(image)\n"
    body = (
        'image = Image.open("face.jpg")  # an aligned face crop, see Limitations\n'
        f"{call}"
        "with torch.no_grad():\n"
        "    outputs = model(**inputs)\n"
        "label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]\n"
        "print({model.config.id2label[i]: int((label_map == i).sum()) for i in label_map.unique().tolist()})\n"
    )
    return f"""### With the `segface-hf` package

```bash
{PACKAGE_INSTALL_COMMAND}
```

```python
import segface_hf  # registers SegFace with the transformers Auto classes
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

model = AutoModelForSemanticSegmentation.from_pretrained("{repo_id}").eval()
processor = AutoImageProcessor.from_pretrained("{repo_id}")
{body}```

The package also finds the faces in a photo, crops each as the model expects, and pastes the parses back:
`segface predict photo.jpg --model {repo_id} --output-dir out --overlay`.

### With `transformers` only (`trust_remote_code=True`)

The repository carries the model code (`configuration_segface.py`, `modeling_segface.py`,
`image_processing_segface.py` and its torchvision backend `image_processing_segface_fast.py`, referenced by
`auto_map`), so plain `transformers` (with `timm` for the MobileNet and EfficientNet backbones) loads it. Read the
code first and pin the revision you reviewed. `backend="pil"` asks for the original's preprocessing bit for bit;
without it, `transformers` picks the torchvision backend wherever torchvision is installed:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

model = AutoModelForSemanticSegmentation.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True, backend="pil")
{body}```

The processor resizes every image to {size}x{size} with PIL's bicubic filter (the aspect ratio is not kept) and
normalises with the ImageNet mean and standard deviation, as the original code does.
"""


def _protocol(label_set: str, config: SegFaceConfig) -> str:
    dataset = DATASETS.get(label_set)
    test = dataset.test_images if dataset else "the test split"
    classes = config.num_labels - 1
    helen = (
        " Helen's merged entries (eyes, brows, mouth, and an overall score over eyes, brows, nose and mouth) are "
        "reported beside the mean but not part of it; the Helen literature often quotes that overall score "
        "instead." if label_set == "helen" else ""
    )  # fmt: skip
    return f"""The scores follow the protocol of the original evaluation code: {test}; each image and its label map are
resized to the model resolution ({config.image_size}x{config.image_size}, bicubic for the image, nearest neighbour
for the labels) and compared there, not at the photo's own resolution. One confusion matrix is summed over the whole
test set; the F1 of a class is 2·I / (|ground truth| + |prediction|) over that matrix (a micro F1 over the dataset,
not a mean of per-image scores); the **mean F1** is the plain mean over all {classes} classes except background
(hair included).{helen} Mean F1 is in percent."""


FRAMING = {
    "celebamask-hq": "centred, roughly aligned face crops with hair and shoulders (CelebA-HQ framing)",
    "lapa": "LaPa photos, each face aligned by the model itself from 5 landmarks",
    "helen": "square crops of 1.2x the face's landmark box (the original Helen pipeline)",
}


def _limitations(label_set: str) -> str:
    items = [
        (
            f"**Aligned face crops.** The model was trained on {FRAMING.get(label_set, 'face crops')}. On a photo "
            "with a small face, several faces or a rotated head, detect the faces first and parse each crop "
            "(`segface predict` does this and pastes the results back); the whole photo as input gives poor masks."
        ),
        (
            "**Square resize.** Inputs are resized to a square without keeping the aspect ratio, as in training; "
            "crops that are far from square are distorted."
        ),
    ]
    if label_set == "lapa":
        items.insert(1, (
            "**LaPa models need landmarks.** The model aligns each face with a tanh warp from 5 landmarks and cannot "
            "run without them: pass `landmarks=` to the processor (a face detector with 5 points, e.g. through "
            "`segface predict`, provides them)."
        ))  # fmt: skip
    if label_set == "helen":
        items.insert(1, (
            "**Helen framing.** The Helen model was trained on square crops of 1.2x the landmark box; give it faces "
            "framed the same way."
        ))  # fmt: skip
    items += [
        (
            "**Left and right** in the label names (`l_eye`, `r_brow`, ...) are the person's left and right, as in "
            "the annotations, and the class order is SegFace's own: it differs from the order of other "
            "CelebAMask-HQ parsers (BiSeNet forks, `jonathandinu/face-parsing`), so always map indices through "
            "`id2label`."
        ),
        (
            "**Data.** The training faces are mostly of celebrities (CelebAMask-HQ) or collected from the web; "
            "accuracy on under-represented ages, skin tones, head wear and lighting is not measured. The model "
            "parses faces; it does not and must not be used to identify people."
        ),
    ]
    return "\n".join(f"- {item}" for item in items)


def exports_section(exports: Sequence | None) -> str:
    """The card's "Exports" section: one row per deployment file (path in the repo, format, size, fidelity against
    PyTorch on held-out faces, latency); empty without exports."""
    from .export import EXPORT_FORMATS

    if not exports:
        return ""
    rows = []
    for result in exports:
        fidelity = result.fidelity
        unchecked = result.notes[0] if result.notes else "not checked"
        agreement = unchecked if fidelity is None else (
            f"{fidelity.argmax_agreement:.4f} ({fidelity.faces} faces), max logit difference "
            f"{fidelity.max_abs_difference:.3g}"
        )  # fmt: skip
        latency = "" if result.latency_ms is None else f"{result.latency_ms:.0f} ms"
        kind = result.format + (f" ({result.quantization})" if result.quantization else "")
        size = f"{result.size_bytes / 2**20:.1f} MiB"
        rows.append(f"| `{EXPORT_FORMATS[result.format].hub_path}` | {kind} | {size} | {agreement} | {latency} |")
    return (
        "## Exports\n\nFiles for other runtimes, each checked in its runtime against the PyTorch model on held-out "
        "face crops when it was written (argmax agreement with PyTorch; latency of one face on the machine that "
        "exported it). How to run them: `docs/deploy.md` of segface-hf."
        "\n\n| file | format | size | argmax agreement with PyTorch | latency |\n|---|---|---:|---|---:|\n"
        + "\n".join(rows) + "\n\n"
    )


def build_model_card(
    config: SegFaceConfig,
    repo_id: str,
    variant: str | None = None,
    reported_mean_f1: float | None = None,
    evaluation: EvaluationResult | None = None,
    exports: Sequence | None = None,
) -> str:
    """Write the model card (README.md) of a SegFace model.

    Args:
        config (`SegFaceConfig`):
            The model's config (label map, backbone, resolution, LaPa warp).
        repo_id (`str`):
            The Hub repository the card is for (used in the usage snippets and as the model-index name).
        variant (`str`, *optional*):
            The official variant the weights were converted from, e.g. `swinb_celeba_512`.
        reported_mean_f1 (`float`, *optional*):
            The mean F1 the authors report; defaults to the value of `variant` in `OFFICIAL_VARIANTS`.
        evaluation (`EvaluationResult`, *optional*):
            Our own score, from [`load_evaluation`].
        exports (list of [`~segface_hf.release.export.SegFaceExportResult`], *optional*):
            Deployment files in the repo, listed with their measured fidelity (see [`exports_section`]).

    Returns:
        `str`: the README.md text; its YAML metadata passes [`check_model_card`].
    """
    if variant is not None and reported_mean_f1 is None:
        reported_mean_f1 = OFFICIAL_VARIANTS.get(variant)
    label_set = _label_set(config, variant)
    dataset = DATASETS.get(label_set)
    metadata = model_card_metadata(config, repo_id, variant, reported_mean_f1, evaluation)
    backbone = _backbone_name(config, variant)
    dataset_name = dataset.name if dataset else "a custom label set"
    source = (
        f"the official `{variant}/model_299.pt` of [`{OFFICIAL_REPO_ID}`](https://huggingface.co/{OFFICIAL_REPO_ID}), "
        "converted to safetensors (weights only, no optimizer state) by `segface-hf`'s converter, whose outputs match "
        "the original code's (parity tests)" if variant else "weights trained or fine-tuned with `segface-hf`"
    )  # fmt: skip

    scores = []
    if reported_mean_f1 is not None:
        scores.append(f"| mean F1, reported by the authors (paper / official README) | {reported_mean_f1:.2f} |")
    elif variant is not None:
        scores.append("| mean F1, reported by the authors | not reported for this checkpoint |")
    if evaluation is not None:
        where = f", compared at the {evaluation.protocol} resolution" if evaluation.protocol else ""
        images = f", {evaluation.num_images:,} images" if evaluation.num_images else ""
        scores.append(f"| mean F1, our evaluation of this checkpoint ({evaluation.split} split{images}{where}) | "
                      f"{evaluation.mean_f1:.2f} |")  # fmt: skip
    score_text = (
        "| score | value |\n|---|---:|\n" + "\n".join(scores)
        if scores
        else "No score has been measured for this checkpoint yet: run `scripts/evaluate.py` and publish again with "
        "`--eval-json`."
    )
    if evaluation is not None and evaluation.per_class_f1:
        absent = "absent (no pixels in the ground truth or the predictions)"
        score_text += "\n\nPer-class F1 of our evaluation:\n\n| class | F1 |\n|---|---:|\n" + "\n".join(
            f"| `{name}` | {absent if value is None else f'{value:.2f}'} |"
            for name, value in evaluation.per_class_f1.items()
        )
    licence_datasets = (
        f"The weights were trained on {dataset.name}, whose licence allows {dataset.license_summary} "
        f"([terms]({dataset.url})). Whether that restricts the use of the weights is for you to judge; do not use "
        "them commercially without checking."
        if dataset
        else "Check the licence of the data the weights were trained on."
    )
    rare = " (earrings, necklaces, hats, glasses)" if label_set == "celebamask-hq" else ""
    citations = SEGFACE_CITATION + ("\n\n" + dataset.citation if dataset else "")

    body = f"""
# SegFace {backbone} ({dataset_name}, {config.image_size}x{config.image_size})

[SegFace](https://arxiv.org/abs/2412.08647) (AAAI 2025) segments a face into {config.num_labels} classes. A backbone
({backbone}) is tapped at strides 4, 8, 16 and 32; an MLP fuses the four scales into one map, and a two-way transformer
lets one learnable token per class attend to it, so rare classes{rare} get a token of their own instead of being
drowned by skin and hair.

These are {source}. Code: [original]({CODE_URL}) · paper: [arXiv 2412.08647]({PAPER_URL}).

## Scores

{score_text}

{exports_section(exports)}## Labels and palette

Class indices are those of the original heads; the names say what the class is (for the person's left and right).
The colours are the palette the `segface-hf` overlays and the demo Space use.

{label_table(config)}

## Usage

{_usage(repo_id, config, label_set)}
## Evaluation protocol

{_protocol(label_set, config)}

## Limitations

{_limitations(label_set)}

## Licence

The original SegFace code and weights are released under the MIT licence, and so is this conversion. {licence_datasets}

## Citation

```bibtex
{citations}
```
"""
    # Written as text: `ModelCard`'s own serialisation merges results of the same task and dataset under the first
    # result's source, which would credit our score to the authors.
    text = "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n" + body
    check_model_card(text)
    return text


def check_model_card(text: str) -> dict:
    """Parse a card's YAML with `huggingface_hub` and check the fields a published SegFace card must have.

    Returns:
        `dict`: the parsed metadata. Raises [`SegFaceModelCardError`] naming what is missing or malformed.
    """
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as error:  # huggingface_hub raises ValueError or yaml errors for malformed metadata
        raise SegFaceModelCardError(f"the model card's YAML does not parse: {error}") from error
    header = _YAML_HEADER.match(text)
    metadata = yaml.safe_load(header.group(1)) if header else None
    if not isinstance(metadata, dict):
        raise SegFaceModelCardError("the model card has no YAML metadata block at its top.")
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise SegFaceModelCardError(f"the model card lacks {', '.join(missing)} in its YAML metadata.")
    if metadata["library_name"] != "transformers" or metadata["pipeline_tag"] != "image-segmentation":
        raise SegFaceModelCardError(
            "the model card must say library_name: transformers and pipeline_tag: image-segmentation."
        )
    for result in card.data.eval_results or []:
        if not isinstance(result.metric_value, (int, float)) or not result.source_name:
            raise SegFaceModelCardError(
                f"model-index result {result.metric_name!r} needs a numeric value and a source naming who measured it."
            )
    return metadata


__all__ = [
    "DATASETS",
    "SegFaceModelCardError",
    "build_model_card",
    "check_model_card",
    "label_table",
    "model_card_metadata",
]
