"""The one-row last block gives the full forward's hidden state and gradients, in float64; GPT-2 takes
it, every other family (Llama, Qwen2, Mistral, GPT-NeoX) the plain full forward."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_other
from transformers import GPT2Config

from rlhfkit.models import readout
from rlhfkit.models.loading import position_ids_from_mask
from rlhfkit.models.readout import hidden_at, readout_supported
from rlhfkit.models.reward_model import last_token_index
from rlhfkit.models.trunk_and_heads import trunk


def _batch(padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 4, 12, 1, 7]
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if padding == "right" else slice(12 - n, 12)
        ids[row, cols] = torch.randint(1, 50, (n,), generator=gen)
        mask[row, cols] = 1
    # Padding positions hold random ids: they must not matter either way.
    return ids.masked_fill(mask == 0, 7), mask


def _full(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = trunk(model)(input_ids=ids, attention_mask=mask,
                          position_ids=position_ids_from_mask(mask)).last_hidden_state
    return hidden[torch.arange(ids.shape[0]), last_token_index(mask)]


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("inverse_layer_scale", [False, True])
def test_matches_the_full_forward_and_its_gradients(padding: str, inverse_layer_scale: bool) -> None:
    model = tiny_gpt2(scale_attn_by_inverse_layer_idx=inverse_layer_scale)
    assert readout_supported(model)
    ids, mask = _batch(padding)
    weights = torch.randn(5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    expected = _full(model, ids, mask)
    (expected * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    got = hidden_at(model, ids, mask, last_token_index(mask))
    (got * weights).sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    got_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-12, rtol=0, msg=name)


def test_any_query_position_not_only_the_last() -> None:
    model = tiny_gpt2()
    ids, mask = _batch("right")
    index = torch.tensor([3, 0, 11, 0, 6])
    hidden = trunk(model)(input_ids=ids, attention_mask=mask,
                          position_ids=position_ids_from_mask(mask)).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(hidden_at(model, ids, mask, index), hidden[torch.arange(5), index],
                                   atol=1e-12, rtol=0)


def test_the_trunk_is_whole_again_afterwards_even_after_an_error() -> None:
    model = tiny_gpt2()
    body = trunk(model)
    blocks, norm = body.h, body.ln_f
    ids, mask = _batch("right")
    with pytest.raises(IndexError):
        hidden_at(model, ids.clamp_max(10_000) + 10_000, mask, last_token_index(mask))  # ids outside the vocab
    assert body.h is blocks and len(body.h) == 3 and body.ln_f is norm


@pytest.fixture
def fast_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the one-row last block."""
    calls: list[int] = []
    original = readout.last_block_at

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(readout, "last_block_at", counted)
    return calls


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gpt2_takes_the_fast_path_and_it_agrees_with_the_plain_forward(attn: str, fast_path_calls) -> None:
    model = tiny_gpt2(attn_implementation=attn)
    assert readout_supported(model)
    for padding in ("left", "right"):
        ids, mask = _batch(padding)
        with torch.no_grad():
            torch.testing.assert_close(hidden_at(model, ids, mask, last_token_index(mask)), _full(model, ids, mask),
                                       atol=1e-12, rtol=0)
    assert len(fast_path_calls) == 2


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt_neox"])
def test_other_architectures_take_the_full_forward(arch: str, fast_path_calls) -> None:
    model = tiny_other(arch)
    assert not readout_supported(model)
    for padding in ("left", "right"):
        ids, mask = _batch(padding)
        with torch.no_grad():
            torch.testing.assert_close(hidden_at(model, ids, mask, last_token_index(mask)), _full(model, ids, mask),
                                       atol=1e-12, rtol=0)
    assert not fast_path_calls


def test_gpt2_variants_the_fast_path_does_not_know_take_the_full_forward() -> None:
    assert not readout_supported(tiny_gpt2(n_layer=1))
    assert not readout_supported(tiny_gpt2(reorder_and_upcast_attn=True))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("inverse_layer_scale", [False, True])
def test_policy_states_from_the_prompts_last_token_match_the_full_forward(attn: str, inverse_layer_scale: bool
                                                                          ) -> None:
    """The policy forward (response_hidden) runs GPT-2's last block on the response states only:
    log-probs and gradients as the plain causal LM forward's, with left-padded prompts."""
    from transformers import GPT2LMHeadModel

    from rlhfkit.models.policy import token_logprobs

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, scale_attn_by_inverse_layer_idx=inverse_layer_scale)
    cfg._attn_implementation = attn
    model = GPT2LMHeadModel(cfg).double().eval()
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, 50, (3, 4), generator=gen)
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    response = torch.randint(1, 50, (3, 6), generator=gen)
    ids, mask = torch.cat([prompts, response], 1), torch.cat([prompt_mask, torch.ones_like(response)], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    expected = logits[:, 3:-1].log_softmax(-1).gather(-1, response[..., None])[..., 0]  # (B, T)
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    got = token_logprobs(model, prompts, prompt_mask, response).logp
    got.sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-12, rtol=0, msg=name)
