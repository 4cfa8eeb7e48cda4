"""Reward model training: r(x, y) = linear head on the LM trunk, loss -log sigmoid(r_c - r_r).

The loop, in order:
  1. resolve max_length against the model's context (0 = the context; longer is an error), read and
     check the comparisons (all errors before any model is loaded), split off eval;
  2. build the reward model (trunk of the base LM + a new scalar head);
  3. for each batch, chosen and rejected go through ONE forward pass, the Bradley-Terry loss
     (rlhfkit.algos.reward) is minimised with AdamW;
  4. evaluate on the held-out comparisons (loss, accuracy, margin, reward mean/std); pairs that do
     not fit max_length even with the prompt truncated are left out and counted (data/*_dropped);
  5. optionally normalise rewards on a reference set, then save the model, tokenizer,
     config.yaml, metrics.jsonl and eval.json (into a temporary folder moved into place at the end).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from rlhfkit.algos.reward import (
    bradley_terry_loss,
    normalization_gain_bias,
    preference_accuracy,
    reward_centering_penalty,
)
from rlhfkit.data.batching import LengthGroupedBatches, ShuffledBatches, process_share
from rlhfkit.data.io import read_rows
from rlhfkit.data.preferences import expand_pairs, load_examples
from rlhfkit.data.tokenize import (
    TokenizedPairs,
    collate_pairs,
    encode_prompt,
    encode_response,
    pad_right,
    tokenize_pairs,
)
from rlhfkit.errors import DataError
from rlhfkit.models.context import model_context, resolve_length
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.lora import LoRASpec, add_lora
from rlhfkit.models.reward_model import RewardScorer, build_reward_model, set_normalization
from rlhfkit.models.trunk_and_heads import score_head
from rlhfkit.tracking.console import console, print_table, progress_bar
from rlhfkit.tracking.metrics import open_metrics
from rlhfkit.trainers.common import (
    check_output_dir,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_run_config,
    seed_everything,
    staged_output,
)
from rlhfkit.trainers.optim_step import StepStats, micro_batches, optimizer_step
from rlhfkit.trainers.reward_config import RewardConfig


def resolve_max_length(cfg: RewardConfig) -> RewardConfig:
    """`cfg` with max_length in tokens: 0 becomes the model's context (read from its config, no weights);
    a value longer than the context is a ConfigError naming both."""
    return dataclasses.replace(cfg, max_length=resolve_length(cfg.max_length, model_context(cfg.model), "max_length"))


def length_counts(train_data: TokenizedPairs, eval_data: TokenizedPairs, max_length: int) -> dict[str, int]:
    """What max_length did to the data: prompts truncated on the left, and pairs left out because they do
    not fit even so (in eval.json and metrics.jsonl, so the held-out accuracy names the pairs it is over)."""
    return {"data/max_length": max_length,
            "data/train_truncated": train_data.truncated, "data/train_dropped": train_data.dropped,
            "data/eval_truncated": eval_data.truncated, "data/eval_dropped": eval_data.dropped}


def accuracy_label(metrics: dict[str, Any]) -> str:
    """'held-out accuracy', or 'held-out accuracy (N of M pairs; K did not fit max_length)' when K > 0."""
    dropped, pairs = int(metrics.get("data/eval_dropped", 0)), int(metrics["eval/pairs"])
    if not dropped:
        return "held-out accuracy"
    return f"held-out accuracy ({pairs} of {pairs + dropped} pairs; {dropped} did not fit max_length)"


def load_comparisons(cfg: RewardConfig, tokenizer: Any) -> tuple[TokenizedPairs, TokenizedPairs]:
    """Train and eval comparisons, tokenised. Eval is split off by row (prompt), never by pair,
    so pairs of one ranked list never land on both sides."""
    examples = load_examples(cfg.train_data)
    if cfg.eval_data:
        eval_examples = load_examples(cfg.eval_data)
    else:
        order = list(range(len(examples)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, round(len(examples) * cfg.eval_fraction))
        if n_eval >= len(examples):
            raise DataError(f"{cfg.train_data}: {len(examples)} row(s) are too few to hold out an eval split; "
                            "add rows or pass --eval-data")
        held = set(order[:n_eval])
        eval_examples = [e for i, e in enumerate(examples) if i in held]
        examples = [e for i, e in enumerate(examples) if i not in held]
    train = _tokenize(examples, tokenizer, cfg)
    evals = _tokenize(eval_examples, tokenizer, cfg)
    if len(train) == 0:
        raise DataError(f"{cfg.train_data}: every comparison is longer than max_length={cfg.max_length}; "
                        "raise --max-length")
    if len(evals) == 0:
        raise DataError(f"{cfg.eval_data or cfg.train_data}: no eval comparison fits max_length={cfg.max_length}")
    return train, evals


def _tokenize(examples: list[Any], tokenizer: Any, cfg: RewardConfig) -> TokenizedPairs:
    """Every comparison of the examples, tokenised; pairs left out by max_length name their source rows."""
    pairs, rows = [], []
    for ex in examples:
        expanded = expand_pairs([ex], tokenizer)
        pairs += expanded
        rows += [ex.row] * len(expanded)
    return tokenize_pairs(pairs, tokenizer, cfg.max_length, cfg.truncation, rows=rows)


def _rows_text(rows: list[int], shown: int = 8) -> str:
    """'3, 17, 22' or '3, 17, ... (12 rows)'."""
    text = ", ".join(map(str, rows[:shown]))
    return text if len(rows) <= shown else f"{text}, ... ({len(rows)} rows)"


def _collate(data: TokenizedPairs, rows: list[int], pad_id: int, real: bool = True) -> dict[str, torch.Tensor]:
    batch = collate_pairs([(data.chosen[i], data.rejected[i], data.weights[i], data.margins[i]) for i in rows], pad_id)
    batch["real"] = torch.full((len(rows),), float(real))  # 0 for a process's stand-in row (see process_share)
    batch["has_margins"] = any(data.margins[i] for i in rows)  # decided on the CPU: no device sync per step
    return batch


def pair_loss(scores: torch.Tensor, batch: dict[str, torch.Tensor], cfg: RewardConfig, weight_sum: float,
              pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss of a (2B,) score vector laid out as [chosen; rejected], as this micro-batch's
    part of the global batch: divided by the global batch's weight sum (and pair count for the
    centring term), so the parts add up to the whole batch's loss."""
    r_chosen, r_rejected = scores.float().chunk(2)
    margin = batch["margins"] if cfg.margin_column and batch["has_margins"] else None
    weights = batch["weights"] * batch["real"]
    loss = bradley_terry_loss(r_chosen, r_rejected, margin=margin, weights=weights, denominator=weight_sum)
    if cfg.center_rewards_coef > 0:
        centred = reward_centering_penalty(r_chosen * batch["real"], r_rejected * batch["real"], denominator=pairs)
        loss = loss + cfg.center_rewards_coef * centred
    return loss, r_chosen, r_rejected


@torch.no_grad()
def evaluate(scorer: torch.nn.Module, data: TokenizedPairs, accelerator: Any, cfg: RewardConfig,
             pad_id: int) -> dict[str, float]:
    """Held-out loss, accuracy (share of pairs with r_c > r_r), mean margin and reward mean/std.

    Each process scores its share of every eval batch; the scores are gathered before any metric."""
    scorer.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[float, float, float, float]] = []
    for start in range(0, len(data), cfg.eval_batch_size):
        rows, real = process_share(range(start, min(start + cfg.eval_batch_size, len(data))), rank, world)
        if not real:
            continue
        batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                 for k, v in _collate(data, rows, pad_id).items()}
        with accelerator.autocast():
            scores = scorer(batch["input_ids"], batch["attention_mask"])
        r_c, r_r = scores.float().chunk(2)
        mine += zip(r_c.tolist(), r_r.tolist(), batch["weights"].tolist(), batch["margins"].tolist())
    rows = gather_object(mine) if world > 1 else mine
    r_c, r_r, w, m = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    use_margin = cfg.margin_column and bool(m.any())
    all_r = torch.cat([r_c, r_r])
    scorer.train()
    return {
        "eval/loss": bradley_terry_loss(r_c, r_r, margin=m if use_margin else None, weights=w).item(),
        "eval/accuracy": preference_accuracy(r_c, r_r).item(),
        "eval/margin": (r_c - r_r).mean().item(),
        "eval/reward_mean": all_r.mean().item(),
        "eval/reward_std": all_r.std(unbiased=False).item(),
        "eval/pairs": len(r_c),
    }


@torch.no_grad()
def normalization_scores(scorer: torch.nn.Module, cfg: RewardConfig, tokenizer: Any,
                         train: TokenizedPairs) -> torch.Tensor:
    """Raw rewards of the reference set used for normalisation (Ziegler et al. 2019, section 2.2)."""
    if cfg.normalize_data:
        seqs = []
        for i, row in enumerate(read_rows(cfg.normalize_data), start=1):
            prompt, completion = row.get("prompt"), row.get("completion", row.get("response"))
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise DataError(f"{cfg.normalize_data}, row {i}: needs text fields 'prompt' and 'completion'")
            seq = encode_prompt(tokenizer, prompt) + encode_response(tokenizer, completion)
            seqs.append(seq[-cfg.max_length:])
    else:
        seqs = train.chosen + train.rejected
    device = next(scorer.parameters()).device
    scores = []
    for i in range(0, len(seqs), cfg.eval_batch_size):
        ids, mask = pad_right(seqs[i:i + cfg.eval_batch_size], tokenizer.pad_token_id)
        scores.append(scorer(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(scores)


def train(cfg: RewardConfig) -> dict[str, float]:
    """Train a reward model as configured; returns the final evaluation metrics."""
    cfg = resolve_max_length(cfg)  # before any work: a too-long max_length is one line, not an IndexError
    out_dir = check_output_dir(cfg.output_dir, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    seed_everything(cfg.seed)

    # 1. Data (checked completely before the model is built).
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, padding_side="right")
    train_data, eval_data = load_comparisons(cfg, tokenizer)
    counts = length_counts(train_data, eval_data, cfg.max_length)
    if main and (train_data.truncated or eval_data.truncated):
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.truncated} train / {eval_data.truncated} "
                      "eval prompts lose tokens on the left")
    if main and (train_data.dropped or eval_data.dropped):
        named = [f"{split}: {source} rows {_rows_text(data.dropped_rows)}" for split, source, data in
                 (("train", cfg.train_data, train_data), ("eval", cfg.eval_data or cfg.train_data, eval_data))
                 if data.dropped]
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.dropped} train / {eval_data.dropped} eval "
                      f"pairs do not fit even with the prompt truncated and are left out ({'; '.join(named)}); "
                      "counted in eval.json as data/train_dropped and data/eval_dropped")

    # 2. Model, optimiser, schedule.
    model = build_reward_model(cfg.model, tokenizer)
    if cfg.gradient_checkpointing:  # recompute activations in the backward: less memory, more time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = None
    spec = LoRASpec.from_config(cfg)
    if spec is not None:
        # adapters on the trunk; the new score head trains in full (it is a new layer)
        lora = add_lora(model, spec, task=None)
        model = lora.model
        score_head(model).requires_grad_(True)
    scorer = RewardScorer(model)
    pad_id = tokenizer.pad_token_id
    if cfg.group_by_length:
        lengths = [max(len(c), len(r)) for c, r in zip(train_data.chosen, train_data.rejected)]
        batches = LengthGroupedBatches(lengths, cfg.batch_size, cfg.seed)
    else:
        batches = ShuffledBatches(len(train_data), cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(scorer.parameters(), cfg)
    total_steps = cfg.epochs * len(batches)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    scorer, optimizer, scheduler = accelerator.prepare(scorer, optimizer, scheduler)
    rank, world = accelerator.process_index, accelerator.num_processes

    def micro_loss(micro: dict[str, torch.Tensor], weight_sum: float, pairs: int, stats: StepStats) -> torch.Tensor:
        micro = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in micro.items()}
        with accelerator.autocast():
            scores = scorer(micro["input_ids"], micro["attention_mask"])  # (2B,)
        loss, r_c, r_r = pair_loss(scores, micro, cfg, weight_sum, pairs)
        stats.add("loss/train", loss.detach())
        # this micro-batch's share of the global batch's accuracy (0 for a stand-in row)
        stats.add("train/accuracy", preference_accuracy(r_c, r_r) * micro["real"].sum() / pairs)
        return loss

    with staged_output(out_dir, enabled=main) as tmp:
        logger = open_metrics(tmp, cfg, enabled=main)
        step, pairs_seen, t_eval = 0, 0, 0.0

        def elapsed() -> float:
            return time.perf_counter() - t_start - t_eval

        t_start = time.perf_counter()  # pairs/s counts the whole loop (data included), not the evaluations
        with progress_bar(total_steps, "reward model", keys=("loss", "acc", "eval_acc"), enabled=main) as bar:
            # 3. Bradley-Terry updates: every process walks the same global batches and trains on its share.
            for _epoch in range(cfg.epochs):
                for rows in batches:
                    weight_sum = float(sum(train_data.weights[i] for i in rows))  # of the global batch
                    own, real = process_share(rows, rank, world)
                    parts = [_collate(train_data, chunk.tolist(), pad_id, real)
                             for chunk in micro_batches(torch.tensor(own), cfg.micro_batch_size)]
                    stats = StepStats()
                    optimizer_step(accelerator, scorer, optimizer, scheduler, parts,
                                   partial(micro_loss, weight_sum=weight_sum, pairs=len(rows), stats=stats),
                                   cfg.max_grad_norm)
                    stats.end_step()
                    step += 1
                    pairs_seen += len(rows)
                    shown = stats.summary(accelerator)
                    if step % cfg.log_every == 0 or step == total_steps:
                        logger.log(step, {**shown, "train/lr": scheduler.get_last_lr()[0],
                                          "perf/pairs_per_s": pairs_seen / max(elapsed(), 1e-9)})
                    bar_values = {"loss": shown["loss/train"], "acc": shown["train/accuracy"]}
                    # 4. Held-out evaluation.
                    if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                        t0 = time.perf_counter()
                        metrics = evaluate(scorer, eval_data, accelerator, cfg, pad_id)
                        t_eval += time.perf_counter() - t0
                        logger.log(step, metrics)
                        bar_values["eval_acc"] = metrics["eval/accuracy"]
                    bar.update(1, **bar_values)
        train_s = elapsed()
        metrics = evaluate(scorer, eval_data, accelerator, cfg, pad_id)
        metrics.update({"perf/pairs_per_s": pairs_seen / max(train_s, 1e-9), "perf/train_s": train_s,
                        "train/steps": step, **counts})

        # 5. Normalisation and saving.
        unwrapped = accelerator.unwrap_model(scorer).model
        if cfg.normalize != "none":
            raw = normalization_scores(accelerator.unwrap_model(scorer), cfg, tokenizer, train_data)
            if cfg.normalize == "mean_std":
                gain, bias = normalization_gain_bias(raw, target_mean=0.0, target_std=1.0)
                gain, bias = float(gain), float(bias)
            else:
                gain, bias = 1.0, -raw.mean().item()
            set_normalization(unwrapped, gain, bias)
            metrics.update({"normalize/gain": gain, "normalize/bias": bias, "normalize/raw_mean": raw.mean().item()})
        logger.log(step, metrics)
        logger.close()
        if main:
            if lora is not None:
                # The reward model is the merged folder (a plain AutoModelForSequenceClassification, head
                # included); the LoRA matrices alone go to adapter/ for reference.
                lora.save(tmp / "adapter")
                lora.save(tmp, merged=True)
            else:
                unwrapped.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            save_run_config(cfg, tmp)
            (tmp / "eval.json").write_text(json.dumps(metrics, indent=2))
        accelerator.wait_for_everyone()
    if main:
        print_table(f"reward model -> {out_dir}", [
            (accuracy_label(metrics), metrics["eval/accuracy"]),
            ("held-out loss", metrics["eval/loss"]),
            ("mean margin r_c - r_r", metrics["eval/margin"]),
            ("comparisons (train / eval)", f"{len(train_data)} / {len(eval_data)}"),
            ("pairs / s", metrics["perf/pairs_per_s"]),
        ])
    return metrics


def run(cfg: RewardConfig) -> Path:
    """CLI entry: train and return the output folder."""
    train(cfg)
    return Path(cfg.output_dir)
