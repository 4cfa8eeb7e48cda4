"""A reward model with one head per criterion over a shared trunk: one forward pass gives what
separate one-head models with the same trunk and the head's rows give, and it saves and loads
back (with rlhfkit and with plain transformers) with its criteria and per-criterion normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.errors import ModelError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import (
    build_reward_model,
    criteria_of,
    criterion_scores,
    is_reward_model,
    reward_scores,
    saved_criteria,
    set_normalization,
)
from rlhfkit.models.trunk_and_heads import score_head


def _batch(tok) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["the reply is good .", "bad", "a much longer reply that goes on and on ."]
    seqs = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def test_one_forward_pass_equals_separate_models(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    multi = build_reward_model(tiny_model_dir, tok, dtype=torch.float64, criteria=("helpful", "concise")).eval()
    assert criteria_of(multi) == ("helpful", "concise")
    weight = score_head(multi).weight.detach()  # (2, H)
    ids, mask = _batch(tok)
    with torch.no_grad():
        together = criterion_scores(multi, ids, mask, normalized=False)  # (B, 2)
        assert together.shape == (3, 2)
        for c in range(2):
            single = build_reward_model(tiny_model_dir, tok, dtype=torch.float64).eval()
            single.load_state_dict({k: v for k, v in multi.state_dict().items() if not k.startswith("score.")},
                                   strict=False)
            score_head(single).weight.copy_(weight[c:c + 1])
            alone = reward_scores(single, ids, mask, normalized=False)
            torch.testing.assert_close(together[:, c], alone.float(), rtol=0, atol=1e-6)
    # and by hand: the head's row dotted with the trunk's output at the last real token
    with torch.no_grad():
        hidden = multi.transformer(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        last = mask.sum(1) - 1
        by_hand = hidden[torch.arange(3), last] @ weight.T
    torch.testing.assert_close(together, by_hand.float(), rtol=0, atol=1e-6)


def test_per_criterion_normalisation_saves_and_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    multi = build_reward_model(tiny_model_dir, tok, criteria=("helpful", "harmless")).eval()
    set_normalization(multi, [2.0, 0.5], [1.0, -3.0])
    multi.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert is_reward_model(tmp_path) and saved_criteria(tmp_path) == ("helpful", "harmless")
    back = build_reward_model(tmp_path, tok, init_head=False).eval()
    ids, mask = _batch(tok)
    with torch.no_grad():
        raw = criterion_scores(back, ids, mask, normalized=False)
        normed = criterion_scores(back, ids, mask)
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(input_ids=ids,
                                                                                  attention_mask=mask).logits
    torch.testing.assert_close(normed[:, 0], 2.0 * raw[:, 0] + 1.0)
    torch.testing.assert_close(normed[:, 1], 0.5 * raw[:, 1] - 3.0)
    torch.testing.assert_close(plain, raw, rtol=1e-5, atol=1e-5)  # transformers' logits are the raw scores
    with pytest.raises(ModelError, match="scores 2 criteria"):
        reward_scores(back, ids, mask)
    with pytest.raises(ModelError, match="scores helpful, harmless, not concise"):
        build_reward_model(tmp_path, tok, criteria=("concise",))


def test_one_head_model_is_named_overall(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    assert criteria_of(build_reward_model(tiny_model_dir, tok)) == ("overall",)
    assert saved_criteria(tiny_model_dir) is None  # a causal LM is not a reward model
