"""Gradient clipping on one CPU process: g <- g * min(1, max_norm / (||g|| + 1e-6)), checked in float64."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.trainers.optim_step import clip_gradients


def _params(scale: float) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.zeros(7, 3, requires_grad=True), torch.zeros(5, requires_grad=True),
              torch.zeros(2, requires_grad=True)]
    for p in params[:2]:
        p.grad = torch.randn(p.shape) * scale
    return params  # the last one has no gradient


@pytest.mark.parametrize("scale", [0.01, 10.0])  # under the clip (coefficient 1) and over it
def test_clipping_matches_float64_and_leaves_an_unclipped_gradient_as_it_was(scale: float, cpu_accelerator) -> None:
    acc = cpu_accelerator()
    params = _params(scale)
    before = [p.grad.clone() for p in params[:2]]
    norm64 = torch.cat([g.double().flatten() for g in before]).norm()
    total = clip_gradients(acc, params, max_norm=1.0)
    assert abs(float(total) - float(norm64)) <= 1e-6 * float(norm64)
    coef = min(1.0, 1.0 / (float(norm64) + 1e-6))
    for p, g in zip(params, before, strict=False):
        torch.testing.assert_close(p.grad.double(), g.double() * coef, rtol=1e-6, atol=0)
    if coef == 1.0:
        assert all(torch.equal(p.grad, g) for p, g in zip(params, before, strict=False))
    else:
        assert float(torch.cat([p.grad.double().flatten() for p in params[:2]]).norm()) == pytest.approx(1.0, rel=1e-5)
    assert params[2].grad is None
