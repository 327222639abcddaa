"""Reading and writing videos with PyAV (FFmpeg bundled in its wheel; `pip install "segface-hf[video]"`).

[`probe_video`] says what a file holds, [`read_frames`] decodes it frame by frame (upright: the stream's display
rotation is applied, as players do), and [`SegFaceVideoWriter`] encodes frames with the source's time stamps (so a
variable frame rate survives), the source's display rotation and the source's audio packets copied unchanged.
Memory stays constant: one frame is decoded, parsed and encoded at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import SegFaceError
from .faces import SegFaceMissingDependencyError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                    ".gif")  # fmt: skip
VIDEO_EXTRA_HINT = 'pip install "segface-hf[video]" (or: pip install av)'
# Frames larger than this (pixels of the upright frame) are refused: 4K UHD, beyond which a frame's class scores
# alone need gigabytes.
MAX_VIDEO_PIXELS = 3840 * 2160
# Audio codecs an MP4 file can carry; other audio makes the overlay an MKV file, so the audio is still copied as is.
MP4_AUDIO_CODECS = {"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}


class SegFaceVideoError(SegFaceError, ValueError):
    """A file that is not a readable video, has no frames, breaks while decoding or is too large."""


def require_av():
    """The `av` module, or a one-line [`SegFaceMissingDependencyError`] that says how to install it."""
    try:
        import av
    except ImportError as error:
        raise SegFaceMissingDependencyError(f"Video needs the PyAV package, which is not installed: {VIDEO_EXTRA_HINT}.") from error
    return av


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether a file name has a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS and not Path(path).name.startswith(".")


@dataclass(frozen=True)
class SegFaceVideoInfo:
    """What [`probe_video`] found.

    Attributes:
        width (`int`), height (`int`): the upright (displayed) frame size.
        fps (`float`): the average frame rate.
        frame_count (`int` or `None`): the frame count the container declares (`None` when it declares none).
        duration (`float` or `None`): seconds.
        rotation (`int`): the display rotation, degrees counter-clockwise (0, 90, 180 or 270).
        codec (`str`): the video codec.
        audio_codec (`str` or `None`): the first audio stream's codec, if any.
    """

    width: int
    height: int
    fps: float
    frame_count: int | None
    duration: float | None
    rotation: int
    codec: str
    audio_codec: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | os.PathLike):
    av = require_av()
    path = Path(path)
    if not path.exists():
        raise SegFaceVideoError(f"{path}: no such file.")
    if path.is_dir():
        raise SegFaceVideoError(f"{path}: is a directory, not a video.")
    try:
        container = av.open(str(path))
    except av.error.EOFError as error:  # a container that ends before its first frame
        raise SegFaceVideoError(f"{path}: the video has no frames (the file ends before the first one).") from error
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise SegFaceVideoError(f"{path}: not a video file FFmpeg can read ({type(error).__name__}).") from error
    if not container.streams.video:
        container.close()
        raise SegFaceVideoError(f"{path}: has no video stream.")
    return container


def _quarter_turns(degrees: float) -> int:
    return int(round(float(degrees or 0.0) / 90.0)) % 4 * 90


def probe_video(path: str | os.PathLike, max_pixels: int = MAX_VIDEO_PIXELS) -> SegFaceVideoInfo:
    """Open a video and read its stream properties (and its first frame, for the rotation).

    Raises:
        [`SegFaceVideoError`]: not a video, no video stream, no frame, or frames beyond `max_pixels`.
    """
    av = require_av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError as error:
            raise SegFaceVideoError(f"{path}: the video stream breaks at frame 0 ({type(error).__name__}).") from error
        if first is None:
            raise SegFaceVideoError(f"{path}: the video has no frames.")
        rotation = _quarter_turns(first.rotation)
        width, height = (first.width, first.height) if rotation in (0, 180) else (first.height, first.width)
        if width * height > max_pixels:
            raise SegFaceVideoError(f"{path}: frames of {width}x{height} exceed the limit of {max_pixels} pixels "
                                    f"(about {math.isqrt(max_pixels * 16 // 9)}x{math.isqrt(max_pixels * 9 // 16)}); "
                                    "downscale the video first.")  # fmt: skip
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return SegFaceVideoInfo(width=width, height=height, fps=float(rate) if rate else 25.0,
                                frame_count=int(stream.frames) or None, duration=duration, rotation=rotation,
                                codec=stream.codec_context.name, audio_codec=audio)  # fmt: skip
    finally:
        container.close()


@dataclass
class SegFaceVideoFrame:
    """One decoded frame.

    Attributes:
        index (`int`): 0-based position in the stream.
        time (`float`): presentation time in seconds (from the stream's time stamps, so variable rates are exact).
        image (`PIL.Image.Image`): the upright RGB frame.
        pts (`int` or `None`), time_base (`Fraction` or `None`): the source time stamp, for the writer.
    """

    index: int
    time: float
    image: PIL.Image.Image
    pts: int | None = None
    time_base: Fraction | None = None


def upright(image: PIL.Image.Image, rotation: int) -> PIL.Image.Image:
    """A stored frame as displayed: turned counter-clockwise by the display rotation."""
    return image.rotate(rotation, expand=True) if rotation else image


def read_frames(path: str | os.PathLike, max_pixels: int = MAX_VIDEO_PIXELS) -> Iterator[SegFaceVideoFrame]:
    """Decode a video frame by frame, upright, in presentation order.

    Raises:
        [`SegFaceVideoError`]: as [`probe_video`], and when decoding fails part-way or the stream holds fewer frames
        than its container declares (a truncated file); the message names the frame where it broke.
    """
    av = require_av()
    info = probe_video(path, max_pixels=max_pixels)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        last_time = -math.inf
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                raise SegFaceVideoError(f"{path}: the video stream breaks at frame {index} "
                                        f"({type(error).__name__}: {error}).") from error  # fmt: skip
            if frame.pts is not None and frame.time_base is not None:
                time = float(frame.pts * frame.time_base)
            else:
                time = index / info.fps
            time = max(time, last_time + 1e-6)  # never go backwards (broken time stamps)
            last_time = time
            yield SegFaceVideoFrame(index=index, time=time, image=upright(frame.to_image(), info.rotation),
                                    pts=frame.pts, time_base=frame.time_base)  # fmt: skip
            index += 1
        if index == 0:
            raise SegFaceVideoError(f"{path}: the video has no frames.")
        if info.frame_count and index < info.frame_count:
            raise SegFaceVideoError(f"{path}: the video stream breaks at frame {index}: the container declares "
                                    f"{info.frame_count} frames (truncated file?).")  # fmt: skip
    finally:
        container.close()


class SegFaceVideoWriter:
    r"""
    Encodes frames into a video with the time stamps, rotation and audio of a source video.

    Args:
        path (`str` or `os.PathLike`): the output file (`.mp4`, or `.mkv` for lossless labels).
        width (`int`), height (`int`): the upright frame size.
        fps (`float`): the nominal frame rate (time stamps come from the frames).
        rotation (`int`, *optional*, defaults to 0): display rotation to keep (frames are stored turned back).
        audio_source (`str` or `os.PathLike`, *optional*): copy this file's first audio stream, packet for packet.
        lossless (`bool`, *optional*, defaults to `False`): FFV1 grey frames (label maps) instead of H.264 colour.
        crf (`int`, *optional*, defaults to 18): H.264 quality (lower is better).
    """

    def __init__(self, path, width: int, height: int, fps: float, rotation: int = 0, audio_source=None,
                 lossless: bool = False, crf: int = 18):  # fmt: skip
        av = require_av()
        self.path = Path(path)
        self.rotation = _quarter_turns(rotation)
        self.lossless = lossless
        self._container = av.open(str(self.path), "w")
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        stored_w, stored_h = (width, height) if self.rotation in (0, 180) else (height, width)
        if lossless:
            self._stream = self._container.add_stream("ffv1", rate=rate)
            self._stream.pix_fmt = "gray"
        else:
            self._stream = self._container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            # yuv420p (what every player takes) needs even sides; odd sizes keep full chroma instead.
            self._stream.pix_fmt = "yuv420p" if stored_w % 2 == 0 and stored_h % 2 == 0 else "yuv444p"
        self._stream.width, self._stream.height = stored_w, stored_h
        self._time_base = None
        if self.rotation:
            self._stream.set_display_rotation(self.rotation)
        self._audio_in = self._audio_out = self._audio_packets = None
        if audio_source is not None:
            source = av.open(str(audio_source))
            if source.streams.audio:
                self._audio_in = source
                self._audio_out = self._container.add_stream_from_template(source.streams.audio[0])
                self._audio_packets = source.demux(source.streams.audio[0])
                self._pending_audio = None
            else:
                source.close()
        self._last_pts = None
        self._count = 0
        self._rate = rate

    def _mux_audio_until(self, seconds: float) -> None:
        """Copy the source's audio packets up to `seconds` (keeps the file interleaved, memory constant)."""
        while self._audio_packets is not None:
            packet = self._pending_audio
            if packet is None:
                try:
                    packet = next(self._audio_packets)
                except StopIteration:
                    self._audio_packets = None
                    return
            if packet.dts is None:  # the demuxer's final flush packet
                self._pending_audio = None
                continue
            if packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending_audio = packet
                return
            self._pending_audio = None
            packet.stream = self._audio_out
            self._container.mux(packet)

    def write(self, image, pts: int | None = None, time_base: Fraction | None = None, time: float | None = None):
        """Encode one upright frame (RGB image or `(h, w)` uint8 array for lossless), at the source time stamp."""
        av = require_av()
        array = np.asarray(image)
        if self.rotation:
            array = np.rot90(array, k=self.rotation // 90 * -1 % 4)  # back to the stored orientation (clockwise)
            array = np.ascontiguousarray(array)
        frame = av.VideoFrame.from_ndarray(array, format="gray" if self.lossless else "rgb24")
        if pts is not None and time_base is not None:
            if self._time_base is None:
                self._time_base = time_base
                self._stream.codec_context.time_base = time_base
                self._stream.time_base = time_base
            frame.pts, frame.time_base = pts, time_base
        else:
            frame.pts, frame.time_base = self._count, 1 / self._rate
            if self._time_base is None:
                self._time_base = 1 / self._rate
                self._stream.codec_context.time_base = self._time_base
        if self._last_pts is not None and frame.pts <= self._last_pts:
            frame.pts = self._last_pts + 1
        self._last_pts = frame.pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._count += 1
        self._mux_audio_until(time if time is not None else float(frame.pts * frame.time_base))

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio, and finish the file."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._mux_audio_until(math.inf)
        finally:
            self._container.close()
            if self._audio_in is not None:
                self._audio_in.close()

    def abort(self) -> None:
        """Close without flushing (after an error); the caller removes the file."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass
        if self._audio_in is not None:
            self._audio_in.close()


def overlay_suffix(audio_codec: str | None) -> str:
    """`.mp4`, or `.mkv` when the source's audio cannot go into MP4 unchanged."""
    return ".mp4" if audio_codec is None or audio_codec in MP4_AUDIO_CODECS else ".mkv"


__all__ = [
    "MAX_VIDEO_PIXELS",
    "VIDEO_EXTENSIONS",
    "SegFaceVideoError",
    "SegFaceVideoFrame",
    "SegFaceVideoInfo",
    "SegFaceVideoWriter",
    "is_video_path",
    "overlay_suffix",
    "probe_video",
    "read_frames",
    "require_av",
    "upright",
]
