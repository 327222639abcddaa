"""Batch face parsing of files, folders and globs: the library behind `segface predict`.

For every input image it writes, into the output folder, a label PNG at the image's (upright) size, and optionally a
coloured overlay, one binary mask per class present and one label map per face; `summary.json` lists every input
with its outcome, faces and class areas. An input that fails (missing, not an image, corrupt, no face found, ...) is
reported in one line and counted; the others go on, and nothing partial is left for it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..errors import SegFaceError, error_summary
from .faces import (
    FRAMINGS,
    SegFaceFaceDetector,
    SegFaceImagePlan,
    SegFaceParsingResult,
    framing_for,
    plan_image,
    segment_crops,
)
from ..file_utils import atomic_write_text
from .video import SegFaceVideoOptions, SegFaceVideoOptionsError
from .video_io import VIDEO_EXTENSIONS, SegFaceVideoError, is_video_path
from .video_outputs import LABEL_OUTPUTS, SegFaceVideoOutputOptions, predict_video
from ..image_io import SegFaceImageError, to_rgb
from .visualization import class_areas, legend, overlay, palette_for

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif")
SUMMARY_NAME = "summary.json"
LEGEND_NAME = "legend.png"
_GLOB_CHARACTERS = set("*?[")


class SegFaceUsageError(SegFaceError, ValueError):
    """A problem with the command as a whole (model, device, output folder), not with one input."""


@dataclass
class SegFaceInput:
    """One input image and the name (relative path without extension) its outputs get."""

    path: Path
    name: str


@dataclass
class SegFacePredictSummary:
    """What a [`predict`] run did: one record per input (including inputs that could not be found)."""

    output_dir: Path
    records: list[dict] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(record["status"] == "ok" for record in self.records)

    @property
    def failed(self) -> int:
        return sum(record["status"] == "failed" for record in self.records)

    def to_dict(self, model_name: str, config) -> dict:
        return {
            "model": model_name,
            "labels": {str(i): config.id2label[i] for i in range(config.num_labels)},
            "succeeded": self.succeeded,
            "failed": self.failed,
            "inputs": self.records,
        }


# ------------------------------------------------------------------------------------------------ inputs


def _is_image_name(path: Path) -> bool:
    """An image or a video file name (videos are parsed by [`predict_video`])."""
    return (path.suffix.lower() in IMAGE_EXTENSIONS or is_video_path(path)) and not path.name.startswith(".")


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
        unique, counter = name, 2
        while unique.lower() in names:  # two inputs with the same name (e.g. a/x.jpg and b/x.png) get x, x-2, ...
            unique, counter = f"{name}-{counter}", counter + 1
        names.add(unique.lower())
        inputs.append(SegFaceInput(path=path, name=unique))

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


def _save_label_png(label_map: np.ndarray, path: Path, num_labels: int) -> None:
    if num_labels <= 256:
        PIL.Image.fromarray(label_map.astype(np.uint8), mode="L").save(path, compress_level=3)
    else:
        PIL.Image.fromarray(label_map.astype(np.uint16)).save(path, compress_level=3)


def _write_outputs(item: SegFaceInput, image: PIL.Image.Image, result: SegFaceParsingResult, config, options,
                   output_dir: Path) -> dict:  # fmt: skip
    """Write the outputs of one image into a staging folder, then move them into place; returns their paths."""
    num_labels = config.num_labels
    target = output_dir / item.name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".segface-", dir=output_dir))
    moves: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        outputs = {}
        label_path = staging / "labels.png"
        _save_label_png(result.label_map, label_path, num_labels)
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
                _save_label_png(face.label_map, face_path, num_labels)
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
        "input": str(item.path),
        "status": "ok",
        "width": image.width,
        "height": image.height,
        "mode": result.mode,
        "faces": faces,
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
        batch_size (`int`, *optional*, defaults to 4): faces (or whole images) per forward pass.
        detect (`bool`, *optional*, defaults to `True`): detect faces; `False` parses each image as one aligned crop.
        framing (`str`, *optional*, defaults to `"auto"`): face crop (`auto`, `celebamask-hq`, `helen`, `lapa`).
        if_no_face (`str`, *optional*, defaults to `"error"`): `error` fails the input, `whole-image` parses it whole.
        alpha (`float`, *optional*, defaults to 0.5): overlay opacity.
        min_face_size (`int`, *optional*, defaults to 20): the detector's smallest face, in pixels.
        video ([`SegFaceVideoOptions`], *optional*): tracking and smoothing for video inputs (its `batch_size`,
            `framing` and `min_face_size` are taken from these options).
        video_labels (`str`, *optional*, defaults to `"video"`): per video, a lossless label video (`video`), a
            folder of label PNGs (`png`) or neither (`none`); the overlay video and tracks are always written.
    """

    overlay: bool = False
    masks: bool = False
    per_face: bool = False
    batch_size: int = 4
    detect: bool = True
    framing: str = "auto"
    if_no_face: str = "error"
    alpha: float = 0.5
    min_face_size: int = 20
    video: SegFaceVideoOptions = field(default_factory=SegFaceVideoOptions)
    video_labels: str = "video"

    def video_options(self) -> SegFaceVideoOptions:
        return replace(self.video, batch_size=self.batch_size, framing=self.framing, min_face_size=self.min_face_size)

    def check(self) -> None:
        if self.batch_size < 1:
            raise SegFaceUsageError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise SegFaceUsageError(f"--alpha must lie in [0, 1], got {self.alpha}.")
        if self.framing != "auto" and self.framing not in FRAMINGS:
            raise SegFaceUsageError(f"--framing must be auto or one of {', '.join(FRAMINGS)}, got {self.framing!r}.")
        if self.if_no_face not in ("error", "whole-image"):
            raise SegFaceUsageError(f"--if-no-face must be 'error' or 'whole-image', got {self.if_no_face!r}.")
        if self.video_labels not in LABEL_OUTPUTS:
            raise SegFaceUsageError(f"--video-labels must be one of {', '.join(LABEL_OUTPUTS)}, got {self.video_labels!r}.")
        try:
            self.video_options().check()
        except SegFaceVideoOptionsError as error:
            raise SegFaceUsageError(str(error)) from error


def predict(
    inputs: Sequence[str],
    model,
    processor,
    output_dir: str | os.PathLike,
    options: SegFacePredictOptions | None = None,
    model_name: str = "",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> SegFacePredictSummary:
    """Parse images and write the outputs (see the module docstring).

    Args:
        inputs (`list[str]`): files, folders and glob patterns.
        model ([`SegFaceForSemanticSegmentation`]): the model, in eval mode.
        processor ([`SegFaceImageProcessor`]): its image processor.
        output_dir (`str` or `os.PathLike`): where to write; created if needed.
        options ([`SegFacePredictOptions`], *optional*): what to write and how to find faces.
        model_name (`str`, *optional*): recorded in the summary.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.
        report (`Callable[[str], None]`, *optional*): called with one line per failed input; defaults to printing it
            to stderr above the progress bar.

    Returns:
        [`SegFacePredictSummary`], also written to `output_dir/summary.json`.
    """
    options = options or SegFacePredictOptions()
    options.check()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise SegFaceUsageError(f"--output-dir {output_dir} exists and is not a folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    report = report or (lambda line: tqdm.write(line, file=sys.stderr))
    summary = SegFacePredictSummary(output_dir=output_dir)
    items, missing = collect_inputs(inputs)
    for record in missing:
        summary.records.append(record)
        report(f"failed: {record['input']}: {record['error']}")

    config = model.config
    framing = framing_for(config) if options.framing == "auto" else options.framing
    detector = None
    if options.detect and items:
        detector = SegFaceFaceDetector(min_face_size=options.min_face_size, device=next(model.parameters()).device)
    if options.overlay:
        legend(config.id2label).save(output_dir / LEGEND_NAME)

    pending: list[tuple[SegFaceInput, PIL.Image.Image, SegFaceImagePlan]] = []

    def fail(item: SegFaceInput, error: BaseException) -> None:
        message = error_summary(error)
        message = message.replace(f"{item.path}: ", "")
        summary.records.append(_failure(item.path, message))
        report(f"failed: {item.path}: {message}")

    def finish(batch: list[tuple[SegFaceInput, PIL.Image.Image, SegFaceImagePlan]]) -> None:
        crops = [crop for _, _, plan in batch for crop in plan.crops]
        try:
            logits = segment_crops(model, processor, crops, batch_size=options.batch_size)
        except (RuntimeError, ValueError, MemoryError) as error:
            if len(batch) > 1:  # find out which input it was: run them one by one
                for entry in batch:
                    finish([entry])
                return
            return fail(batch[0][0], error)
        start = 0
        for item, image, plan in batch:
            try:
                result = plan.finish(logits[start : start + len(plan.crops)])
                outputs = _write_outputs(item, image, result, config, options, output_dir)
                summary.records.append(_record(item, image, result, outputs, config))
            except (OSError, ValueError, RuntimeError, MemoryError) as error:
                fail(item, error)
            start += len(plan.crops)

    def parse_one_video(item: SegFaceInput) -> None:
        if detector is None:
            return fail(item, SegFaceUsageError("videos need face detection; drop --no-detect"))
        try:
            outputs = SegFaceVideoOutputOptions(overlay=True, labels=options.video_labels, alpha=options.alpha)
            record = predict_video(item.path, item.name, model, processor, output_dir, options=options.video_options(),
                                   outputs=outputs, detector=detector, progress=progress)  # fmt: skip
        except (SegFaceVideoError, OSError, ValueError, RuntimeError, MemoryError) as error:
            return fail(item, error)
        summary.records.append(record)

    bar = tqdm(items, desc="parsing", unit="file", disable=not progress, file=sys.stderr)
    for item in bar:
        if is_video_path(item.path):
            parse_one_video(item)
            continue
        try:
            image = to_rgb(item.path)
            plan = plan_image(image, model, processor, detector=detector, detect=options.detect, framing=framing,
                              if_no_face=options.if_no_face, name=str(item.path))  # fmt: skip
        except (
            SegFaceImageError,
            OSError,
            ValueError,
            RuntimeError,
            MemoryError,
            PIL.Image.DecompressionBombError,
        ) as error:
            fail(item, error)
            continue
        pending.append((item, image, plan))
        if sum(len(plan.crops) for _, _, plan in pending) >= options.batch_size:
            finish(pending)
            pending = []
    if pending:
        finish(pending)
    bar.close()

    order = {str(item.path): index for index, item in enumerate(items)}
    summary.records.sort(key=lambda r: order.get(r["input"], -1))
    atomic_write_text(output_dir / SUMMARY_NAME, json.dumps(summary.to_dict(model_name, config), indent=2) + "\n")
    return summary


__all__ = [
    "IMAGE_EXTENSIONS",
    "SegFaceInput",
    "SegFacePredictOptions",
    "SegFacePredictSummary",
    "SegFaceUsageError",
    "check_model_location",
    "collect_inputs",
    "load_model",
    "load_segface_model",
    "predict",
]
