"""Rollouts on a tiny GPT-2: batch-independent sampling, padding-independent log-probs, scoring paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rlhfkit.data.tokenize import pad_left
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import ActorCritic, token_logprobs
from rlhfkit.models.reward_model import build_reward_model
from rlhfkit.rollout.sampling import SamplingSettings, sample
from rlhfkit.rollout.scoring import RewardModelScorer, same_tokenizer


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path):
    tok = load_tokenizer(tiny_model_dir)
    return tok, load_causal_lm(tiny_model_dir, tok).eval()


def encode(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_left([tok(t)["input_ids"] for t in texts], tok.pad_token_id)


def test_a_response_depends_only_on_its_prompt_and_seed(lm) -> None:
    tok, model = lm
    settings = SamplingSettings(max_new_tokens=10)
    texts = ["tell me about the river", "describe", "what happened to the old window door"]
    ids, mask = encode(tok, texts)
    together = sample(model, ids, mask, settings, tok.eos_token_id, tok.pad_token_id, seeds=[1, 2, 3])
    for i, text in enumerate(texts):
        one_ids, one_mask = encode(tok, [text])
        alone = sample(model, one_ids, one_mask, settings, tok.eos_token_id, tok.pad_token_id, seeds=[i + 1])
        n = alone.response_ids.shape[1]
        assert torch.equal(alone.response_ids[0], together.response_ids[i, :n])
        assert not together.response_mask[i, n:].any()


class PrefersEos(torch.nn.Module):
    """The tiny LM with EOS made overwhelmingly likely from the n-th generated token on."""

    def __init__(self, model, eos: int, after: int) -> None:
        super().__init__()
        self.model, self.eos, self.after, self.calls = model, eos, after, 0

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        if self.calls >= self.after:
            out.logits[..., self.eos] += 1e4
        self.calls += 1
        return out


def test_sampling_stops_when_every_response_ended(lm) -> None:
    tok, model = lm
    ids, mask = encode(tok, ["describe the road"] * 4)
    out = sample(PrefersEos(model, tok.eos_token_id, after=3), ids, mask, SamplingSettings(max_new_tokens=12),
                 tok.eos_token_id, tok.pad_token_id, seeds=[0, 1, 2, 3])
    # three free tokens, then EOS everywhere: the loop ends after 4 tokens instead of 12
    assert out.response_ids.shape[1] == 4
    assert out.ended.all() and (out.response_ids[:, 3] == tok.eos_token_id).all()
    assert out.response_mask.all()


def test_left_padding_does_not_change_logprobs(lm) -> None:
    # Position ids skip the left pad, so a padded prompt gives the unpadded log-probs
    # (docs/implementation-details.md, "Left padding does not change log-probs")
    tok, model = lm
    prompt = tok("tell me about")["input_ids"]
    response = torch.tensor([tok(" the river light")["input_ids"]])
    alone = token_logprobs(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), response)
    padded_ids = torch.tensor([[tok.pad_token_id] * 3 + prompt])
    padded_mask = torch.tensor([[0] * 3 + [1] * len(prompt)])
    padded = token_logprobs(model, padded_ids, padded_mask, response)
    torch.testing.assert_close(padded.logp, alone.logp, atol=1e-5, rtol=0)


def test_actor_logprobs_match_a_full_log_softmax(lm) -> None:
    tok, model = lm
    ids, mask = encode(tok, ["describe the", "write about a city"])
    response = torch.tensor([tok(" road light water")["input_ids"]] * 2)
    actor = ActorCritic(model)
    out = actor(ids, mask, response, temperature=0.7)
    full_mask = torch.cat([mask, torch.ones_like(response)], 1)
    full = model(input_ids=torch.cat([ids, response], 1), attention_mask=full_mask,
                 position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    p = ids.shape[1]
    expected = (full[:, p - 1:-1] / 0.7).log_softmax(-1).gather(-1, response[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logp, expected, atol=1e-5, rtol=0)
    assert torch.equal(out.values, torch.zeros_like(out.values))  # zero-initialised value head


def test_reward_model_scores_ids_directly_or_after_retokenising(lm, tiny_model_dir: Path) -> None:
    tok, _ = lm
    rm = build_reward_model(tiny_model_dir, tok).eval()
    ids, mask = encode(tok, ["describe the", "tell me about"])
    responses = [" road great light", " a dull day"]
    enc = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    longest = max(map(len, enc))
    resp = torch.tensor([e + [tok.pad_token_id] * (longest - len(e)) for e in enc])
    resp_mask = torch.tensor([[True] * len(e) + [False] * (longest - len(e)) for e in enc])
    direct = RewardModelScorer(rm, tok, tok)
    assert direct.shares_tokenizer
    # the path for a reward model with another tokenizer: decode, then re-encode with its own
    retok = RewardModelScorer(rm, tok, tok)
    retok.shares_tokenizer = False
    prompts = ["describe the", "tell me about"]
    ended = torch.tensor([True, True])
    a = direct(ids, mask, resp, resp_mask, ended, prompts, responses)
    b = retok(ids, mask, resp, resp_mask, ended, prompts, responses)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_same_tokenizer_detection(tiny_model_dir: Path) -> None:
    from rlhfkit.models.tiny import tiny_tokenizer

    a = AutoTokenizer.from_pretrained(tiny_model_dir)
    b = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert same_tokenizer(a, b)
    assert not same_tokenizer(a, tiny_tokenizer(["completely different words here"], vocab_size=300))


@pytest.mark.parametrize("top_k", [0, 5])
def test_sampling_time_logprobs_entropy_and_values_match_the_trainers_forward(lm, top_k: int) -> None:
    """old_logprobs=sampling: the loop's own log-probs (before top-k filtering), entropies and value-head
    values equal a separate full forward over the finished responses, up to float32 rounding."""
    tok, model = lm
    actor = ActorCritic(model)
    with torch.no_grad():  # a value head that is not zero, so the values say something
        actor.value_head.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
        actor.value_head.bias.fill_(0.3)
    ids, mask = encode(tok, ["tell me about the river", "describe", "what happened to the old window door"])
    settings = SamplingSettings(max_new_tokens=10, temperature=0.7, top_k=top_k)
    out = sample(model, ids, mask, settings, tok.eos_token_id, tok.pad_token_id, seeds=[4, 5, 6],
                 with_logprobs=True, value_head=actor.value_head)
    plain = sample(model, ids, mask, settings, tok.eos_token_id, tok.pad_token_id, seeds=[4, 5, 6])
    assert torch.equal(out.response_ids, plain.response_ids)  # recording changes nothing that is sampled
    with torch.no_grad():
        full = actor(ids, mask, out.response_ids, temperature=0.7)
    m = out.response_mask
    torch.testing.assert_close(out.logp[m], full.logp[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy[m], full.entropy[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.values[m], full.values[m], atol=1e-5, rtol=1e-5)
    assert (out.logp[~m] == 0).all() and (out.values[~m] == 0).all()
    assert (out.logp[m] < 0).all() and (out.values[m] != 0).all()
