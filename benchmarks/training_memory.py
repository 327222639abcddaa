"""Peak memory of training steps with and without gradient checkpointing: `segface benchmark training-memory
[--variant swinb_celeba_512] [--resolution 256] [--batch-size 2]` (or `python benchmarks/training_memory.py`).

A SegFace model of an official variant (random weights, built at `--resolution`) takes `--steps` training steps
(forward with labels, the model's loss, backward, AdamW step) on random images and labels, once with
`model.activation_checkpointing_enable()` (`gradient_checkpointing_enable` before transformers 5.24) and once
without, each in a fresh process, so that neither reuses memory the other freed. Measured over the steps:

- on the CPU, the peak resident set size (`ru_maxrss`, its high-water mark reset just before the first step) and
  its growth over the resident size at that moment;
- on a GPU (`--device cuda`), `torch.cuda.max_memory_allocated` (statistics reset just before the first step) and
  its growth over `torch.cuda.memory_allocated` at that moment.

The growth counts the activations, the gradients and AdamW's two moments (allocated at the first step); gradient
checkpointing saves only on the activations. Prints a markdown table and the load average (other processes on the
machine slow the steps, not the memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MIB = 2**20
TINY = "tiny"  # --variant tiny: a MobileNetV3-small SegFace of a few thousand decoder parameters, to check the script


def load_average() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def build_config(variant: str, resolution: int | None):
    """The config of `variant` at `resolution` (default: the variant's own), or the tiny test config at 64 pixels."""
    from segface_hf import SegFaceConfig
    from segface_hf.configuration_segface import parse_variant

    if variant == TINY:
        from transformers import TimmBackboneConfig

        backbone = TimmBackboneConfig(backbone="mobilenetv3_small_050", out_indices=[1, 2, 3, 4],
                                      model_args={"bn_eps": 1e-3}, final_features_as_last_tap=False)  # fmt: skip
        size = resolution or 64
        return SegFaceConfig(backbone_config=backbone, hidden_size=32, num_attention_heads=2, mlp_dim=64,
                             upscale_channels=[8, 4], image_size=size,
                             id2label={i: f"class_{i}" for i in range(5)})  # fmt: skip
    backbone, dataset, own_resolution = parse_variant(variant)
    return SegFaceConfig.from_backbone(backbone, dataset=dataset, image_size=resolution or own_resolution)


def resident_mib() -> float:
    """The process's current resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the process's resident high-water mark (and so `ru_maxrss`) to its current size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(
    variant: str, resolution: int | None, batch_size: int, steps: int, device: str, checkpointing: bool
) -> dict:
    """Train `steps` steps in this process and return the peak memory of those steps and the losses."""
    from segface_hf import SegFaceForSemanticSegmentation

    config = build_config(variant, resolution)
    size = config.image_size
    torch.manual_seed(0)
    model = SegFaceForSemanticSegmentation(config).to(device).train()
    if checkpointing:  # `activation_checkpointing_enable` from transformers 5.24 on, which deprecates the old name
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, config.num_labels, (batch_size, size, size), generator=generator).to(device)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    if config.use_face_warp:  # the LaPa head aligns each face: the template's own points leave the image in place
        from segface_hf.face_warp import face_template

        inputs["landmarks"] = face_template((size, size))[None].repeat(batch_size, 1, 1).to(device)

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / MIB
    else:
        reset = reset_peak_rss()
        before = resident_mib()
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / MIB
        measure_name = "torch.cuda.max_memory_allocated"
    else:
        # KiB on Linux; not below the size before (the mark was reset to the size a moment before it was read)
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, before)
        measure_name = "ru_maxrss" if reset else "ru_maxrss (not reset: includes building the model)"
    return {
        "checkpointing": checkpointing,
        "parameters": sum(p.numel() for p in model.parameters()),
        "resolution": size,
        "before_mib": before,
        "peak_mib": peak,
        "growth_mib": peak - before,
        "losses": losses,
        "seconds_per_step": seconds / steps,
        "measure": measure_name,
    }


def run_child(args: argparse.Namespace, checkpointing: bool) -> dict:
    """`measure` in a fresh Python process."""
    command = [sys.executable, __file__, "--child", "on" if checkpointing else "off", "--variant", args.variant,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", args.device]  # fmt: skip
    if args.resolution:
        command += ["--resolution", str(args.resolution)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def table(variant: str, batch_size: int, steps: int, device: str, rows: list[dict]) -> str:
    """The markdown table of the two runs (checkpointing off first)."""
    off = next(row for row in rows if not row["checkpointing"])
    name = f"{variant} at {off['resolution']} ({off['parameters'] / 1e6:.1f}M parameters), batch {batch_size}"
    lines = [f"| model ({steps} training step{'s' * (steps > 1)} on {device}) | gradient checkpointing | peak memory | "
             "growth during the steps | seconds per step | losses |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        growth = f"{row['growth_mib']:,.0f} MiB"
        if row is not off and off["growth_mib"] > 0:
            growth += f" ({row['growth_mib'] / off['growth_mib'] - 1:+.0%})"
        losses = ", ".join(f"{loss:.6f}" for loss in row["losses"])
        lines.append(f"| {name} | {'on' if row['checkpointing'] else 'off'} | {row['peak_mib']:,.0f} MiB | {growth} | "
                     f"{row['seconds_per_step']:.2f} | {losses} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="swinb_celeba_512",
                        help=f"an official variant, built with random weights (default: swinb_celeba_512), or "
                        f"{TINY!r}: a tiny MobileNetV3-small model at 64 pixels, to check the script in "
                        "seconds")  # fmt: skip
    parser.add_argument("--resolution", type=int, help="square input size (default: the variant's own; 64 for tiny)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2,
                        help="training steps per run (default: 2, so that AdamW's moments exist during a step)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's own)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure both runs in this process, one after the other (quicker; the second run may "
                        "reuse memory the first freed, so only the fresh-process figures compare)")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.batch_size < 1 or args.steps < 1:
        parser.error("--batch-size and --steps must be at least 1")
    if args.variant != TINY:
        from segface_hf.configuration_segface import parse_variant

        try:
            parse_variant(args.variant)
        except ValueError as error:
            parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = measure(args.variant, args.resolution, args.batch_size, args.steps, args.device, args.child == "on")
        print(json.dumps(result))
        return 0
    print(f"load average before: {load_average()}")
    rows = []
    for checkpointing in (False, True):
        if args.in_process:
            rows.append(measure(args.variant, args.resolution, args.batch_size, args.steps, args.device, checkpointing))
        else:
            rows.append(run_child(args, checkpointing))
    print(f"measured with {rows[0]['measure']}{' in this process' if args.in_process else ', a fresh process each'}")
    print(table(args.variant, args.batch_size, args.steps, args.device, rows))
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
