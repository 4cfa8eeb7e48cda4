"""An RL run's setup and its end-of-iteration steps, shared by the PPO and REINFORCE loops.

`build_rl` loads the models, prompts, scorer, optimiser and logger once (or resumes them from a
checkpoint); `end_iteration` logs, evaluates on held-out prompts and checkpoints on schedule;
`end_run` writes the final checkpoint and model. Step 1 of an iteration (sampling and scoring)
is `run.worker.collect(...)`, in rollout/.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlhfkit.algos.kl import AdaptiveKLController, FixedKLController
from rlhfkit.algos.masked import aggregate_denominator
from rlhfkit.data.io import row_numbers, source_name
from rlhfkit.data.prompts import PromptSet, prompt_texts, read_prompt_rows
from rlhfkit.errors import ConfigError
from rlhfkit.models.context import fit_prompt_and_response, model_context
from rlhfkit.models.loading import configure_loading, load_causal_lm, load_run_tokenizer, load_tokenizer
from rlhfkit.models.lora import LoRAModel, LoRASpec, add_lora
from rlhfkit.models.policy import ActorCritic, token_logprobs
from rlhfkit.models.reward_model import build_reward_model, saved_criteria
from rlhfkit.rollout.criteria import load_criteria_scorer, tagged_prompts
from rlhfkit.rollout.ensemble import guard_scorer
from rlhfkit.rollout.gather import IterationPlan
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.rollout.scoring import (
    FunctionScorer,
    RewardModelScorer,
    Scorer,
    check_trained_reward_model,
    import_function,
    same_tokenizer,
)
from rlhfkit.rollout.step import RolloutWorker
from rlhfkit.tracking.console import console, print_table
from rlhfkit.tracking.metrics import MetricsLogger, open_metrics
from rlhfkit.tracking.monitor import Monitor
from rlhfkit.trainers.checkpoint import resume_from, resume_rl, save_final_policy, save_rl_checkpoint
from rlhfkit.trainers.common import (
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_run_config,
    seed_everything,
)
from rlhfkit.trainers.master_weights import MasterWeights, check_bf16_weights
from rlhfkit.trainers.optim_step import StepStats, micro_batches, optimizer_step
from rlhfkit.trainers.rl_config import parse_pairs
from rlhfkit.trainers.rl_evaluation import HeldOutEvaluation
from rlhfkit.trainers.rl_metrics import record_grad_norm, sample_rows
from rlhfkit.trainers.signals import catch_stop_signals, restore_signals, stop_requested, stopped

RewardFn = Callable[..., Sequence[float]]  # (prompts, responses[, ended=]) -> one float per episode


@dataclass
class RLRun:
    """Everything an RL loop needs, built once."""

    cfg: Any
    accelerator: Accelerator
    tokenizer: Any
    actor: torch.nn.Module  # prepared (maybe DDP-wrapped) ActorCritic
    worker: RolloutWorker  # samples and scores episodes (step 1)
    prompts: PromptSet
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl_ctl: FixedKLController | AdaptiveKLController
    out_dir: Path
    logger: MetricsLogger
    evaluation: HeldOutEvaluation | None = None
    start_iteration: int = 0
    extra_state: dict[str, Any] | None = None
    gold_fn: RewardFn | None = None
    gold_fns: dict[str, RewardFn] = dataclasses.field(default_factory=dict)  # per criterion (--gold-fns)
    lora: LoRAModel | None = None  # the policy's adapters, with LoRA
    master: MasterWeights | None = None  # the fp32 copies AdamW updates, with --bf16-weights
    monitor: Monitor | None = None  # reward-hacking alarms (tracking/monitor.py)
    stopped: bool = False  # set by an alarm with --on-alarm stop: the loop ends after this iteration
    start_evaluation_pending: bool = False  # the start policy's evaluation waits for the first rollout

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.actor)


def reward_model_folders(cfg: Any) -> list[tuple[str | None, str]]:
    """(criterion or None, folder) of every reward model that scores: --reward-model or --criterion-models."""
    if cfg.criterion_models:
        return list(parse_pairs("criterion_models", cfg.criterion_models).items())
    return [(None, cfg.reward_model)] if cfg.reward_model else []


def build_scorer(cfg: Any, policy_tokenizer: Any, device: torch.device, reward_fn: RewardFn | None = None,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Scorer:
    """The reward model (frozen, eval mode), several criteria's models combined, or the Python reward function."""
    weights = parse_pairs("reward_weights", cfg.reward_weights, float)
    gate = parse_pairs("reward_gate", [cfg.reward_gate] if cfg.reward_gate else [], float)
    if reward_fn is not None:
        if weights or gate or cfg.criterion_models:
            raise ConfigError("setting 'reward_weights': combines the criteria of reward models; a reward function "
                              "gives one score already")
        return FunctionScorer(reward_fn)
    if cfg.reward_fn:
        return FunctionScorer(import_function(cfg.reward_fn))
    if not cfg.reward_model and not cfg.criterion_models:
        raise ConfigError("setting 'reward_model': pass --reward-model DIR or --reward-fn module:function")
    several = len(saved_criteria(cfg.reward_model) or ()) > 1 if cfg.reward_model else True
    if weights or gate or several:  # the criteria's scores, normalised and combined (rollout/criteria.py)
        tagged: frozenset[str] = frozenset()
        if cfg.reward_gate_column:  # Llama 2's safety-tagged prompts, by their text as the scorer sees it
            for source in filter(None, (cfg.prompts, cfg.eval_prompts)):
                rows = read_prompt_rows(source)
                texts, _ = prompt_texts(rows, source_name(source), policy_tokenizer)
                tagged |= tagged_prompts(rows, texts, cfg.reward_gate_column, source_name(source), row_numbers(rows))
        return load_criteria_scorer(reward_model_folders(cfg), weights, next(iter(gate.items()), None),
                                    policy_tokenizer, device, cfg.allow_untrained_reward_model, tagged=tagged,
                                    gather=gather)
    check_trained_reward_model(cfg.reward_model, "reward_model", cfg.allow_untrained_reward_model,
                               "--allow-untrained-reward-model")
    rm_tokenizer = load_tokenizer(cfg.reward_model, padding_side="right")
    rm = build_reward_model(cfg.reward_model, rm_tokenizer, init_head=False).to(device).eval().requires_grad_(False)
    return RewardModelScorer(rm, rm_tokenizer, policy_tokenizer)


SCORER_STATE = "scorer"  # the scorer's frozen references in a checkpoint's extra state


def build_rl(cfg: Any, with_critic: bool, separate_critic: bool = False, steps_per_iteration: int = 1,
             reward_fn: RewardFn | None = None, gold_fn: RewardFn | None = None,
             gold_fns: dict[str, RewardFn] | None = None) -> RLRun:
    """Models, data, optimiser and logger of an RL run; resumes from a checkpoint when asked."""
    configure_loading(cfg)  # --dtype and --trust-remote-code, for the configs read below too
    # Lengths first, from the configs alone (no weights): max_prompt_length + max_new_tokens must fit
    # the policy's context, and the reward model's when it reads the policy's token ids. A default
    # that does not fit is lowered (and said so; the run's cfg and config.yaml hold the lowered
    # value), a value the user set is a one-line ConfigError.
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    fit = partial(fit_prompt_and_response, prompt_is_default=cfg.max_prompt_length == defaults["max_prompt_length"],
                  new_is_default=cfg.max_new_tokens == defaults["max_new_tokens"])
    prompt_length, new_tokens, note = fit(cfg.max_prompt_length, cfg.max_new_tokens, model_context(cfg.policy),
                                          "policy")
    notes = [note]
    scoring = reward_model_folders(cfg) if separate_critic or not (reward_fn or cfg.reward_fn) else []
    for _, folder in scoring:  # every reward model that scores (or is the critic)
        rm_context = model_context(folder)
        if rm_context.tokens is not None and rm_context.tokens < prompt_length + new_tokens and \
                same_tokenizer(load_tokenizer(folder), load_tokenizer(cfg.tokenizer or cfg.policy)):
            prompt_length, new_tokens, note = fit(prompt_length, new_tokens, rm_context, "reward model")
            notes.append(note)
    if (prompt_length, new_tokens) != (cfg.max_prompt_length, cfg.max_new_tokens):
        cfg = dataclasses.replace(cfg, max_prompt_length=prompt_length, max_new_tokens=new_tokens)
    out_dir = Path(cfg.output_dir)
    resuming = resume_from(out_dir, cfg.resume, cfg.overwrite) is not None  # one line when it cannot
    catch_stop_signals()  # SIGTERM / Ctrl-C: checkpoint at the end of the iteration, then stop (end_iteration)
    accelerator = make_accelerator(cfg)
    check_bf16_weights(cfg, accelerator.mixed_precision, accelerator.num_processes)
    seed_everything(cfg.seed)
    for note in filter(None, notes if accelerator.is_main_process else []):
        console.print(f"[yellow]{note}")
    world = accelerator.num_processes
    if cfg.rollout_batch_size % (cfg.num_minibatches * world):
        raise ConfigError(f"setting 'rollout_batch_size': {cfg.rollout_batch_size} episodes must split into "
                          f"{cfg.num_minibatches} minibatches over {world} processes")

    tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.policy, padding_side="left")
    prompts = PromptSet.from_source(cfg.prompts, tokenizer, cfg.max_prompt_length, seed=cfg.seed)
    evaluation = None
    if cfg.eval_prompts:
        held_out = PromptSet.from_source(cfg.eval_prompts, tokenizer, cfg.max_prompt_length, seed=cfg.seed)
        evaluation = HeldOutEvaluation(held_out, cfg.seed, cfg.eval_batch_size)
    device = accelerator.device
    # the ensemble and the reward transforms against reward hacking (rollout/ensemble.py)
    # (several criteria on N processes freeze their normalisation on every process's share of the first batch)
    gather = accelerator.gather if world > 1 else None
    scorer = guard_scorer(cfg, build_scorer(cfg, tokenizer, device, reward_fn, gather), tokenizer, device, gather)
    policy = load_causal_lm(cfg.policy, tokenizer)
    if cfg.gradient_checkpointing:  # recompute activations in the backward: less memory, about 30% more time
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_spec = LoRASpec.from_config(cfg)
    lora = None
    if lora_spec is not None:
        # The reference is the same weights with the adapters off: no second copy in memory.
        lora = add_lora(policy, lora_spec, "CAUSAL_LM")
        policy = reference = lora.model
        reference_off = lora.adapters_off
    else:
        # The reference: one frozen copy of the start policy, never updated.
        reference = copy.deepcopy(policy).to(device).eval().requires_grad_(False)
        reference_off = contextlib.nullcontext
        if cfg.bf16_weights:  # the same bf16 weights as the policy's: KL 0 before the first update
            reference.to(torch.bfloat16)

    def reference_logp(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), reference_off():
            return token_logprobs(reference, prompt_ids, prompt_mask, response_ids, cfg.temperature).logp

    critic = None
    if with_critic and separate_critic:
        if len(saved_criteria(cfg.reward_model) or ()) > 1:
            raise ConfigError("setting 'critic': a separate critic starts from a one-head reward model, and "
                              f"{cfg.reward_model} has a head per criterion; use --critic shared")
        critic_tokenizer = load_tokenizer(cfg.reward_model)
        if not same_tokenizer(critic_tokenizer, tokenizer):
            raise ConfigError("setting 'critic': a separate critic starts from the reward model and reads the "
                              "policy's token ids, so they must share a tokenizer; use --critic shared")
        critic = build_reward_model(cfg.reward_model, critic_tokenizer, init_head=False)
    actor = ActorCritic(policy, critic, value_head=with_critic and critic is None)
    master = MasterWeights(actor) if cfg.bf16_weights else None  # bf16 weights, fp32 copies for AdamW
    optimizer = make_optimizer(actor.parameters() if master is None else master.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.iterations * steps_per_iteration)
    actor, optimizer = accelerator.prepare(actor, optimizer)  # not the scheduler: see make_scheduler

    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    sampling = SamplingSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.stop_at_eos)
    worker = RolloutWorker(accelerator, accelerator.unwrap_model(actor), reference_logp, scorer, tokenizer, sampling,
                           cfg.missing_eos_penalty, cfg.old_logprobs, cfg.generation_batch_size)
    if gold_fn is None and cfg.gold_fn:
        gold_fn = import_function(cfg.gold_fn, "gold_fn")
    judges = {name: import_function(spec, "gold_fns") for name, spec in parse_pairs("gold_fns", cfg.gold_fns).items()}
    judges.update(gold_fns or {})
    run = RLRun(cfg, accelerator, tokenizer, actor, worker, prompts, optimizer, scheduler, kl_ctl, out_dir,
                logger=None, evaluation=evaluation, gold_fn=gold_fn, gold_fns=judges,
                lora=lora, master=master)  # type: ignore[arg-type]
    if resuming:
        resume_rl(run)
        scorer.load_state_dict((run.extra_state or {}).get(SCORER_STATE))
    elif accelerator.is_main_process:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
    if accelerator.is_main_process:
        save_run_config(cfg, out_dir)
    run.logger = open_metrics(out_dir, cfg, enabled=accelerator.is_main_process, append=resuming)
    run.monitor = Monitor(cfg, scorer, out_dir, accelerator, resuming, tokenizer)
    if evaluation is not None and not resuming:
        if scorer.reference_pending:  # several criteria: after the rollout that freezes their normalisation
            run.start_evaluation_pending = True
        else:
            evaluate(run, step=0)  # the start policy: the baseline of the win rates
    return run


def evaluate_start(run: RLRun) -> None:
    """The start policy's held-out evaluation, when build_rl left it for after the first rollout: with
    several criteria, their normalisation is frozen on that rollout, and the evaluation's combined
    score uses it. Called by the loops after step 1 of each iteration, before any update (every process:
    the flag is the same on all of them, and evaluate waits for them all)."""
    if run.start_evaluation_pending:
        run.start_evaluation_pending = False
        evaluate(run, step=0)


MicroLoss = Callable[..., torch.Tensor]  # (run, rollout, rows, denominator=, tokens=, stats=, first_step=) -> loss


def policy_updates(run: RLRun, rollout: Any, plan: IterationPlan, micro_loss: MicroLoss,
                   stop: Callable[[dict[str, torch.Tensor]], bool] | None = None) -> dict[str, float]:
    """Step 4 of both loops: update_epochs x num_minibatches optimizer steps over the plan's minibatches.

    Each minibatch's losses divide by the count of the global minibatch (every process has the
    gathered batch, so it knows it), which makes the result the same on 1 and N processes and for
    any micro-batch size. `stop(step_stats)` may end the iteration's updates early. Returns the
    mean of each statistic over the steps.
    """
    cfg, acc = run.cfg, run.accelerator
    stats = StepStats()
    for epoch_rows, epoch_global in zip(plan.minibatches, plan.global_minibatches):
        for rows, global_rows in zip(epoch_rows, epoch_global):
            global_mask = rollout.mask[global_rows.to(rollout.mask.device)]
            denominator = aggregate_denominator(global_mask, cfg.loss_reduction)
            loss_of = partial(micro_loss, run, rollout, denominator=denominator, tokens=global_mask.sum().clamp(min=1),
                              stats=stats, first_step=stats.steps == 0)
            grad_norm = optimizer_step(acc, run.actor, run.optimizer, run.scheduler,
                                       micro_batches(rows, cfg.micro_batch_size), loss_of, cfg.max_grad_norm,
                                       run.master)
            record_grad_norm(stats, grad_norm, acc.num_processes)
            step = stats.end_step()
            if stop is not None and stop(step):
                stats.add("policy/early_stop", 1.0 / acc.num_processes)
                stats.end_step()
                return stats.summary(acc)
    return stats.summary(acc)


def evaluate(run: RLRun, step: int) -> dict[str, float]:
    """Held-out evaluation (main process; the others wait), logged at `step`."""
    metrics: dict[str, float] = {}
    if run.evaluation is not None and run.main:
        with run.worker.scorer.raw():  # the reward model's own score, outside the alarms' statistics
            metrics = run.evaluation(run.worker, run.gold_fn, run.gold_fns)
        run.logger.log(step, metrics)
    run.accelerator.wait_for_everyone()
    return metrics


def end_iteration(run: RLRun, iteration: int, metrics: dict[str, float], rollout: Any,
                  extra_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step 5 of both loops: metrics every log_every iterations, samples every sample_every, held-out
    evaluation every eval_every, a checkpoint every checkpoint_every. Returns the iteration's record."""
    cfg = run.cfg
    extra_state = with_scorer_state(run, extra_state)
    metrics["train/lr"] = run.scheduler.get_last_lr()[0]
    metrics["perf/processes"] = run.accelerator.num_processes
    action = run.monitor.after_iteration(iteration, metrics) if run.monitor is not None else None
    run.stopped = action == "stop"
    record = {"step": iteration, **metrics}
    last = iteration + 1 == cfg.iterations or run.stopped
    if (iteration + 1) % cfg.log_every == 0 or last:
        run.logger.log(iteration, metrics)
    if cfg.sample_every and iteration % cfg.sample_every == 0 and run.main:
        with (run.out_dir / "samples.jsonl").open("a", encoding="utf-8") as f:
            f.write(sample_rows(iteration, rollout))
    if run.evaluation is not None and ((cfg.eval_every and (iteration + 1) % cfg.eval_every == 0) or last):
        record.update(evaluate(run, iteration + 1))
    every = bool(cfg.checkpoint_every) and (iteration + 1) % cfg.checkpoint_every == 0
    saved = (action == "checkpoint" or every) and not last  # --on-alarm checkpoint saves one at the alarm
    if saved:
        save_rl_checkpoint(run, iteration, extra_state)
    signum = None if last else stop_requested(run.accelerator)
    if signum is not None:
        if not saved:
            save_rl_checkpoint(run, iteration, extra_state)
        run.logger.close()
        raise stopped(signum, f"after iteration {iteration + 1} of {cfg.iterations}",
                      run.out_dir / f"checkpoint-{iteration + 1}")
    return record


def with_scorer_state(run: RLRun, extra_state: dict[str, Any] | None) -> dict[str, Any]:
    """The trainer's extra checkpoint state plus the scorer's frozen references (first-batch statistics)."""
    return {**(extra_state or {}), SCORER_STATE: run.worker.scorer.state_dict()}


def end_run(run: RLRun, history: list[dict[str, Any]], title: str, extra_state: dict[str, Any] | None = None
            ) -> None:
    """The final checkpoint and model, and a summary table."""
    extra_state = with_scorer_state(run, extra_state)
    save_rl_checkpoint(run, history[-1]["step"] if run.stopped else run.cfg.iterations - 1, extra_state)
    save_final_policy(run)
    run.logger.close()
    restore_signals()
    if run.main and history:
        first, last = history[0], history[-1]
        rows = [("reward (first -> last iteration)", f"{first['reward/mean']:.3f} -> {last['reward/mean']:.3f}")]
        if "gold/mean" in last:
            rows.append(("gold score (first -> last iteration)",
                         f"{first['gold/mean']:.3f} -> {last['gold/mean']:.3f}"))
        for key in sorted(k for k in last if k.startswith("gold/") and k != "gold/mean"):  # a judge per criterion
            rows.append((f"{key} (first -> last iteration)", f"{first.get(key, float('nan')):.3f} -> {last[key]:.3f}"))
        if "eval/win_rate" in last:
            rows.append(("held-out win rate vs start (proxy)", last["eval/win_rate"]))
        if "eval/gold_win_rate" in last:
            rows.append(("held-out win rate vs start (gold)", last["eval/gold_win_rate"]))
        rows += [("KL to reference", last["kl/ref"]), ("entropy", last["policy/entropy"]),
                 ("seconds / iteration", last["time/iteration"])]
        print_table(f"{title} -> {run.out_dir}", rows)
