"""Same function, faster kernel: swap modules of a loaded model for fused equivalents.

GPT-2's "gelu_new" activation is written as nine elementwise tensor operations
(0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))); `torch.nn.functional.gelu(approximate="tanh")`
computes the same function in one kernel. On a CPU the unfused form takes about a quarter of a
small model's training step. The model config is left as it is, so saved models do not change.
"""

from __future__ import annotations

import torch
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

_TANH_GELUS = (NewGELUActivation, FastGELUActivation)


def use_fused_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Replace tanh-approximation GELU modules by the fused kernel (in place); returns the model."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, _TANH_GELUS):
                setattr(parent, name, GELUTanh())
    return model
