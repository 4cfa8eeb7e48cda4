"""What the PPO and REINFORCE loops share: setup, seeding, metrics, checkpoints and the final save.

Randomness inside an iteration is derived from (seed, iteration, ...) rather than carried in a
global generator: episode j of iteration i always samples with the same seed, and minibatch
orders depend only on (seed, iteration). A resumed run therefore repeats the uninterrupted run
exactly, and the split of episodes over processes does not change what is sampled.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlhfkit.algos.kl import AdaptiveKLController, FixedKLController
from rlhfkit.data.prompts import PromptSet
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import ActorCritic, token_logprobs
from rlhfkit.models.reward_model import build_reward_model
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.collect import collect_rollout
from rlhfkit.rollout.gather import IterationPlan, gather_rollout, plan_iteration
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.rollout.scoring import (
    FunctionScorer,
    RewardModelScorer,
    Scorer,
    call_text_fn,
    import_function,
    same_tokenizer,
)
from rlhfkit.tracking.console import print_table
from rlhfkit.tracking.diagnostics import text_metrics
from rlhfkit.tracking.metrics import MetricsLogger
from rlhfkit.trainers.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.trainers.common import (
    check_output_dir,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_run_config,
    seed_everything,
)

RewardFn = Callable[..., Sequence[float]]  # (prompts, responses[, ended=]) -> one float per episode
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, iteration, index, ...)."""
    h = 0
    for i, p in enumerate(parts):
        h = (h ^ (int(p) + 1) * _MIX[i % 3]) * 0x2545F4914F6CDD1D % 2**64
    return h % 2**63


def iteration_generator(seed: int, iteration: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, iteration, salt, 7))


@dataclass
class RLRun:
    """Everything an RL loop needs, built once."""

    cfg: Any
    accelerator: Accelerator
    tokenizer: Any
    actor: torch.nn.Module  # prepared (maybe DDP-wrapped) ActorCritic
    reference: Any  # (prompt_ids, prompt_mask, response_ids) -> (B, T) reference log-probs
    scorer: Scorer
    prompts: PromptSet
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl_ctl: FixedKLController | AdaptiveKLController
    sampling: SamplingSettings
    out_dir: Path
    logger: MetricsLogger
    start_iteration: int = 0
    extra_state: dict[str, Any] | None = None
    gold_fn: RewardFn | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.actor)


def build_scorer(cfg: Any, policy_tokenizer: Any, device: torch.device, reward_fn: RewardFn | None = None) -> Scorer:
    """The reward model (frozen, eval mode) or the Python reward function."""
    if reward_fn is not None:
        return FunctionScorer(reward_fn)
    if cfg.reward_fn:
        return FunctionScorer(import_function(cfg.reward_fn))
    if not cfg.reward_model:
        raise ConfigError("setting 'reward_model': pass --reward-model DIR or --reward-fn module:function")
    rm_tokenizer = load_tokenizer(cfg.reward_model, padding_side="right")
    rm = build_reward_model(cfg.reward_model, rm_tokenizer, init_head=False).to(device).eval().requires_grad_(False)
    return RewardModelScorer(rm, rm_tokenizer, policy_tokenizer)


def build_rl(cfg: Any, with_critic: bool, separate_critic: bool = False, steps_per_iteration: int = 1,
             reward_fn: RewardFn | None = None, gold_fn: RewardFn | None = None) -> RLRun:
    """Models, data, optimiser and logger of an RL run; resumes from a checkpoint when asked."""
    out_dir = Path(cfg.output_dir)
    resuming = cfg.resume and find_checkpoint(out_dir) is not None
    if not resuming:
        check_output_dir(out_dir, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    seed_everything(cfg.seed)
    world = accelerator.num_processes
    if cfg.rollout_batch_size % (cfg.num_minibatches * world):
        raise ConfigError(f"setting 'rollout_batch_size': {cfg.rollout_batch_size} episodes must split into "
                          f"{cfg.num_minibatches} minibatches over {world} processes")

    tokenizer = load_tokenizer(cfg.tokenizer or cfg.policy, padding_side="left")
    prompts = PromptSet.from_source(cfg.prompts, tokenizer, cfg.max_prompt_length, seed=cfg.seed)
    device = accelerator.device
    scorer = build_scorer(cfg, tokenizer, device, reward_fn)
    policy = load_causal_lm(cfg.policy, tokenizer)
    # The reference: one frozen copy of the start policy, never updated (with LoRA it would be the
    # base model with the adapters disabled, and this copy would go).
    reference = copy.deepcopy(policy).to(device).eval().requires_grad_(False)

    def reference_logp(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return token_logprobs(reference, prompt_ids, prompt_mask, response_ids, cfg.temperature).logp

    critic = None
    if with_critic and separate_critic:
        critic_tokenizer = load_tokenizer(cfg.reward_model)
        if not same_tokenizer(critic_tokenizer, tokenizer):
            raise ConfigError("setting 'critic': a separate critic starts from the reward model and reads the "
                              "policy's token ids, so they must share a tokenizer; use --critic shared")
        critic = build_reward_model(cfg.reward_model, critic_tokenizer, init_head=False)
    actor = ActorCritic(policy, critic, value_head=with_critic and critic is None)
    optimizer = make_optimizer(actor.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.iterations * steps_per_iteration)
    actor, optimizer, scheduler = accelerator.prepare(actor, optimizer, scheduler)

    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    sampling = SamplingSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.stop_at_eos)
    if gold_fn is None and cfg.gold_fn:
        gold_fn = import_function(cfg.gold_fn)
    run = RLRun(cfg, accelerator, tokenizer, actor, reference_logp, scorer, prompts, optimizer, scheduler, kl_ctl,
                sampling, out_dir, logger=None, gold_fn=gold_fn)  # type: ignore[arg-type]
    if resuming:
        resume(run)
    elif accelerator.is_main_process:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
    if accelerator.is_main_process:
        save_run_config(cfg, out_dir)
    run.logger = MetricsLogger(out_dir, tensorboard=cfg.tensorboard, enabled=accelerator.is_main_process,
                               append=resuming)
    return run


def rollout_step(run: RLRun, iteration: int, prompt_indices: list[int], with_values: bool
                 ) -> tuple[Rollout, IterationPlan, dict[str, float]]:
    """Step 1 of both loops: this process samples and scores its share of the episodes (old log-probs
    in the first epoch's minibatch groups, so ratio == 1 exactly there); the whole batch is then
    gathered in global order. Returns the rollout, the iteration's minibatch plan and the timings."""
    cfg, acc = run.cfg, run.accelerator
    plan = plan_iteration(iteration_generator(cfg.seed, iteration), len(prompt_indices), cfg.update_epochs,
                          cfg.num_minibatches, acc.process_index, acc.num_processes)
    ids, mask, texts = run.prompts.batch(prompt_indices, run.tokenizer.pad_token_id)
    own = plan.own
    with acc.autocast():
        local, times = collect_rollout(
            run.unwrapped, run.reference, run.scorer, run.tokenizer, ids[own].to(acc.device),
            mask[own].to(acc.device), [texts[j] for j in own.tolist()], run.sampling,
            episode_seeds(cfg.seed, iteration, own), plan.first_epoch_groups(), with_values=with_values,
            missing_eos_penalty=cfg.missing_eos_penalty, old_logprobs=cfg.old_logprobs,
        )
    return gather_rollout(acc, local, own, len(prompt_indices), run.tokenizer.pad_token_id), plan, times


def end_iteration(run: RLRun, iteration: int, rollout: Rollout, metrics: dict[str, float],
                  extra_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step 5 of both loops: log the iteration's metrics, samples every N, a checkpoint every N."""
    cfg = run.cfg
    metrics["train/lr"] = run.scheduler.get_last_lr()[0]
    record = run.logger.log(iteration, metrics)
    if cfg.sample_every and iteration % cfg.sample_every == 0:
        log_samples(run, iteration, rollout)
    if cfg.checkpoint_every and (iteration + 1) % cfg.checkpoint_every == 0 and iteration + 1 < cfg.iterations:
        checkpoint(run, iteration, extra_state)
    return record


def end_run(run: RLRun, history: list[dict[str, Any]], title: str, extra_state: dict[str, Any] | None = None
            ) -> None:
    """The final checkpoint and model, and a summary table."""
    checkpoint(run, run.cfg.iterations - 1, extra_state)
    save_final(run)
    run.logger.close()
    if run.main and history:
        first, last = history[0], history[-1]
        rows = [("reward (first -> last iteration)", f"{first['reward/mean']:.3f} -> {last['reward/mean']:.3f}")]
        if "gold/mean" in last:
            rows.append(("gold score (first -> last iteration)",
                         f"{first['gold/mean']:.3f} -> {last['gold/mean']:.3f}"))
        rows += [("KL to reference", last["kl/ref"]), ("entropy", last["policy/entropy"]),
                 ("seconds / iteration", last["time/iteration"])]
        print_table(f"{title} -> {run.out_dir}", rows)


def episode_seeds(seed: int, iteration: int, rows: torch.Tensor) -> list[int]:
    """The sampling seed of each episode: a function of (seed, iteration, global row) only."""
    return [derived_seed(seed, iteration, j) for j in rows.tolist()]


def mean_across_processes(accelerator: Accelerator, stats: dict[str, float]) -> dict[str, float]:
    """Average per-process statistics (losses, clip fractions) over all processes."""
    if accelerator.num_processes == 1 or not stats:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def rollout_metrics(run: RLRun, rollout: Rollout, kl: torch.Tensor, beta: float) -> dict[str, float]:
    """Reward, KL and response statistics of one rollout batch (and the gold judge's score, if any)."""
    mask = rollout.mask
    seq_kl = (kl * mask).sum(-1)  # (B,)
    lengths = mask.sum(-1).float()
    gold = {}
    if run.gold_fn is not None:
        scores = call_text_fn(run.gold_fn, rollout.prompts, rollout.responses, rollout.ended.tolist())
        gold = {"gold/mean": sum(scores) / len(scores)}
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


def log_samples(run: RLRun, iteration: int, rollout: Rollout, n: int = 4) -> None:
    """Append a few (prompt, response, score) examples to samples.jsonl."""
    if not run.main:
        return
    with (run.out_dir / "samples.jsonl").open("a", encoding="utf-8") as f:
        for i in range(min(n, len(rollout))):
            f.write(json.dumps({"step": iteration, "prompt": rollout.prompts[i], "response": rollout.responses[i],
                                "score": round(rollout.scores[i].item(), 4)}, ensure_ascii=False) + "\n")


def checkpoint(run: RLRun, iteration: int, extra: dict[str, Any] | None = None) -> None:
    """Save a resumable checkpoint after `iteration` (main process only)."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return
    state = {
        "iteration": iteration,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "kl_ctl": run.kl_ctl.state_dict(),
        "prompts": run.prompts.state_dict(),
        "extra": extra or {},
    }
    save_checkpoint(run.out_dir, run.unwrapped.state_dict(), state)


def resume(run: RLRun) -> None:
    """Load the latest checkpoint and drop metrics logged after it."""
    weights, state = load_checkpoint(find_checkpoint(run.out_dir))  # type: ignore[arg-type]
    run.unwrapped.load_state_dict(weights)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.kl_ctl.load_state_dict(state["kl_ctl"])
    run.prompts.load_state_dict(state["prompts"])
    run.start_iteration = state["iteration"] + 1
    run.extra_state = state.get("extra") or {}
    if run.main:
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = run.out_dir / name
            if path.exists():
                keep = [line for line in path.read_text().splitlines()
                        if line.strip() and _step_of(line) is not None and _step_of(line) <= state["iteration"]]
                path.write_text("".join(line + "\n" for line in keep))


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def save_final(run: RLRun) -> None:
    """The trained policy in save_pretrained layout (plus its tokenizer) directly in output_dir."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return
    actor = run.unwrapped
    tmp = run.out_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    actor.policy.save_pretrained(tmp, safe_serialization=True)
    run.tokenizer.save_pretrained(tmp)
    if actor.value_head is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in actor.value_head.state_dict().items()}, tmp / "value_head.safetensors")
    elif actor.critic is not None:
        actor.critic.save_pretrained(tmp / "critic", safe_serialization=True)
    for item in tmp.iterdir():
        target = run.out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    tmp.rmdir()
