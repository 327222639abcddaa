"""Video throughput and memory: `python benchmarks/video.py [--frames 60] [--memory-frames 200 2000]`.

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


def clip_frames(count: int, size=(640, 480)) -> list[PIL.Image.Image]:
    """A face drifting across a grey frame (one rendered frame, shifted: cheap to make, a new position every frame)."""
    photo = PIL.Image.open(PHOTO).convert("RGB").resize((300, 352))
    frames = []
    for index in range(count):
        canvas = PIL.Image.new("RGB", size, (90, 110, 100))
        canvas.paste(photo, (120 + int(100 * np.sin(index / 15)), 60 + int(20 * np.cos(index / 20))))
        frames.append(canvas)
    return frames


def write_clip(path: Path, count: int, size=(640, 480)) -> None:
    import av

    base = clip_frames(32, size)
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


def throughput(frames: int, repeats: int, batch_size: int) -> dict:
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


def peak_rss_child(path: str, tiny: bool) -> None:
    from segface_hf.inference.video_outputs import predict_video

    model, processor = mobilenet(128 if tiny else 512)
    with tempfile.TemporaryDirectory() as out:
        record = predict_video(path, "clip", model, processor, out, progress=False)
    print(json.dumps({"frames": record["frames"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--memory-resolution-128", action="store_true",
                        help="measure memory with the model at 128 (same code path, much faster on a busy CPU)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return peak_rss_child(args.child, args.memory_resolution_128)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    if not args.skip_throughput:
        fps = throughput(args.frames, args.repeats, args.batch_size)
        print("| MobileNetV3 @512, 640x480, one face | frames per second |\n|---|---|")
        print(f"| parse_video (batch {args.batch_size}) | {fps['video']:.2f} |")
        print(f"| detect + parse_faces per frame | {fps['photos']:.2f} |")
        print(f"| ratio | {fps['video'] / fps['photos']:.2f}x |")
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for count in args.memory_frames:
            path = Path(folder) / f"clip{count}.mp4"
            write_clip(path, count)
            command = [sys.executable, __file__, "--child", str(path)]
            if args.memory_resolution_128:
                command.append("--memory-resolution-128")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
        if rows:
            print("| clip frames | peak RSS (MiB) |\n|---|---|")
            for row in rows:
                print(f"| {row['frames']} | {row['peak_rss_mib']:.0f} |")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
