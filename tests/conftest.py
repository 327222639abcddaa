"""Shared test helpers: the location of ../shared and tiny SegFace configs for every backbone family."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def pytest_configure(config):
    """The suite runs in one pytest-xdist worker per core (pyproject's addopts); each worker and the command-line
    processes it starts use one intra-op thread, so that the workers do not oversubscribe the cores."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def require_shared(*relative: str) -> Path:
    """Path into ../shared; fails (never skips) with a clear message when the checkout has no ../shared beside it."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        pytest.fail(
            f"This test needs {path}: the project's shared material (parity fixtures, test photos, FaceSynthetics "
            f"samples) must be checked out at ../shared beside the repository root {REPO_ROOT}."
        )
    return path


def parity_module():
    """The shared parity harness (../shared/parity/segface_parity.py)."""
    parity_dir = require_shared("parity")
    if str(parity_dir) not in sys.path:
        sys.path.insert(0, str(parity_dir))
    import segface_parity

    return segface_parity


TINY_DECODER = {
    "hidden_size": 32, "num_attention_heads": 2, "mlp_dim": 64, "upscale_channels": [8, 4], "image_size": 64,
}  # fmt: skip


def tiny_backbone_config(family: str):
    """A few-thousand-parameter backbone config of each supported family."""
    from transformers import ConvNextConfig, ResNetConfig, SwinConfig, Swinv2Config, TimmBackboneConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if family == "swin":
        return SwinConfig(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=64,
                          out_features=stages)  # fmt: skip
    if family == "swinv2":
        return Swinv2Config(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=64,
                            pretrained_window_sizes=[0, 0, 0, 0], out_features=stages)  # fmt: skip
    if family == "convnext":
        return ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=stages)
    if family == "resnet":
        return ResNetConfig(layer_type="bottleneck", hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1],
                            embedding_size=8, downsample_in_bottleneck=False, out_features=stages)  # fmt: skip
    if family == "timm-mobilenet":
        return TimmBackboneConfig(backbone="mobilenetv3_small_050", out_indices=[1, 2, 3, 4],
                                  model_args={"bn_eps": 1e-3}, final_features_as_last_tap=False)  # fmt: skip
    if family == "timm-efficientnet":
        return TimmBackboneConfig(backbone="test_efficientnet", out_indices=[1, 2, 3],
                                  model_args={"bn_eps": 1e-3}, final_features_as_last_tap=True)  # fmt: skip
    if family == "convnextv2":  # any other transformers backbone, through AutoBackbone
        from transformers import ConvNextV2Config

        return ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=stages)
    raise ValueError(family)


BACKBONE_FAMILIES = ["swin", "swinv2", "convnext", "resnet", "timm-mobilenet", "timm-efficientnet", "convnextv2"]


def tiny_config(family: str = "timm-mobilenet", num_labels: int = 5, **overrides):
    from segface_hf import SegFaceConfig

    labels = {i: f"class_{i}" for i in range(num_labels)}
    return SegFaceConfig(backbone_config=tiny_backbone_config(family), id2label=labels, **{**TINY_DECODER, **overrides})


def scaled_model(family: str = "timm-mobilenet", seed: int = 0, **overrides):
    """A tiny model in eval mode whose decoder has unit-scale weights (the default initialisation makes logits of
    order 1e-4, whose argmax float rounding decides), with the last GELU's inputs kept away from zero."""
    import math

    import torch

    from segface_hf import SegFaceForSemanticSegmentation

    torch.manual_seed(seed)
    model = SegFaceForSemanticSegmentation(tiny_config(family, **overrides)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("backbone"):
                continue
            if parameter.dim() >= 2:
                fan_in = parameter.shape[0] if "upscale_conv" in name else parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        model.mask_decoder.upscale_conv2.bias.add_(1.0)
    return model


@pytest.fixture(scope="module")
def parity_model(tmp_path_factory):
    """The MobileNet parity fixture (original release format, random weights) converted to a model folder."""
    import torch

    from segface_hf.release.conversion import convert_original_checkpoint

    work = tmp_path_factory.mktemp("parity-model")
    fixture = parity_module().load_fixture(require_shared("parity", "fixtures", "mobilenet_celeba_512"))
    torch.save(fixture.checkpoint, work / "model_299.pt")
    convert_original_checkpoint(work / "model_299.pt", "mobilenet_celeba_512", work / "model")
    return work / "model"


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscribing the CI machine's cores (and is faster there)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relax_export_gate(patch, name: str, min_argmax_agreement: float) -> None:
    """Lower export format `name`'s argmax gate with `patch` (a `MonkeyPatch`): a tiny random-weight model's logits
    are nearly tied almost everywhere, so int8 rounding flips more of its argmax than a trained model's gate allows."""
    from dataclasses import replace

    from segface_hf.release import export as export_module

    export = export_module.EXPORT_FORMATS[name]
    patch.setitem(export_module.EXPORT_FORMATS, name, replace(export, min_argmax_agreement=min_argmax_agreement))


def save_export_model(model, folder):
    """Save a tiny model with a 64-pixel image processor into `folder`, as `segface export --model` loads it."""
    from segface_hf import SegFaceImageProcessor

    model.save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def run_export_cli(capsys, *args, command: str = "export"):
    """`segface COMMAND ARGS` (`export`, or its older alias `export-onnx`): (exit code, stdout, stderr)."""
    from segface_hf.cli import main

    code = main([command, *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_export_error_line(err: str, command: str = "export") -> str:
    """The single line `segface COMMAND` wrote to stderr for a usage error (fails unless there is exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segface {command}: error: "), err
    return lines[0]


def write_clip(path, frames, fps=25, audio=True, rotation=0, times_ms=None, faststart=False):
    """Encode upright frames with PyAV (H.264, optional AAC tone, explicit millisecond time stamps); with a display
    rotation they are stored turned back (clockwise), as a phone stores a video it shot sideways."""
    import fractions

    import av
    import numpy as np

    frames = [image.rotate(-rotation, expand=True) for image in frames]
    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(str(path), "w", options=options)
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    stream.codec_context.time_base = fractions.Fraction(1, 1000)
    if rotation:
        stream.set_display_rotation(rotation)
    sound = container.add_stream("aac", rate=16000) if audio else None
    if sound is not None:
        sound.layout = "mono"
    for index, image in enumerate(frames):
        frame = av.VideoFrame.from_image(image)
        frame.pts = times_ms[index] if times_ms else round(index * 1000 / fps)
        frame.time_base = fractions.Fraction(1, 1000)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    if sound is not None:
        samples = int(16000 * len(frames) / fps)
        for start in range(0, samples, 1024):
            tone = (0.3 * np.sin(np.arange(start, start + 1024) / 8.0)).astype(np.float32)[None]
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    container.close()
