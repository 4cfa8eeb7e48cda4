"""Collect one Rollout: sample responses, get old log-probs and values, score the episodes.

Where the old log-probs come from, `old_logprobs` (docs/implementation-details.md, "Old log-probs:
recomputed or kept from sampling"):
- "forward" (default): recomputed with the trainer's own forward (dropout off, logits / T), in
  the same row groups as the first epoch's minibatches: the first minibatch then sees ratio == 1
  exactly, bit for bit (docs/implementation-details.md, "The first minibatch has ratio exactly
  1"). One extra no-grad forward of the policy per iteration.
- "sampling": kept from the sampling loop (as TRL's PPO does), with the shared value head's
  values on the same hidden states: no extra forward. The KV-cache forward rounds differently
  from the full one, so the first ratio is 1 only to float precision (about 1e-6 in float32,
  more under bf16 autocast).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.models.policy import ActorCritic
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.sampling import SamplingSettings, sample_in_chunks
from rlhfkit.rollout.scoring import Scorer

ReferenceFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decode_responses(tokenizer: Any, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response texts up to (not including) the first EOS."""
    return [
        tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
        for ids, m in zip(response_ids, mask)
    ]


@torch.no_grad()
def collect_rollout(
    actor: ActorCritic,
    reference: ReferenceFn,
    scorer: Scorer,
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_texts: Sequence[str],
    sampling: SamplingSettings,
    seeds: list[int],
    forward_chunks: list[torch.Tensor],
    with_values: bool = True,
    missing_eos_penalty: float = 0.0,
    old_logprobs: str = "forward",
    generation_batch_size: int = 0,
) -> tuple[Rollout, dict[str, float]]:
    """One batch of episodes and the seconds spent generating and scoring them."""
    if old_logprobs not in ("forward", "sampling"):
        raise ValueError(f"old_logprobs must be 'forward' or 'sampling', got {old_logprobs!r}")
    from_sampling = old_logprobs == "sampling"
    t0 = time.perf_counter()
    samples = sample_in_chunks(actor.policy, prompt_ids, prompt_mask, sampling, stop_token_ids(tokenizer),
                               tokenizer.pad_token_id, seeds, generation_batch_size, with_logprobs=from_sampling,
                               value_head=actor.value_head if from_sampling and with_values else None)
    t_gen = time.perf_counter() - t0

    t0 = time.perf_counter()
    if from_sampling:
        logp, entropy, values = samples.logp, samples.entropy, samples.values
        if with_values and values is None:  # a separate critic: its own forward, the policy's is not needed
            values = torch.zeros(samples.response_ids.shape, device=prompt_ids.device)
            for rows in forward_chunks:
                values[rows] = actor.critic_values(prompt_ids[rows], prompt_mask[rows], samples.response_ids[rows])
    else:
        shape, device = samples.response_ids.shape, prompt_ids.device  # (B, T), where the models run
        logp, entropy = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        values = torch.zeros(shape, device=device) if with_values else None
        for rows in forward_chunks:
            out = actor(prompt_ids[rows], prompt_mask[rows], samples.response_ids[rows], sampling.temperature,
                        with_entropy=True, with_values=with_values)
            logp[rows], entropy[rows] = out.logp.float(), out.entropy.float()
            if with_values:
                values[rows] = out.values.float()
    ref_logp = reference(prompt_ids, prompt_mask, samples.response_ids).float()
    responses = decode_responses(tokenizer, samples.response_ids, samples.response_mask)
    scores = scorer(prompt_ids, prompt_mask, samples.response_ids, samples.response_mask, samples.ended,
                    prompt_texts, responses).float().to(prompt_ids.device)  # a Python function scores on the CPU
    if missing_eos_penalty:
        # Responses that never stop lose a fixed amount (TRL's missing_eos_penalty;
        # docs/implementation-details.md, "Missing-EOS penalty").
        scores = scores - missing_eos_penalty * (~samples.ended).float()
    t_score = time.perf_counter() - t0

    rollout = Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=samples.response_ids, mask=samples.response_mask,
        ended=samples.ended, old_logp=logp, ref_logp=ref_logp, scores=scores, old_values=values, entropy=entropy,
        prompts=list(prompt_texts), responses=responses,
    )
    return rollout, {"time/generation": t_gen, "time/scoring": t_score}
