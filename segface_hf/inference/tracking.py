"""Face tracks for video: every detected face gets an identity that stays with it from frame to frame.

Matching uses the 5 landmarks, not only the box: each track predicts where its landmarks will be (constant velocity
from its recent motion), and every detection is matched to the track whose prediction is nearest, in units of the
face's size, greedily from the best pair, within a gate. The velocity carries a track through crossings (two faces
whose boxes overlap are told apart by where each was heading) and through short misses (a face hidden behind
another, a frame the detector skipped), during which the track coasts on its prediction. We chose this over
supervision's ByteTrack or norfair because both track boxes or points alone: we need the landmarks carried along
(the crop is cut from them), there are rarely more than a handful of faces (so greedy matching is exact enough and
needs no solver), and they would add OpenCV and other dependencies for a few dozen lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .faces import SegFaceFaceDetection


def face_scale(landmarks: np.ndarray) -> float:
    """A face's size in pixels from its 5 landmarks: the larger of the eye distance and the eye-to-mouth distance."""
    points = np.asarray(landmarks, dtype=np.float64)
    eye_to_eye = np.hypot(*(points[1] - points[0]))
    eye_to_mouth = np.hypot(*((points[3] + points[4]) / 2 - (points[0] + points[1]) / 2))
    return float(max(eye_to_eye, eye_to_mouth, 1.0))


@dataclass
class SegFaceTrack:
    """One face followed through a video.

    Attributes:
        track_id (`int`): its identity (unique within a video, never reused, also not after a cut).
        detection ([`SegFaceFaceDetection`]): its latest detection (raw, unfiltered).
        time (`float`): when it was last detected (seconds).
        velocity (`np.ndarray` of shape `(2,)`): the face's motion in pixels per second (the mean of its landmarks':
            one translation for the whole face, so that a partly hidden last detection cannot distort the prediction).
        missed (`int`): consecutive detection frames without a match.
        hits (`int`): frames with a match.
    """

    track_id: int
    detection: SegFaceFaceDetection
    time: float
    velocity: np.ndarray
    missed: int = 0
    hits: int = 1

    def predicted(self, time: float) -> SegFaceFaceDetection:
        """Where this face should be at `time`, moving on at its velocity."""
        shift = self.velocity * (time - self.time)
        return replace(self.detection, landmarks=self.detection.landmarks + shift, box=self.detection.box + np.tile(shift, 2))


class SegFaceFaceTracker:
    r"""
    Gives detected faces identities that persist across frames.

    Args:
        max_missed (`int`, *optional*, defaults to 25):
            Detection rounds a track may go unmatched (occluded, missed) before it ends.
        max_distance (`float`, *optional*, defaults to 0.8):
            Largest mean landmark distance between a track's prediction and a detection, in face sizes (see
            [`face_scale`]), for them to match; for a track unseen for `n` rounds, `sqrt(1 + n)` times as much.
        velocity_momentum (`float`, *optional*, defaults to 0.5):
            How much of the previous velocity estimate is kept at each match (the rest is the latest motion).
    """

    def __init__(self, max_missed: int = 25, max_distance: float = 0.8, velocity_momentum: float = 0.5):
        if max_missed < 0 or max_distance <= 0 or not 0 <= velocity_momentum < 1:
            raise ValueError(
                f"tracker options out of range: max_missed={max_missed} (>= 0), max_distance={max_distance} (> 0), "
                f"velocity_momentum={velocity_momentum} (in [0, 1))."
            )
        self.max_missed = int(max_missed)
        self.max_distance = float(max_distance)
        self.velocity_momentum = float(velocity_momentum)
        self.tracks: list[SegFaceTrack] = []
        self._next_id = 0

    def reset(self) -> None:
        """End every track (a scene cut); new faces get new identities."""
        self.tracks = []

    def _cost(self, track: SegFaceTrack, detection: SegFaceFaceDetection, time: float) -> float:
        predicted = track.predicted(time)
        distance = np.hypot(*(predicted.landmarks - detection.landmarks).T).mean()
        return float(distance / face_scale(predicted.landmarks))

    def update(self, detections: Sequence[SegFaceFaceDetection], time: float) -> list[tuple[SegFaceTrack, bool]]:
        """Match one frame's detections to the tracks.

        Returns:
            `list[(track, detected)]`: every live track, in identity order; `detected` is `False` for a track that
            coasts on its prediction this frame (its `detection` is then unchanged).
        """
        pairs = sorted(
            (self._cost(track, detection, time), t, d)
            for t, track in enumerate(self.tracks)
            for d, detection in enumerate(detections)
        )
        matched_tracks: set[int] = set()
        matched_detections: set[int] = set()
        for cost, t, d in pairs:
            # A coasting track's prediction grows less certain the longer it goes unseen: its gate widens.
            if cost > self.max_distance * math.sqrt(1 + self.tracks[t].missed):
                continue
            if t in matched_tracks or d in matched_detections:
                continue
            matched_tracks.add(t)
            matched_detections.add(d)
            self._advance(self.tracks[t], detections[d], time)
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.missed += 1
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        for d, detection in enumerate(detections):
            if d not in matched_detections:
                self.tracks.append(SegFaceTrack(self._next_id, detection, time, np.zeros(2)))
                self._next_id += 1
        return [(track, track.missed == 0) for track in sorted(self.tracks, key=lambda track: track.track_id)]

    def _advance(self, track: SegFaceTrack, detection: SegFaceFaceDetection, time: float) -> None:
        elapsed = time - track.time
        if elapsed > 0:
            motion = (detection.landmarks - track.detection.landmarks).mean(axis=0) / elapsed
            track.velocity = (
                motion if track.hits == 1 else self.velocity_momentum * track.velocity
                + (1 - self.velocity_momentum) * motion
            )
        track.detection, track.time = detection, time
        track.missed, track.hits = 0, track.hits + 1


__all__ = ["SegFaceFaceTracker", "SegFaceTrack", "face_scale"]
