"""REINFORCE with a baseline (Williams 1992), RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024).

A response is one trajectory tau with return R(tau) = score - beta * KL (or the plain score
when the KL enters the loss, as GRPO does). The estimator is

    grad J(theta) = E[ sum_t grad log pi(a_t|s_t) (R(tau) - b) ]

with the baseline b chosen by setting: none, a moving mean of R, the value V(s_t), the mean
of the other k-1 samples of the same prompt (RLOO), or group normalisation (GRPO). One iteration:
  1. rollout: k samples for each of B/k prompts; recompute log pi_old and log pi_ref;
  2. returns R per episode;
  3. advantages R - b;
  4. updates: -logp * A (on-policy REINFORCE) or the PPO clipped ratio on the same advantages;
  5. metrics, samples, held-out evaluation, checkpoint.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos._checks import value_checks, value_checks_enabled
from rlhfkit.algos.kl import KL_ESTIMATORS, kl_k3
from rlhfkit.algos.masked import aggregate, explained_variance
from rlhfkit.algos.pg import (
    baseline_advantages,
    grpo_advantages,
    moving_mean_update,
    reinforce_loss,
    rloo_advantages,
)
from rlhfkit.algos.ppo import entropy_bonus, ppo_policy_loss, ppo_value_loss, sequence_ppo_policy_loss
from rlhfkit.models.kernels import autocast
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.gather import IterationPlan
from rlhfkit.tracking.console import progress_bar
from rlhfkit.trainers.optim_step import StepStats
from rlhfkit.trainers.rl_config import ReinforceConfig
from rlhfkit.trainers.rl_metrics import record_pg_loss, record_policy_stats, rollout_metrics
from rlhfkit.trainers.rl_run import (
    RewardFn,
    RLRun,
    build_rl,
    end_iteration,
    end_run,
    evaluate_start,
    policy_updates,
)


def episode_returns(cfg: ReinforceConfig, scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """Step 2: R(tau) per episode, with the KL guard in the reward unless it goes into the loss."""
    if cfg.kl_in == "reward":
        return scores - beta * (kl * mask).sum(-1)  # (B,)
    return scores


def token_returns(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T): every response token's return-to-go is the episode return R (one reward at the end, gamma = 1)."""
    return torch.where(mask, returns[:, None], 0.0)


def advantages_for(cfg: ReinforceConfig, returns: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                   baseline_mean: float | None) -> torch.Tensor:
    """Step 3: A = R - b for the configured baseline; (B,) or (B, T) for the value baseline."""
    k = cfg.samples_per_prompt
    if cfg.baseline == "rloo":
        return rloo_advantages(returns, k)
    if cfg.baseline == "grpo":
        return grpo_advantages(returns, k)
    if cfg.baseline == "moving_mean":
        return baseline_advantages(returns, 0.0 if baseline_mean is None else baseline_mean)
    if cfg.baseline == "value":
        # The return-to-go of every token is R (reward at the end, gamma = 1), and b(s_t) = V(s_t).
        return baseline_advantages(token_returns(returns, mask), values.masked_fill(~mask, 0.0))
    return returns


def pg_micro_loss(run: RLRun, rollout: Rollout, part: torch.Tensor, denominator: torch.Tensor, tokens: torch.Tensor,
                 stats: StepStats, first_step: bool, beta: float) -> torch.Tensor:
    """One micro-batch's share of the minibatch's policy-gradient loss (divided by the global count)."""
    cfg, acc = run.cfg, run.accelerator
    with_values = cfg.baseline == "value"
    mb = rollout.index(part)
    share = mb.mask.sum() / tokens
    with autocast(acc, mb.prompt_ids.shape[1] + mb.response_ids.shape[1]):
        out = run.actor(mb.prompt_ids, mb.prompt_mask, mb.response_ids, cfg.temperature,
                        with_entropy=cfg.ent_coef > 0, with_values=with_values)
    logp = out.logp.float()
    if cfg.policy_loss == "reinforce":
        pg_loss = reinforce_loss(logp, mb.mask, mb.advantages, mode=cfg.loss_reduction, denominator=denominator)
    elif cfg.policy_loss == "clipped_sequence":  # one ratio per reply (TRL's RLOO); denominator = sequences
        pg_loss, pg = sequence_ppo_policy_loss(logp, mb.old_logp, mb.advantages, mb.mask, cfg.clip_eps,
                                               denominator=denominator)
        record_policy_stats(stats, pg, share, first_step)
    else:
        pg_loss, pg = ppo_policy_loss(logp, mb.old_logp, mb.advantages, mb.mask, cfg.clip_eps,
                                      mode=cfg.loss_reduction, denominator=denominator)
        record_policy_stats(stats, pg, share, first_step)
    loss, kl_term, entropy, vf_loss = pg_loss, None, None, None
    if cfg.kl_in == "loss" and beta > 0:
        # GRPO: beta * k3(pi_theta || pi_ref) per token, inside the loss (Shao et al. 2024, eq. 3-4;
        # docs/implementation-details.md, "KL in the reward or in the loss").
        kl_term = aggregate(kl_k3(logp, mb.ref_logp, mb.mask), mb.mask, mode=cfg.loss_reduction,
                            denominator=denominator)
        loss = loss + beta * kl_term
    if cfg.ent_coef:
        entropy = entropy_bonus(out.entropy.float(), mb.mask, mode=cfg.loss_reduction, denominator=denominator)
        loss = loss - cfg.ent_coef * entropy
    if with_values:
        vf_loss, _ = ppo_value_loss(out.values, mb.old_values, mb.returns, mb.mask, None,
                                    mode=cfg.loss_reduction, denominator=denominator)
        loss = loss + cfg.vf_coef * vf_loss
    record_pg_loss(stats, loss, pg_loss, kl_term, entropy, vf_loss)
    return loss


def reinforce_update(run: RLRun, rollout: Rollout, plan: IterationPlan, beta: float) -> dict[str, float]:
    """Step 4: the policy-gradient updates; returns the mean of each statistic over the steps."""
    return policy_updates(run, rollout, plan, partial(pg_micro_loss, beta=beta))


def train(cfg: ReinforceConfig, reward_fn: RewardFn | None = None,
          gold_fn: RewardFn | None = None, gold_fns: dict[str, RewardFn] | None = None) -> list[dict[str, Any]]:
    """Run REINFORCE / RLOO / GRPO as configured; returns the per-iteration metrics."""
    steps = cfg.update_epochs * cfg.num_minibatches
    run = build_rl(cfg, with_critic=cfg.baseline == "value", steps_per_iteration=steps,
                   reward_fn=reward_fn, gold_fn=gold_fn, gold_fns=gold_fns)
    batch, k = cfg.rollout_batch_size, cfg.samples_per_prompt
    baseline_mean = (run.extra_state or {}).get("baseline_mean")
    history = []
    with progress_bar(cfg.iterations, f"reinforce ({cfg.baseline})", keys=("reward", "kl"), enabled=run.main) as bar:
        bar.update(run.start_iteration)
        for it in range(run.start_iteration, cfg.iterations):
            t_iter = time.perf_counter()
            # The algos' value checks read tensors (a device sync): on for the run's first iteration only.
            with value_checks(it == run.start_iteration or value_checks_enabled()):
                # 1. Rollout: k consecutive samples of each prompt (the groups RLOO and GRPO compare).
                indices = [i for i in run.prompts.next_indices(batch // k) for _ in range(k)]
                rollout, plan, times = run.worker.collect(run.prompts, indices, cfg.seed, it, cfg.update_epochs,
                                                          cfg.num_minibatches, with_values=cfg.baseline == "value")
                evaluate_start(run)  # with several criteria: after their normalisation is frozen on this rollout
                # 2-3. Returns and advantages.
                beta = run.kl_ctl.value
                kl = KL_ESTIMATORS[cfg.kl_estimator](rollout.old_logp, rollout.ref_logp, rollout.mask)
                returns = episode_returns(cfg, rollout.scores, kl, rollout.mask, beta)
                rollout.advantages = advantages_for(cfg, returns, rollout.old_values, rollout.mask, baseline_mean)
                if cfg.baseline == "value":
                    rollout.returns = token_returns(returns, rollout.mask)
                # 4. Updates.
                t_train = time.perf_counter()
                update_stats = reinforce_update(run, rollout, plan, beta)
                t_train = time.perf_counter() - t_train
            if cfg.baseline == "moving_mean":
                baseline_mean = float(moving_mean_update(baseline_mean, returns.mean().item(), cfg.baseline_decay))
            # 5. Metrics, samples, evaluation, checkpoint.
            metrics = {**update_stats, **rollout_metrics(rollout, kl, beta, run.gold_fn, run.gold_fns)}
            run.kl_ctl.update(metrics["kl/ref"], batch)
            metrics["reward/return_mean"] = returns.mean().item()
            if cfg.baseline == "value":
                metrics["value/explained_variance"] = float(
                    explained_variance(rollout.old_values, rollout.returns, rollout.mask))
            if baseline_mean is not None:
                metrics["baseline/moving_mean"] = baseline_mean
            metrics.update(times, **{"time/training": t_train, "time/iteration": time.perf_counter() - t_iter})
            history.append(end_iteration(run, it, metrics, rollout, {"baseline_mean": baseline_mean}))
            bar.update(1, reward=metrics["reward/mean"], kl=metrics["kl/ref"])
            if run.stopped:  # an alarm with --on-alarm stop
                break
    end_run(run, history, f"reinforce ({cfg.baseline})", {"baseline_mean": baseline_mean})
    return history


def run(cfg: ReinforceConfig) -> Path:
    """CLI entry."""
    train(cfg)
    return Path(cfg.output_dir)
