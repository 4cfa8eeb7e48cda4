"""Supervised fine-tuning: L = -sum m_t log pi(y_t | y_<t) / sum m_t over the completion tokens.

The loop, in order:
  1. resolve max_length against the model's context (0 = the context; longer is an error), read, check
     and render the demonstrations (all errors before any model is loaded), split off eval, tokenise
     with the completion tokens as targets, and pack the training examples when asked;
  2. load the causal LM (with LoRA, adapters on it and everything else frozen);
  3. for each batch, one trunk pass; the LM head runs on the positions that predict a target only, and
     the masked token-mean cross-entropy (rlhfkit.algos.sft) over them, divided by the target count of
     the whole global batch, is minimised with AdamW;
  4. evaluate on the held-out examples (loss per target token, perplexity = exp(loss)) before training,
     every eval_every steps and at the end;
  5. a resumable checkpoint every checkpoint_every steps and on SIGTERM / Ctrl-C (trainers/step_resume.py);
  6. save a plain transformers causal-LM folder (with LoRA: merged weights, the adapter in adapter/),
     tokenizer, config.yaml, metrics.jsonl and eval.json (into the folder .OUTPUT_DIR.partial, moved into
     place at the end), which `rlhfkit ppo --policy`, `rlhfkit reinforce --policy` and `rlhfkit reward --model` read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos.sft import sft_loss
from rlhfkit.data.batching import LengthGroupedBatches, ShuffledBatches, process_share
from rlhfkit.data.demonstrations import (
    Demonstration,
    TokenizedDemos,
    TokenRows,
    collate,
    load_demonstrations,
    pack,
    tokenize_demonstrations,
    unpacked,
)
from rlhfkit.errors import DataError
from rlhfkit.models.context import model_context, resolve_length
from rlhfkit.models.kernels import autocast
from rlhfkit.models.loading import configure_loading, load_causal_lm, load_run_tokenizer
from rlhfkit.models.lora import LoRASpec, add_lora, evaluation_weights
from rlhfkit.models.trunk_and_heads import output_logits, trunk
from rlhfkit.tracking.console import console, print_table, progress_bar
from rlhfkit.trainers.common import (
    check_output_dir,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_causal_lm,
    save_run_config,
    seed_everything,
)
from rlhfkit.trainers.optim_step import StepStats, micro_batches, optimizer_step
from rlhfkit.trainers.sft_config import SFTConfig
from rlhfkit.trainers.signals import catch_stop_signals, restore_signals
from rlhfkit.trainers.step_resume import (
    StepCheckpoints,
    completed_run,
    drop_checkpoints,
    find_resume,
    load_step_checkpoint,
    remaining_batches,
    run_folder,
)


class TargetLogits(torch.nn.Module):
    """The logits that predict a batch's N targets and the targets themselves: ((N, V), (N,)).

    One trunk pass over the batch; the LM head runs only at the positions t whose next token t + 1 is a
    target, so prompt and padding positions never reach the (., V) projection (the largest activation for
    big vocabularies). An nn.Module so that DDP/FSDP wrap the whole forward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Packed rows come with position ids and no attention mask: transformers then masks attention
        # block-diagonally at the position restarts (no cache, or it skips that detection).
        hidden = trunk(self.model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state  # (B, L, H)
        predicts = targets[:, 1:]  # (B, L-1): position t predicts token t + 1
        logits = output_logits(self.model, hidden[:, :-1][predicts])  # (N, V)
        return logits, input_ids[:, 1:][predicts]  # (N, V), (N,)


def resolve_max_length(cfg: SFTConfig) -> SFTConfig:
    """`cfg` with max_length in tokens: 0 becomes the model's context; longer than the context is a ConfigError."""
    return dataclasses.replace(cfg, max_length=resolve_length(cfg.max_length, model_context(cfg.model), "max_length"))


def split_demonstrations(cfg: SFTConfig, tokenizer: Any) -> tuple[list[Demonstration], list[Demonstration]]:
    """Train and eval demonstrations: eval_data, or eval_fraction of the train rows held out (seeded)."""
    demos = load_demonstrations(cfg.train_data, tokenizer)
    if cfg.eval_data:
        return demos, load_demonstrations(cfg.eval_data, tokenizer)
    order = list(range(len(demos)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = max(1, round(len(demos) * cfg.eval_fraction))
    if n_eval >= len(demos):
        raise DataError(f"{cfg.train_data}: {len(demos)} row(s) are too few to hold out an eval split; add rows "
                        "or pass --eval-data")
    held = set(order[:n_eval])
    return [d for i, d in enumerate(demos) if i not in held], [d for i, d in enumerate(demos) if i in held]


def load_splits(cfg: SFTConfig, tokenizer: Any) -> tuple[TokenizedDemos, TokenizedDemos]:
    """Tokenised train and eval examples; an error when none of a split fits max_length."""
    train_demos, eval_demos = split_demonstrations(cfg, tokenizer)
    tokenize = partial(tokenize_demonstrations, tokenizer=tokenizer, max_length=cfg.max_length,
                       truncation=cfg.truncation, loss_on=cfg.loss_on)
    eval_source = cfg.eval_data or cfg.train_data
    train, evals = tokenize(train_demos, name=cfg.train_data), tokenize(eval_demos, name=eval_source)
    for split, data, source in (("train", train, cfg.train_data), ("eval", evals, eval_source)):
        if len(data) == 0:
            raise DataError(f"{source}: no {split} example fits max_length={cfg.max_length} with a completion token "
                            "left; raise --max-length or use --truncation truncate_left")
    return train, evals


def length_counts(train: TokenizedDemos, evals: TokenizedDemos, max_length: int) -> dict[str, int]:
    """What max_length did to the data (in eval.json and metrics.jsonl)."""
    return {"data/max_length": max_length, "data/train_examples": len(train), "data/eval_examples": len(evals),
            "data/train_truncated": train.truncated, "data/train_dropped": train.dropped,
            "data/eval_truncated": evals.truncated, "data/eval_dropped": evals.dropped}


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_loss(model: torch.nn.Module, batch: dict[str, Any], accelerator: Any,
               denominator: float) -> torch.Tensor:
    """This batch's part of the token-mean cross-entropy of a larger batch with `denominator` targets."""
    with autocast(accelerator, batch["input_ids"].shape[1]):
        logits, y = model(batch["input_ids"], batch["targets"], batch["attention_mask"], batch["position_ids"])
    # the targets of every row laid out as one (1, N) row: all of them count
    return sft_loss(logits[None], y[None], torch.ones_like(y[None], dtype=torch.bool), denominator=denominator)


@torch.no_grad()
def evaluate(model: torch.nn.Module, rows: TokenRows, accelerator: Any, cfg: SFTConfig,
             pad_id: int) -> dict[str, float]:
    """Held-out loss per target token (every eval target weighs the same) and perplexity exp(loss).

    Each process scores its share of every eval batch, each batch's loss divided by the count of all eval
    targets, so the sum over batches and processes is the loss over the whole eval set."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    total = rows.target_count(list(range(len(rows))))
    nll = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for start in range(0, len(rows), cfg.eval_batch_size):
        own, real = process_share(range(start, min(start + cfg.eval_batch_size, len(rows))), rank, world)
        if real:
            nll += batch_loss(model, _on(collate(rows, own, pad_id), accelerator.device), accelerator, total).double()
    if world > 1:
        nll = accelerator.reduce(nll, reduction="sum")
    model.train()
    loss = nll.item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(loss), "eval/target_tokens": total}


def train(cfg: SFTConfig) -> dict[str, float]:
    """Fine-tune a causal LM on demonstrations as configured; returns the final evaluation metrics."""
    configure_loading(cfg)  # --dtype and --trust-remote-code, for the config read below too
    cfg = resolve_max_length(cfg)  # before any work: a too-long max_length is one line, not an IndexError
    done = completed_run(cfg)
    if done is not None:
        return done
    resume_path = find_resume(cfg)  # --resume: the newest intact checkpoint in .OUTPUT_DIR.partial, or None
    out_dir = check_output_dir(cfg.output_dir, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    seed_everything(cfg.seed)

    # 1. Data (checked completely before the model is loaded).
    tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.model, padding_side="right")
    train_data, eval_data = load_splits(cfg, tokenizer)
    counts = length_counts(train_data, eval_data, cfg.max_length)
    if main and (train_data.truncated or eval_data.truncated or train_data.dropped or eval_data.dropped):
        dropped = "; ".join(f"{split} rows {', '.join(map(str, data.dropped_rows[:8]))}"
                            + (" ..." if len(data.dropped_rows) > 8 else "")
                            for split, data in (("train", train_data), ("eval", eval_data)) if data.dropped)
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.truncated} train / {eval_data.truncated} "
                      f"eval examples truncated ({cfg.truncation}), {train_data.dropped} / {eval_data.dropped} left "
                      f"out{': ' + dropped if dropped else ''}; counted in eval.json as data/*_truncated and "
                      "data/*_dropped")
    rows = pack(train_data, cfg.max_length) if cfg.packing else unpacked(train_data)
    eval_rows = unpacked(eval_data)  # never packed: the held-out loss does not depend on --packing
    counts["data/train_rows"] = len(rows)

    # 2. Model, optimiser, schedule.
    model = load_causal_lm(cfg.model, tokenizer)
    if cfg.gradient_checkpointing:  # recompute activations in the backward: less memory, more time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = None
    spec = LoRASpec.from_config(cfg)
    if spec is not None:
        lora = add_lora(model, spec, "CAUSAL_LM")  # only the adapters train
        model = lora.model
    lm = TargetLogits(model)
    pad_id = tokenizer.pad_token_id
    if cfg.group_by_length and not cfg.packing:
        batches = LengthGroupedBatches([len(ids) for ids in rows.ids], cfg.batch_size, cfg.seed)
    else:
        batches = ShuffledBatches(len(rows), cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(lm.parameters(), cfg)
    total_steps = cfg.epochs * len(batches)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    # The scheduler stays unprepared: accelerate's wrapper steps it once per process at every optimizer step
    # (it assumes a sharded dataloader), which under N processes would run the schedule N times too fast.
    lm, optimizer = accelerator.prepare(lm, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes

    def micro_loss(micro: dict[str, Any], denominator: int, stats: StepStats) -> torch.Tensor:
        loss = batch_loss(lm, _on(micro, accelerator.device), accelerator, denominator)
        stats.add("loss/train", loss.detach())  # the parts add up to the global batch's token mean
        return loss

    def held_out() -> dict[str, float]:  # the held-out metrics of the weights that are saved (merged with LoRA)
        with evaluation_weights(lora, accelerator.mixed_precision):
            return evaluate(lm, eval_rows, accelerator, cfg, pad_id)

    step, tokens_seen, t_eval, t_before = 0, 0, 0.0, 0.0
    start_metrics: dict[str, float] = {}
    if resume_path is not None:
        state = load_step_checkpoint(resume_path, cfg, "sft", accelerator.unwrap_model(lm).model, optimizer,
                                     scheduler, total_steps, main)
        step, tokens_seen, t_before = int(state["step"]), int(state["tokens_seen"]), float(state["elapsed"])
        start_metrics = dict(state["start_metrics"])  # the start model's evaluation, logged by the first run
    catch_stop_signals()  # SIGTERM / Ctrl-C: checkpoint after the step, then stop

    with run_folder(out_dir, cfg, main, resume_path, step) as (tmp, logger):
        if cfg.eval_on_start and resume_path is None:
            start_metrics = held_out()
            logger.log(0, start_metrics)
        checkpoints = StepCheckpoints(tmp, cfg, accelerator, lambda: accelerator.unwrap_model(lm).model, optimizer,
                                      scheduler, total_steps)

        def elapsed() -> float:
            return t_before + time.perf_counter() - t_start - t_eval

        t_start = time.perf_counter()  # tokens/s counts the whole loop (data included), not the evaluations
        with progress_bar(total_steps, "sft", keys=("loss", "eval_loss"), enabled=main) as bar:
            bar.update(step)
            # 3. Cross-entropy updates: every process walks the same global batches and trains on its share.
            for batch_rows in remaining_batches(batches, cfg.epochs, step):  # after those a resumed run did
                denominator = rows.target_count(batch_rows)  # targets of the global batch
                own, real = process_share(batch_rows, rank, world)
                parts = [collate(rows, chunk.tolist(), pad_id, real)
                         for chunk in micro_batches(torch.tensor(own), cfg.micro_batch_size)]
                stats = StepStats()
                grad_norm = optimizer_step(accelerator, lm, optimizer, scheduler, parts,
                                           partial(micro_loss, denominator=denominator, stats=stats),
                                           cfg.max_grad_norm)
                if grad_norm is not None:  # the norm of the all-reduced gradient, the same on every process
                    stats.extreme("train/grad_norm", torch.as_tensor(grad_norm), largest=True)
                stats.end_step()
                step += 1
                tokens_seen += sum(len(rows.ids[i]) for i in batch_rows)
                bar_values: dict[str, float] = {}
                if step % cfg.log_every == 0 or step == total_steps:
                    shown = stats.summary(accelerator)  # the only device read of the step
                    logger.log(step, {**shown, "train/perplexity": math.exp(shown["loss/train"]),
                                      "train/target_tokens": denominator, "train/lr": scheduler.get_last_lr()[0],
                                      "perf/tokens_per_s": tokens_seen / max(elapsed(), 1e-9)})
                    bar_values["loss"] = shown["loss/train"]
                # 4. Held-out evaluation.
                if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                    t0 = time.perf_counter()
                    metrics = held_out()
                    t_eval += time.perf_counter() - t0
                    logger.log(step, metrics)
                    bar_values["eval_loss"] = metrics["eval/loss"]
                bar.update(1, **bar_values)
                # 5. Checkpoints on schedule, and when SIGTERM / Ctrl-C asked the run to stop.
                checkpoints.after_step({"step": step, "tokens_seen": tokens_seen, "elapsed": elapsed(),
                                        "start_metrics": start_metrics}, logger)
        train_s = elapsed()
        metrics = held_out()
        metrics.update({"perf/tokens_per_s": tokens_seen / max(train_s, 1e-9), "perf/train_s": train_s,
                        "train/steps": step, **counts})
        if start_metrics:
            metrics.update({"eval/start_loss": start_metrics["eval/loss"],
                            "eval/start_perplexity": start_metrics["eval/perplexity"]})
        logger.log(step, metrics)
        logger.close()
        restore_signals()

        # 6. Saving: a plain causal-LM folder that the next stages load as they load any model.
        if main:
            save_causal_lm(tmp, accelerator.unwrap_model(lm).model, tokenizer, lora, merged=cfg.save_merged)
            save_run_config(cfg, tmp)
            (tmp / "eval.json").write_text(json.dumps(metrics, indent=2))
            drop_checkpoints(tmp)
        accelerator.wait_for_everyone()
    if main:
        start = f"{start_metrics['eval/loss']:.4g} -> " if start_metrics else ""
        print_table(f"sft -> {out_dir}", [
            ("held-out loss per target token", f"{start}{metrics['eval/loss']:.4g}"),
            ("held-out perplexity", metrics["eval/perplexity"]),
            ("examples (train / eval)", f"{len(train_data)} / {len(eval_data)}"),
            ("tokens / s", metrics["perf/tokens_per_s"]),
        ])
    return metrics


def run(cfg: SFTConfig) -> Path:
    """CLI entry: train and return the output folder."""
    train(cfg)
    return Path(cfg.output_dir)
