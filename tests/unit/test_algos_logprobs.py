"""Token log-probs and entropies from logits, at a temperature."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits

F64 = torch.float64


def random_logits(seed, shape=(3, 5, 11), scale=3.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(shape, generator=g, dtype=F64)
    tokens = torch.randint(0, shape[-1], shape[:2], generator=g)
    return logits.to(dtype), tokens


def test_logprobs_hand():
    """logits (0, log 3): softmax (1/4, 3/4), so log pi(1) = log 3/4 and log pi(0) = log 1/4.
    At temperature 2 the logits are (0, log 3 / 2): pi(1) = sqrt3 / (1 + sqrt3)."""
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]], dtype=F64)  # (1, 2, 2)
    tokens = torch.tensor([[1, 0]])
    got = logprobs_from_logits(logits, tokens)
    assert got[0].tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 4)], abs=1e-12)
    hot = logprobs_from_logits(logits, tokens, temperature=2.0)
    s3 = math.sqrt(3)
    assert hot[0].tolist() == pytest.approx([math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))], abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("seed", range(3))
def test_logprobs_against_full_log_softmax(seed, temperature):
    logits, tokens = random_logits(seed)
    full = torch.log_softmax(logits / temperature, dim=-1)  # (B, T, V)
    want = torch.tensor(
        [[full[b, t, tokens[b, t]].item() for t in range(tokens.shape[1])] for b in range(tokens.shape[0])],
        dtype=F64,
    )
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, temperature), want, rtol=0, atol=1e-12)


def test_logprobs_gradient_matches_log_softmax():
    logits, tokens = random_logits(0)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    logprobs_from_logits(a, tokens, 0.7).sum().backward()
    torch.log_softmax(b / 0.7, -1).gather(-1, tokens[..., None]).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_logprobs_gradient_with_weights_repeated_tokens_and_gradcheck():
    """The hand-written backward (1[v = a] - softmax_v, times the upstream gradient) against autograd through
    float64 log_softmax, with a different weight per token and the same token at several positions; and
    torch's numerical gradient check."""
    logits, _ = random_logits(4)  # (3, 5, 11) float64
    tokens = torch.tensor([[2, 2, 2, 0, 10], [1, 1, 3, 3, 3], [7, 0, 7, 0, 7]])
    weights = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    (logprobs_from_logits(a, tokens, 1.3) * weights).sum().backward()
    (torch.log_softmax(b / 1.3, -1).gather(-1, tokens[..., None]).squeeze(-1) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, tokens, 0.7), (logits.clone().requires_grad_(),))


def test_low_precision_gradient_is_the_float32_one_rounded():
    """bf16 logits: the gradient reaching them is the float32 gradient of the upcast values, in bf16."""
    logits, tokens = random_logits(6, dtype=torch.bfloat16)
    weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    a = logits.clone().requires_grad_()
    (logprobs_from_logits(a, tokens, 0.7) * weights).sum().backward()
    b = logits.double().requires_grad_()
    (torch.log_softmax(b / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1) * weights.double()).sum().backward()
    assert a.grad.dtype == torch.bfloat16
    one_ulp = 2**-8 * b.grad.abs().max().item()  # bf16 keeps 8 significant bits
    torch.testing.assert_close(a.grad.double(), b.grad.to(torch.bfloat16).double(), rtol=0, atol=one_ulp)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_upcast(dtype):
    """bf16/fp16 logits give float32 log-probs equal to the float32 computation on the same values
    (to float32 rounding: rtol 1e-6 is ~8 ulp)."""
    logits, tokens = random_logits(1, dtype=dtype)
    got = logprobs_from_logits(logits, tokens, 0.7)
    want = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    ent = entropy_from_logits(logits, 0.7)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, entropy_from_logits(logits.float(), 0.7), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_bytes", [1, 2 * 4 * 5 * 11, 2**30])  # one sequence, two, all three
def test_low_precision_upcast_in_chunks_gives_the_same_numbers(monkeypatch, chunk_bytes):
    """The float32 copy is made a few sequences at a time (a memory bound): any chunk size gives the
    float32 results of the whole batch, for both functions and the fused one."""
    import rlhfkit.algos.logprobs as lp

    logits, tokens = random_logits(3, dtype=torch.bfloat16)  # (3, 5, 11)
    want_logp = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    want_ent = entropy_from_logits(logits.float(), 0.7)
    monkeypatch.setattr(lp, "UPCAST_CHUNK_BYTES", chunk_bytes)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, 0.7), want_logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy_from_logits(logits, 0.7), want_ent, rtol=1e-6, atol=1e-6)
    logp, ent = logprobs_and_entropy(logits, tokens, 0.7)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == (3, 5)
    torch.testing.assert_close(logp, want_logp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent, want_ent, rtol=1e-6, atol=1e-5)


def test_logprobs_bad_arguments():
    logits, tokens = random_logits(0)
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 11\).*masked_fill"):
        logprobs_from_logits(logits, torch.full_like(tokens, 11))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\) = \(3, 5\).*got \(3, 4\)"):
        logprobs_from_logits(logits, tokens[:, :4])
    with pytest.raises(ValueError, match="tokens must hold integer token ids"):
        logprobs_from_logits(logits, tokens.double())
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\)"):
        logprobs_from_logits(logits[0], tokens)
    with pytest.raises(ValueError, match="temperature must be positive"):
        logprobs_from_logits(logits, tokens, temperature=0.0)


def test_entropy_hand():
    """pi = (1/4, 3/4): H = -(1/4 log 1/4 + 3/4 log 3/4) = log 4 - (3/4) log 3."""
    logits = torch.tensor([[[0.0, math.log(3)]]], dtype=F64)
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(4) - 0.75 * math.log(3), abs=1e-12)


@pytest.mark.parametrize("vocab_size", [2, 7, 50257])
def test_entropy_uniform_is_log_v(vocab_size):
    """Uniform logits give log V; GPT-2's V = 50257 gives 10.82491
    (docs/implementation-details.md, "Entropy lies between 0 and log V")."""
    logits = torch.full((1, 2, vocab_size), 0.3, dtype=F64)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((1, 2), math.log(vocab_size), dtype=F64))
    if vocab_size == 50257:
        assert entropy_from_logits(logits)[0, 0].item() == pytest.approx(10.82491, abs=5e-6)


def test_entropy_near_one_hot_is_zero():
    """Logits (100, 0, 0, 0): H = 3 e^-100 (101 + ...) ~ 1e-41, below float64 resolution of 100
    (docs/implementation-details.md, "Entropy lies between 0 and log V")."""
    logits = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]], dtype=F64)
    assert abs(entropy_from_logits(logits).item()) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_entropy_against_minus_sum_p_log_p(seed):
    logits, _ = random_logits(seed)
    for temperature in (1.0, 0.5):
        logp = torch.log_softmax(logits / temperature, -1)
        want = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(entropy_from_logits(logits, temperature), want, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 20))
def test_entropy_bounds_and_temperature(seed, scale):
    """0 <= H <= log V, and H(z / tau) grows with tau (sharper as tau falls)
    (docs/implementation-details.md, "Entropy lies between 0 and log V")."""
    logits, _ = random_logits(seed, shape=(2, 3, 9), scale=scale)
    h = entropy_from_logits(logits)
    assert (h >= -1e-12).all() and (h <= math.log(9) + 1e-12).all()
    cold, warm, hot = (entropy_from_logits(logits, tau) for tau in (0.5, 1.0, 2.0))
    assert (cold <= warm + 1e-12).all() and (warm <= hot + 1e-12).all()


def test_entropy_sign_convention_is_plus_h():
    """The entropy is H = -sum p log p >= 0 (not sum p log p), largest (log V) for uniform logits, so that
    ascending +H moves a peaked distribution towards uniform (docs/math.md, Conventions, "Entropy sign")."""
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], dtype=F64)
    p = [[math.exp(z) / sum(math.exp(v) for v in row) for z in row] for row in logits[0].tolist()]
    want = [-sum(pi * math.log(pi) for pi in row) for row in p]  # float64 by hand
    got = entropy_from_logits(logits)
    assert (got >= 0).all()
    assert got[0].tolist() == pytest.approx(want, abs=1e-12)
    assert got[0, 1].item() == pytest.approx(math.log(4), abs=1e-12) and got[0, 0].item() < math.log(4)

    z = torch.tensor([[[4.0, 0.0, -1.0, 0.5]]], dtype=F64, requires_grad=True)  # peaked on token 0
    distance = [(torch.softmax(z.detach(), -1) - 0.25).abs().max().item()]
    entropies = [entropy_from_logits(z).item()]
    for _ in range(3):
        for _ in range(20):  # gradient ascent on +H
            (grad,) = torch.autograd.grad(entropy_from_logits(z).sum(), z)
            with torch.no_grad():
                z += 0.5 * grad
        distance.append((torch.softmax(z.detach(), -1) - 0.25).abs().max().item())
        entropies.append(entropy_from_logits(z).item())
    # each stretch of ascent raises H and brings every probability closer to 1/4
    assert all(a < b for a, b in zip(entropies, entropies[1:])) and entropies[-1] <= math.log(4) + 1e-12
    assert all(a > b for a, b in zip(distance, distance[1:])) and distance[-1] < 0.1 * distance[0]


def test_entropy_bad_arguments():
    logits, _ = random_logits(0)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\), got shape \(5, 11\)"):
        entropy_from_logits(logits[0])
    with pytest.raises(ValueError, match="temperature must be positive"):
        entropy_from_logits(logits, temperature=-1.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_equal_the_separate_functions(temperature):
    # independent reference: a full float64 log_softmax, -sum p log p
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64) * 2
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    logp, entropy = logprobs_and_entropy(logits, tokens, temperature)
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    torch.testing.assert_close(logp, log_probs.gather(-1, tokens[..., None]).squeeze(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(entropy, -(log_probs.exp() * log_probs).sum(-1), atol=1e-12, rtol=0)


def test_logprobs_and_entropy_bad_arguments():
    with pytest.raises(ValueError, match="tokens must be ids in"):
        logprobs_and_entropy(torch.zeros(1, 2, 4), torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(torch.zeros(1, 2, 4), torch.tensor([[0, 1]]), temperature=0.0)
