"""The converter and model reproduce the original SegFace outputs on every parity fixture in ../shared/parity.

Each test does what a user does: save the fixture's checkpoint as the release file `model_299.pt`, convert it with
`scripts/convert_original_checkpoint.py`, load the result with the Auto classes, preprocess the fixture's image with
the image processor (and its landmarks for LaPa) and compare the logits with what the original code produced.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, parity_module, require_shared

FIXTURES = [
    "convnext_celeba_512",
    "efficientnet_celeba_512",
    "mobilenet_celeba_512",
    "resnet_celeba_512",
    "swinb_celeba_224",
    "swinb_celeba_512",
    "swinb_helen_512",
    "swinb_lapa_448",
    "swinv2b_celeba_512",
]



def convert_fixture(name: str, tmp_path):
    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", name))
    checkpoint = tmp_path / "model_299.pt"
    torch.save(fixture.checkpoint, checkpoint)
    output_dir = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_original_checkpoint.py"), "--checkpoint",
         str(checkpoint), "--variant", name, "--output-dir", str(output_dir)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Converted SegFace variant {name}" in result.stdout
    return sp, fixture, output_dir


def run_converted(fixture, output_dir):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import segface_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    inputs = processor(fixture.image, landmarks=fixture.landmarks) if fixture.landmarks is not None else processor(
        fixture.image
    )
    with torch.no_grad():
        return model(**inputs).logits, inputs


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_model_matches_original(name, tmp_path):
    sp, fixture, output_dir = convert_fixture(name, tmp_path)
    logits, inputs = run_converted(fixture, output_dir)
    assert np.array_equal(inputs["pixel_values"].numpy(), sp.normalized_input(fixture))
    report = sp.compare(logits, fixture.expected)
    assert report.ok, report


def test_fixture_list_is_complete():
    sp = parity_module()
    assert sorted(p.name for p in sp.all_fixtures()) == sorted(FIXTURES)


def _converted_in_process(name: str):
    from segface_hf import SegFaceConfig
    from segface_hf.configuration_segface import parse_variant
    from segface_hf.release.conversion import convert_state_dict

    sp = parity_module()
    fixture = sp.load_fixture(require_shared("parity", "fixtures", name))
    backbone, dataset, _ = parse_variant(name)
    model, _, _ = convert_state_dict(fixture.checkpoint["state_dict_backbone"], SegFaceConfig.from_variant(name),
                                     backbone, dataset)  # fmt: skip
    return sp, fixture, model.eval()


def test_efficientnet_taps_are_bit_identical_to_torchvision():
    from torchvision.models import efficientnet_v2_m

    sp, fixture, model = _converted_in_process("efficientnet_celeba_512")
    state = fixture.checkpoint["state_dict_backbone"]
    reference = efficientnet_v2_m().features.eval()
    reference.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    pixel_values = torch.from_numpy(sp.normalized_input(fixture))
    taps, hidden = [], pixel_values
    with torch.no_grad():
        for index, stage in enumerate(reference):
            hidden = stage(hidden)
            if index in (2, 3, 5, 8):  # the modules the original hooks
                taps.append(hidden)
        ours = model.backbone(pixel_values)
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in taps]
    for ours_tap, reference_tap in zip(ours, taps):
        assert torch.equal(ours_tap, reference_tap)


def test_efficientnet_matches_original_in_process_and_under_a_nudge():
    """The regenerated efficientnet fixture is well conditioned: the model converted in process matches the
    original's output, and a 1e-6 relative change of the input leaves the argmax in place."""
    sp, fixture, model = _converted_in_process("efficientnet_celeba_512")
    pixel_values = torch.from_numpy(sp.normalized_input(fixture))
    with torch.no_grad():
        logits = model(pixel_values).logits
        nudged = model(pixel_values * (1 + 1e-6)).logits
    report = sp.compare(logits, fixture.expected)
    assert report.ok, report
    agreement = (logits.argmax(1) == nudged.argmax(1)).float().mean().item()
    assert agreement >= 0.999, f"argmax agreement under a 1e-6 nudge: {agreement}"
