# Copyright 2026 The segface-hf Authors. All rights reserved.
# SPDX-License-Identifier: MIT

"""Batch norms folded into the convolutions that feed them, for eval-mode passes without autograd.

In eval mode a `BatchNorm2d` is a fixed per-channel affine map, so a convolution whose output goes only into it
can absorb it: its weight scaled per output channel and its bias shifted. The backbones with batch norms
(MobileNetV3, EfficientNetV2, ResNet) then skip one full pass over every feature map per convolution.

[`run_with_folded_batch_norms`] finds the pairs by watching one forward pass (a norm whose input is the output of
the convolution called just before it), builds a copy of the module with them folded (sharing every other
tensor with the module), checks that the copy reproduces that pass, and reuses it while the module's parameters,
buffers and modes are unchanged. The module itself is never modified.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from torch import nn

# module -> (state signature, folded copy or None when nothing can be folded)
_FOLDED_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _timm_batch_norm_act():
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm is only needed for the timm backbones
        return None
    return BatchNormAct2d


def foldable_norm(norm: nn.Module) -> bool:
    """Whether `norm` is a batch norm in eval mode whose normalization is a fixed affine map: `nn.BatchNorm2d` itself
    or timm's `BatchNormAct2d` (a batch norm followed by its dropout and activation)."""
    batch_norm_act = _timm_batch_norm_act()
    known = type(norm) is nn.BatchNorm2d or (batch_norm_act is not None and type(norm) is batch_norm_act)
    return known and not norm.training and norm.running_mean is not None and norm.running_var is not None


def after_norm(norm: nn.Module) -> nn.Module:
    """What is left of `norm` once its normalization is folded away: nothing, or timm's dropout and activation."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(norm.drop, norm.act)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution computing `norm(conv(x))` for a `norm` in eval mode (without timm's
    activation), computed in at least float32 precision: `W * s` and `(b - mean) * s + beta`, with
    `s = gamma / sqrt(var + eps)` per output channel."""
    dtype = torch.promote_types(conv.weight.dtype, torch.float32)
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.to(dtype) + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.to(dtype)
        shift = -norm.running_mean.to(dtype) * scale
        if norm.bias is not None:
            shift = shift + norm.bias.to(dtype)
        if conv.bias is not None:
            shift = shift + conv.bias.to(dtype) * scale
        weight = conv.weight.to(dtype) * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


def conv_norm_pairs(module: nn.Module, *inputs) -> tuple[object, list[tuple[str, str]]]:
    """Run `module(*inputs)` once and return its output and the `(convolution name, norm name)` pairs that can be
    folded: every call of the norm takes the output of the convolution called just before it, that convolution is
    called only then, and the norm is [`foldable_norm`]."""
    convs = {m: name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    norms = {m: name for name, m in module.named_modules() if foldable_norm(m)}
    last_conv: list = [None, None]  # the latest convolution call: (module, output)
    conv_calls: dict = {}
    pairings: dict = {}  # norm -> the set of convolutions (None: not a convolution's output) feeding its calls

    def after_conv(conv, _args, output):
        conv_calls[conv] = conv_calls.get(conv, 0) + 1
        last_conv[0], last_conv[1] = conv, output

    def before_norm(norm, args):
        source = last_conv[0] if last_conv[1] is not None and args and args[0] is last_conv[1] else None
        pairings.setdefault(norm, []).append(source)
        last_conv[0] = last_conv[1] = None  # one convolution output, one norm

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    try:
        output = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        last_conv[0] = last_conv[1] = None
    pairs = []
    for norm, sources in pairings.items():
        conv = sources[0]
        if conv is not None and all(s is conv for s in sources) and conv_calls[conv] == len(sources):
            pairs.append((convs[conv], norms[norm]))
    return output, pairs


def folded_copy(module: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """A copy of `module` with each `(convolution, norm)` pair folded; every tensor outside the pairs is shared."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    folded = copy.deepcopy(module, memo)
    for conv_name, norm_name in pairs:
        weight, bias = fold_batch_norm(module.get_submodule(conv_name), module.get_submodule(norm_name))
        conv = folded.get_submodule(conv_name)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        parent_name, _, leaf = norm_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), leaf, after_norm(folded.get_submodule(norm_name)))
    return folded


def state_signature(module: nn.Module) -> tuple:
    """What a folded copy depends on: every parameter and buffer (identity, storage, version, dtype, device) and
    every submodule's mode."""
    tensors = tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device)
        for t in itertools.chain(module.parameters(), module.buffers())
    )
    return tensors, tuple(m.training for m in module.modules())


def _same_outputs(folded, reference) -> bool:
    folded, reference = _flat_tensors(folded), _flat_tensors(reference)
    if len(folded) != len(reference):
        return False
    for got, expected in zip(folded, reference):
        if got.shape != expected.shape:
            return False
        tolerance = (1e-3 if expected.dtype in (torch.float32, torch.float64) else 3e-2) * (
            1.0 + expected.abs().max().item()
        )
        if not (got - expected).abs().max().item() <= tolerance:
            return False
    return True


def _flat_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat_tensors(item)]
    return []


def run_with_folded_batch_norms(module: nn.Module, *inputs):
    """`module(*inputs)` through a copy of `module` with its batch norms folded into the convolutions before them
    (eval mode, no autograd: the caller's plan decides). The copy is built on the first call and whenever the
    module's state changes, from a watched pass whose output is returned; a copy that does not reproduce that pass
    within float rounding is not used. The copy holds the folded convolutions' weights: about as many as the
    module's own convolutions."""
    signature = state_signature(module)
    cached = _FOLDED_COPIES.get(module)
    if cached is not None and cached[0] == signature:
        return module(*inputs) if cached[1] is None else cached[1](*inputs)
    output, pairs = conv_norm_pairs(module, *inputs)
    folded = folded_copy(module, pairs) if pairs else None
    if folded is not None:
        folded_output = folded(*inputs)
        # Returned when it passes, so that every call with the same input gives the same output.
        folded, output = (folded, folded_output) if _same_outputs(folded_output, output) else (None, output)
    _FOLDED_COPIES[module] = (signature, folded)
    return output
