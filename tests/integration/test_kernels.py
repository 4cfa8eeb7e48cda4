"""Fused kernels compute the same function as the modules they replace."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers.activations import GELUTanh, NewGELUActivation

from rlhfkit.models.kernels import use_fused_kernels


def test_fused_gelu_gives_the_same_logits(tiny_model_dir) -> None:
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fused = use_fused_kernels(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert any(isinstance(m, GELUTanh) for m in fused.modules())
    ids = torch.randint(4, 200, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    # the formula itself: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in float64
    expected = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    torch.testing.assert_close(GELUTanh()(x), expected, atol=1e-12, rtol=0)
