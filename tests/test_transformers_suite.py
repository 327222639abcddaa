"""transformers' own common tests (ModelTesterMixin, ConfigTester), vendored at 5.24.0 in tests/transformers_common,
run on tiny SegFace models of every backbone family, in the style of transformers' tests/models/*/test_modeling_*.py.

Overrides and skips are listed in the classes below, each with its reason and the upstream vision model that does the
same for the same reason.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from conftest import BACKBONE_FAMILIES, tiny_backbone_config
from transformers_common.tests.test_configuration_common import ConfigTester
from transformers_common.tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from segface_hf import SegFaceConfig, SegFaceForSemanticSegmentation


class SegFaceModelTester:
    """Tiny SegFace configs and inputs: 32-pixel images (the smallest SegFace takes), hidden size 16, one two-way
    block."""

    def __init__(self, parent, family="swin", batch_size=2, image_size=32, num_labels=3, is_training=True):
        self.parent = parent
        self.family = family
        self.batch_size = batch_size
        # Swin's window (2) must fit the stride-32 grid: 64 pixels for the Swins.
        self.image_size = 64 if family.startswith("swin") else image_size
        self.num_channels = 3
        self.num_labels = num_labels
        self.is_training = is_training
        self.hidden_size = 16
        self.num_hidden_layers = 1
        self.num_attention_heads = 2

    def get_config(self) -> SegFaceConfig:
        return SegFaceConfig(
            backbone_config=tiny_backbone_config(self.family),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            mlp_dim=32,
            upscale_channels=[8, 4],
            image_size=self.image_size,
            id2label={i: f"class_{i}" for i in range(self.num_labels)},
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels):
        model = SegFaceForSemanticSegmentation(config).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        expected = (self.batch_size, self.num_labels, self.image_size, self.image_size)
        self.parent.assertEqual(result.logits.shape, expected)
        self.parent.assertTrue(torch.isfinite(result.loss))


class SegFaceModelTestBase(ModelTesterMixin):
    """The mixin's tests for one backbone family (`family`); the subclasses below pick the family."""

    family = "swin"
    all_model_classes = (SegFaceForSemanticSegmentation,)
    pipeline_model_mapping = {"image-segmentation": SegFaceForSemanticSegmentation}
    test_resize_embeddings = False  # no input embeddings (as UperNet, SegFormer)
    # The base model (`base_model_prefix = "backbone"`) is a wrapper module, not a PreTrainedModel that saves alone
    # (as MaskFormer and Mask2Former, whose tests set the same).
    test_missing_keys = False
    test_torch_exportable = True
    has_attentions = True

    def setUp(self):
        # Tiny models: one intra-op thread avoids oversubscribing the CI machine's cores (and is faster there).
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.model_tester = SegFaceModelTester(self, family=self.family)
        self.config_tester = ConfigTester(self, config_class=SegFaceConfig, has_text_modality=False,
                                          common_properties=["hidden_size", "num_attention_heads",
                                                             "num_hidden_layers"])  # fmt: skip

    def tearDown(self):
        torch.set_num_threads(self._threads)
        super().tearDown()

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="SegFace does not use input or output embeddings (as UperNet)")
    def test_model_get_set_embeddings(self):
        pass

    def test_hidden_states_output(self):
        """Overridden as in UperNet: the hidden states are the backbone's four feature maps (strides 4 to 32), not
        sequences of hidden_size."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        size = self.model_tester.image_size
        for model_class in self.all_model_classes:
            for via_config in (False, True):
                config.output_hidden_states = via_config
                model = model_class(config).eval()
                with torch.no_grad():
                    outputs = model(**inputs_dict, **({} if via_config else {"output_hidden_states": True}))
                shapes = [tuple(h.shape[-2:]) for h in outputs.hidden_states]
                self.assertEqual(shapes, [(size // s, size // s) for s in (4, 8, 16, 32)])
                self.assertEqual([h.shape[1] for h in outputs.hidden_states], model.backbone.channels)

    def _model_with_attention(self, attn_implementation, **config_overrides):
        """A model (fresh config) whose decoder uses `attn_implementation`: "sdpa" is the default (asked for
        explicitly, transformers would also demand it of backbones without attention, e.g. ConvNeXt)."""
        config = self.model_tester.get_config()
        for key, value in config_overrides.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        if attn_implementation == "sdpa":
            model = SegFaceForSemanticSegmentation(config)
        else:
            model = SegFaceForSemanticSegmentation._from_config(config, attn_implementation="eager")
        if not config_overrides.get("output_attentions"):  # with it set, transformers itself picks eager
            self.assertEqual(model.config._attn_implementation, attn_implementation)
        return model.eval()

    def test_attention_outputs(self):
        """Overridden (as SegFormer, whose maps are not `(heads, seq, seq)` either): for each two-way layer the
        token-to-image and image-to-token maps, then the final token-to-image map; on the fast and the reference
        path; each class token's token-to-image map sums to one over the image."""
        _, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        tester = self.model_tester
        tokens = (tester.image_size // 4) ** 2
        labels, heads = tester.num_labels, tester.num_attention_heads
        expected = [(heads, labels, tokens), (heads, tokens, labels)] * tester.num_hidden_layers + [
            (heads, labels, tokens)
        ]
        for attn_implementation in ("eager", "sdpa"):
            model = self._model_with_attention(attn_implementation)
            maps = {}
            for fast in (True, False):
                model.fast_path = fast
                with torch.no_grad():
                    outputs = model(**inputs_dict, output_attentions=True)
                    plain = model(**inputs_dict)
                self.assertIsNone(plain.attentions)
                torch.testing.assert_close(outputs.logits, plain.logits)
                self.assertEqual([tuple(a.shape[1:]) for a in outputs.attentions], expected)
                self.assertTrue(all(a.shape[0] == tester.batch_size for a in outputs.attentions))
                for index in [*range(0, 2 * tester.num_hidden_layers, 2), -1]:
                    sums = outputs.attentions[index].sum(dim=-1)
                    torch.testing.assert_close(sums, torch.ones_like(sums))
                maps[fast] = outputs.attentions
            for fast_map, reference_map in zip(maps[True], maps[False]):
                torch.testing.assert_close(fast_map, reference_map, rtol=1e-4, atol=1e-6)
            # through the config, and in the tuple output (attentions last)
            model = self._model_with_attention(attn_implementation, output_attentions=True)
            with torch.no_grad():
                as_tuple = model(**inputs_dict, return_dict=False)
            self.assertEqual([tuple(a.shape[1:]) for a in as_tuple[-1]], expected)

    def test_for_semantic_segmentation(self):
        self.model_tester.create_and_check_for_semantic_segmentation(*self.model_tester.prepare_config_and_inputs())


def _family_class(family: str):
    name = "SegFace" + "".join(part.capitalize() for part in family.replace("-", "_").split("_")) + "ModelTest"
    return type(name, (SegFaceModelTestBase, unittest.TestCase), {"family": family})


for _family in BACKBONE_FAMILIES:
    _cls = _family_class(_family)
    globals()[_cls.__name__] = _cls
del _family, _cls
