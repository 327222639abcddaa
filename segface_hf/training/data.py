"""Data pipeline for training and evaluation: any `datasets` split with an image and a label-map column becomes model
inputs (the original's preprocessing through [`SegFaceImageProcessor`]), optionally with LaPa's random affine
augmentation (spec 3.2), Helen's face crop (spec 3.3) and a mapping of the dataset's label values to class indices.

Randomness is keyed, not streamed: the augmentation of sample `i` in epoch `e` draws from a generator seeded with
`(seed, e, i)`. It therefore differs from epoch to epoch (the original replays the same augmentation stream every
epoch, bug #24) and does not depend on the number of worker processes or on where a resumed run restarts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..image_processing_segface import SegFaceImageProcessor
from ..image_io import to_label_map, to_rgb

MAX_LABEL_VALUE = 65535


# ----------------------------------------------------------------------------------------------------------------
# Label values -> class indices


class SegFaceLabelMapping:
    """Maps the label values stored in a dataset to the model's class indices.

    By default the classes are the values of `id2label` in increasing order, so values `0..K-1` map to themselves
    and a label set with gaps (e.g. `{0, 1, 5}`) becomes `0, 1, 2`. With `class_names` (a model's classes in index
    order) each dataset class goes to the model class of the same name instead. Values in `ignore_values` map to
    `ignore_index` (the value the loss and the metric ignore); any other value is an error naming it.

    Args:
        id2label (`dict[int, str]`):
            Label value in the dataset -> class name.
        ignore_values (`Sequence[int]`, *optional*, defaults to `(255,)`):
            Dataset values to ignore. Values that are also classes are not ignored.
        ignore_index (`int`, *optional*, defaults to 255):
            The value ignored pixels get.
        class_names (`Sequence[str]`, *optional*):
            The target classes in index order (e.g. a model's); every dataset class must be among them.
    """

    def __init__(
        self,
        id2label: Mapping[int, str],
        ignore_values: Sequence[int] = (255,),
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
    ):
        if not id2label:
            raise ValueError("id2label is empty: a label set needs at least one class.")
        values = sorted(int(value) for value in id2label)
        if values[0] < 0 or values[-1] > MAX_LABEL_VALUE:
            raise ValueError(f"label values must lie in 0..{MAX_LABEL_VALUE}, got {values[0]}..{values[-1]}.")
        names = {int(value): str(name) for value, name in id2label.items()}
        self.values = values
        self.names = [names[value] for value in values] if class_names is None else [str(n) for n in class_names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {self.names}.")
        unknown = sorted({names[value] for value in values} - set(self.names))
        if unknown:
            raise ValueError(
                f"the dataset's classes {unknown} are not among the classes {self.names}; fine-tune the model for a new "
                "label set, or give a labels file whose names match."
            )
        self.ignore_values = sorted({int(v) for v in ignore_values if v is not None and int(v) not in names})
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < len(self.names):
            raise ValueError(
                f"ignore_index {ignore_index} collides with class {ignore_index} ({self.names[ignore_index]})."
            )
        table = np.full(MAX_LABEL_VALUE + 1, -1, dtype=np.int64)
        for value in values:
            table[value] = self.names.index(names[value])
        table[self.ignore_values] = self.ignore_index
        self._table = table

    @property
    def id2label(self) -> dict[int, str]:
        """Class index -> name, as the model's config holds it."""
        return dict(enumerate(self.names))

    def __call__(self, label: np.ndarray, sample: str | int | None = None) -> np.ndarray:
        """Map a label array; raises `ValueError` naming unknown values (and the sample, when given)."""
        label = np.asarray(label)
        if label.size and (label.min() < 0 or label.max() > MAX_LABEL_VALUE):
            raise ValueError(
                f"sample {sample}: label values {label.min()}..{label.max()} are outside 0..{MAX_LABEL_VALUE}."
            )
        mapped = self._table[label.astype(np.int64, copy=False)]
        if mapped.size and mapped.min() < 0:
            unknown = np.unique(label[mapped < 0])[:8].tolist()
            raise ValueError(
                f"sample {sample}: label values {unknown} are neither classes {self.values} nor ignored "
                f"{self.ignore_values}; pass the dataset's labels.json (id2label and ignore_index)."
            )
        return mapped


# ----------------------------------------------------------------------------------------------------------------
# LaPa random affine (spec 3.2)


@dataclass(frozen=True)
class AffineParameters:
    """One draw of the LaPa augmentation: rotation in degrees (positive = clockwise on screen), isotropic scale, and
    translation in pixels of the original image."""

    angle: float
    scale: float
    translate: tuple[float, float]


@dataclass(frozen=True)
class SegFaceRandomAffine:
    """LaPa's training augmentation, applied to every sample: rotation ~ U(-max_rotation, max_rotation) degrees,
    scale ~ U(*scale_range), translation ~ U(-max_translation, max_translation) pixels on each axis, about the image
    centre, with zero fill; the image is resampled bicubic, the label nearest, and the landmarks follow.

    Args:
        max_rotation (`float`, *optional*, defaults to 30.0):
            Largest rotation in degrees.
        scale_range (`tuple[float, float]`, *optional*, defaults to `(0.5, 3.0)`):
            Range of the scale factor.
        max_translation (`float`, *optional*, defaults to 20.0):
            Largest shift in pixels, per axis.
    """

    max_rotation: float = 30.0
    scale_range: tuple[float, float] = (0.5, 3.0)
    max_translation: float = 20.0

    def sample(self, rng: np.random.Generator) -> AffineParameters:
        """Draw the parameters (in the original's order: angle, scale, x shift, y shift)."""
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        scale = rng.uniform(*self.scale_range)
        shift_x = rng.uniform(-self.max_translation, self.max_translation)
        shift_y = rng.uniform(-self.max_translation, self.max_translation)
        return AffineParameters(float(angle), float(scale), (float(shift_x), float(shift_y)))


def _inverse_affine_coefficients(center, angle: float, translate, scale: float) -> list[float]:
    """PIL `Image.AFFINE` coefficients (output pixel -> input pixel) of a rotation by `angle` degrees (clockwise on
    screen), a scale and a translation about `center`; the same matrix torchvision's `F.affine` passes to PIL."""
    rotation = math.radians(angle)
    cx, cy = center
    tx, ty = translate
    cos, sin = math.cos(rotation), math.sin(rotation)
    matrix = [cos / scale, sin / scale, 0.0, -sin / scale, cos / scale, 0.0]
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty) + cx
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty) + cy
    return matrix


def affine_landmarks(landmarks: np.ndarray, center, parameters: AffineParameters) -> np.ndarray:
    """Forward map of points under the affine: `p' = s * R(angle) (p - c) + c + t` in y-down pixel coordinates."""
    rotation = math.radians(parameters.angle)
    cos, sin = math.cos(rotation), math.sin(rotation)
    matrix = np.asarray([[cos, -sin], [sin, cos]]) * parameters.scale
    centre = np.asarray(center, dtype=np.float64)
    points = np.asarray(landmarks, dtype=np.float64)
    moved = (points - centre) @ matrix.T + centre + np.asarray(parameters.translate, dtype=np.float64)
    return moved.astype(np.float32)


def apply_affine(
    image: PIL.Image.Image,
    label: PIL.Image.Image | None,
    landmarks: np.ndarray | None,
    parameters: AffineParameters,
) -> tuple[PIL.Image.Image, PIL.Image.Image | None, np.ndarray | None]:
    """Apply one affine draw to an image (bicubic, fill 0), its label map (nearest, fill 0 = background) and its
    landmarks, about the image centre `(width / 2, height / 2)` as torchvision's `F.affine` does."""
    center = (image.width * 0.5, image.height * 0.5)
    coefficients = _inverse_affine_coefficients(center, parameters.angle, parameters.translate, parameters.scale)
    fill = tuple([0] * len(image.getbands())) if len(image.getbands()) > 1 else 0
    image = image.transform(image.size, PIL.Image.AFFINE, coefficients, PIL.Image.BICUBIC, fillcolor=fill)
    if label is not None:
        if label.size != (image.width, image.height):
            # The label is resampled in its own frame, with the same geometry relative to its centre.
            label_center = (label.width * 0.5, label.height * 0.5)
            label_coefficients = _inverse_affine_coefficients(
                label_center, parameters.angle, parameters.translate, parameters.scale
            )
        else:
            label_coefficients = coefficients
        label = label.transform(label.size, PIL.Image.AFFINE, label_coefficients, PIL.Image.NEAREST, fillcolor=0)
    if landmarks is not None:
        landmarks = affine_landmarks(landmarks, center, parameters)
    return image, label, landmarks


# ----------------------------------------------------------------------------------------------------------------
# The dataset wrapper


def checked_crop_box(box, width: int, height: int, sample) -> tuple[int, int, int, int]:
    """A dataset row's crop box `(x1, y1, x2, y2)` as integers inside a `width` x `height` image, or a one-line
    `ValueError` naming `sample`."""
    try:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"sample {sample}: crop box must be 4 numbers (x1, y1, x2, y2), got {box!r}.") from None
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"sample {sample}: crop box {(x1, y1, x2, y2)} does not lie inside the {width}x{height} image."
        )
    return x1, y1, x2, y2


class SegFaceSegmentationDataset(torch.utils.data.Dataset):
    """A `datasets` split (or any indexable of dict rows) as SegFace inputs.

    Each item holds `pixel_values` `(3, R, R)`, `labels` `(R, R)` (class indices, ignored pixels = the mapping's
    ignore index), `landmarks` `(5, 2)` in the resized frame when a landmarks column is used, and `index`. With
    `keep_native_labels`, `native_labels` holds the label map at its stored size (after the crop) for evaluation
    at the native resolution.

    Args:
        dataset (`datasets.Dataset` or a sequence of dicts):
            The split.
        processor ([`SegFaceImageProcessor`]):
            Resizes and normalises (its `size` is the model resolution R).
        label_mapping ([`SegFaceLabelMapping`]):
            Dataset label values -> class indices.
        image_column (`str`, *optional*, defaults to `"image"`):
            Column of the images (PIL images, paths or arrays).
        label_column (`str`, *optional*, defaults to `"label"`):
            Column of the label maps.
        landmarks_column (`str`, *optional*):
            Column of the 5 face points (e.g. LaPa's `landmarks_5`), needed by face-warp (LaPa) models.
        crop_box_column (`str`, *optional*):
            Column of an `(x1, y1, x2, y2)` crop applied before anything else (Helen's `crop_box`).
        augmentation ([`SegFaceRandomAffine`], *optional*):
            The random affine; `None` for no augmentation (evaluation, CelebAMask-HQ and Helen training).
        seed (`int`, *optional*, defaults to 0):
            Seed of the augmentation and of the worker processes.
        keep_native_labels (`bool`, *optional*, defaults to `False`):
            Also return the label map at its stored resolution.
    """

    def __init__(
        self,
        dataset,
        processor: SegFaceImageProcessor,
        label_mapping: SegFaceLabelMapping,
        image_column: str = "image",
        label_column: str = "label",
        landmarks_column: str | None = None,
        crop_box_column: str | None = None,
        augmentation: SegFaceRandomAffine | None = None,
        seed: int = 0,
        keep_native_labels: bool = False,
    ):
        columns = getattr(dataset, "column_names", None)
        if columns is not None:
            wanted = {"image": image_column, "label": label_column, "landmarks": landmarks_column,
                      "crop box": crop_box_column}  # fmt: skip
            missing = [f"{role} column {name!r}" for role, name in wanted.items() if name and name not in columns]
            if missing:
                raise ValueError(f"the dataset has no {', '.join(missing)}; its columns are {columns}.")
        self.dataset = dataset
        self.processor = processor
        self.label_mapping = label_mapping
        self.image_column = image_column
        self.label_column = label_column
        self.landmarks_column = landmarks_column
        self.crop_box_column = crop_box_column
        self.augmentation = augmentation
        self.seed = int(seed)
        self.keep_native_labels = keep_native_labels
        self.epoch = 0
        self.process_index = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws `__getitem__` uses (workers started later see it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def augmentation_rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[int(index)]
        sample = row.get("id", index) if isinstance(row, Mapping) else index
        image = to_rgb(row[self.image_column])
        label = to_label_map(row[self.label_column])
        landmarks = None
        if self.landmarks_column:
            landmarks = np.asarray(row[self.landmarks_column], dtype=np.float32)
            if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
                raise ValueError(
                    f"sample {sample}: column {self.landmarks_column!r} must hold 5 finite (x, y) points, got an array "
                    f"of shape {landmarks.shape}."
                )
        if self.crop_box_column:
            x1, y1, x2, y2 = checked_crop_box(row[self.crop_box_column], image.width, image.height, sample)
            if label.size != image.size:
                raise ValueError(
                    f"sample {sample}: image ({image.width}x{image.height}) and label ({label.width}x{label.height}) "
                    "differ in size, so the crop box cannot apply to both."
                )
            image = image.crop((x1, y1, x2, y2))
            label = label.crop((x1, y1, x2, y2))
            if landmarks is not None:
                landmarks = landmarks - np.asarray([x1, y1], dtype=np.float32)
        native = np.asarray(label) if self.keep_native_labels else None
        if self.augmentation is not None:
            parameters = self.augmentation.sample(self.augmentation_rng(index))
            image, label, landmarks = apply_affine(image, label, landmarks, parameters)
        inputs = self.processor(
            images=image, segmentation_maps=label, landmarks=landmarks if landmarks is not None else None,
            return_tensors="np",
        )  # fmt: skip
        item = {
            "pixel_values": torch.from_numpy(inputs["pixel_values"][0]),
            "labels": torch.from_numpy(self.label_mapping(inputs["labels"][0], sample)),
            "index": torch.tensor(int(index)),
        }
        if landmarks is not None:
            item["landmarks"] = torch.from_numpy(inputs["landmarks"][0])
        if native is not None:
            item["native_labels"] = torch.from_numpy(self.label_mapping(native, sample))
        return item


def segface_collate(examples: list[dict]) -> dict:
    """Stack a list of [`SegFaceSegmentationDataset`] items into a batch; `native_labels` (sizes differ) stay a
    list."""
    if not examples:
        raise ValueError("cannot collate an empty batch.")
    batch = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        batch[key] = values if key == "native_labels" else torch.stack(values)
    return batch


def model_inputs(batch: Mapping) -> dict:
    """The entries of a batch the model's forward takes (`pixel_values`, `labels`, `landmarks`)."""
    return {key: batch[key] for key in ("pixel_values", "labels", "landmarks") if key in batch}


def seed_worker(worker_id: int) -> None:
    """`worker_init_fn` of the data loaders: seeds Python's, numpy's and torch's global generators of each worker
    from `(seed, epoch, process index, worker id)`, so they differ per epoch, per process and per worker (the
    original seeds every worker identically in every epoch, bug #24). The augmentation itself uses the keyed
    per-sample generator of [`SegFaceSegmentationDataset`]."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    key = [
        int(getattr(dataset, "seed", 0)),
        int(getattr(dataset, "epoch", 0)),
        int(getattr(dataset, "process_index", 0)),
        int(worker_id),
    ]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


class SegFaceEpochSampler(torch.utils.data.Sampler):
    """Order of the samples in an epoch: a permutation seeded with `(seed, epoch)` (or the identity when not
    shuffling). Every process draws the same order; `accelerate` hands each process its share of the batches.

    Args:
        num_samples (`int`):
            Length of the dataset.
        shuffle (`bool`, *optional*, defaults to `True`):
            Whether to permute.
        seed (`int`, *optional*, defaults to 0):
            Seed of the permutation.
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0):
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


__all__ = [
    "AffineParameters",
    "SegFaceEpochSampler",
    "SegFaceLabelMapping",
    "SegFaceRandomAffine",
    "SegFaceSegmentationDataset",
    "affine_landmarks",
    "apply_affine",
    "model_inputs",
    "seed_worker",
    "segface_collate",
]
