"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Stiennon et al. 2020).

The policy is the LM: state s_t = prompt + response[:t], action a_t = the next token. One
iteration:
  1. rollout: sample responses to a batch of prompts; recompute log pi_old, V_old and log pi_ref;
  2. rewards: the reward model's score at the last response token, minus beta * KL per token;
  3. advantages: A = Q - V estimated with GAE(gamma, lambda), whitened over response tokens;
     value targets R_t = A_t + V_t;
  4. update_epochs x num_minibatches steps on loss = -(L_CLIP - c1 L_VF + c2 H);
  5. KL controller, metrics, samples, held-out evaluation, checkpoint.
Every number optimised comes from rlhfkit.algos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos._checks import value_checks, value_checks_enabled
from rlhfkit.algos.advantages import gae
from rlhfkit.algos.kl import KL_ESTIMATORS, shaped_rewards
from rlhfkit.algos.masked import explained_variance, masked_whiten
from rlhfkit.algos.ppo import ppo_loss
from rlhfkit.models.kernels import autocast
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.gather import IterationPlan
from rlhfkit.tracking.console import progress_bar
from rlhfkit.trainers.optim_step import StepStats
from rlhfkit.trainers.rl_config import PPOConfig
from rlhfkit.trainers.rl_metrics import record_ppo_loss, rollout_metrics
from rlhfkit.trainers.rl_run import (
    RewardFn,
    RLRun,
    build_rl,
    end_iteration,
    end_run,
    evaluate_start,
    policy_updates,
)


def ppo_micro_loss(run: RLRun, rollout: Rollout, part: torch.Tensor, denominator: torch.Tensor, tokens: torch.Tensor,
                  stats: StepStats, first_step: bool) -> torch.Tensor:
    """One micro-batch's share of the minibatch's PPO loss (divided by the global count)."""
    cfg, acc = run.cfg, run.accelerator
    mb = rollout.index(part)
    # The entropy needs a gradient only for a bonus; the logged one comes from the rollout.
    with autocast(acc, mb.prompt_ids.shape[1] + mb.response_ids.shape[1]):
        out = run.actor(mb.prompt_ids, mb.prompt_mask, mb.response_ids, cfg.temperature,
                        with_entropy=cfg.ent_coef > 0)
    terms = ppo_loss(
        out.logp.float(), mb.old_logp, mb.advantages, out.values, mb.old_values, mb.returns,
        None if out.entropy is None else out.entropy.float(), mb.mask, clip_eps=cfg.clip_eps,
        clip_eps_value=cfg.clip_eps_value or None, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
        mode=cfg.loss_reduction, denominator=denominator,
    )
    record_ppo_loss(stats, terms, mb.mask.sum() / tokens, first_step)
    return terms.total


def ppo_update(run: RLRun, rollout: Rollout, plan: IterationPlan) -> dict[str, float]:
    """Step 4: epochs x minibatches of PPO updates, stopped early once approx KL > 1.5 x target_kl."""
    cfg, acc = run.cfg, run.accelerator

    def too_far(step: dict[str, torch.Tensor]) -> bool:
        return bool(cfg.target_kl) and _global(acc, step["policy/approx_kl"]) > 1.5 * cfg.target_kl

    return policy_updates(run, rollout, plan, ppo_micro_loss, stop=too_far)


def _global(acc: Any, contribution: torch.Tensor) -> float:
    """A statistic's value over the whole minibatch: its contributions summed over processes."""
    value = contribution.to(acc.device).reshape(1)
    return float(acc.reduce(value, reduction="sum") if acc.num_processes > 1 else value)


def train(cfg: PPOConfig, reward_fn: RewardFn | None = None,
          gold_fn: RewardFn | None = None, gold_fns: dict[str, RewardFn] | None = None) -> list[dict[str, Any]]:
    """Run PPO as configured; returns the per-iteration metrics."""
    steps = cfg.update_epochs * cfg.num_minibatches
    run = build_rl(cfg, with_critic=True, separate_critic=cfg.critic == "separate", steps_per_iteration=steps,
                   reward_fn=reward_fn, gold_fn=gold_fn, gold_fns=gold_fns)
    batch = cfg.rollout_batch_size
    history = []
    with progress_bar(cfg.iterations, "ppo", keys=("reward", "kl"), enabled=run.main) as bar:
        bar.update(run.start_iteration)
        for it in range(run.start_iteration, cfg.iterations):
            t_iter = time.perf_counter()
            # The algos' value checks read tensors (a device sync): on for the run's first iteration only.
            with value_checks(it == run.start_iteration or value_checks_enabled()):
                # 1. Rollout.
                rollout, plan, times = run.worker.collect(run.prompts, run.prompts.next_indices(batch), cfg.seed, it,
                                                          cfg.update_epochs, cfg.num_minibatches, with_values=True)
                evaluate_start(run)  # with several criteria: after their normalisation is frozen on this rollout
                # 2. Rewards: score at the last response token minus beta * KL per token.
                beta = run.kl_ctl.value
                kl = KL_ESTIMATORS[cfg.kl_estimator](rollout.old_logp, rollout.ref_logp, rollout.mask)  # (B, T)
                rewards = shaped_rewards(rollout.scores, kl, rollout.mask, beta)
                if cfg.whiten_rewards:
                    rewards = masked_whiten(rewards, rollout.mask, shift_mean=False)
                # 3. Advantages A = Q - V by GAE, whitened; returns are the value targets.
                advantages, returns = gae(rewards, rollout.old_values, rollout.mask, gamma=cfg.gamma, lam=cfg.lam)
                rollout.returns = returns
                rollout.advantages = masked_whiten(advantages, rollout.mask)
                # 4. PPO epochs over shuffled minibatches.
                t_train = time.perf_counter()
                update_stats = ppo_update(run, rollout, plan)
                t_train = time.perf_counter() - t_train
            # 5. KL controller, metrics, samples, evaluation, checkpoint.
            metrics = {**update_stats, **rollout_metrics(rollout, kl, beta, run.gold_fn, run.gold_fns)}
            run.kl_ctl.update(metrics["kl/ref"], batch)
            metrics["value/explained_variance"] = float(explained_variance(rollout.old_values, returns, rollout.mask))
            metrics.update(times, **{"time/training": t_train, "time/iteration": time.perf_counter() - t_iter})
            history.append(end_iteration(run, it, metrics, rollout))
            bar.update(1, reward=metrics["reward/mean"], kl=metrics["kl/ref"])
            if run.stopped:  # an alarm with --on-alarm stop
                break
    end_run(run, history, "ppo")
    return history


def run(cfg: PPOConfig) -> Path:
    """CLI entry."""
    train(cfg)
    return Path(cfg.output_dir)
