"""Scene-cut detection for video: a hard cut makes the colour histogram of a frame jump."""

from __future__ import annotations

import numpy as np
import PIL.Image

from ..image_io import to_rgb


def colour_histogram(image, bins: int = 16, side: int = 96) -> np.ndarray:
    """Per-channel histograms of a frame downscaled to `side` pixels along its longer side, each summing to 1,
    `(3, bins)`."""
    image = to_rgb(image)
    scale = side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             resample=PIL.Image.BILINEAR)  # fmt: skip
    pixels = np.asarray(image).reshape(-1, 3).astype(np.int64)
    histogram = np.stack([np.bincount(pixels[:, c] * bins // 256, minlength=bins) for c in range(3)]).astype(np.float64)
    return histogram / max(len(pixels), 1)


class SegFaceSceneCutDetector:
    r"""
    Finds hard cuts: the histogram distance between consecutive frames (half the L1 distance of the per-channel
    colour histograms, averaged over the channels: 0 for the same colours, 1 for disjoint ones) above a threshold.

    Args:
        threshold (`float`, *optional*, defaults to 0.3):
            Distance above which a frame starts a new scene. Camera motion over one scene stays well below it; a cut
            to another shot usually scores 0.4 to 0.9.
    """

    def __init__(self, threshold: float = 0.3):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the scene-cut threshold must lie in (0, 1], got {threshold}.")
        self.threshold = float(threshold)
        self._previous: np.ndarray | None = None
        self.last_distance = 0.0

    def reset(self) -> None:
        self._previous = None

    def __call__(self, image) -> bool:
        """Whether `image` starts a new scene (the first frame does not count as a cut)."""
        histogram = colour_histogram(image)
        previous, self._previous = self._previous, histogram
        if previous is None:
            self.last_distance = 0.0
            return False
        self.last_distance = float(0.5 * np.abs(histogram - previous).sum(axis=1).mean())
        return self.last_distance > self.threshold


__all__ = ["SegFaceSceneCutDetector", "colour_histogram"]
