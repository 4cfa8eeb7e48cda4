"""The reward probes (rollout/probes.py): the three edits of a batch, the effect statistic by hand, and the
warnings they give; the scores come from rewards whose response to each edit is known in advance."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algos.hacking import perturbation_effect
from rlhfkit.assets import embedded_model_path
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.rollout.probes import probe_reward, repeated, shuffled, swapped
from rlhfkit.tracking.health import probe_findings, probe_line


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_tokenizer(embedded_model_path(), padding_side="left")
    return tok


def episodes(tokenizer):
    """Three replies: [11 12 13 EOS], [21 22] cut at the limit (no EOS), [31 EOS]; right-padded to 4."""
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[11, 12, 13, eos], [21, 22, 0, 0], [31, eos, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ended = torch.tensor([True, False, True])
    prompt_ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    prompt_mask = torch.ones(3, 2, dtype=torch.bool)
    texts = [tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(ids, mask)]
    return prompt_ids, prompt_mask, ids, mask, ended, ["p0", "p1", "p2"], texts


def rows(ids, mask):
    return [r[m].tolist() for r, m in zip(ids, mask)]


def test_shuffled_permutes_each_reply_and_keeps_its_eos_last(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    before = episodes(tokenizer)
    after = shuffled(before, tokenizer, torch.Generator().manual_seed(0))
    got = rows(after[2], after[3])
    assert [sorted(got[0][:-1]), sorted(got[1]), got[2]] == [[11, 12, 13], [21, 22], [31, eos]]
    assert got[0][-1] == eos and len(got[1]) == 2  # the ended reply keeps its EOS last; the cut one gets none
    assert torch.equal(after[4], before[4]) and after[5] == before[5]  # ended flags and prompts unchanged
    assert after[6] == [tokenizer.decode(r, skip_special_tokens=True) for r in got]
    # some seed moves the first reply (3! = 6 orders): the edit really shuffles
    firsts = {tuple(rows(*shuffled(before, tokenizer, torch.Generator().manual_seed(s))[2:4])[0]) for s in range(8)}
    assert len(firsts) > 1


def test_repeated_writes_each_reply_s_first_half_twice_at_its_length(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    after = repeated(episodes(tokenizer), tokenizer)
    assert rows(after[2], after[3]) == [[11, 12, 11, eos], [21, 21], [31, eos]]
    assert after[2].shape == (3, 4) and after[2][1, 2:].tolist() == [tokenizer.pad_token_id] * 2


def test_swapped_gives_each_prompt_the_previous_reply(tokenizer) -> None:
    before = episodes(tokenizer)
    after = swapped(before)
    assert torch.equal(after[0], before[0]) and after[5] == before[5]  # prompts stay
    assert rows(after[2], after[3]) == [rows(before[2], before[3])[i] for i in (2, 0, 1)]
    assert after[4].tolist() == [True, True, False] and after[6] == [before[6][i] for i in (2, 0, 1)]


def test_perturbation_effect_by_hand() -> None:
    # r = 0, 1, 2, 3: sigma = sqrt(1.25); r' - r = 1, 0, -1, -2: mean -0.5; one edit of four scores higher
    d, p = perturbation_effect(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert d.item() == pytest.approx(-0.5 / math.sqrt(1.25), rel=1e-12) and p.item() == 0.25
    d, p = perturbation_effect(torch.tensor([2.0, 2.0]), torch.tensor([2.0, 2.0]))  # a constant reward: finite
    assert d.item() == 0.0 and p.item() == 0.0
    with pytest.raises(ValueError, match="original"):
        perturbation_effect(torch.tensor([1.0]), torch.tensor([1.0]))


def count_of(token: int):
    """A reward that counts a token in the reply: blind to order and to the prompt."""
    def score(prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, responses):
        return ((response_ids == token) & response_mask).sum(-1).float()
    return score


def test_a_bag_of_tokens_reward_gets_all_three_warnings(tokenizer) -> None:
    g = torch.Generator().manual_seed(1)
    n = 32
    ids = torch.randint(10, 14, (n, 6), generator=g)
    mask = torch.ones(n, 6, dtype=torch.bool)
    batch = (torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.bool), ids, mask,
             torch.zeros(n, dtype=torch.bool), [f"p{i}" for i in range(n)], ["x"] * n)
    counts = (ids == 10).sum(-1).double()
    effects = probe_reward(count_of(10), batch, tokenizer)
    assert effects["shuffled"] == {"shift": 0.0, "raised": 0.0}  # the same tokens, the same count
    assert effects["swapped"]["shift"] == pytest.approx(0.0, abs=1e-12)  # the batch's counts, rotated
    # the edit by a plain loop: the first 3 of 6 tokens twice, so the count becomes twice the first half's
    edited = torch.tensor([2.0 * row[:3].count(10) for row in ids.tolist()], dtype=torch.float64)
    assert effects["repeated"]["shift"] == pytest.approx(((edited - counts).mean() / counts.std(unbiased=False)).item())
    assert effects["repeated"]["raised"] == pytest.approx((edited > counts).double().mean().item())
    rules = [f.rule for f in probe_findings(effects)]
    assert rules[0] == "reward ignores word order" and rules[-1] == "reward ignores the prompt"


def test_a_reward_that_reads_order_and_prompt_gets_no_warning(tokenizer) -> None:
    """Reward = 1 for each place where the reply's token equals its prompt's token + position: order matters,
    the prompt matters, and repeating a reply adds only mismatched positions."""
    n, t = 32, 6
    g = torch.Generator().manual_seed(2)
    start = torch.randint(10, 40, (n, 1), generator=g)
    right = start + torch.arange(t)
    ids = torch.where(torch.rand(n, t, generator=g) < 0.7, right, torch.full_like(right, 99))
    batch = (start, torch.ones(n, 1, dtype=torch.bool), ids, torch.ones(n, t, dtype=torch.bool),
             torch.zeros(n, dtype=torch.bool), [f"p{i}" for i in range(n)], ["x"] * n)

    def score(prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, responses):
        pos = torch.arange(response_ids.shape[1])
        return ((response_ids == prompt_ids[:, :1] + pos) & response_mask).sum(-1).float() - response_mask.sum(-1)

    effects = probe_reward(score, batch, tokenizer)
    assert effects["shuffled"]["shift"] < -0.25 and effects["swapped"]["shift"] < -0.25
    assert effects["repeated"]["shift"] < 0.25
    assert probe_findings(effects) == []


def test_warning_messages_and_the_console_line() -> None:
    effects = {"shuffled": {"shift": -0.1, "raised": 0.4}, "repeated": {"shift": 0.6, "raised": 0.75},
               "swapped": {"shift": -0.05, "raised": 0.45}}
    messages = {f.rule: f.explanation for f in probe_findings(effects)}
    assert messages["reward ignores word order"].startswith(
        "the start policy's replies with their tokens shuffled score 0.10 standard deviations lower on average "
        "(higher for 40% of them)")
    assert "written twice score 0.60 standard deviations higher on average (higher for 75% of them)" in \
        messages["reward pays for repetition"]
    assert "given to another prompt score 0.05 standard deviations lower" in messages["reward ignores the prompt"]
    assert probe_findings({"shuffled": {"shift": -0.3, "raised": 0.1}}) == []
    assert probe_line(effects) == ("; reward change for shuffled -0.10, repeated +0.60, swapped -0.05 standard "
                                   "deviations")
    assert probe_line({}) == ""


def test_a_reward_that_cannot_separate_the_samples_gets_only_the_spread_warning() -> None:
    flat = {"shuffled": {"shift": 0.0, "raised": 0.0}, "repeated": {"shift": 0.0, "raised": 0.0},
            "swapped": {"shift": 0.0, "raised": 0.0}}
    assert probe_findings(flat, score_std=0.0) == []
    assert len(probe_findings(flat, score_std=1.0)) == 2  # with a spread, the same shifts are warnings
