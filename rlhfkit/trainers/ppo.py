"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Stiennon et al. 2020).

The policy is the LM: state s_t = prompt + response[:t], action a_t = the next token. One
iteration:
  1. rollout: sample responses to a batch of prompts; recompute log pi_old, V and log pi_ref;
  2. rewards: the reward model's score at the last response token, minus beta * KL per token;
  3. advantages: A = Q - V estimated with GAE(gamma, lambda), whitened over response tokens;
     value targets R_t = A_t + V_t;
  4. update_epochs x num_minibatches steps on loss = -(L_CLIP - c1 L_VF + c2 H);
  5. KL controller, metrics, samples, checkpoint.
Every number optimised comes from rlhfkit.algos.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos.advantages import gae
from rlhfkit.algos.kl import KL_ESTIMATORS, shaped_rewards
from rlhfkit.algos.masked import explained_variance, masked_whiten
from rlhfkit.algos.ppo import ppo_loss
from rlhfkit.rollout.batch import Rollout
from rlhfkit.tracking.console import progress_bar
from rlhfkit.trainers.rl_common import (
    RewardFn,
    RLRun,
    build_rl,
    end_iteration,
    end_run,
    mean_across_processes,
    rollout_metrics,
    rollout_step,
)
from rlhfkit.trainers.rl_config import PPOConfig


def ppo_update(run: RLRun, rollout: Rollout, minibatches: list[list[torch.Tensor]]) -> dict[str, float]:
    """Step 4: epochs x minibatches of PPO updates; returns the mean of each statistic."""
    cfg, acc = run.cfg, run.accelerator
    stats: dict[str, list[float]] = defaultdict(list)
    for epoch in minibatches:
        for rows in epoch:
            mb = rollout.index(rows)
            # The entropy needs a gradient only for a bonus; the logged one comes from the rollout.
            with acc.autocast():
                out = run.actor(mb.prompt_ids, mb.prompt_mask, mb.response_ids, cfg.temperature,
                                with_entropy=cfg.ent_coef > 0)
            loss, step_stats = ppo_loss(
                out.logp.float(), mb.logp, mb.advantages, out.values, mb.values, mb.returns,
                None if out.entropy is None else out.entropy.float(),
                mb.mask, clip_eps=cfg.clip_eps, clip_eps_value=cfg.clip_eps_value or None, vf_coef=cfg.vf_coef,
                ent_coef=cfg.ent_coef, mode=cfg.loss_reduction,
            )
            acc.backward(loss)
            if cfg.max_grad_norm > 0:
                stats["policy/grad_norm"].append(float(acc.clip_grad_norm_(run.actor.parameters(), cfg.max_grad_norm)))
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            for k, v in step_stats.items():
                stats["policy/entropy_bonus" if k == "policy/entropy" else k].append(float(v))
            if len(stats["loss/total"]) == 1:
                # Sanity check S1: before any update the ratio is exactly 1 on the first minibatch.
                stats["policy/clipfrac_first"].append(float(step_stats["policy/clipfrac"]))
                stats["policy/approx_kl_first"].append(float(step_stats["policy/approx_kl"]))
            if cfg.target_kl and _approx_kl(acc, step_stats) > 1.5 * cfg.target_kl:
                stats["policy/early_stop"].append(1.0)
                return mean_across_processes(acc, {k: sum(v) / len(v) for k, v in stats.items()})
    return mean_across_processes(acc, {k: sum(v) / len(v) for k, v in stats.items()})


def _approx_kl(acc: Any, step_stats: dict[str, torch.Tensor]) -> float:
    """This step's approximate KL, averaged over processes so they all stop together."""
    return mean_across_processes(acc, {"kl": float(step_stats["policy/approx_kl"])})["kl"]


def train(cfg: PPOConfig, reward_fn: RewardFn | None = None,
          gold_fn: RewardFn | None = None) -> list[dict[str, Any]]:
    """Run PPO as configured; returns the per-iteration metrics."""
    steps = cfg.update_epochs * cfg.num_minibatches
    run = build_rl(cfg, with_critic=True, separate_critic=cfg.critic == "separate", steps_per_iteration=steps,
                   reward_fn=reward_fn, gold_fn=gold_fn)
    batch = cfg.rollout_batch_size
    history = []
    with progress_bar(cfg.iterations, "ppo", keys=("reward", "kl"), enabled=run.main) as bar:
        bar.update(run.start_iteration)
        for it in range(run.start_iteration, cfg.iterations):
            t_iter = time.perf_counter()
            # 1. Rollout.
            rollout, plan, times = rollout_step(run, it, run.prompts.next_indices(batch), with_values=True)
            # 2. Rewards: score at the last response token minus beta * KL per token.
            beta = run.kl_ctl.value
            kl = KL_ESTIMATORS[cfg.kl_estimator](rollout.logp, rollout.ref_logp, rollout.mask)  # (B, T)
            rewards = shaped_rewards(rollout.scores, kl, rollout.mask, beta)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, rollout.mask, shift_mean=False)
            # 3. Advantages A = Q - V by GAE, whitened; returns are the value targets.
            advantages, returns = gae(rewards, rollout.values, rollout.mask, gamma=cfg.gamma, lam=cfg.lam)
            rollout.rewards, rollout.returns = rewards, returns
            rollout.advantages = masked_whiten(advantages, rollout.mask)
            # 4. PPO epochs over shuffled minibatches.
            t_train = time.perf_counter()
            update_stats = ppo_update(run, rollout, plan.minibatches)
            t_train = time.perf_counter() - t_train
            # 5. KL controller, metrics, samples, checkpoint.
            metrics = {**update_stats, **rollout_metrics(run, rollout, kl, beta)}
            run.kl_ctl.update(metrics["kl/ref"], batch)
            metrics["value/explained_variance"] = float(explained_variance(rollout.values, returns, rollout.mask))
            metrics.update(times, **{"time/training": t_train, "time/iteration": time.perf_counter() - t_iter})
            history.append(end_iteration(run, it, rollout, metrics))
            bar.update(1, reward=metrics["reward/mean"], kl=metrics["kl/ref"])
    end_run(run, history, "ppo")
    return history


def run(cfg: PPOConfig) -> Path:
    """CLI entry."""
    train(cfg)
    return Path(cfg.output_dir)
