"""Shared-prefix packing: the layout by hand, and packed scores and gradients equal to the padded
layout's in float64, for GPT-2 (its one-row last block, SDPA and eager) and other families."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_other
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig

from rlhfkit.data.tokenize import pad_right
from rlhfkit.models.packing import (
    pack_groups,
    pack_if_smaller,
    packed_length,
    packing_supported,
    shared_prefix_length,
)
from rlhfkit.models.readout import readout_supported
from rlhfkit.models.reward_model import criterion_scores


def test_layout_of_one_pair_by_hand() -> None:
    # prompt [5, 6], chosen suffix [7, 8], rejected suffix [9]
    packed = pack_groups([([5, 6, 7, 8], [5, 6, 9])], [(0, 0), (0, 1)], pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert packed.allowed[0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the rejected token sees the prompt and itself, never the chosen tokens
    ]
    assert packed.row.tolist() == [0, 0] and packed.offset.tolist() == [2, 4] and packed.prefix.tolist() == [2, 2]
    # own positions -> packed positions: the prompt stays, each suffix moves to its offset
    assert packed.index(torch.tensor([3, 2])).tolist() == [3, 4]
    assert packed.index(torch.tensor([1, 0])).tolist() == [1, 0]


def test_padding_rows_attend_to_themselves_and_groups_keep_their_order() -> None:
    groups = [([1, 2, 3], [1, 4]), ([6, 7, 8, 9], [6, 7, 8, 5], [6, 2])]
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)]
    packed = pack_groups(groups, order, pad_id=0)
    # group 0: p=1 -> [1 | 2 3 | 4], 4 tokens; group 1: p=1 ([6, 2] shares only 6) -> 1 + 3 + 3 + 1 = 8
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 0, 0, 0, 0], [6, 7, 8, 9, 7, 8, 5, 2]]
    assert packed.position_ids[1].tolist() == [0, 1, 2, 3, 1, 2, 3, 1]
    assert packed.row.tolist() == [0, 1, 0, 1, 1] and packed.offset.tolist() == [1, 1, 3, 4, 7]
    pad = packed.allowed[0, 4:, :]
    assert pad.int().tolist() == [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1]]


def test_shared_prefix_leaves_every_sequence_a_token() -> None:
    assert shared_prefix_length([[1, 2], [1, 2]]) == 1
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[5], [5, 6]]) == 0
    assert shared_prefix_length([[1, 2, 3], [4, 2, 3]]) == 0
    assert packed_length([[1, 2, 3, 4], [1, 2, 9]]) == 5


def test_pack_if_smaller_keeps_the_padded_layout_when_packing_does_not_pay() -> None:
    pair = ([1, 2, 3, 4], [1, 2, 3, 5])  # packed: 5 tokens against 2 x 4 padded
    assert pack_if_smaller([pair], [(0, 0), (0, 1)], 0, padded_width=4) is not None
    unrelated = ([1, 2, 3, 4], [5, 6, 7, 8])  # no shared prefix: 8 tokens either way
    assert pack_if_smaller([unrelated], [(0, 0), (0, 1)], 0, padded_width=4) is None


def _groups() -> tuple[list[list[list[int]]], list[tuple[int, int]]]:
    """Two pairs and a list of three, prompts of different lengths, one pair with no shared prefix."""
    gen = torch.Generator().manual_seed(3)

    def ids(n: int) -> list[int]:
        return torch.randint(1, 50, (n,), generator=gen).tolist()

    p1, p2 = ids(5), ids(2)
    groups = [[p1 + ids(4), p1 + ids(7)], [ids(6), ids(3)], [p2 + ids(5), p2 + ids(1), p2 + ids(9)]]
    k = max(len(g) for g in groups)
    order = [(g, j) for j in range(k) for g in range(len(groups)) if j < len(groups[g])]
    return groups, order


def _scores_and_grads(model: torch.nn.Module, packed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    groups, order = _groups()
    ids, mask = pad_right([groups[g][j] for g, j in order], pad_id=0)
    layout = pack_groups(groups, order, pad_id=0) if packed else None
    model.zero_grad(set_to_none=True)
    scores = criterion_scores(model, ids, mask, normalized=False, packed=layout)  # (N, 2)
    weights = torch.randn(scores.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (scores * weights).sum().backward()
    return scores.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# Llama, Qwen2 and GPT-NeoX compute parts of a step in float32 whatever the model's dtype (RMSNorm, the
# rotary tables), so the two layouts, which round in a different order there, agree to float32 only.
FLOAT32_PARTS = dict(atol=1e-6, rtol=1e-6)
FLOAT64 = dict(atol=1e-12, rtol=0)
TWO_HEADS = dict(max_position_embeddings=48, num_labels=2)


@pytest.mark.parametrize(("model_of", "tolerance"), [
    pytest.param(lambda: tiny_gpt2("sdpa", n_positions=48, num_labels=2), FLOAT64, id="gpt2-sdpa"),
    pytest.param(lambda: tiny_gpt2("eager", n_positions=48, num_labels=2), FLOAT64, id="gpt2-eager"),
    pytest.param(lambda: tiny_other("llama", **TWO_HEADS), FLOAT32_PARTS, id="llama"),
    pytest.param(lambda: tiny_other("qwen2", **TWO_HEADS), FLOAT32_PARTS, id="qwen2"),
    pytest.param(lambda: tiny_other("gpt_neox", "eager", **TWO_HEADS), FLOAT32_PARTS, id="gpt_neox-eager"),
])
def test_packed_scores_and_gradients_equal_the_padded_ones(model_of, tolerance: dict) -> None:
    model = model_of()
    assert packing_supported(model)
    expected, expected_grads = _scores_and_grads(model, packed=False)
    got, got_grads = _scores_and_grads(model, packed=True)
    torch.testing.assert_close(got, expected, **tolerance)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **tolerance, msg=name)


def test_gpt2_packed_takes_its_one_row_last_block() -> None:
    assert readout_supported(tiny_gpt2())


def test_sliding_windows_and_other_attention_kernels_are_not_packed() -> None:
    assert not packing_supported(tiny_other("mistral"))
    gpt2 = tiny_gpt2()
    gpt2.config._attn_implementation = "flash_attention_2"
    assert not packing_supported(gpt2)


def test_reward_training_packed_and_padded_end_at_the_same_model(tiny_model_dir, rule_pairs_file, rule_eval_file,
                                                                  tmp_path, monkeypatch) -> None:
    """Same batches (no length grouping, which would order them by packed length), same losses and weights."""
    from rlhfkit.models import readout
    from rlhfkit.trainers.reward import train
    from rlhfkit.trainers.reward_config import RewardConfig

    calls: list[int] = []
    original = readout.packed_hidden_at

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("rlhfkit.models.reward_model.packed_hidden_at", counted)
    results = {}
    for share in (True, False):
        out = tmp_path / f"share_{share}"
        cfg = RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file), eval_data=str(rule_eval_file),
                           output_dir=str(out), learning_rate=2e-3, batch_size=16, max_length=96, normalize="none",
                           group_by_length=False, share_prefix=share, seed=0)
        metrics = train(cfg)
        weights = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
        results[share] = (metrics, weights)
        assert bool(calls) == share  # the packed forward ran in the packed run only
        calls.clear()
    (packed, packed_w), (padded, padded_w) = results[True], results[False]
    assert abs(packed["eval/loss"] - padded["eval/loss"]) < 1e-4
    assert packed["eval/accuracy"] == padded["eval/accuracy"]
    for name, tensor in padded_w.items():
        torch.testing.assert_close(packed_w[name], tensor, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("model_of", "tolerance"), [
    pytest.param(lambda: _gpt2_lm("sdpa"), FLOAT64, id="gpt2-sdpa"),
    pytest.param(lambda: _gpt2_lm("eager"), FLOAT64, id="gpt2-eager"),
    pytest.param(lambda: _llama_lm(), FLOAT32_PARTS, id="llama"),
])
def test_packed_response_logprobs_and_gradients_equal_the_padded_ones(model_of, tolerance: dict) -> None:
    """DPO's layout: left-padded prompts (two lengths), right-padded responses, [chosen; rejected]."""
    from rlhfkit.data.tokenize import pad_left
    from rlhfkit.models.policy import token_logprobs

    model = model_of()
    gen = torch.Generator().manual_seed(5)

    def ids(n: int) -> list[int]:
        return torch.randint(1, 50, (n,), generator=gen).tolist()

    prompts, chosen, rejected = [ids(4), ids(2)], [ids(3), ids(6)], [ids(5), ids(1)]
    prompt_ids, prompt_mask = pad_left(prompts + prompts, 0)
    response_ids, response_mask = pad_right(chosen + rejected, 0)
    packed = pack_groups([(p + c, p + r) for p, c, r in zip(prompts, chosen, rejected)],
                         [(0, 0), (1, 0), (0, 1), (1, 1)], pad_id=0)
    results = []
    for layout in (None, packed):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, prompt_ids, prompt_mask, response_ids, packed=layout).logp
        logp = logp.masked_fill(response_mask == 0, 0.0)  # slots past a response's end are the caller's to mask
        logp.sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expected, **tolerance)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **tolerance, msg=name)


def _gpt2_lm(attn: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=48, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg).double().eval()


def _llama_lm() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=48, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).double().eval()
