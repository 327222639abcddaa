"""Batch face parsing of files, folders and globs: the library behind `segface predict`.

For every input image it writes, into the output folder, a label PNG at the image's (upright) size, and optionally a
coloured overlay, one binary mask per class present and one label map per face; `summary.json` lists every input
with its outcome, faces and class areas. An input that fails (missing, not an image, corrupt, no face found, ...) is
reported in one line and counted; the others go on, and nothing partial is left for it.

Running again into the same folder skips the inputs whose complete outputs exist and merges `summary.json`; under
`accelerate launch` the inputs are split between the processes (`segface_hf.inference.bulk`); datasets can be read
and written instead of files (`segface_hf.inference.dataset_io`). See docs/bulk-parsing.md.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..errors import SegFaceError, error_summary
from .faces import (
    FRAMINGS,
    ROTATIONS,
    SegFaceFaceDetector,
    SegFaceImagePlan,
    SegFaceParsingResult,
    default_batch_size,
    framing_for,
    plan_image,
    segment_crops,
)
from ..file_utils import atomic_write_text
from .bulk import (
    SUMMARY_NAME,
    SegFaceGlobalProgress,
    SegFaceProcesses,
    SegFaceSummaryShard,
    current_processes,
    previous_records,
    read_counts,
    read_shard,
    remove_shards,
    shard_paths,
)
from .video import SegFaceVideoOptions, SegFaceVideoOptionsError
from .video_io import VIDEO_EXTENSIONS, SegFaceVideoError, is_video_path
from .video_outputs import LABEL_OUTPUTS, SegFaceVideoOutputOptions, predict_video
from ..image_io import SegFaceImageError, load_image, to_rgb
from .visualization import class_areas, legend, overlay, palette_for

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif")
LEGEND_NAME = "legend.png"
OUTPUT_FORMATS = ("files", "dataset")
STAGING_PREFIX = ".segface-"
_GLOB_CHARACTERS = set("*?[")


class SegFaceUsageError(SegFaceError, ValueError):
    """A problem with the command as a whole (model, device, output folder), not with one input."""


@dataclass
class SegFaceInput:
    """One input image and the name (relative path without extension, or a dataset row's id) its outputs get.

    Attributes:
        path (`Path` or `None`): the image file (`None` for a dataset row).
        name (`str`): the outputs' name.
        key (`str`, *optional*): what the summary calls it (defaults to the path).
        image (*optional*): a dataset row's image (encoded bytes, `{"bytes", "path"}` or a PIL image, or a callable
            returning one) instead of a path.
    """

    path: Path | None
    name: str
    key: str | None = None
    image: Any = None

    @property
    def source(self) -> str:
        return self.key if self.key is not None else str(self.path)

    @property
    def image_id(self) -> str:
        """Its id in a dataset of parses: a dataset row's id as given, or a file's (unique) output name."""
        return self.key if self.key is not None else self.name

    def load(self) -> PIL.Image.Image:
        if self.image is None:
            return to_rgb(load_image(self.path))
        return to_rgb(load_image(self.image() if callable(self.image) else self.image))


@dataclass
class SegFaceInputSource:
    """What to parse: a list of inputs known in advance, or a stream of them (a streamed dataset).

    Attributes:
        items (list of [`SegFaceInput`] or `None`): all inputs, in order (split between processes after the finished
            ones are skipped).
        stream (`Callable[[SegFaceProcesses], Iterable[SegFaceInput]]` or `None`): this process's share of a stream.
        failures (`list[dict]`): failure records of inputs that yield nothing (e.g. a missing path).
        split (`str`): the split name of `--output-format dataset` shards.
        stream_in_workers (`bool`): whether `stream` may run in DataLoader workers (a streamed dataset splits its
            shards between them itself; row numbers as ids need one reader).
    """

    items: list[SegFaceInput] | None = None
    stream: Callable[[SegFaceProcesses], Iterable[SegFaceInput]] | None = None
    failures: list[dict] = field(default_factory=list)
    split: str = "train"
    stream_in_workers: bool = False


@dataclass
class SegFacePredictSummary:
    """What a [`predict`] run did: one record per input (including inputs that could not be found)."""

    output_dir: Path
    records: list[dict] = field(default_factory=list)
    skipped: int = 0

    @property
    def succeeded(self) -> int:
        return sum(record["status"] == "ok" for record in self.records)

    @property
    def failed(self) -> int:
        return sum(record["status"] == "failed" for record in self.records)


def summary_dict(records: Sequence[dict], model_name: str, config) -> dict:
    """The content of `summary.json` for `records` (all runs into one output folder, merged)."""
    return {
        "model": model_name,
        "labels": {str(i): config.id2label[i] for i in range(config.num_labels)},
        "succeeded": sum(record["status"] == "ok" for record in records),
        "failed": sum(record["status"] == "failed" for record in records),
        "inputs": list(records),
    }


# ------------------------------------------------------------------------------------------------ inputs


def _is_image_name(path: Path) -> bool:
    """An image or a video file name (videos are parsed by [`predict_video`])."""
    return (path.suffix.lower() in IMAGE_EXTENSIONS or is_video_path(path)) and not path.name.startswith(".")


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... if an earlier input took it (compared case-insensitively, as file systems
    may); the result is added to `taken`."""
    unique, counter = name, 2
    while unique.lower() in taken:  # two inputs with the same name (e.g. a/x.jpg and b/x.png) get x, x-2, ...
        unique, counter = f"{name}-{counter}", counter + 1
    taken.add(unique.lower())
    return unique


def collect_inputs(specs: Sequence[str]) -> tuple[list[SegFaceInput], list[dict]]:
    """Expand files, folders (recursively, image extensions only) and glob patterns into a list of images.

    Returns:
        `(inputs, failures)`: the images in order (duplicates removed), and a failure record for every spec that
        yields nothing (missing path, folder without images, pattern without matches).
    """
    inputs: list[SegFaceInput] = []
    failures: list[dict] = []
    seen: set[str] = set()
    names: set[str] = set()

    def add(path: Path, name: str) -> None:
        key = str(path.resolve())
        if key in seen:
            return
        seen.add(key)
        inputs.append(SegFaceInput(path=path, name=unique_name(name, names)))

    def add_folder(folder: Path, spec: str) -> None:
        found = sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_name(p))
        if not found:
            extensions = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            failures.append(_failure(spec, f"no images or videos in this folder (looked for {extensions})"))
        for path in found:
            add(path, path.relative_to(folder).with_suffix("").as_posix())

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            add_folder(path, spec)
        elif path.is_file():
            add(path, path.stem)
        elif _GLOB_CHARACTERS & set(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            files = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not files:
                failures.append(_failure(spec, "no image file matches this pattern"))
            for match in files:
                add(match, match.stem)
        else:
            failures.append(_failure(spec, "no such file or folder"))
    return inputs, failures


def _failure(source, reason: str) -> dict:
    return {"input": str(source), "status": "failed", "error": reason}


# ------------------------------------------------------------------------------------------------ outputs


def save_label_png(label_map: np.ndarray, path, num_labels: int) -> None:
    """Save a label map as a PNG (8-bit grey, 16-bit beyond 256 classes) to a path or a binary file object."""
    if num_labels <= 256:
        PIL.Image.fromarray(label_map.astype(np.uint8), mode="L").save(path, format="PNG", compress_level=3)
    else:
        PIL.Image.fromarray(label_map.astype(np.uint16)).save(path, format="PNG", compress_level=3)


def _write_outputs(item: SegFaceInput, image: PIL.Image.Image, result: SegFaceParsingResult, config, options,
                   output_dir: Path) -> dict:  # fmt: skip
    """Write the outputs of one image into a staging folder, then move them into place; returns their paths."""
    num_labels = config.num_labels
    target = output_dir / item.name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    moves: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        outputs = {}
        label_path = staging / "labels.png"
        save_label_png(result.label_map, label_path, num_labels)
        moves.append((label_path, target.with_name(target.name + ".png")))
        outputs["labels"] = f"{item.name}.png"
        if options.overlay:
            overlay_path = staging / "overlay.jpg"
            picture = overlay(image, result.label_map, palette_for(config.id2label), alpha=options.alpha)
            picture.save(overlay_path, quality=92)
            moves.append((overlay_path, target.with_name(target.name + "_overlay.jpg")))
            outputs["overlay"] = f"{item.name}_overlay.jpg"
        if options.masks:
            masks_dir = staging / "masks"
            masks_dir.mkdir()
            for index in np.unique(result.label_map).tolist():
                mask = (result.label_map == index).astype(np.uint8) * 255
                PIL.Image.fromarray(mask, mode="L").save(masks_dir / f"{index:02d}_{config.id2label[index]}.png",
                                                         compress_level=3)  # fmt: skip
            moves.append((masks_dir, target.with_name(target.name + "_masks")))
            outputs["masks"] = f"{item.name}_masks/"
        if options.per_face and result.mode == "faces":
            outputs["faces"] = []
            for index, face in enumerate(result.faces):
                face_path = staging / f"face{index}.png"
                save_label_png(face.label_map, face_path, num_labels)
                moves.append((face_path, target.with_name(f"{target.name}_face{index}.png")))
                outputs["faces"].append(f"{item.name}_face{index}.png")
        # Everything is written: only now replace what an earlier run may have left under these names.
        for source, destination in moves:
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(source, destination)
            placed.append(destination)
        return outputs
    except BaseException:
        for destination in placed:  # a failure while moving into place: take back this input's outputs
            shutil.rmtree(destination, ignore_errors=True) if destination.is_dir() else destination.unlink(
                missing_ok=True
            )
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _record(item: SegFaceInput, image: PIL.Image.Image, result: SegFaceParsingResult, outputs: dict, config) -> dict:
    areas = class_areas(result.label_map, config.id2label)
    faces = []
    for face in result.faces:
        if face.detection is not None:
            faces.append(face.detection.to_dict())
    return {
        "input": item.source,
        "status": "ok",
        "width": image.width,
        "height": image.height,
        "mode": result.mode,
        "faces": faces,
        "dropped_faces": [face.to_dict() for face in result.dropped],
        "outputs": outputs,
        "class_fractions": {name: round(a["fraction"], 6) for name, a in areas.items() if a["pixels"]},
    }


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class SegFacePredictOptions:
    r"""
    Options of [`predict`].

    Args:
        overlay (`bool`, *optional*, defaults to `False`): write `<name>_overlay.jpg` (and `legend.png` once).
        masks (`bool`, *optional*, defaults to `False`): write `<name>_masks/<index>_<class>.png` per class present.
        per_face (`bool`, *optional*, defaults to `False`): write `<name>_face<i>.png`, one label map per face.
        batch_size (`int`, *optional*): faces (or whole images) per forward pass (1 on the CPU, 8 on a GPU by
            default).
        detect (`bool`, *optional*, defaults to `True`): detect faces; `False` parses each image as one aligned crop.
        framing (`str`, *optional*, defaults to `"auto"`): face crop (`auto`, `celebamask-hq`, `helen`, `lapa`).
        if_no_face (`str`, *optional*, defaults to `"error"`): `error` fails the input, `whole-image` parses it whole.
        alpha (`float`, *optional*, defaults to 0.5): overlay opacity.
        min_face_size (`int`, *optional*, defaults to 20): the detector's smallest face, in pixels.
        rotations (`str`, *optional*, defaults to `"auto"`): the detector's search for rotated faces (`auto`,
            `always`, `never`; see [`~segface_hf.inference.faces.SegFaceFaceDetector`]).
        overwrite (`bool`, *optional*, defaults to `False`): parse every input again; by default inputs whose
            complete outputs exist (from an earlier, possibly interrupted run) are skipped.
        output_format (`str`, *optional*, defaults to `"files"`): `files` (PNGs) or `dataset` (parquet shards that
            `datasets.load_dataset` opens; see `segface_hf.inference.dataset_io`).
        num_workers (`int`, *optional*, defaults to 0): DataLoader worker processes that decode the images and
            detect the faces while the model runs (0: all in this process).
        shard_rows (`int`, *optional*, defaults to 1000): rows per parquet shard with `output_format="dataset"`.
        video ([`SegFaceVideoOptions`], *optional*): tracking and smoothing for video inputs (its `batch_size`,
            `framing` and `min_face_size` are taken from these options).
        video_labels (`str`, *optional*, defaults to `"video"`): per video, a lossless label video (`video`), a
            folder of label PNGs (`png`) or neither (`none`); the overlay video and tracks are always written.
    """

    overlay: bool = False
    masks: bool = False
    per_face: bool = False
    batch_size: int | None = None
    detect: bool = True
    framing: str = "auto"
    if_no_face: str = "error"
    alpha: float = 0.5
    min_face_size: int = 20
    rotations: str = "auto"
    overwrite: bool = False
    output_format: str = "files"
    num_workers: int = 0
    shard_rows: int = 1000
    video: SegFaceVideoOptions = field(default_factory=SegFaceVideoOptions)
    video_labels: str = "video"

    def video_options(self) -> SegFaceVideoOptions:
        return replace(self.video, batch_size=self.batch_size, framing=self.framing, min_face_size=self.min_face_size)

    def check(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise SegFaceUsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got "
                                    f"{self.output_format!r}.")  # fmt: skip
        if self.output_format == "dataset" and (self.overlay or self.masks or self.per_face):
            raise SegFaceUsageError("--overlay, --masks and --per-face write files; with --output-format dataset the "
                                    "label maps go into the dataset (drop those options or use --output-format files).")  # fmt: skip
        if self.shard_rows < 1:
            raise SegFaceUsageError(f"--shard-rows must be at least 1, got {self.shard_rows}.")
        if self.num_workers < 0:
            raise SegFaceUsageError(f"--num-workers must be 0 or more, got {self.num_workers}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise SegFaceUsageError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise SegFaceUsageError(f"--alpha must lie in [0, 1], got {self.alpha}.")
        if self.framing != "auto" and self.framing not in FRAMINGS:
            raise SegFaceUsageError(f"--framing must be auto or one of {', '.join(FRAMINGS)}, got {self.framing!r}.")
        if self.if_no_face not in ("error", "whole-image"):
            raise SegFaceUsageError(f"--if-no-face must be 'error' or 'whole-image', got {self.if_no_face!r}.")
        if self.rotations not in ROTATIONS:
            raise SegFaceUsageError(f"--rotations must be one of {', '.join(ROTATIONS)}, got {self.rotations!r}.")
        if self.video_labels not in LABEL_OUTPUTS:
            raise SegFaceUsageError(f"--video-labels must be one of {', '.join(LABEL_OUTPUTS)}, got {self.video_labels!r}.")
        try:
            self.video_options().check()
        except SegFaceVideoOptionsError as error:
            raise SegFaceUsageError(str(error)) from error


class SegFaceFileWriter:
    """Writes each parsed input's files at once (`--output-format files`).

    A writer's `add` returns the records of the inputs whose outputs are now on disk; one that `holds_rows` returns
    them later (from a later `add`, or `close`), so [`predict`] counts its inputs in the progress as they are added.
    """

    holds_rows = False

    def __init__(self, output_dir: Path, config, options: SegFacePredictOptions, split: str = "train", rank: int = 0):
        self.output_dir, self.config, self.options = output_dir, config, options

    @staticmethod
    def clean_up(output_dir: Path, records: dict[str, dict]) -> None:
        """Nothing to do for files: a killed run's staging folders are removed by [`predict`] itself."""

    def add(self, item: SegFaceInput, image: PIL.Image.Image, result: SegFaceParsingResult, record: dict) -> list:
        record["outputs"] = _write_outputs(item, image, result, self.config, self.options, self.output_dir)
        return [record]

    def close(self) -> list:
        return []

    def finalize(self, records: dict[str, dict]) -> None:
        """Nothing to merge for files."""


def outputs_complete(record: dict, options: SegFacePredictOptions, output_dir: Path) -> bool:
    """Whether an earlier run's `record` says the input was parsed and every output `options` ask for is on disk."""
    if record.get("status") != "ok" or not isinstance(record.get("outputs"), dict):
        return False
    outputs = record["outputs"]
    if record.get("kind") == "video":  # everything predict_video wrote
        return all((output_dir / path).exists() for path in outputs.values())
    if options.output_format == "dataset":
        wanted = ["dataset"]
    else:
        wanted = ["labels"] + ["overlay"] * options.overlay + ["masks"] * options.masks
        if options.per_face and record.get("mode") == "faces":
            wanted.append("faces")
    if any(key not in outputs for key in wanted):
        return False
    paths = [outputs[key] for key in wanted if key != "faces"]
    if "faces" in wanted:
        paths += list(outputs["faces"])
    return all((output_dir / path).exists() for path in paths)


def _remove_staging(output_dir: Path) -> None:
    """Remove the staging folders a killed run left behind."""
    for path in output_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


_PREPARE_ERRORS = (SegFaceImageError, OSError, ValueError, RuntimeError, MemoryError, PIL.Image.DecompressionBombError)


SKIPPED = "skipped: already parsed"


class _Preparer:
    """Decodes an input and plans its crops (detecting the faces); runs in the DataLoader workers, where it makes its
    own CPU detector. Inputs in `done` are passed on unread, marked `SKIPPED`."""

    def __init__(self, model, processor, options: SegFacePredictOptions, framing: str, detector,
                 done: set[str] = frozenset()):  # fmt: skip
        self.model, self.processor, self.options, self.framing = model, processor, options, framing
        self.detector, self.done = detector, done

    def __call__(self, item: SegFaceInput):
        if item.source in self.done:
            return item, None, None, SKIPPED
        if self.options.detect and self.detector is None:
            self.detector = SegFaceFaceDetector(min_face_size=self.options.min_face_size, device="cpu",
                                                rotations=self.options.rotations)  # fmt: skip
        try:
            image = item.load()
            plan = plan_image(image, self.model, self.processor, detector=self.detector, detect=self.options.detect,
                              framing=self.framing, if_no_face=self.options.if_no_face, name=item.source)  # fmt: skip
        except _PREPARE_ERRORS as error:
            return item, None, None, error_summary(error)
        return item, image, plan, None


class _PreparedInputs(torch.utils.data.IterableDataset):
    """The prepared inputs in order; with DataLoader workers, worker `w` of `W` prepares inputs `w`, `w + W`, ...
    (the DataLoader takes their results round-robin, so the order is kept), unless the inputs split themselves
    between workers (a streamed `datasets.IterableDataset` does)."""

    def __init__(self, make_items: Callable[[], Iterable[SegFaceInput]], prepare: _Preparer, split_here: bool = True):
        self.make_items, self.prepare, self.split_here = make_items, prepare, split_here

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        step, first = (1, 0) if info is None or not self.split_here else (info.num_workers, info.id)
        for index, item in enumerate(self.make_items()):
            if index % step == first:
                yield self.prepare(item)


def _unchanged(sample):
    return sample


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def prepared_inputs(make_items, prepare: _Preparer, num_workers: int, split_here: bool = True) -> Iterable:
    """`(item, image, plan, error)` per input, prepared in `num_workers` DataLoader workers (or here with 0);
    `split_here=False` for inputs that split themselves between the workers."""
    if num_workers == 0:
        return map(prepare, make_items())
    stream = _PreparedInputs(make_items, prepare, split_here=split_here)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_unchanged,
                                       worker_init_fn=_one_thread)  # fmt: skip


def predict(
    inputs: Sequence[str] | SegFaceInputSource,
    model,
    processor,
    output_dir: str | os.PathLike,
    options: SegFacePredictOptions | None = None,
    model_name: str = "",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    processes: SegFaceProcesses | None = None,
) -> SegFacePredictSummary:
    """Parse images and write the outputs (see the module docstring).

    Inputs whose complete outputs an earlier run wrote are skipped (unless `options.overwrite`), and `summary.json`
    is merged with the earlier one. Launched as several processes (`accelerate launch`), every process takes its
    share of the inputs and the main process merges the summaries (see `segface_hf.inference.bulk`).

    Args:
        inputs (`list[str]` or [`SegFaceInputSource`]): files, folders and glob patterns, or a source such as
            `segface_hf.inference.dataset_io.dataset_source(...)`.
        model ([`SegFaceForSemanticSegmentation`]): the model, in eval mode.
        processor ([`SegFaceImageProcessor`]): its image processor.
        output_dir (`str` or `os.PathLike`): where to write; created if needed.
        options ([`SegFacePredictOptions`], *optional*): what to write and how to find faces.
        model_name (`str`, *optional*): recorded in the summary.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar (on the main process, counting the
            inputs of all processes).
        report (`Callable[[str], None]`, *optional*): called with one line per failed input; defaults to printing it
            to stderr above the progress bar.
        processes ([`SegFaceProcesses`], *optional*): defaults to the launch this process belongs to.

    Returns:
        [`SegFacePredictSummary`]: the records of this run (on the main process: of all processes), with the number
        of inputs skipped; `output_dir/summary.json` holds every run's records.
    """
    options = options or SegFacePredictOptions()
    options.check()
    batch_size = options.batch_size or default_batch_size(model)
    processes = processes or current_processes()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise SegFaceUsageError(f"--output-dir {output_dir} exists and is not a folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    report = report or (lambda line: tqdm.write(line, file=sys.stderr))
    if isinstance(inputs, SegFaceInputSource):
        source = inputs
    else:
        items, missing = collect_inputs(inputs)
        source = SegFaceInputSource(items=items, failures=missing)
    if source.items is None and options.num_workers and not source.stream_in_workers:
        raise SegFaceUsageError("a streamed dataset numbered by row needs --num-workers 0 (or an --id-column, whose "
                                "shards the workers can split).")  # fmt: skip
    config = model.config
    writer_class = SegFaceFileWriter
    if options.output_format == "dataset":
        from .dataset_io import SegFaceDatasetWriter

        writer_class = SegFaceDatasetWriter

    # Every process reads the same state before any of them writes.
    previous = previous_records(output_dir)
    done = set()
    if not options.overwrite:
        done = {key for key, record in previous.items() if outputs_complete(record, options, output_dir)}
    watch = None
    if processes.is_main:
        _remove_staging(output_dir)
        writer_class.clean_up(output_dir, previous)
        if options.overlay:
            legend(config.id2label).save(output_dir / LEGEND_NAME)
        for record in source.failures:
            report(f"failed: {record['input']}: {record['error']}")
        watch = SegFaceGlobalProgress(output_dir, lambda n: None)
    processes.wait_for_everyone()

    skipped, total = 0, None
    videos: list[SegFaceInput] = []
    if source.items is not None:
        todo = [item for item in source.items if item.source not in done]
        skipped, total = len(source.items) - len(todo), len(todo)
        mine = list(processes.take(todo))
        videos = [item for item in mine if item.path is not None and is_video_path(item.path)]
        mine = [item for item in mine if not (item.path is not None and is_video_path(item.path))]
        make_items = lambda: iter(mine)  # noqa: E731
    else:
        make_items = lambda: source.stream(processes)  # noqa: E731  (finished inputs are counted as they come)

    framing = framing_for(config) if options.framing == "auto" else options.framing
    detector = None
    if options.detect and options.num_workers == 0:
        detector = SegFaceFaceDetector(min_face_size=options.min_face_size, device=model.device,
                                       rotations=options.rotations)  # fmt: skip
    writer = writer_class(output_dir, config, options, split=source.split, rank=processes.rank)
    shard = SegFaceSummaryShard(output_dir, processes.rank)
    records: list[dict] = []
    bar = tqdm(total=total, desc="parsing", unit="image", disable=not (progress and processes.is_main), file=sys.stderr)
    if watch is not None:
        watch.update = bar.update
        watch.start()

    def commit(finished: list[dict], counted: bool = False) -> None:
        for record in finished:
            shard.append(record, counted=counted)
            records.append(record)
        if watch is not None:
            watch.refresh()

    def write(item: SegFaceInput, image: PIL.Image.Image, result: SegFaceParsingResult) -> None:
        finished = writer.add(item, image, result, _record(item, image, result, {}, config))
        if writer.holds_rows:  # recorded once its shard is written; counted now
            shard.append_progress()
        commit(finished, counted=writer.holds_rows)

    def fail(item: SegFaceInput, message: str) -> None:
        message = message.replace(f"{item.source}: ", "")
        commit([_failure(item.source, message)])
        report(f"failed: {item.source}: {message}")

    def finish(batch: list[tuple[SegFaceInput, PIL.Image.Image, SegFaceImagePlan]]) -> None:
        crops = [crop for _, _, plan in batch for crop in plan.crops]
        try:
            logits = segment_crops(model, processor, crops, batch_size=batch_size)
        except (RuntimeError, ValueError, MemoryError) as error:
            if len(batch) > 1:  # find out which input it was: run them one by one
                for entry in batch:
                    finish([entry])
                return
            return fail(batch[0][0], error_summary(error))
        start = 0
        for item, image, plan in batch:
            try:
                write(item, image, plan.finish(logits[start : start + len(plan.crops)]))
            except (OSError, ValueError, RuntimeError, MemoryError) as error:
                fail(item, error_summary(error))
            start += len(plan.crops)

    def parse_one_video(item: SegFaceInput) -> None:
        if options.output_format != "files" or not options.detect:
            return fail(item, "videos are parsed with face detection into files: drop --no-detect and "
                        "--output-format dataset for them")  # fmt: skip
        try:
            found = detector or SegFaceFaceDetector(min_face_size=options.min_face_size,
                                                    device=model.device)  # fmt: skip
            outputs = SegFaceVideoOutputOptions(overlay=True, labels=options.video_labels, alpha=options.alpha)
            record = predict_video(item.path, item.name, model, processor, output_dir, options=options.video_options(),
                                   outputs=outputs, detector=found, progress=progress and processes.is_main)  # fmt: skip
        except (SegFaceVideoError, OSError, ValueError, RuntimeError, MemoryError) as error:
            return fail(item, error_summary(error))
        commit([{**record, "input": item.source}])

    pending: list[tuple[SegFaceInput, PIL.Image.Image, SegFaceImagePlan]] = []
    try:
        preparer = _Preparer(model, processor, options, framing, detector, done=done if source.items is None else set())
        prepared = prepared_inputs(make_items, preparer, options.num_workers, split_here=source.items is not None)
        for item, image, plan, error in prepared:
            if error is SKIPPED:
                skipped += 1
                continue
            if error is not None:
                fail(item, error)
                continue
            pending.append((item, image, plan))
            if sum(len(plan.crops) for _, _, plan in pending) >= batch_size:
                finish(pending)
                pending = []
        if pending:
            finish(pending)
            pending = []
        for item in videos:  # each video streams through the model on its own (tracks need its frames in order)
            parse_one_video(item)
        commit(writer.close(), counted=writer.holds_rows)
        if source.items is None:  # only this process knows how many of its share it skipped
            shard.append_count("skipped", skipped)
    finally:
        shard.close()
    processes.wait_for_everyone()  # for the slowest share; one that takes too long leaves its shard to the next run
    if not processes.is_main:
        bar.close()
        return SegFacePredictSummary(output_dir=output_dir, records=records, skipped=skipped)

    watch.stop()
    bar.close()
    starts = watch.offsets_at_start
    this_run = [entry for path in shard_paths(output_dir) for entry in read_shard(path, starts.get(path, 0))]
    records = source.failures + [record for _, record in sorted(this_run, key=lambda entry: entry[0])]
    if source.items is None:
        skipped = sum(read_counts(path, starts.get(path, 0)).get("skipped", 0) for path in shard_paths(output_dir))
    merged = previous_records(output_dir)
    for record in source.failures:
        merged[record["input"]] = record
    if source.items is not None:  # this run's inputs in their order, then the others as they were
        order = {item.source: index for index, item in enumerate(source.items)}
        merged = dict(sorted(merged.items(), key=lambda entry: order.get(entry[0], len(order))))
    writer.finalize(merged)
    summary_text = json.dumps(summary_dict(list(merged.values()), model_name, config), indent=2) + "\n"
    atomic_write_text(output_dir / SUMMARY_NAME, summary_text)
    remove_shards(output_dir)  # merged into summary.json (a kill before this point only merges them again)
    return SegFacePredictSummary(output_dir=output_dir, records=records, skipped=skipped)


__all__ = [
    "IMAGE_EXTENSIONS",
    "SegFaceFileWriter",
    "SegFaceInput",
    "SegFaceInputSource",
    "SegFacePredictOptions",
    "SegFacePredictSummary",
    "SegFaceUsageError",
    "collect_inputs",
    "outputs_complete",
    "save_label_png",
    "predict",
    "prepared_inputs",
    "summary_dict",
    "unique_name",
]
