"""Token log-probabilities and entropies from a causal LM's logits, at a sampling temperature."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.algos._checks import check_positive, check_rank, value_checks_enabled

_LOW_PRECISION = (torch.float16, torch.bfloat16)
UPCAST_CHUNK_BYTES = 64 * 2**20  # float32 copy of low-precision logits made at a time


def _chunk_rows(logits: torch.Tensor) -> int:
    """Sequences per float32 upcast of (B, T, V) low-precision logits: as many as fit in
    UPCAST_CHUNK_BYTES, at least one (a full-batch copy of a large vocabulary's logits would not fit;
    one sequence at a time is slow for a small vocabulary)."""
    return max(1, UPCAST_CHUNK_BYTES // max(4 * logits.shape[1] * logits.shape[2], 1))


def logprobs_from_logits(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(a_t | s_t) = z_t[a_t] - logsumexp_v z_t[v],  with z = logits / temperature.

    The log-probabilities of the tokens that were sampled, under the same tempered distribution
    that sampled them: rollout, reference and training log-probs all divide by the temperature
    (lm-human-preferences policy.py; docs/implementation-details.md, "Temperature in every
    log-prob"). We divide by exactly `temperature` (N+ and TRL add 1e-7). Gathering one logit and
    subtracting the logsumexp never keeps a full (B, T, V) log_softmax tensor alive.
    float16/bfloat16 logits are upcast to float32 a few sequences at a time (at most 64 MiB; a
    low-precision logsumexp is too coarse for PPO ratios) and the result is float32.

    Args:
      logits: (B, T, V) logits whose row t predicts tokens[:, t] (already shifted by one).
      tokens: (B, T) integer token ids in [0, V). Pad ids outside the vocabulary must be replaced
        first (e.g. `tokens.masked_fill(~mask, 0)`); the range is checked with value checks on
        (`rlhfkit.algos.value_checks`), since reading the ids syncs the device.
      temperature: > 0.

    Returns:
      (B, T) log-probabilities.
    """
    _check_tokens(logits, tokens, temperature)
    if logits.dtype in _LOW_PRECISION:
        rows = _chunk_rows(logits)
        parts = zip(logits.split(rows), tokens.split(rows), strict=True)
        return torch.cat([_token_logprobs(z.float(), a, temperature) for z, a in parts])  # (B, T) float32
    return _token_logprobs(logits, tokens, temperature)  # (B, T)


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits if temperature == 1.0 else logits / temperature  # (..., V)
    return _TokenLogprob.apply(z, tokens.long())  # (...)


class _TokenLogprob(torch.autograd.Function):
    """log pi(a) = z[a] - logsumexp(z), with the gradient in one (..., V) tensor:
    d log pi(a) / d z_v = 1[v = a] - softmax(z)_v.

    The same numbers as autograd through `gather` and `torch.logsumexp`, whose backward builds a zero
    tensor for the gather, an exp, a product and a sum, each a (..., V) pass with its own allocation.
    Forward and backward on a 2-core CPU: (16, 32, 2003) float32 logits 3.4 -> 1.4 ms, (8, 64, 49152)
    152 -> 83 ms. Saves z and logsumexp(z), as `torch.logsumexp` does.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, dim=-1)  # (...)
        ctx.save_for_backward(z, tokens, lse)
        return z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse  # (...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        z, tokens, lse = ctx.saved_tensors
        g = grad.unsqueeze(-1)  # (..., 1)
        dz = (z - lse.unsqueeze(-1)).exp_().mul_(-g)  # -g softmax(z), one (..., V) buffer
        return dz.scatter_add_(-1, tokens.unsqueeze(-1), g), None  # + g at the token


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H(pi(.|s_t)) = -sum_v pi_v log pi_v = logsumexp(z) - sum_v softmax(z)_v z_v,  z = logits / temperature.

    Entropy of each next-token distribution (lm-human-preferences utils/core.py `logits_entropy`;
    OpenRLHF `compute_entropy`); the PPO entropy term H of L = L_CLIP - c1 L_VF + c2 H.
    Sign: one statement of the PPO objective writes the entropy term as sum_x pi(x) log(x), without the minus sign
    and with log x standing for log pi(x). That expression is -H, and adding it with c2 > 0 would
    reward *lower* entropy; we use H = -sum_x pi(x) log pi(x) >= 0, so the bonus rewards higher
    entropy, as the term is meant to. 0 <= H <= log V; float16/bfloat16 logits are upcast to
    float32 a few sequences at a time.

    Args:
      logits: (B, T, V) logits.
      temperature: > 0, the sampling temperature.

    Returns:
      (B, T) entropies in nats.
    """
    check_rank("logits", logits, "B", "T", "V")
    check_positive("temperature", temperature)
    if logits.dtype in _LOW_PRECISION:
        return torch.cat([_entropy(z.float(), temperature) for z in logits.split(_chunk_rows(logits))])  # (B, T)
    return _entropy(logits, temperature)  # (B, T)


def _entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits if temperature == 1.0 else logits / temperature  # (..., V)
    probs = torch.softmax(z, dim=-1)  # (..., V)
    return torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1)  # (...)


def logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(a_t|s_t), H_t) with one shared logsumexp:  logp = z[a] - lse,  H = lse - sum_v exp(z_v - lse) z_v.

    The same values as `logprobs_from_logits` and `entropy_from_logits` (z = logits / temperature),
    computed together so the trainer's forward takes one pass over the (B, T, V) logits for the
    normaliser instead of two. Same checks and precision rules as those two functions.

    Args:
      logits: (B, T, V) logits whose row t predicts tokens[:, t].
      tokens: (B, T) integer token ids in [0, V).
      temperature: > 0.

    Returns:
      ((B, T) log-probabilities, (B, T) entropies in nats).
    """
    _check_tokens(logits, tokens, temperature)
    if logits.dtype in _LOW_PRECISION:  # float32 a few sequences at a time, as in the two functions
        rows = _chunk_rows(logits)
        parts = [_logp_and_entropy(z.float(), a, temperature)
                 for z, a in zip(logits.split(rows), tokens.split(rows), strict=True)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _logp_and_entropy(logits, tokens, temperature)


def _logp_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits if temperature == 1.0 else logits / temperature  # (B, T, V)
    lse = torch.logsumexp(z, dim=-1)  # (B, T)
    logp = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - lse  # (B, T)
    entropy = lse - (torch.exp(z - lse.unsqueeze(-1)) * z).sum(dim=-1)  # (B, T)
    return logp, entropy


def _check_tokens(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> None:
    """Shapes and dtype of the token ids; their range only with value checks on (it reads the ids: a sync)."""
    check_rank("logits", logits, "B", "T", "V")
    check_rank("tokens", tokens, "B", "T")
    check_positive("temperature", temperature)
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens must have shape (B, T) = {tuple(logits.shape[:2])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(tokens.shape)}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if not value_checks_enabled():
        return
    vocab_size = logits.shape[-1]
    low, high = (int(tokens.min()), int(tokens.max())) if tokens.numel() else (0, 0)
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"tokens must be ids in [0, {vocab_size}), got values in [{low}, {high}]; "
            "replace pad ids first, e.g. tokens.masked_fill(~mask, 0)"
        )
