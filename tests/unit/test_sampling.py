"""Sampling pieces that need no model: top-k / top-p filters, inverse-CDF draws, response masks."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.rollout.sampling import (
    SamplingSettings,
    episode_generators,
    episode_uniforms,
    filter_logits,
    inverse_cdf_draw,
    response_mask,
)


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    out = filter_logits(logits, top_k=2, top_p=1.0)
    assert torch.isinf(out[0, [0, 2]]).all() and out[0, [1, 3]].tolist() == [4.0, 3.0]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: with p = 0.7 the first two reach 0.8 >= 0.7, the rest go
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), top_k=0, top_p=0.7)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()
    # p = 0.5: the first token alone already holds 0.5
    out = filter_logits(probs.log(), top_k=0, top_p=0.5)
    assert torch.isfinite(out[0, :1]).all() and torch.isinf(out[0, 1:]).all()
    # the filter works on any order of the vocabulary
    perm = torch.tensor([2, 0, 3, 1])
    out = filter_logits(probs.log()[:, perm], top_k=0, top_p=0.7)
    assert torch.isfinite(out[0]).tolist() == [False, True, False, True]


def test_inverse_cdf_draws_follow_the_softmax() -> None:
    # 20,000 draws from softmax([0, 1, 2]); each frequency within 4 binomial standard deviations
    logits = torch.tensor([0.0, 1.0, 2.0])
    probs = [math.exp(k) / (1 + math.e + math.e**2) for k in range(3)]
    n = 20_000
    u = episode_uniforms(episode_generators([123]), n, torch.device("cpu"))[0]  # (n,)
    tokens = inverse_cdf_draw(logits.expand(n, 3), u)
    counts = torch.bincount(tokens, minlength=3).tolist()
    for k in range(3):
        sd = math.sqrt(n * probs[k] * (1 - probs[k]))
        assert abs(counts[k] - n * probs[k]) < 4 * sd


def test_inverse_cdf_draw_picks_the_first_token_past_u() -> None:
    # p = (0.5, 0.3, 0.2): CDF 0.5, 0.8, 1.0
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(6, 3)
    u = torch.tensor([0.0, 0.49, 0.51, 0.79, 0.81, 0.999], dtype=torch.float64)
    assert inverse_cdf_draw(logits, u).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the CDF's precision on MPS
def test_tokens_filtered_out_are_never_drawn(dtype: torch.dtype) -> None:
    # mass on tokens 1 and 3 only; u = 0 and the largest number below 1 are the two ends
    top = 1 - torch.finfo(dtype).eps / 2
    logits = torch.tensor([float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]).expand(4, 5)
    u = torch.tensor([0.0, 0.25, 0.75, top], dtype=dtype)
    assert inverse_cdf_draw(logits, u).tolist() == [1, 1, 3, 3]
    one = torch.tensor([[float("-inf"), 3.0, float("-inf")]])  # a single token left (top-k = 1)
    assert inverse_cdf_draw(one, torch.tensor([top], dtype=dtype)).tolist() == [1]
    # random logits, half of each row filtered out, the largest u: a kept token every time
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 50, generator=g) * 5
    z = z.masked_fill(torch.rand(2000, 50, generator=g) < 0.5, float("-inf"))
    z[:, 7] = 0.0  # at least one kept token per row
    tokens = inverse_cdf_draw(z, torch.full((2000,), top, dtype=dtype))
    assert torch.isfinite(z.gather(1, tokens[:, None])).all()


def test_the_same_seed_gives_the_same_uniforms() -> None:
    a = episode_uniforms(episode_generators([5, 6]), 10, torch.device("cpu"))
    b = episode_uniforms(episode_generators([7, 5]), 10, torch.device("cpu"))
    assert a.dtype == torch.float64 and torch.equal(a[0], b[1]) and not torch.equal(a[0], a[1])
    assert ((a >= 0) & (a < 1)).all()


def test_response_mask_stops_after_the_first_eos() -> None:
    eos = 9
    ids = torch.tensor([[4, eos, 5, 6], [4, 5, 6, 7], [eos, eos, 3, 3]])
    mask, ended = response_mask(ids, eos)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True], [True, False, False, False]]
    assert ended.tolist() == [True, False, True]
    mask, ended = response_mask(ids, None)
    assert mask.all() and not ended.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": 0.0}, "temperature"),
     ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p")],
)
def test_bad_sampling_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)
