"""Video throughput and memory: `segface benchmark video [--frames 60] [--memory-frames 200 2000]` (or
`python benchmarks/video.py`).

1. Frames per second of `parse_video` (MobileNetV3 at 512, random weights, MTCNN every frame) on a 640x480 clip with
   one face, against the same frames parsed one by one as photos (`detect` + `parse_faces`), interleaved, median of
   `--repeats` runs after a warm-up.
2. Peak resident memory of parsing an N-frame H.264 clip end to end (`predict_video`: overlay, label video,
   tracks.json), each N in a fresh process, so that the peaks are comparable.

Prints a markdown table and the load average (other processes on the machine slow every number alike).
"""

from __future__ import annotations

import argparse
import fractions
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "images" / "grace_hopper.jpg"


def offsets(count: int) -> list[tuple[int, int]]:
    """Where the photo's top-left corner sits in each frame (whole pixels, so the motion can be undone exactly)."""
    return [(120 + int(100 * np.sin(index / 15)), 60 + int(20 * np.cos(index / 20))) for index in range(count)]


def clip_frames(count: int, size=(640, 480)) -> list[PIL.Image.Image]:
    """A face drifting across a grey frame along `offsets`."""
    photo = PIL.Image.open(PHOTO).convert("RGB").resize((300, 352))
    frames = []
    for offset in offsets(count):
        canvas = PIL.Image.new("RGB", size, (90, 110, 100))
        canvas.paste(photo, offset)
        frames.append(canvas)
    return frames


def flicker(model_path: str | None, frames: int) -> dict:
    """Share of the photo's pixels whose label changes between consecutive frames once the known motion is undone
    (labels read in the photo's own coordinates), counted where either frame has a face class."""
    from segface_hf.inference.faces import SegFaceFaceDetector
    from segface_hf.inference.loading import load_model
    from segface_hf.inference.video import SegFaceVideoOptions, parse_video

    model, processor = load_model(model_path) if model_path else mobilenet()
    detector = SegFaceFaceDetector()
    images, places = clip_frames(frames), offsets(frames)
    settings = {
        "no stabiliser, no label smoothing": SegFaceVideoOptions(stabilize="none"),
        "no stabiliser, label smoothing 0.5": SegFaceVideoOptions(stabilize="none", label_smoothing=0.5),
        "stabilised crops": SegFaceVideoOptions(),
        "stabilised crops + label smoothing 0.5": SegFaceVideoOptions(label_smoothing=0.5),
    }
    shares = {}
    for name, options in settings.items():
        previous, changed, counted = None, 0, 0
        for result, (x, y) in zip(parse_video(images, model, processor, options=options, detector=detector), places):
            labels = result.label_map[y : y + 352, x : x + 300]
            if previous is not None:
                face = (labels > 0) | (previous > 0)
                changed += int((labels != previous)[face].sum())
                counted += int(face.sum())
            previous = labels
        shares[name] = changed / max(counted, 1)
    return shares


def write_clip(path: Path, count: int, size=(640, 480)) -> None:
    import av

    base = [frame.resize(size) for frame in clip_frames(32)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(count):
            frame = av.VideoFrame.from_image(base[index % len(base)])
            frame.pts, frame.time_base = index, fractions.Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def mobilenet(resolution: int = 512):
    from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor

    torch.manual_seed(0)
    config = SegFaceConfig.from_backbone("mobilenet", dataset="celebamask-hq", image_size=resolution)
    model = SegFaceForSemanticSegmentation(config).eval()
    return model, SegFaceImageProcessor(size={"height": resolution, "width": resolution})


def throughput(frames: int, repeats: int, batch_size: int | None) -> dict:
    from segface_hf.inference.faces import SegFaceFaceDetector, parse_faces
    from segface_hf.inference.video import SegFaceVideoOptions, parse_video

    model, processor = mobilenet()
    detector = SegFaceFaceDetector()
    images = clip_frames(frames)
    options = SegFaceVideoOptions(batch_size=batch_size)

    def video():
        for _ in parse_video(images, model, processor, options=options, detector=detector):
            pass

    def photos():
        for image in images:
            parse_faces(image, model, processor, detector=detector)

    video(), photos()  # warm-up
    times = {"video": [], "photos": []}
    for _ in range(repeats):
        for name, function in (("video", video), ("photos", photos)):
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: frames / statistics.median(values) for name, values in times.items()}


def peak_rss_child(path: str, tiny: bool, detect_every: int) -> None:
    from segface_hf.inference.video import SegFaceVideoOptions
    from segface_hf.inference.video_outputs import predict_video

    model, processor = mobilenet(128 if tiny else 512)
    with tempfile.TemporaryDirectory() as out:
        record = predict_video(path, "clip", model, processor, out, options=SegFaceVideoOptions(detect_every=detect_every),
                               progress=False)  # fmt: skip
    print(json.dumps({"frames": record["frames"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="crops per forward pass (default: parse_video's own)")
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--memory-resolution-128", action="store_true",
                        help="measure memory with the model at 128 (same code path, much faster on a busy CPU)")
    parser.add_argument("--memory-size", type=int, nargs=2, default=[640, 480], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--memory-detect-every", type=int, default=1, help="detector every k-th frame (memory runs)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--flicker-frames", type=int, default=0, help="also measure flicker on a clip this long")
    parser.add_argument("--flicker-model", help="a trained SegFace folder for the flicker figure (default: random "
                        "MobileNetV3 @512, which measures the crop's steadiness, not a trained parser's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        peak_rss_child(args.child, args.memory_resolution_128, args.memory_detect_every)
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    if not args.skip_throughput:
        fps = throughput(args.frames, args.repeats, args.batch_size)
        print("| MobileNetV3 @512, 640x480, one face | frames per second |\n|---|---|")
        batch = args.batch_size or "default: 1 on the CPU"
        print(f"| parse_video (batch {batch}) | {fps['video']:.2f} |")
        print(f"| detect + parse_faces per frame | {fps['photos']:.2f} |")
        print(f"| ratio | {fps['video'] / fps['photos']:.2f}x |")
    if args.flicker_frames:
        print(f"| flicker ({args.flicker_model or 'random MobileNetV3 @512'}, {args.flicker_frames} frames) | "
              "labels changed between frames |\n|---|---|")
        for name, share in flicker(args.flicker_model, args.flicker_frames).items():
            print(f"| {name} | {share:.2%} |")
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for count in args.memory_frames:
            path = Path(folder) / f"clip{count}.mp4"
            write_clip(path, count, tuple(args.memory_size))
            command = [sys.executable, __file__, "--child", str(path), "--memory-detect-every",
                       str(args.memory_detect_every)]  # fmt: skip
            if args.memory_resolution_128:
                command.append("--memory-resolution-128")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
        if rows:
            print("| clip frames | peak RSS (MiB) |\n|---|---|")
            for row in rows:
                print(f"| {row['frames']} | {row['peak_rss_mib']:.0f} |")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
