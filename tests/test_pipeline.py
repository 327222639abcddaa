"""`transformers.pipeline("image-segmentation")` with SegFace folders and Hub ids."""

from __future__ import annotations

import builtins
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_DECODER, require_shared, tiny_backbone_config
from hub_standin import hub_standin  # noqa: F401  (the fixture)
from huggingface_hub import HfApi
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import segface_hf.inference.pipeline  # noqa: F401  (the registration the package __init__ runs)
from segface_hf import (
    CELEBAMASK_HQ_LABELS,
    LAPA_LABELS,
    SegFaceConfig,
    SegFaceForSemanticSegmentation,
    SegFaceImageProcessor,
)

PHOTOS = ("astronaut.png", "camera.png", "grace_hopper.jpg")


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline asked on the terminal whether to run custom code")

    monkeypatch.setattr(builtins, "input", refuse)


def _check_segments(segments, image: PIL.Image.Image, expected_map: np.ndarray, names):
    assert isinstance(segments, list) and segments
    labels = [segment["label"] for segment in segments]
    assert len(set(labels)) == len(labels) and set(labels) <= set(names)
    union = np.zeros((image.height, image.width), dtype=int)
    for segment in segments:
        mask = segment["mask"]
        assert segment["score"] is None
        assert isinstance(mask, PIL.Image.Image) and mask.mode == "L" and mask.size == image.size
        values = np.asarray(mask)
        assert set(np.unique(values).tolist()) <= {0, 255}
        union += values == 255
        if expected_map is not None:
            assert np.array_equal(values == 255, expected_map == names.index(segment["label"]))
    assert (union == 1).all()  # one mask per class present, covering every pixel once


def test_pipeline_on_the_shared_photos(parity_model, no_prompt, caplog):
    with caplog.at_level(logging.ERROR):
        segmenter = pipeline("image-segmentation", model=str(parity_model))
    assert not [r for r in caplog.records if "not supported" in r.getMessage()]
    model = AutoModelForSemanticSegmentation.from_pretrained(parity_model).eval()
    processor = AutoImageProcessor.from_pretrained(parity_model)
    for name in PHOTOS:
        path = require_shared("images", name)
        image = PIL.Image.open(path)
        segments = segmenter(str(path))
        expected = None
        if name == "grace_hopper.jpg":  # the masks are exactly the model's label map (checked on one photo)
            with torch.no_grad():
                expected = processor.post_process_semantic_segmentation(
                    model(**processor(image)), target_sizes=[(image.height, image.width)]
                )[0].numpy()
        _check_segments(segments, image, expected, list(CELEBAMASK_HQ_LABELS))


def _tiny_folder(folder, use_face_warp=False):
    torch.manual_seed(0)
    labels = LAPA_LABELS if use_face_warp else CELEBAMASK_HQ_LABELS
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"), id2label=dict(enumerate(labels)),
                           use_face_warp=use_face_warp, **TINY_DECODER)  # fmt: skip
    SegFaceForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_pipeline_from_a_hub_id(hub_standin, tmp_path, no_prompt):  # noqa: F811
    folder = _tiny_folder(tmp_path / "tiny")
    api = HfApi()
    api.create_repo("standin-user/segface-tiny")
    api.upload_folder(folder_path=str(folder), repo_id="standin-user/segface-tiny")
    segmenter = pipeline("image-segmentation", model="standin-user/segface-tiny")
    image = PIL.Image.open(require_shared("images", "astronaut.png")).convert("RGB").resize((100, 80))
    segments = segmenter(image)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        expected = processor.post_process_semantic_segmentation(model(**processor(image)), target_sizes=[(80, 100)])[0]
    _check_segments(segments, image, expected.numpy(), list(CELEBAMASK_HQ_LABELS))


def test_pipeline_with_a_lapa_model_asks_for_landmarks(tmp_path, no_prompt):
    segmenter = pipeline("image-segmentation", model=str(_tiny_folder(tmp_path / "lapa", use_face_warp=True)))
    with pytest.raises(ValueError, match="landmarks"):
        segmenter(PIL.Image.new("RGB", (64, 64)))


def test_registration_keeps_the_auto_mapping_intact():
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING

    assert MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING[SegFaceConfig] is SegFaceForSemanticSegmentation
    # iterating the mapping still works (it skips the names it cannot import)
    assert SegFaceConfig in dict(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING.items())
