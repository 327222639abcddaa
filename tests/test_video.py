"""Video parsing: synthetic clips made from the shared photos moving along known paths (the truth crop of every
frame is the upright photo's crop carried through the known transform), tracks through crossings and cuts, the
written files, and bad input."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_DECODER, require_shared, tiny_backbone_config, write_clip

from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.inference.faces import SegFaceFaceDetection, SegFaceFaceDetector, quad_for
from segface_hf.inference.scene_cuts import SegFaceSceneCutDetector
from segface_hf.inference.temporal_filters import SegFaceOneEuroFilter, local_polynomial_fit
from segface_hf.inference.tracking import SegFaceFaceTracker
from segface_hf.inference.video import SegFaceVideoOptions, SegFaceVideoOptionsError, parse_video
from segface_hf.inference.video_io import SegFaceVideoError, probe_video, read_frames
from segface_hf.inference.predict import SegFacePredictOptions, predict
from segface_hf.inference.video_outputs import SegFaceVideoOutputOptions, predict_video


WIDTH, HEIGHT, FRAMES = 320, 240, 30
BACKGROUND = (90, 110, 100)


@pytest.fixture(scope="module")
def detector():
    return SegFaceFaceDetector()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"),
                           id2label={i: f"class_{i}" for i in range(19)}, **TINY_DECODER)  # fmt: skip
    return SegFaceForSemanticSegmentation(config).eval(), SegFaceImageProcessor(size={"height": 64, "width": 64})


def _photo(name: str) -> PIL.Image.Image:
    return PIL.Image.open(require_shared("images", name)).convert("RGB")


def _similarity(photo: PIL.Image.Image, scale: float, degrees: float, centre_x: float, centre_y: float) -> np.ndarray:
    """2x3 map from the photo's continuous coordinates to the frame's: scaled, turned by `degrees` (clockwise on
    screen), the photo's centre placed at (centre_x, centre_y)."""
    angle = math.radians(degrees)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array(photo.size, dtype=np.float64) / 2
    return np.hstack([linear, (np.array([centre_x, centre_y]) - linear @ centre)[:, None]])


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def _render(layers, size=(WIDTH, HEIGHT), background=BACKGROUND) -> PIL.Image.Image:
    """Paint photos, each through its 2x3 map (later layers in front), on a plain background."""
    canvas = PIL.Image.new("RGB", size, background)
    for photo, affine in layers:
        inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2].flatten().tolist()
        warped = photo.transform(size, PIL.Image.AFFINE, inverse, resample=PIL.Image.BILINEAR)
        mask = PIL.Image.new("L", photo.size, 255).transform(size, PIL.Image.AFFINE, inverse)
        canvas.paste(warped, (0, 0), mask)
    return canvas


def _truth_quad(photo, detector, scale: float) -> np.ndarray:
    """The photo's celebamask-hq crop, in the photo's coordinates, from the face detected upright at `scale` (the
    resolution the clip shows it at) in the middle of a frame."""
    placed = _similarity(photo, scale, 0.0, WIDTH / 2, HEIGHT / 2)
    faces = detector(_render([(photo, placed)]))
    assert len(faces) == 1
    quad = quad_for(faces[0].landmarks, "celebamask-hq", 64)
    inverse = np.linalg.inv(np.vstack([placed, [0, 0, 1]]))[:2]
    return _apply(inverse, quad)


def _errors(quads: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean corner error and per-frame jitter (second difference over time of the corner error, so that the
    true motion's own curvature does not count), both as fractions of the true crop's side."""
    side = np.hypot(*(truths[:, 3] - truths[:, 0]).T)[:, None]
    error = np.hypot(*(quads - truths).transpose(2, 0, 1)) / side
    offset = (quads - truths) / side[..., None]
    second = offset[2:] - 2 * offset[1:-1] + offset[:-2]
    return error.mean(axis=1), np.hypot(*second.transpose(2, 0, 1)).mean(axis=1)


PATHS = {
    "pan": lambda u: (0.4, 0.0, 110 + 100 * u, 115 + 10 * u),
    "zoom": lambda u: (0.34 + 0.14 * u, 0.0, 160, 120),
    "rotation": lambda u: (0.4, -30 + 60 * u, 160, 120),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_stabilised_crops_follow_the_known_motion(path, detector, tiny, capsys):
    photo = _photo("grace_hopper.jpg")
    moves = [_similarity(photo, *PATHS[path](t / (FRAMES - 1))) for t in range(FRAMES)]
    mean_scale = float(np.mean([PATHS[path](t / (FRAMES - 1))[0] for t in range(FRAMES)]))
    truth = _truth_quad(photo, detector, mean_scale)
    truths = np.stack([_apply(move, truth) for move in moves])
    frames = [_render([(photo, move)]) for move in moves]
    results = list(parse_video(frames, *tiny, options=SegFaceVideoOptions(batch_size=8), detector=detector))
    assert [r.index for r in results] == list(range(FRAMES))
    assert all(len(r.faces) == 1 for r in results)
    assert len({r.faces[0].track_id for r in results}) == 1
    steady = np.stack([r.faces[0].quad for r in results])
    raw = np.stack([quad_for(r.faces[0].detection.landmarks, "celebamask-hq", 64) for r in results])
    steady_error, steady_jitter = _errors(steady, truths)
    raw_error, raw_jitter = _errors(raw, truths)
    with capsys.disabled():
        print(f"\n{path}: corner error median {np.median(raw_error):.2%} -> {np.median(steady_error):.2%} "
              f"(max {raw_error.max():.2%} -> {steady_error.max():.2%}), jitter median {np.median(raw_jitter):.3%}"
              f" -> {np.median(steady_jitter):.3%} (without -> with the filter)")  # fmt: skip
    assert np.median(steady_error) <= 0.015
    assert np.median(steady_jitter) <= 0.003
    assert np.median(steady_jitter) < np.median(raw_jitter) / 4  # the filter, not the clip, makes it steady


def test_identities_survive_two_faces_crossing(detector, tiny):
    grace, astronaut = _photo("grace_hopper.jpg"), _photo("astronaut.png")
    frames, centres = [], []
    for t in range(FRAMES):
        u = t / (FRAMES - 1)
        moving_right = _similarity(grace, 0.3, 0.0, 60 + 200 * u, 120)
        moving_left = _similarity(astronaut, 0.32, 0.0, 260 - 200 * u, 125)
        frames.append(_render([(astronaut, moving_left), (grace, moving_right)]))  # grace passes in front
        centres.append((_apply(moving_right, np.array(grace.size)[None] / 2)[0],
                        _apply(moving_left, np.array(astronaut.size)[None] / 2)[0]))  # fmt: skip
    results = list(parse_video(frames, *tiny, options=SegFaceVideoOptions(batch_size=8), detector=detector))
    owner: dict[int, int] = {}  # track id -> which photo (0: grace, 1: astronaut)
    seen = set()
    for result, truth in zip(results, centres):
        for face in result.faces:
            nose = face.detection.landmarks[2]
            which = int(np.argmin([np.hypot(*(nose - c)) for c in truth]))
            if abs(truth[0][0] - truth[1][0]) < 80:  # while they overlap, which photo a face belongs to is unclear
                continue
            assert owner.setdefault(face.track_id, which) == which, f"track {face.track_id} swapped at {result.index}"
            seen.add(which)
    assert seen == {0, 1}
    first, last = results[0], results[-1]
    assert len(first.faces) == 2 and len(last.faces) == 2
    assert {f.track_id for f in first.faces} == {f.track_id for f in last.faces}  # the same two identities


def test_a_hard_cut_starts_new_tracks_and_nothing_is_smoothed_across_it(detector, tiny):
    grace, astronaut = _photo("grace_hopper.jpg"), _photo("astronaut.png")
    cut_at = 12
    frames = [_render([(grace, _similarity(grace, 0.4, 0.0, 110 + 3 * t, 120))]) for t in range(cut_at)]
    # Another shot: another face, place and background.
    frames += [_render([(astronaut, _similarity(astronaut, 0.42, 0.0, 200 - 3 * t, 125))], background=(40, 40, 60))
               for t in range(12)]  # fmt: skip
    smoothed = list(parse_video(frames, *tiny, options=SegFaceVideoOptions(label_smoothing=0.8), detector=detector))
    plain = list(parse_video(frames, *tiny, options=SegFaceVideoOptions(label_smoothing=0.0), detector=detector))
    assert [r.index for r in smoothed if r.scene_cut] == [cut_at]
    before = {f.track_id for r in smoothed[:cut_at] for f in r.faces}
    after = {f.track_id for r in smoothed[cut_at:] for f in r.faces}
    assert len(before) == 1 and len(after) == 1 and not before & after
    # The landmark fit does not reach across the cut: the frames beside it are framed from their own scene only
    # (a fit mixing both photos' faces would land between them, tens of pixels off).
    for index in (cut_at - 1, cut_at):
        own = smoothed[index].faces[0]
        assert np.abs(own.landmarks - own.detection.landmarks).max() < 4.0
    # The label average restarts at the cut (the first frame after it is its own parse), and is at work after it.
    assert np.array_equal(smoothed[cut_at].label_map, plain[cut_at].label_map)
    assert not np.array_equal(smoothed[cut_at + 2].label_map, plain[cut_at + 2].label_map)


def test_parse_video_streams(detector, tiny):
    """An endless frame source: results arrive while it is still being read (nothing waits for the end)."""
    still = _render([(_photo("grace_hopper.jpg"), _similarity(_photo("grace_hopper.jpg"), 0.4, 0.0, 160, 120))])
    consumed = []

    def endless():
        for index in itertools.count():
            consumed.append(index)
            yield still

    options = SegFaceVideoOptions(batch_size=2, window=3)
    first = list(itertools.islice(parse_video(endless(), *tiny, options=options, detector=detector), 4))
    assert [r.index for r in first] == [0, 1, 2, 3]
    assert len(consumed) <= 4 + 3 + 2  # look-ahead window plus one batch


# ------------------------------------------------------------------------------------------------ small parts


def test_local_polynomial_fit_is_exact_on_a_quadratic_at_uneven_times():
    times = np.array([0.0, 0.03, 0.1, 0.12, 0.2])
    values = 3.0 - 2.0 * times + 5.0 * times**2  # hand-made truth
    assert local_polynomial_fit(times, values, at_time=0.1) == pytest.approx(3.0 - 0.2 + 0.05)
    assert local_polynomial_fit([0.0], [[7.0, 8.0]], at_time=0.0).tolist() == [7.0, 8.0]


def test_one_euro_keeps_a_constant_and_damps_noise():
    filter_ = SegFaceOneEuroFilter(min_cutoff=1.0, beta=0.0)
    assert np.allclose([filter_(np.full(2, 5.0), t / 25) for t in range(10)], 5.0)
    filter_.reset()
    noise = np.random.default_rng(0).normal(size=200)
    out = np.array([filter_(np.array([x]), t / 25)[0] for t, x in enumerate(noise)])
    assert np.std(np.diff(out)) < 0.3 * np.std(np.diff(noise))


def _face(x: float) -> SegFaceFaceDetection:
    landmarks = np.array([[x - 10, 50], [x + 10, 50], [x, 60], [x - 8, 70], [x + 8, 70]], dtype=np.float64)
    return SegFaceFaceDetection(box=np.array([x - 20, 30, x + 20, 85.0]), landmarks=landmarks, score=0.99)


def test_tracker_survives_a_short_miss_and_forgets_after_max_missed():
    tracker = SegFaceFaceTracker(max_missed=3)
    ids = [tracker.update([_face(100 + 4 * t)], t / 25)[0][0].track_id for t in range(5)]
    for t in range(5, 8):  # three frames unseen: still alive, coasting
        assert [detected for _, detected in tracker.update([], t / 25)] == [False]
    ids.append(tracker.update([_face(100 + 4 * 8)], 8 / 25)[0][0].track_id)  # where its velocity took it
    assert len(set(ids)) == 1
    for t in range(9, 13):
        tracker.update([], t / 25)
    assert tracker.tracks == []
    assert tracker.update([_face(100)], 13 / 25)[0][0].track_id == ids[0] + 1  # identities are never reused


def test_scene_cut_detector():
    grace, astronaut = _photo("grace_hopper.jpg"), _photo("astronaut.png")
    cuts = SegFaceSceneCutDetector()
    a = _render([(grace, _similarity(grace, 0.3, 0.0, 100, 90))])
    b = _render([(grace, _similarity(grace, 0.3, 10.0, 120, 90))])
    c = _render([(astronaut, _similarity(astronaut, 0.5, 0.0, 120, 90))])
    assert [cuts(a), cuts(b), cuts(c), cuts(c)] == [False, False, True, False]


def test_detection_every_k_frames_tracks_in_between(tiny):
    calls = []

    def detector(image):  # a face moving 4 px per frame, found wherever the detector runs
        calls.append(len(calls))
        return [_face(60 + 4 * 3 * (len(calls) - 1))]

    frames = [PIL.Image.new("RGB", (200, 120), BACKGROUND)] * 9
    options = SegFaceVideoOptions(detect_every=3, stabilize="none")
    results = list(parse_video(frames, *tiny, options=options, detector=detector))
    assert len(calls) == 3  # frames 0, 3 and 6
    assert all(len(r.faces) == 1 and r.faces[0].track_id == 0 for r in results)
    assert [r.faces[0].detected for r in results] == [True, False, False] * 3
    # Between detections the track moves on at its velocity: 4 px per frame once it has one.
    noses = [r.faces[0].landmarks[2][0] for r in results]
    assert noses[3:] == pytest.approx([72, 76, 80, 84, 88, 92])


def test_options_are_checked():
    with pytest.raises(SegFaceVideoOptionsError, match="--detect-every"):
        SegFaceVideoOptions(detect_every=0).check()
    with pytest.raises(SegFaceVideoOptionsError, match="--stabilize"):
        SegFaceVideoOptions(stabilize="kalman").check()


# ------------------------------------------------------------------------------------------------ files


def _audio_packets(path):
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(container.streams.audio[0]) if packet.size]


def _clip_frames(count=12, size=(160, 120)):
    photo = _photo("grace_hopper.jpg")
    width, height = size
    return [_render([(photo, _similarity(photo, 0.25, 0.0, width / 2 - 10 + 2 * t, height / 2))], size=size)
            for t in range(count)]  # fmt: skip


def test_overlay_round_trip_keeps_frames_rate_size_audio_and_rotation(tmp_path, detector, tiny):
    times = [0, 40, 120, 160, 240, 280, 360, 400, 480, 520, 600, 640]  # a variable frame rate
    write_clip(tmp_path / "clip.mp4", _clip_frames(size=(120, 160)), rotation=90, times_ms=times)
    source = probe_video(tmp_path / "clip.mp4")
    assert (source.width, source.height, source.rotation) == (120, 160, 90)
    out = tmp_path / "out"
    out.mkdir()
    record = predict_video(tmp_path / "clip.mp4", "clip", *tiny, out, detector=detector, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["clip_labels.mkv", "clip_overlay.mp4", "clip_tracks.json"]
    overlay = probe_video(out / "clip_overlay.mp4")
    assert (overlay.width, overlay.height, overlay.rotation, overlay.frame_count) == (120, 160, 90, 12)
    assert overlay.fps == pytest.approx(source.fps, rel=0.05)
    assert [round(f.time, 3) for f in read_frames(out / "clip_overlay.mp4")] == [t / 1000 for t in times]
    assert _audio_packets(out / "clip_overlay.mp4") == _audio_packets(tmp_path / "clip.mp4")
    tracks = json.loads((out / "clip_tracks.json").read_text())["frames"]
    assert len(tracks) == 12 and all(len(frame["faces"]) == 1 for frame in tracks)
    face = tracks[5]["faces"][0]
    assert set(face) >= {"track_id", "box", "landmarks", "crop_corners", "roll", "score"}
    assert len(face["landmarks"]) == 5 and len(face["crop_corners"]) == 4
    assert record["frames"] == 12 and record["tracks"] == 1 and record["audio_codec"] == "aac"
    # Lossless labels: the label video decodes to exactly the label maps parse_video yields.
    labels = [np.asarray(f.image.convert("L")) for f in read_frames(out / "clip_labels.mkv")]
    expected = [r.label_map for r in parse_video(tmp_path / "clip.mp4", *tiny, detector=detector)]
    assert len(labels) == 12 and all(np.array_equal(a, b) for a, b in zip(labels, expected))
    assert any(np.unique(b).size > 1 for b in expected)


def test_label_pngs_instead_of_a_label_video(tmp_path, detector, tiny):
    write_clip(tmp_path / "clip.mp4", _clip_frames(count=6), audio=False)
    out = tmp_path / "out"
    out.mkdir()
    predict_video(tmp_path / "clip.mp4", "clip", *tiny, out, outputs=SegFaceVideoOutputOptions(labels="png"),
                  detector=detector, progress=False)  # fmt: skip
    assert sorted(p.name for p in (out / "clip_labels").iterdir()) == [f"{i:06d}.png" for i in range(6)]


def _nothing_written(folder) -> bool:
    return not any(folder.iterdir())


def test_bad_videos_fail_in_one_line_and_leave_nothing(tmp_path, detector, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    write_clip(tmp_path / "whole.mp4", _clip_frames(count=20), audio=False, faststart=True)
    with av.open(str(tmp_path / "whole.mp4")) as container:  # where frame 12's data starts in the file
        position = [p.pos for p in container.demux(container.streams.video[0]) if p.size][12]
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:position])  # the index survives, frames 12 on do not
    with av.open(str(tmp_path / "empty.mkv"), "w") as container:  # a video stream without a single frame
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "gray"
        container.start_encoding()
    cases = {
        "text.mp4": "not a video file",
        "empty.mkv": "the video has no frames",
        "cut.mp4": r"breaks at frame 12\b",
        "whole.mp4": "exceed the limit",
    }
    for name, message in cases.items():
        options = SegFaceVideoOptions(max_pixels=100 * 100 if name == "whole.mp4" else 3840 * 2160)
        with pytest.raises(SegFaceVideoError, match=message) as caught:
            predict_video(tmp_path / name, "x", *tiny, out, options=options, detector=detector, progress=False)
        assert "\n" not in str(caught.value)
        assert _nothing_written(out), list(out.iterdir())
    with pytest.raises(SegFaceVideoError, match="no frames"):
        list(parse_video([], *tiny, detector=detector))


def test_segface_predict_takes_videos_beside_images(tmp_path, tiny):
    write_clip(tmp_path / "clip.mp4", _clip_frames(count=5), audio=False)
    _photo("grace_hopper.jpg").save(tmp_path / "photo.png")
    (tmp_path / "broken.mov").write_bytes(b"\x00" * 100)
    lines = []
    summary = predict([str(tmp_path)], *tiny, tmp_path / "out", options=SegFacePredictOptions(video_labels="none"),
                      progress=False, report=lines.append)  # fmt: skip
    records = {Path(r["input"]).name: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]}
    assert records["clip.mp4"]["kind"] == "video" and records["clip.mp4"]["frames"] == 5
    assert records["photo.png"]["status"] == "ok"
    assert records["broken.mov"]["status"] == "failed" and "not a video file" in records["broken.mov"]["error"]
    assert summary.failed == 1 and len(lines) == 1
    assert (tmp_path / "out" / "clip_overlay.mp4").is_file() and (tmp_path / "out" / "clip_tracks.json").is_file()
    assert not list((tmp_path / "out").glob(".segface-*"))  # no staging folder left
