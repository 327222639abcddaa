"""Filters along time for video: the smoothers that steady each face's landmarks, and the exponential moving average
of a face's class probabilities.

Two landmark smoothers are offered:

- [`local_polynomial_fit`] (the default for files): each frame's landmarks are replaced by the value at that frame of
  a quadratic fitted (least squares, over the real frame times) to the track's landmarks `window` frames before and
  after it (a Savitzky-Golay filter that also takes uneven frame times). Motion up to constant acceleration passes
  without lag, and the frame-to-frame jitter of the detector drops about 16-fold with +-10 frames. It needs `window`
  frames of look-ahead, which a file has (frames are held back that long; memory stays bounded).

- [`SegFaceOneEuroFilter`] (causal, no look-ahead, for live streams): the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cut-off frequency rises with the
signal's speed: a still face is smoothed strongly (no jitter), a moving one lightly (no lag). It takes the real time
between frames, so variable frame rates are handled. It is written here (about 30 lines) because the packages that
offer it are unmaintained single-file uploads, and a Kalman filter (filterpy, last released 2018) needs a motion
model and noise covariances tuned per video, where One-Euro has two intuitive knobs. Being causal, it must trade
lag against jitter; the look-ahead fit need not.
"""

from __future__ import annotations

import math

import numpy as np


def _smoothing_factor(elapsed: float, cutoff):
    """The exponential smoothing weight of a first-order low-pass filter of `cutoff` Hz after `elapsed` seconds."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * elapsed))


class SegFaceOneEuroFilter:
    r"""
    One-Euro filter of an array signal (e.g. 5 landmarks, `(5, 2)`), sampled at arbitrary times.

    Args:
        min_cutoff (`float`, *optional*, defaults to 1.0):
            Cut-off frequency (Hz) for a still signal: lower is steadier but lags more when motion starts.
        beta (`float`, *optional*, defaults to 1.0):
            How fast the cut-off rises with speed (per unit of the signal per second): higher follows motion with
            less lag. The speed is measured in units of `scale` per second (see [`__call__`]).
        derivative_cutoff (`float`, *optional*, defaults to 1.0):
            Cut-off frequency (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 1.0, derivative_cutoff: float = 1.0):
        if min_cutoff <= 0 or derivative_cutoff <= 0 or beta < 0:
            raise ValueError(
                f"One-Euro parameters must be positive (beta non-negative), got min_cutoff={min_cutoff}, "
                f"beta={beta}, derivative_cutoff={derivative_cutoff}."
            )
        self.min_cutoff, self.beta, self.derivative_cutoff = float(min_cutoff), float(beta), float(derivative_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new track, a scene cut)."""
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    def __call__(self, value, time: float, scale: float = 1.0) -> np.ndarray:
        """Filter one sample taken at `time` (seconds). `scale` (e.g. the face's size in pixels) makes the speed
        relative, so that the same parameters suit small and large faces."""
        value = np.asarray(value, dtype=np.float64)
        if self._value is None or self._time is None or time <= self._time:
            self._value, self._speed, self._time = value.copy(), np.zeros_like(value), float(time)
            return value.copy()
        elapsed = float(time) - self._time
        speed = (value - self._value) / elapsed / max(float(scale), 1e-9)
        alpha_speed = _smoothing_factor(elapsed, self.derivative_cutoff)
        self._speed = self._speed + alpha_speed * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        alpha = _smoothing_factor(elapsed, cutoff)
        self._value = self._value + alpha * (value - self._value)
        self._time = float(time)
        return self._value.copy()


def local_polynomial_fit(times, values, at_time: float, degree: int = 2) -> np.ndarray:
    """The value at `at_time` of the least-squares polynomial of `degree` (lowered when there are too few samples)
    through `values` (`(n, ...)`) sampled at `times` (`(n,)`, seconds)."""
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    degree = max(0, min(int(degree), len(times) - 1))
    if degree == 0:
        return values.mean(axis=0)
    spread = max(float(np.ptp(times)), 1e-9)  # centred and scaled for a well-conditioned fit
    design = np.vander((times - at_time) / spread, degree + 1, increasing=True)
    coefficients, *_ = np.linalg.lstsq(design, values.reshape(len(times), -1), rcond=None)
    return coefficients[0].reshape(values.shape[1:])


class SegFaceProbabilityAverage:
    r"""
    Exponential moving average of one face's class probabilities in its (stabilised) crop frame.

    Args:
        momentum (`float`, *optional*, defaults to 0.5):
            Weight of the past: `p = momentum * p_previous + (1 - momentum) * p_now`. 0 turns smoothing off.
    """

    def __init__(self, momentum: float = 0.5):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"label smoothing momentum must lie in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self._average = None

    def reset(self) -> None:
        self._average = None

    def __call__(self, logits):
        """Average the probabilities of `(num_labels, h, w)` logits with the past; returns log-probabilities (which
        the paste-back's softmax turns back into the averaged probabilities), or the logits themselves on a track's
        first frame."""
        import torch

        probabilities = torch.softmax(logits.float(), dim=0)
        if self._average is None or self._average.shape != probabilities.shape or self.momentum == 0.0:
            self._average = probabilities
            return logits  # nothing to average with yet: the frame's own parse, exactly
        self._average = self.momentum * self._average + (1.0 - self.momentum) * probabilities
        return torch.log(self._average.clamp_min(1e-12))


__all__ = ["SegFaceOneEuroFilter", "SegFaceProbabilityAverage", "local_polynomial_fit"]
