"""What the RL loops log, and under which key: the one place where metric keys are named.

The loss functions return typed records (`PPOLoss`, `PolicyLossStats`, ...); the functions here
turn them into `StepStats` entries. A loss term arrives already divided by the global minibatch's
count, so it is added as it is; a token-mean diagnostic is weighted by `share`, this
micro-batch's part of the minibatch's tokens, so the sum over micro-batches and processes is the
mean over the whole minibatch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from rlhfkit.algos.ppo import PolicyLossStats, PPOLoss, ValueLossStats
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.scoring import call_text_fn
from rlhfkit.tracking.diagnostics import text_metrics
from rlhfkit.trainers.optim_step import StepStats


def record_policy_stats(stats: StepStats, s: PolicyLossStats, share: torch.Tensor, first_step: bool) -> None:
    stats.add("policy/clipfrac", s.clipfrac * share)
    stats.add("policy/approx_kl", s.approx_kl * share)
    stats.add("policy/approx_kl_k3", s.approx_kl_k3 * share)
    stats.add("policy/ratio_mean", s.ratio_mean * share)
    stats.extreme("policy/ratio_max", s.ratio_max, largest=True)
    stats.extreme("policy/ratio_min", s.ratio_min, largest=False)
    if first_step:
        # Before any update the ratio is exactly 1 on the first minibatch
        # (docs/implementation-details.md, "The first minibatch has ratio exactly 1").
        stats.add("policy/clipfrac_first", s.clipfrac * share)
        stats.add("policy/approx_kl_first", s.approx_kl * share)


def record_value_stats(stats: StepStats, s: ValueLossStats, share: torch.Tensor) -> None:
    stats.add("value/clipfrac", s.clipfrac * share)
    stats.add("value/mean", s.values_mean * share)


def record_ppo_loss(stats: StepStats, terms: PPOLoss, share: torch.Tensor, first_step: bool) -> None:
    """Every term and diagnostic of one micro-batch's PPO loss."""
    stats.add("loss/total", terms.total.detach())
    stats.add("loss/policy", terms.policy)
    stats.add("loss/value", terms.value)
    if terms.entropy is not None:
        stats.add("policy/entropy_bonus", terms.entropy)
    record_policy_stats(stats, terms.policy_stats, share, first_step)
    record_value_stats(stats, terms.value_stats, share)


def record_pg_loss(stats: StepStats, total: torch.Tensor, policy: torch.Tensor, kl: torch.Tensor | None = None,
                   entropy: torch.Tensor | None = None, value: torch.Tensor | None = None) -> None:
    """The terms of one micro-batch's policy-gradient loss (REINFORCE, RLOO, GRPO)."""
    stats.add("loss/total", total.detach())
    stats.add("loss/policy", policy.detach())
    for key, term in (("loss/kl", kl), ("policy/entropy_bonus", entropy), ("loss/value", value)):
        if term is not None:
            stats.add(key, term.detach())


def record_grad_norm(stats: StepStats, grad_norm: torch.Tensor | None, world: int) -> None:
    """The (synchronised, so equal on every process) gradient norm of one step."""
    if grad_norm is not None:
        stats.add("policy/grad_norm", torch.as_tensor(grad_norm) / world)


def gold_metrics(prefix: str, prompts: list[str], responses: list[str], ended: list[bool], gold_fn: Any = None,
                 gold_fns: Mapping[str, Any] | None = None, mean_key: str = "mean") -> dict[str, float]:
    """The gold judges' mean scores: `<prefix>/<mean_key>` for --gold-fn, `<prefix>/<criterion>` for each of
    --gold-fns."""
    judges = ([(mean_key, gold_fn)] if gold_fn is not None else []) + list((gold_fns or {}).items())
    out = {}
    for name, fn in judges:
        scores = call_text_fn(fn, prompts, responses, ended, what="gold function")
        out[f"{prefix}/{name}"] = sum(scores) / len(scores)
    return out


def rollout_metrics(rollout: Rollout, kl: torch.Tensor, beta: float, gold_fn: Any = None,
                    gold_fns: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Reward, KL and response statistics of one rollout batch (and the gold judges' scores, if any)."""
    mask = rollout.mask
    seq_kl = (kl * mask).sum(-1)  # (B,)
    lengths = mask.sum(-1).float()
    gold = gold_metrics("gold", rollout.prompts, rollout.responses, rollout.ended.tolist(), gold_fn, gold_fns)
    return {
        **gold,
        "reward/mean": rollout.scores.mean().item(),
        "reward/std": rollout.scores.std(unbiased=False).item(),
        "reward/total": (rollout.scores - beta * seq_kl).mean().item(),
        "kl/ref": seq_kl.mean().item(),
        # entropy of the policy that sampled the batch, per response token
        "policy/entropy": (rollout.entropy * mask).sum().item() / max(mask.sum().item(), 1),
        "kl/coef": beta,
        "response/length": lengths.mean().item(),
        "response/eos_share": rollout.ended.float().mean().item(),
        **text_metrics(rollout.responses),
    }


def sample_rows(iteration: int, rollout: Rollout, n: int = 4) -> str:
    """A few (prompt, response, score) examples as JSON lines for samples.jsonl."""
    return "".join(
        json.dumps({"step": iteration, "prompt": rollout.prompts[i], "response": rollout.responses[i],
                    "score": round(rollout.scores[i].item(), 4)}, ensure_ascii=False) + "\n"
        for i in range(min(n, len(rollout)))
    )
