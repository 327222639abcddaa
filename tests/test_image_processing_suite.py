"""transformers' common image-processor tests (vendored at 5.24.0, tests/transformers_common) on both SegFace
backends: SegFaceImageProcessor (PIL) and SegFaceImageProcessorFast (torchvision), wired as upstream model tests
wire theirs (a `<Model>ImageProcessingTester` and a `<Model>ImageProcessingTest` inheriting the mixins)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from transformers_common.tests.test_image_processing_common import (
    ImageProcessingTester,
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
)

from segface_hf import SegFaceImageProcessor, SegFaceImageProcessorFast


class SegFaceImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 30, "width": 30})
        kwargs.setdefault("num_labels", 5)
        kwargs.setdefault("batch_size", 3)
        kwargs.setdefault("max_resolution", 80)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # Upstream reads the classes from transformers' own mapping by the test folder's model name; SegFace is
        # registered at run time, so its backends are named here.
        return {"pil": SegFaceImageProcessor, "torchvision": SegFaceImageProcessorFast}


class SegFaceImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = SegFaceImageProcessingTester

    def test_call_segmentation_maps(self):
        """As upstream's segmentation processors test theirs (e.g. Segformer): label maps come back as int64 at the
        model resolution, single and batched."""
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, torchify=True)
            maps = [torch.randint(0, 19, image.shape[-2:]) for image in images]
            size = self.image_processor_tester.size
            single = image_processor(images[0], maps[0], return_tensors="pt")
            self.assertEqual(tuple(single["labels"].shape), (1, size["height"], size["width"]))
            self.assertEqual(single["labels"].dtype, torch.long)
            batch = image_processor(images, maps, return_tensors="pt")
            self.assertEqual(tuple(batch["labels"].shape), (len(images), size["height"], size["width"]))
            self.assertTrue(0 <= batch["labels"].min().item() and batch["labels"].max().item() < 19)

    def test_call_numpy_4_channels(self):
        """Overridden, as upstream does for processors that always convert to RGB (e.g. Cosmos3EdgeVideoProcessor's
        test skips it, "converts inputs to RGB"): SegFace's model takes 3 channels, so the alpha channel of a
        4-channel array is dropped, as the original's OpenCV reader drops it, instead of being kept."""
        self.image_processor_tester.num_channels = 4
        images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, numpify=True)
        size = self.image_processor_tester.size
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            encoded = image_processor(images, input_data_format="channels_last", return_tensors="pt").pixel_values
            self.assertEqual(tuple(encoded.shape), (len(images), 3, size["height"], size["width"]))
            without_alpha = image_processor([image[..., :3] for image in images], return_tensors="pt").pixel_values
            self.assertTrue(torch.equal(encoded, without_alpha))

    def test_pil_can_run_without_torchvision(self):
        """The mixin's check (marked slow upstream) loads the saved processor by name, which works for classes inside
        transformers; SegFace's load as remote code, so the same check is run here with `trust_remote_code=True`,
        in an interpreter where torchvision and segface_hf cannot be imported: the saved torchvision module must not
        stand in the PIL backend's way, and its outputs must equal this process's."""
        processor = SegFaceImageProcessor(**self.image_processor_dict)
        inputs = {"images": self.image_processor_tester.prepare_image_inputs(equal_resolution=False)}
        expected = processor(**inputs, return_tensors=None)
        script = """
import pickle, sys
sys.modules["torchvision"] = None
sys.modules["segface_hf"] = None
from transformers import AutoImageProcessor
folder = sys.argv[1]
processor = AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=True)
assert type(processor).__name__ == "SegFaceImageProcessor", type(processor)
with open(folder + "/inputs.pkl", "rb") as f:
    inputs = pickle.load(f)
with open(folder + "/outputs.pkl", "wb") as f:
    pickle.dump(dict(processor(**inputs, return_tensors=None)), f)
"""
        with tempfile.TemporaryDirectory() as folder:
            processor.save_pretrained(folder)
            Path(folder, "inputs.pkl").write_bytes(pickle.dumps(inputs))
            result = subprocess.run([sys.executable, "-c", script, folder], capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            outputs = pickle.loads(Path(folder, "outputs.pkl").read_bytes())
        self.assertEqual(len(outputs["pixel_values"]), len(expected["pixel_values"]))
        for given, wanted in zip(outputs["pixel_values"], expected["pixel_values"]):
            np.testing.assert_array_equal(given, wanted)
