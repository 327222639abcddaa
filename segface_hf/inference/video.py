"""Parsing videos: faces tracked from frame to frame, steadied crops, optionally smoothed labels.

[`parse_video`] streams a video (a file, or any iterable of frames) and yields one [`SegFaceVideoFrameResult`] per
frame, in order. Per frame:

1. a hard cut (colour histogram jump, [`SegFaceSceneCutDetector`]) resets every track, filter and average;
2. faces are detected (every frame, or every `detect_every` frames with the tracks' predictions in between) and
   matched to tracks ([`SegFaceFaceTracker`]);
3. each track's 5 landmarks pass a One-Euro filter ([`SegFaceOneEuroFilter`]), so the crop cut from them follows
   the face without the detector's jitter;
4. the crops of several frames go through the model together (`batch_size` crops per forward pass);
5. optionally each track's class probabilities are averaged over time in its crop frame
   ([`SegFaceProbabilityAverage`]), then pasted back into the frame as for photos ([`paste_faces`]).

Only `batch_size` frames are held at a time, so memory does not grow with the length of the video.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from ..errors import SegFaceError
from ..image_io import to_rgb
from .faces import (
    FRAMINGS,
    SegFaceFaceDetection,
    SegFaceFaceDetector,
    SegFaceParsingResult,
    default_batch_size,
    face_crops,
    framing_for,
    model_input_size,
    paste_faces,
    segment_crops,
)
from .scene_cuts import SegFaceSceneCutDetector
from .temporal_filters import SegFaceOneEuroFilter, SegFaceProbabilityAverage, local_polynomial_fit
from .tracking import SegFaceFaceTracker, face_scale
from .video_io import MAX_VIDEO_PIXELS, SegFaceVideoError, SegFaceVideoFrame, probe_video, read_frames


STABILIZERS = ("polynomial", "one-euro", "none")


class SegFaceVideoOptionsError(SegFaceError, ValueError):
    """An option of video parsing out of its range."""


@dataclass
class SegFaceVideoOptions:
    r"""
    Options of [`parse_video`].

    Args:
        batch_size (`int`, *optional*): face crops per forward pass, from several frames (1 on the CPU, 8 on a GPU
            by default).
        detect_every (`int`, *optional*, defaults to 1): run the detector every k-th frame (and at cuts); the tracks'
            constant-velocity predictions frame the faces in between.
        framing (`str`, *optional*, defaults to `"auto"`): face crop (`auto`, `celebamask-hq`, `helen`, `lapa`).
        stabilize (`str`, *optional*, defaults to `"polynomial"`): how each track's landmarks are steadied:
            `"polynomial"` (a quadratic fitted over `window` frames before and after each frame, see
            [`local_polynomial_fit`]), `"one-euro"` (causal One-Euro filter, no look-ahead) or `"none"`.
        window (`int`, *optional*, defaults to 10): frames on either side for `"polynomial"` (frames are held back
            that long).
        min_cutoff (`float`, *optional*, defaults to 1.0): One-Euro cut-off (Hz) of a still face.
        beta (`float`, *optional*, defaults to 1.0): One-Euro speed coefficient, per face size per second.
        label_smoothing (`float`, *optional*, defaults to 0.0): momentum of the class-probability average along a
            track (0 = off; 0.5 halves the weight of each older frame).
        cut_threshold (`float`, *optional*, defaults to 0.3): histogram distance that counts as a scene cut.
        max_missed (`int`, *optional*, defaults to 25): detection rounds a track survives without a match (about a
            second at 25 fps: a face hidden while another passes in front keeps its identity).
        min_face_size (`int`, *optional*, defaults to 20): the detector's smallest face, in pixels.
        max_pixels (`int`, *optional*, defaults to 3840 x 2160): larger frames are refused.
        fps (`float`, *optional*, defaults to 25.0): frame rate of frames given as an iterable (files carry theirs).
    """

    batch_size: int | None = None
    detect_every: int = 1
    framing: str = "auto"
    stabilize: str = "polynomial"
    window: int = 10
    min_cutoff: float = 1.0
    beta: float = 1.0
    label_smoothing: float = 0.0
    cut_threshold: float = 0.3
    max_missed: int = 25
    min_face_size: int = 20
    max_pixels: int = MAX_VIDEO_PIXELS
    fps: float = 25.0

    def check(self) -> None:
        problems = []
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.detect_every < 1:
            problems.append(f"--detect-every must be at least 1, got {self.detect_every}")
        if self.framing != "auto" and self.framing not in FRAMINGS:
            problems.append(f"--framing must be auto or one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if self.stabilize not in STABILIZERS:
            problems.append(f"--stabilize must be one of {', '.join(STABILIZERS)}, got {self.stabilize!r}")
        if self.window < 1:
            problems.append(f"--window must be at least 1, got {self.window}")
        if self.min_cutoff <= 0 or self.beta < 0:
            problems.append(f"--min-cutoff must be > 0 and --beta >= 0, got {self.min_cutoff} and {self.beta}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.cut_threshold <= 1.0:
            problems.append(f"--cut-threshold must lie in (0, 1], got {self.cut_threshold}")
        if self.max_missed < 0:
            problems.append(f"--max-missed must be >= 0, got {self.max_missed}")
        if self.fps <= 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if problems:
            raise SegFaceVideoOptionsError("; ".join(problems) + ".")


def roll_degrees(detection: SegFaceFaceDetection) -> float:
    """A face's in-plane rotation (degrees, positive = turned clockwise on screen), from the detection when it
    carries one, else from its eye line."""
    roll = getattr(detection, "roll", None)
    if roll is not None:
        return float(roll)
    left, right = detection.landmarks[0], detection.landmarks[1]
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


@dataclass
class SegFaceTrackedFace:
    """One face in one frame of a video.

    Attributes:
        track_id (`int`): the identity of its track.
        detection ([`SegFaceFaceDetection`]): the detector's raw output (or the track's prediction between
            detection frames).
        landmarks (`np.ndarray` of shape `(5, 2)`): the filtered landmarks the crop was cut from.
        quad (`np.ndarray` of shape `(4, 2)`): the crop's corners in the frame.
        detected (`bool`): whether the detector found it in this frame (`False`: predicted).
    """

    track_id: int
    detection: SegFaceFaceDetection
    landmarks: np.ndarray
    quad: np.ndarray
    detected: bool

    def to_dict(self) -> dict:
        record = {"track_id": self.track_id, **self.detection.to_dict()}
        record["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        record["raw_landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.detection.landmarks]
        record["crop_corners"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.quad]
        record["roll"] = round(roll_degrees(replace(self.detection, landmarks=self.landmarks)), 2)
        record["detected"] = self.detected
        return record


@dataclass
class SegFaceVideoFrameResult:
    """The parse of one video frame.

    Attributes:
        index (`int`): the frame's position (0-based).
        time (`float`): its presentation time in seconds.
        image (`PIL.Image.Image`): the upright frame.
        result ([`SegFaceParsingResult`]): its label map and per-face parses (as for a photo).
        faces (list of [`SegFaceTrackedFace`]): the tracked faces, in the order of `result.faces`.
        scene_cut (`bool`): whether a new scene starts at this frame.
        source ([`SegFaceVideoFrame`] or `None`): the decoded frame (time stamps for re-encoding).
    """

    index: int
    time: float
    image: PIL.Image.Image
    result: SegFaceParsingResult
    faces: list[SegFaceTrackedFace] = field(default_factory=list)
    scene_cut: bool = False
    source: SegFaceVideoFrame | None = None

    @property
    def label_map(self) -> np.ndarray:
        return self.result.label_map

    def to_dict(self) -> dict:
        return {"frame": self.index, "time": round(self.time, 6), "scene_cut": self.scene_cut,
                "faces": [face.to_dict() for face in self.faces]}  # fmt: skip


def _frames_of(path_or_frames, options: SegFaceVideoOptions) -> Iterator[SegFaceVideoFrame]:
    if isinstance(path_or_frames, (str, os.PathLike)):
        yield from read_frames(path_or_frames, max_pixels=options.max_pixels)
        return
    count = 0
    for index, frame in enumerate(path_or_frames):
        if isinstance(frame, SegFaceVideoFrame):
            yield frame
        else:
            image = to_rgb(frame)
            if image.width * image.height > options.max_pixels:
                raise SegFaceVideoError(f"frame {index}: {image.width}x{image.height} exceeds the limit of "
                                        f"{options.max_pixels} pixels.")  # fmt: skip
            yield SegFaceVideoFrame(index=index, time=index / options.fps, image=image)
        count += 1
    if count == 0:
        raise SegFaceVideoError("the video has no frames.")


class _TrackState:
    """The filters of one track, and its recent raw landmarks (for the look-ahead fit)."""

    def __init__(self, options: SegFaceVideoOptions):
        self.one_euro = SegFaceOneEuroFilter(min_cutoff=options.min_cutoff, beta=options.beta)
        self.labels = SegFaceProbabilityAverage(options.label_smoothing)
        self.history: list[tuple[int, float, np.ndarray]] = []  # (frame index, time, raw landmarks)


@dataclass
class _PendingFrame:
    frame: SegFaceVideoFrame
    cut: bool
    faces: list[SegFaceTrackedFace]
    crops: list = field(default_factory=list)


def parse_video(path_or_frames, model, processor, options: SegFaceVideoOptions | None = None,
                detector: SegFaceFaceDetector | None = None, progress: bool = False,
                total: int | None = None) -> Iterator[SegFaceVideoFrameResult]:  # fmt: skip
    """Parse every frame of a video, following each face through it.

    Args:
        path_or_frames (`str`, `os.PathLike` or iterable): a video file, or frames (PIL images, arrays, or
            [`SegFaceVideoFrame`]s with their own times).
        model ([`SegFaceForSemanticSegmentation`]): the model, in eval mode.
        processor ([`SegFaceImageProcessor`]): its image processor.
        options ([`SegFaceVideoOptions`], *optional*): tracking, filtering and batching options.
        detector ([`SegFaceFaceDetector`], *optional*): defaults to a new one on the model's device.
        progress (`bool`, *optional*, defaults to `False`): show a progress bar (frames, frames per second, time
            left).
        total (`int`, *optional*): the number of frames, for the progress bar (read from the file when a path).

    Yields:
        [`SegFaceVideoFrameResult`]: one per frame, in order.

    Raises:
        [`SegFaceVideoError`]: not a video, no frames, a frame too large, or a stream that breaks (naming the frame).
    """
    options = options or SegFaceVideoOptions()
    options.check()
    framing = framing_for(model.config) if options.framing == "auto" else options.framing
    batch_size = options.batch_size or default_batch_size(model)
    input_size = model_input_size(processor)
    if detector is None:
        detector = SegFaceFaceDetector(min_face_size=options.min_face_size, device=model.device)
    if total is None and isinstance(path_or_frames, (str, os.PathLike)):
        total = probe_video(path_or_frames, max_pixels=options.max_pixels).frame_count
    lag = options.window if options.stabilize == "polynomial" else 0
    tracker = SegFaceFaceTracker(max_missed=options.max_missed)
    cuts = SegFaceSceneCutDetector(options.cut_threshold)
    states: dict[int, _TrackState] = {}
    tracked: list[_PendingFrame] = []  # detected and tracked, waiting for `lag` frames of look-ahead
    batch: list[_PendingFrame] = []  # crops cut, waiting for the model

    def smoothed(track_id: int, frame: SegFaceVideoFrame) -> np.ndarray:
        window = [(time, points) for index, time, points in states[track_id].history if abs(index - frame.index) <= lag]
        times, points = zip(*window)
        return local_polynomial_fit(times, np.stack(points), at_time=frame.time)

    def cut_crops(entry: _PendingFrame) -> None:
        for face in entry.faces:
            if options.stabilize == "polynomial":
                face.landmarks = smoothed(face.track_id, entry.frame)
        detections = [replace(face.detection, landmarks=face.landmarks) for face in entry.faces]
        entry.crops = face_crops(entry.frame.image, detections, framing, input_size) if detections else []
        for face, crop in zip(entry.faces, entry.crops):
            face.quad = crop.quad

    def run_model() -> Iterator[SegFaceVideoFrameResult]:
        crops = [crop for entry in batch for crop in entry.crops]
        logits = segment_crops(model, processor, crops, batch_size=batch_size) if crops else []
        start = 0
        for entry in batch:
            face_logits = logits[start : start + len(entry.crops)]
            start += len(entry.crops)
            if options.label_smoothing > 0:
                face_logits = [states[face.track_id].labels(x) for face, x in zip(entry.faces, face_logits)]
            image = entry.frame.image
            result = paste_faces((image.height, image.width), entry.crops, face_logits)
            yield SegFaceVideoFrameResult(index=entry.frame.index, time=entry.frame.time, image=image, result=result,
                                          faces=entry.faces, scene_cut=entry.cut, source=entry.frame)  # fmt: skip
        batch.clear()

    def release(entry: _PendingFrame) -> Iterator[SegFaceVideoFrameResult]:
        cut_crops(entry)
        batch.append(entry)
        if sum(len(e.crops) for e in batch) >= batch_size or len(batch) >= batch_size:
            yield from run_model()
        waiting = [e.frame.index for e in batch[:1] + tracked[:1]]
        oldest = min(waiting) if waiting else entry.frame.index + 1
        for track_id in list(states):  # forget what no waiting frame can need
            state = states[track_id]
            state.history = [h for h in state.history if h[0] >= oldest - lag]
            if not state.history and track_id not in live:
                del states[track_id]

    live: set[int] = set()
    bar = tqdm(total=total, desc="parsing video", unit="frame", disable=not progress, file=sys.stderr)
    try:
        for position, frame in enumerate(_frames_of(path_or_frames, options)):
            image = frame.image
            cut = cuts(image)
            if cut:
                tracker.reset()
            if cut or position % options.detect_every == 0:
                tracks = [(track, detected, track.detection)
                          for track, detected in tracker.update(detector(image), frame.time)]  # fmt: skip
            else:  # between detections: every track seen at the last detection, where its motion takes it
                tracks = [(track, track.missed == 0, track.predicted(frame.time)) for track in tracker.tracks]
            live = {track.track_id for track in tracker.tracks}
            faces = []
            for track, present, detection in tracks:
                if not present:  # unmatched this frame (occluded or missed): kept alive, not parsed
                    continue
                state = states.setdefault(track.track_id, _TrackState(options))
                landmarks = np.asarray(detection.landmarks, dtype=np.float64)
                state.history.append((frame.index, frame.time, landmarks))
                if options.stabilize == "one-euro":
                    landmarks = state.one_euro(landmarks, frame.time, scale=face_scale(landmarks))
                faces.append(SegFaceTrackedFace(track_id=track.track_id, detection=detection, landmarks=landmarks,
                                                quad=np.zeros((4, 2)), detected=track.time == frame.time))  # fmt: skip
            tracked.append(_PendingFrame(frame, cut, faces))
            while tracked and tracked[0].frame.index <= frame.index - lag:
                yield from release(tracked.pop(0))
            bar.update(1)
        live = set()
        while tracked:
            yield from release(tracked.pop(0))
        if batch:
            yield from run_model()
    finally:
        bar.close()


__all__ = [
    "STABILIZERS",
    "SegFaceTrackedFace",
    "SegFaceVideoFrameResult",
    "SegFaceVideoOptions",
    "SegFaceVideoOptionsError",
    "parse_video",
    "roll_degrees",
]
