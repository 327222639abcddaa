"""End-to-end demo: convert a release-format checkpoint and parse the public-domain photos in ../shared/images.

The checkpoint is the MobileNet parity fixture from ../shared/parity (the original architecture and file layout with
random weights), so the label maps exercise the whole path but are not meaningful parses. Point --model at a folder
converted from an official checkpoint for real results.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import segface_hf  # noqa: F401  (registers the Auto classes)
from segface_hf.release.conversion import convert_original_checkpoint
from segface_hf.image_io import load_image

SHARED = Path(__file__).resolve().parents[2] / "shared"


def converted_fixture_model(workdir: Path) -> Path:
    sys.path.insert(0, str(SHARED / "parity"))
    import segface_parity

    fixture = segface_parity.load_fixture(SHARED / "parity" / "fixtures" / "mobilenet_celeba_512")
    torch.save(fixture.checkpoint, workdir / "model_299.pt")
    summary = convert_original_checkpoint(workdir / "model_299.pt", "mobilenet_celeba_512", workdir / "model")
    print(summary)
    return workdir / "model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a converted SegFace folder (default: convert the MobileNet parity fixture)")
    parser.add_argument("images", nargs="*", help=f"images to parse (default: {SHARED / 'images'})")
    args = parser.parse_args()
    if not SHARED.exists() and not (args.model and args.images):
        print(f"demo: error: {SHARED} is missing; pass --model and images explicitly.", file=sys.stderr)
        return 2

    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = args.model or converted_fixture_model(Path(workdir))
        model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
        processor = AutoImageProcessor.from_pretrained(model_dir)
        paths = args.images or sorted(str(p) for p in (SHARED / "images").iterdir())
        for path in paths:
            image = load_image(path)
            with torch.no_grad():
                outputs = model(**processor(image))
            label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
            counts = torch.bincount(label_map.flatten(), minlength=model.config.num_labels)
            shares = {model.config.id2label[i]: f"{100 * c / label_map.numel():.1f}%" for i, c in enumerate(counts.tolist()) if c}
            print(f"{Path(path).name} {image.size[0]}x{image.size[1]}: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
