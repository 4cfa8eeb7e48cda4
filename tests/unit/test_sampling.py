"""Sampling pieces that need no model: top-k / top-p filters, Gumbel-max draws, response masks."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.rollout.sampling import (
    GumbelStream,
    SamplingSettings,
    episode_generators,
    filter_logits,
    gumbel_noise,
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


def test_gumbel_max_draws_follow_the_softmax() -> None:
    # 20,000 draws from softmax([0, 1, 2]); each frequency within 4 binomial standard deviations
    logits = torch.tensor([0.0, 1.0, 2.0])
    probs = logits.softmax(-1)
    gens = episode_generators([123])
    n = 20_000
    counts = torch.zeros(3)
    for _ in range(n):
        counts[(logits + gumbel_noise(gens, 3, torch.device("cpu"))[0]).argmax()] += 1
    for k in range(3):
        sd = math.sqrt(n * probs[k] * (1 - probs[k]))
        assert abs(counts[k] - n * probs[k]) < 4 * sd


def test_the_same_seed_gives_the_same_noise() -> None:
    a = gumbel_noise(episode_generators([5, 6]), 10, torch.device("cpu"))
    b = gumbel_noise(episode_generators([7, 5]), 10, torch.device("cpu"))
    assert torch.equal(a[0], b[1]) and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("vocab,steps,max_steps", [(5, 7, 3), (17, 16, 16), (49, 5, 1)])
def test_noise_drawn_in_blocks_is_the_noise_drawn_step_by_step(vocab: int, steps: int, max_steps: int) -> None:
    # Blocks of several steps (and a last, shorter block) must not change any episode's noise:
    # the generator's stream is the same, only the number of calls differs.
    cpu = torch.device("cpu")
    one_by_one = episode_generators([11, 12, 13])
    expected = [gumbel_noise(one_by_one, vocab, cpu) for _ in range(steps)]
    stream = GumbelStream(episode_generators([11, 12, 13]), vocab, cpu, steps, max_steps=max_steps)
    for want in expected:
        assert torch.equal(stream.next(), want)


def test_noise_blocks_keep_to_the_memory_budget() -> None:
    stream = GumbelStream(episode_generators([1, 2]), 1000, torch.device("cpu"), 64, budget_bytes=4 * 1000 * 2 * 3)
    assert stream.per_block == 3
    stream.next()
    assert stream.block is not None and tuple(stream.block.shape) == (2, 3, 1000)


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
