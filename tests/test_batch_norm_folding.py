"""Batch norms folded into the convolutions before them (eval mode, no autograd) compute what the modules compute.

Truth is the unfolded module itself (torch's own `Conv2d` and `BatchNorm2d`, timm's `BatchNormAct2d`), with
non-trivial running statistics and affine parameters, so that a wrong scale, shift or pairing shows.
"""

from __future__ import annotations

import pytest
import torch
from conftest import scaled_model
from torch import nn

from segface_hf.batch_norm_folding import conv_norm_pairs, fold_batch_norm, run_with_folded_batch_norms


def randomize_batch_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                channels = norm.num_features
                norm.running_mean.copy_(torch.randn(channels, generator=generator))
                norm.running_var.copy_(0.2 + 2 * torch.rand(channels, generator=generator))
                if norm.affine:
                    norm.weight.copy_(1 + 0.5 * torch.randn(channels, generator=generator))
                    norm.bias.copy_(torch.randn(channels, generator=generator))
    return module.eval()


class ConvNorm(nn.Module):
    def __init__(self, conv_bias: bool = False, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=conv_bias)
        self.norm = nn.BatchNorm2d(6, eps=1e-3, affine=affine)

    def forward(self, x):
        return self.norm(self.conv(x))


class SharedConvOutput(nn.Module):
    """The convolution's output goes into the norm and around it: folding the norm would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class ConvCalledTwice(nn.Module):
    """One convolution called twice, only once before the norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.conv(x)


@pytest.mark.parametrize("conv_bias, affine", [(False, True), (True, True), (True, False)])
def test_folded_weights_compute_the_convolution_and_its_norm(conv_bias, affine):
    module = randomize_batch_norms(ConvNorm(conv_bias, affine))
    weight, bias = fold_batch_norm(module.conv, module.norm)
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(
            nn.functional.conv2d(x, weight, bias, padding=1), module(x), rtol=1e-5, atol=1e-5
        )


def test_a_model_runs_through_its_folded_copy_and_is_left_unchanged():
    module = randomize_batch_norms(nn.Sequential(ConvNorm(), nn.ReLU(), ConvNorm(conv_bias=True)))
    module[2].conv = nn.Conv2d(6, 6, 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    calls = []
    for norm in (module[0].norm, module[2].norm):
        norm.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = module(x)
        calls.clear()
        first = run_with_folded_batch_norms(module, x)  # watched pass: the module's own norms run
        assert len(calls) == 2
        calls.clear()
        second = run_with_folded_batch_norms(module, x)  # through the folded copy: no norm runs
        assert calls == []
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(second, expected)  # the folded copy rounds differently: it did run
    assert torch.equal(first, second)  # the first call already gives the folded copy's output
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert isinstance(module[0].norm, nn.BatchNorm2d) and isinstance(module[2].norm, nn.BatchNorm2d)


def test_timm_batch_norm_keeps_its_activation():
    from timm.layers import BatchNormAct2d

    module = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), BatchNormAct2d(6, act_layer=nn.ReLU))
    randomize_batch_norms(module)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = module(x)
        assert conv_norm_pairs(module, x)[1] == [("0", "1")]
        run_with_folded_batch_norms(module, x)
        folded = run_with_folded_batch_norms(module, x)
    assert (expected == 0).any()  # the activation is there to keep
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module_type", [SharedConvOutput, ConvCalledTwice])
def test_a_convolution_whose_output_is_also_used_elsewhere_is_not_folded(module_type):
    torch.manual_seed(0)
    module = randomize_batch_norms(module_type())
    x = torch.randn(2, 3, 8, 8)
    calls = []
    module.norm.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        expected = module(x)
        outputs = [run_with_folded_batch_norms(module, x) for _ in range(2)]
    assert len(calls) == 3  # the norm kept running: its module was not replaced by a folded copy
    for output in outputs:
        torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_a_norm_in_training_mode_is_not_folded():
    module = randomize_batch_norms(ConvNorm())
    module.norm.train()
    with torch.no_grad():
        assert conv_norm_pairs(module, torch.randn(2, 3, 8, 8))[1] == []


def test_the_folded_copy_follows_changes_to_the_module():
    module = randomize_batch_norms(ConvNorm(conv_bias=True))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        run_with_folded_batch_norms(module, x)
        module.norm.running_var.mul_(4)  # in place, as a training step or load_state_dict does
        module.conv.bias.add_(1)
        changed = run_with_folded_batch_norms(module, x)
        torch.testing.assert_close(changed, module(x), rtol=1e-5, atol=1e-5)
        module.load_state_dict(randomize_batch_norms(ConvNorm(conv_bias=True), seed=1).state_dict())
        run_with_folded_batch_norms(module, x)
        torch.testing.assert_close(run_with_folded_batch_norms(module, x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["timm-mobilenet", "timm-efficientnet", "resnet"])
def test_fast_path_runs_no_batch_norm_in_eval_and_matches_the_reference(family):
    model = randomize_batch_norms(scaled_model(family))
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    calls = []
    for norm in norms:
        norm.register_forward_hook(lambda *_: calls.append(1))
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.fast_path = False
        reference = model(pixel_values).logits
        model.fast_path = True
        model(pixel_values)
        calls.clear()
        fast = model(pixel_values).logits
    assert norms and calls == []
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # with autograd on, the model's own modules run (their gradients are wanted)
        model(pixel_values)
    assert len(calls) == len(norms)
