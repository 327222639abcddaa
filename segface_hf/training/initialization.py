"""Initialisation of a SegFace decoder for training from scratch, as the original initialises it.

The original decoder (SAM's two-way transformer, the class tokens, the projections and the upscaler) keeps
PyTorch's default initialisation: Kaiming-uniform linear and convolution weights with uniform biases, class tokens
from N(0, 1) (`nn.Embedding`), layer norms at one and zero, and the positional-encoding matrix from N(0, 1).
`SegFacePreTrainedModel._init_weights` follows the transformers convention instead: linear and convolution weights
from N(0, `initializer_range`) with zero biases (its class tokens and positional encoding are N(0, 1) as in the
original). Training from scratch with `decoder_init="original"` resets the decoder to the original's initialisation
first, so that a run reproduces the paper's recipe exactly.
"""

from __future__ import annotations

import torch
from torch import nn


def initialize_decoder_like_original(model) -> int:
    """Reset every non-backbone module of a [`SegFaceForSemanticSegmentation`] to PyTorch's default initialisation
    (the original's), in place, from the global RNG (seed it first for reproducible runs).

    Returns:
        `int`: the number of modules reset.
    """
    reset = 0
    for name, module in model.named_modules():
        if name == "backbone" or name.startswith("backbone."):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm)):
            module.reset_parameters()
            reset += 1
        elif hasattr(module, "positional_embedding") and isinstance(module.positional_embedding, torch.Tensor):
            with torch.no_grad():
                module.positional_embedding.normal_(0.0, 1.0)
            reset += 1
        elif type(module).__name__ == "SegFaceLayerNorm2d":
            with torch.no_grad():
                module.weight.fill_(1.0)
                module.bias.zero_()
            reset += 1
    return reset


__all__ = ["initialize_decoder_like_original"]
