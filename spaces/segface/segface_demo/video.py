"""The video tab: a short uploaded clip parsed with tracked faces (segface_hf.inference.video), returned as the
overlay video with the clip's audio."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from segface_hf.inference.video_io import SegFaceVideoError, probe_video
from segface_hf.inference.video_outputs import SegFaceVideoOutputOptions, predict_video

from .inference import DemoInputError

# A CPU Space parses a few frames per second: longer clips would hold the queue for minutes.
MAX_VIDEO_SECONDS = float(os.environ.get("SEGFACE_MAX_VIDEO_SECONDS", "10"))
MAX_VIDEO_PIXELS = 1920 * 1080


def parse_clip(path: str | os.PathLike | None, loaded, detector, output_dir: str | os.PathLike) -> tuple[str, str]:
    """Parse an uploaded clip; returns `(overlay video path, one-line summary)`.

    Raises:
        `DemoInputError`: no file, not a readable video, longer than `MAX_VIDEO_SECONDS` or frames beyond 1080p.
    """
    if not path:
        raise DemoInputError("Upload a video clip first.")
    try:
        info = probe_video(path, max_pixels=MAX_VIDEO_PIXELS)
    except SegFaceVideoError as error:
        raise DemoInputError(str(error).replace(f"{path}: ", "This file: ")) from error
    seconds = info.duration or ((info.frame_count or 0) / info.fps if info.fps else 0.0)
    if seconds > MAX_VIDEO_SECONDS:
        raise DemoInputError(f"This clip is {seconds:.1f} s long; the demo parses clips of up to "
                             f"{MAX_VIDEO_SECONDS:.0f} s. Trim it first.")  # fmt: skip
    folder = Path(tempfile.mkdtemp(dir=output_dir))
    try:
        record = predict_video(path, "clip", loaded.model, loaded.processor, folder, detector=detector,
                               outputs=SegFaceVideoOutputOptions(labels="none"), progress=True)  # fmt: skip
    except SegFaceVideoError as error:
        raise DemoInputError(str(error).replace(f"{path}: ", "This file: ")) from error
    summary = (f"{record['frames']} frames ({info.width}x{info.height}, {info.fps:.1f} fps), {record['tracks']} "
               f"face track(s), {len(record['scene_cuts'])} scene cut(s)")  # fmt: skip
    return str(folder / record["outputs"]["overlay"]), summary
