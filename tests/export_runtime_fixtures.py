"""Module-scoped fixtures shared by the test modules of the runtimes whose exports take minutes even for a tiny model
(ExecuTorch, LiteRT): a plain and a face-warp (LaPa) model of the smallest backbone family, their bundled-photo faces,
and the plain model saved as a folder. Import them into a test module by name; each module gets its own instances."""

from __future__ import annotations

import pytest
from conftest import save_export_model, scaled_model

from segface_hf.release.export import face_inputs

FAMILY = "resnet"


@pytest.fixture(scope="module")
def model():
    return scaled_model(FAMILY, upscale_channels=[16, 8])


@pytest.fixture(scope="module")
def warp_model():
    return scaled_model(FAMILY, use_face_warp=True, upscale_channels=[16, 8])


@pytest.fixture(scope="module")
def faces(model):
    return face_inputs(model.config, None, (64, 64))


@pytest.fixture(scope="module")
def warp_faces(warp_model):
    return face_inputs(warp_model.config, None, (64, 64))


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    return save_export_model(model, tmp_path_factory.mktemp("export-model") / "model")
