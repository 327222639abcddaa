"""The files `segface predict` writes for one video: the overlay video (with the source's audio), the label video
(lossless FFV1) or a folder of label PNGs, and `tracks.json`; all written into a staging folder and moved into place
only once the whole video has been parsed, so a video that fails leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .video import SegFaceVideoOptions, parse_video
from .video_io import SegFaceVideoWriter, overlay_suffix, probe_video
from .visualization import overlay, palette_for

LABEL_OUTPUTS = ("video", "png", "none")


@dataclass
class SegFaceVideoOutputOptions:
    r"""
    What to write for a video.

    Args:
        overlay (`bool`, *optional*, defaults to `True`): write `<name>_overlay.mp4` (the labels over the frames,
            with the source's audio; `.mkv` when its audio codec cannot go into MP4).
        labels (`str`, *optional*, defaults to `"video"`): `"video"` writes `<name>_labels.mkv` (lossless FFV1, one
            grey level per class index), `"png"` a folder `<name>_labels/` of `<frame>.png`, `"none"` nothing.
        alpha (`float`, *optional*, defaults to 0.5): overlay opacity.
    """

    overlay: bool = True
    labels: str = "video"
    alpha: float = 0.5


def _label_png(label_map: np.ndarray, path: Path) -> None:
    PIL.Image.fromarray(label_map.astype(np.uint8), mode="L").save(path, compress_level=3)


def _move_into_place(moves: list[tuple[Path, Path]]) -> None:
    placed: list[Path] = []
    try:
        for source, destination in moves:
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(source, destination)
            placed.append(destination)
    except BaseException:
        for destination in placed:
            shutil.rmtree(destination, ignore_errors=True) if destination.is_dir() else destination.unlink(True)
        raise


def predict_video(path, name: str, model, processor, output_dir, options: SegFaceVideoOptions | None = None,
                  outputs: SegFaceVideoOutputOptions | None = None, detector=None, progress: bool = True) -> dict:  # fmt: skip
    """Parse one video and write its outputs under `output_dir` as `<name>_...`.

    Returns:
        `dict`: the video's `summary.json` record (stream properties, frames, tracks, faces per frame, outputs).

    Raises:
        [`SegFaceVideoError`]: the video cannot be read (nothing is written then).
    """
    options = options or SegFaceVideoOptions()
    outputs = outputs or SegFaceVideoOutputOptions()
    if outputs.labels not in LABEL_OUTPUTS:
        raise ValueError(f"--video-labels must be one of {', '.join(LABEL_OUTPUTS)}, got {outputs.labels!r}.")
    config = model.config
    if outputs.labels != "none" and config.num_labels > 256:
        raise ValueError("label videos and PNGs hold 8-bit class indices; this model has more than 256 classes.")
    info = probe_video(path, max_pixels=options.max_pixels)
    output_dir = Path(output_dir)
    target = output_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".segface-video-", dir=output_dir))
    writers: list[SegFaceVideoWriter] = []
    palette = palette_for(config.id2label)
    moves: list[tuple[Path, Path]] = []
    written: dict[str, str] = {}
    try:
        overlay_writer = label_writer = None
        if outputs.overlay:
            suffix = overlay_suffix(info.audio_codec)
            overlay_writer = SegFaceVideoWriter(staging / f"overlay{suffix}", info.width, info.height, info.fps,
                                                rotation=info.rotation, audio_source=path)  # fmt: skip
            writers.append(overlay_writer)
            moves.append((staging / f"overlay{suffix}", target.with_name(f"{target.name}_overlay{suffix}")))
            written["overlay"] = f"{name}_overlay{suffix}"
        if outputs.labels == "video":
            label_writer = SegFaceVideoWriter(staging / "labels.mkv", info.width, info.height, info.fps,
                                              rotation=info.rotation, lossless=True)  # fmt: skip
            writers.append(label_writer)
            moves.append((staging / "labels.mkv", target.with_name(f"{target.name}_labels.mkv")))
            written["labels"] = f"{name}_labels.mkv"
        elif outputs.labels == "png":
            (staging / "labels").mkdir()
            moves.append((staging / "labels", target.with_name(f"{target.name}_labels")))
            written["labels"] = f"{name}_labels/"
        moves.append((staging / "tracks.json", target.with_name(f"{target.name}_tracks.json")))
        written["tracks"] = f"{name}_tracks.json"
        frames = faces = 0
        track_ids: set[int] = set()
        cuts: list[int] = []
        with open(staging / "tracks.json", "w", encoding="utf-8") as tracks:
            tracks.write('{"frames": [\n')
            for result in parse_video(path, model, processor, options=options, detector=detector, progress=progress,
                                      total=info.frame_count):  # fmt: skip
                source = result.source
                timing = {"pts": source.pts, "time_base": source.time_base, "time": result.time}
                if overlay_writer is not None:
                    picture = overlay(result.image, result.label_map, palette, alpha=outputs.alpha)
                    overlay_writer.write(picture, **timing)
                if label_writer is not None:
                    label_writer.write(result.label_map.astype(np.uint8), **timing)
                elif outputs.labels == "png":
                    _label_png(result.label_map, staging / "labels" / f"{result.index:06d}.png")
                tracks.write(("" if frames == 0 else ",\n") + json.dumps(result.to_dict()))
                frames += 1
                faces += len(result.faces)
                track_ids.update(face.track_id for face in result.faces)
                if result.scene_cut:
                    cuts.append(result.index)
            tracks.write("\n]}\n")
        for writer in writers:
            writer.close()
        writers.clear()
        _move_into_place(moves)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "input": str(path),
        "status": "ok",
        "kind": "video",
        **info.to_dict(),
        "frames": frames,
        "tracks": len(track_ids),
        "faces_per_frame": round(faces / max(frames, 1), 3),
        "scene_cuts": cuts,
        "outputs": written,
    }


__all__ = ["LABEL_OUTPUTS", "SegFaceVideoOutputOptions", "predict_video"]
