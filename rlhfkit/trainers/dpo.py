"""Direct preference optimisation of the policy: DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023).

h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)], sequence log-probs
summed over the completion tokens only; loss -log sigmoid(beta h) (or the IPO square), from
rlhfkit.algos.dpo. The loop, in order:
  1. resolve max_length against the policy's (and the reference's) context; read and check the
     comparisons (all errors before any model is loaded), split off eval, tokenise: the same
     formats, truncation rules and dropped-pair counts as rlhfkit reward;
  2. the policy, and the frozen reference: a copy of the start policy (or --ref-model), or under
     LoRA the same weights with the adapters off; with --precompute-ref-logprobs the reference
     log-probs of every pair are computed once here and no reference model is kept;
  3. held-out evaluation of the start policy (policy == reference: implicit rewards exactly 0);
  4. for each batch, chosen and rejected go through ONE forward pass of the policy (and one of
     the reference unless precomputed); the loss of the global batch is minimised with AdamW,
     micro-batches and processes adding up to it (optimizer_step);
  5. held-out evaluation every eval_every steps and at the end;
  6. a resumable checkpoint every checkpoint_every steps and on SIGTERM / Ctrl-C (trainers/step_resume.py);
  7. save the policy as a plain
     transformers causal-LM folder (with LoRA the adapter in adapter/ and the merged weights),
     its tokenizer, config.yaml, metrics.jsonl and eval.json (into the folder .OUTPUT_DIR.partial,
     moved into place at the end).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from rlhfkit.algos.dpo import DPOStats, dpo_loss, ipo_loss, sequence_logprobs
from rlhfkit.data.batching import LengthGroupedBatches, ShuffledBatches, process_share
from rlhfkit.data.preferences import PreferenceExample, expand_pairs, load_examples
from rlhfkit.data.tokenize import encode_response, pad_left, pad_right, tokenize_pairs
from rlhfkit.errors import DataError, ModelError
from rlhfkit.models.context import model_context, resolve_length
from rlhfkit.models.kernels import autocast
from rlhfkit.models.loading import configure_loading, load_causal_lm, load_run_tokenizer, load_tokenizer
from rlhfkit.models.lora import LoRASpec, add_lora, evaluation_weights
from rlhfkit.models.packing import PackedGroups, pack_if_smaller, packed_length, packing_supported
from rlhfkit.models.policy import token_logprobs
from rlhfkit.rollout.scoring import same_tokenizer
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
from rlhfkit.trainers.dpo_config import DPOConfig
from rlhfkit.trainers.optim_step import StepStats, micro_batches, optimizer_step
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

LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}  # --loss -> the algos function (one equation each)
EVAL_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
             "logps/rejected")


# ---------------------------------------------------------------------------------------------
# Data: comparisons as (prompt, chosen completion, rejected completion) token ids
# ---------------------------------------------------------------------------------------------
@dataclass
class PreferenceTokens:
    """Tokenised comparisons, each split into its prompt and its two completions (each ending in EOS).

    Built from `tokenize_pairs` (so truncation and dropping are those of rlhfkit reward); the
    reference log-probs are filled in when they are precomputed."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    weights: list[float]  # 1 / K-choose-2 for the pairs of a ranked list of K, else 1
    truncated: int = 0  # pairs whose prompt lost tokens on the left
    dropped: int = 0  # pairs that did not fit max_length, left out
    dropped_rows: list[int] = dataclasses.field(default_factory=list)  # their source rows
    ref_chosen: torch.Tensor | None = None  # (N,) log pi_ref(y_c|x), once precomputed
    ref_rejected: torch.Tensor | None = None  # (N,)

    def __len__(self) -> int:
        return len(self.prompts)


def tokenize_comparisons(examples: list[PreferenceExample], tokenizer: Any, cfg: DPOConfig) -> PreferenceTokens:
    """Every comparison of the examples (ranked lists expanded with their weights), tokenised and split.

    A sequence is prompt + completion + EOS as `tokenize_pairs` writes it; the completion's length
    is that of the completion encoded alone, so the prompt is what precedes it. A pair whose
    prompt has no token (a dataset without prompts) gets the tokenizer's BOS, or its EOS (the
    document separator of GPT-2-style models), so that its first completion token is scored too;
    when that one token no longer fits max_length the pair is dropped and counted like the others.
    """
    pairs, rows = [], []
    for ex in examples:
        expanded = expand_pairs([ex], tokenizer)
        pairs += expanded
        rows += [ex.row] * len(expanded)
    tok = tokenize_pairs(pairs, tokenizer, cfg.max_length, cfg.truncation, rows=rows)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = PreferenceTokens([], [], [], [], truncated=tok.truncated, dropped=tok.dropped,
                           dropped_rows=list(tok.dropped_rows))
    for seq_c, seq_r, weight, i in zip(tok.chosen, tok.rejected, tok.weights, tok.kept_index):
        n_prompt = len(seq_c) - len(encode_response(tokenizer, pairs[i].chosen))
        prompt, chosen, rejected = seq_c[:n_prompt], seq_c[n_prompt:], seq_r[n_prompt:]
        if not prompt:
            if start is None or 1 + max(len(chosen), len(rejected)) > cfg.max_length:
                out.dropped += 1
                out.dropped_rows = sorted({*out.dropped_rows, rows[i]})
                continue
            prompt = [start]
        out.prompts.append(prompt)
        out.chosen.append(chosen)
        out.rejected.append(rejected)
        out.weights.append(weight)
    return out


def load_comparisons(cfg: DPOConfig, tokenizer: Any) -> tuple[PreferenceTokens, PreferenceTokens]:
    """Train and eval comparisons. Eval is split off by row (prompt), never by pair, with the same
    seeded split as rlhfkit reward, so pairs of one ranked list never land on both sides."""
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
    train = tokenize_comparisons(examples, tokenizer, cfg)
    evals = tokenize_comparisons(eval_examples, tokenizer, cfg)
    if len(train) == 0:
        raise DataError(f"{cfg.train_data}: every comparison is longer than max_length={cfg.max_length}; "
                        "raise --max-length")
    if len(evals) == 0:
        raise DataError(f"{cfg.eval_data or cfg.train_data}: no eval comparison fits max_length={cfg.max_length}")
    return train, evals


def length_counts(train: PreferenceTokens, evals: PreferenceTokens, max_length: int) -> dict[str, int]:
    """What max_length did to the data (in eval.json and metrics.jsonl, as rlhfkit reward writes them)."""
    return {"data/max_length": max_length, "data/train_truncated": train.truncated, "data/train_dropped": train.dropped,
            "data/eval_truncated": evals.truncated, "data/eval_dropped": evals.dropped}


def _rows_text(rows: list[int], shown: int = 8) -> str:
    """'3, 17, 22' or '3, 17, ... (12 rows)'."""
    text = ", ".join(map(str, rows[:shown]))
    return text if len(rows) <= shown else f"{text}, ... ({len(rows)} rows)"


def collate(data: PreferenceTokens, rows: list[int], pad_id: int, real: bool = True,
            pack: bool = False) -> dict[str, Any]:
    """A batch of B comparisons as 2B rows, [chosen; rejected]: each prompt twice, left-padded (positions
    skip the pad), the completions right-padded after it, and the mask of the completion tokens.
    With `pack`, also each comparison as one row, its prompt once (`packed`, models/packing.py), when
    that is fewer tokens; the forward then runs over those rows."""
    prompts = [data.prompts[i] for i in rows]
    prompt_ids, prompt_mask = pad_left(prompts + prompts, pad_id)  # (2B, P)
    response_ids, response_mask = pad_right([data.chosen[i] for i in rows] + [data.rejected[i] for i in rows],
                                            pad_id)  # (2B, T)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": response_ids,
        "response_mask": response_mask.bool(),  # True on completion tokens (EOS included), False on padding
        "weights": torch.tensor([data.weights[i] for i in rows], dtype=torch.float32),  # (B,)
        "real": torch.full((len(rows),), float(real)),  # 0 for a process's stand-in row (see process_share)
    }
    if data.ref_chosen is not None and data.ref_rejected is not None:
        index = torch.tensor(rows)
        batch["ref_chosen"], batch["ref_rejected"] = data.ref_chosen[index], data.ref_rejected[index]  # (B,) each
    if pack:
        order = [(g, 0) for g in range(len(rows))] + [(g, 1) for g in range(len(rows))]
        packed = pack_if_smaller([(data.prompts[i] + data.chosen[i], data.prompts[i] + data.rejected[i]) for i in rows],
                                 order, pad_id, prompt_ids.shape[1] + response_ids.shape[1])
        if packed is not None:
            batch["packed"] = packed
    return batch


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Models: the policy's sequence log-probs behind one forward, and the reference
# ---------------------------------------------------------------------------------------------
class SequenceLogprobs(torch.nn.Module):
    """log pi(y|x) of a causal LM, summed over completion tokens: (2B,) from one forward.

    A module (not a function) so that accelerate's DDP wrapper sees the forward and synchronises
    the gradients. Positions skip the left padding and the LM head runs over completion positions
    only (`token_logprobs`), for any architecture."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, packed: PackedGroups | None = None) -> torch.Tensor:
        logp = token_logprobs(self.policy, prompt_ids, prompt_mask, response_ids, packed=packed).logp  # (2B, T)
        return sequence_logprobs(logp.float(), response_mask)  # (2B,)


RefLogprobs = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def load_reference(cfg: DPOConfig, tokenizer: Any) -> torch.nn.Module:
    """The --ref-model policy, checked to read the policy's token ids."""
    ref_tokenizer = load_tokenizer(cfg.ref_model, padding_side="left")
    if not same_tokenizer(ref_tokenizer, tokenizer):
        raise ModelError(f"{cfg.ref_model}: the reference's tokenizer differs from the policy's; DPO compares "
                         "log-probs of the same token ids, so pass a reference with the policy's tokenizer")
    return load_causal_lm(cfg.ref_model, tokenizer)


@torch.no_grad()
def precompute_reference(ref_logps: RefLogprobs, data: PreferenceTokens, accelerator: Any, cfg: DPOConfig,
                         pad_id: int, pack: bool = False) -> None:
    """Fill data.ref_chosen / ref_rejected: each process scores its share of every chunk, then all gather.
    `pack` as in training, so the reference numbers are those a live reference would give there."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[int, float, float]] = []
    for start in range(0, len(data), cfg.eval_batch_size):
        rows, real = process_share(range(start, min(start + cfg.eval_batch_size, len(data))), rank, world)
        if not real:
            continue
        ref_c, ref_r = ref_logps(_to(collate(data, rows, pad_id, pack=pack), accelerator.device))
        mine += zip(rows, ref_c.tolist(), ref_r.tolist())
    gathered = gather_object(mine) if world > 1 else mine
    chosen, rejected = torch.empty(len(data)), torch.empty(len(data))  # float32, as the live reference gives them
    for i, c, r in gathered:
        chosen[i], rejected[i] = c, r
    data.ref_chosen, data.ref_rejected = chosen, rejected


def loss_of(cfg: DPOConfig) -> Callable[..., tuple[torch.Tensor, DPOStats]]:
    """The --loss function with this run's hyperparameters bound."""
    extra = {"label_smoothing": cfg.label_smoothing} if cfg.loss == "dpo" else {}
    return partial(LOSSES[cfg.loss], beta=cfg.beta, **extra)


@torch.no_grad()
def evaluate(policy: torch.nn.Module, ref_logps: RefLogprobs, data: PreferenceTokens, accelerator: Any,
             cfg: DPOConfig, pad_id: int, pack: bool = False) -> dict[str, float]:
    """Held-out loss, implicit rewards (chosen, rejected, margin, accuracy) and sequence log-probs.

    `policy` is the unwrapped SequenceLogprobs. Each process scores its share of every eval batch;
    the log-probs are gathered, and every metric is computed once over all pairs in float64."""
    policy.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[float, float, float, float, float]] = []
    for start in range(0, len(data), cfg.eval_batch_size):
        rows, real = process_share(range(start, min(start + cfg.eval_batch_size, len(data))), rank, world)
        if not real:
            continue
        batch = _to(collate(data, rows, pad_id, pack=pack), accelerator.device)
        with accelerator.autocast():
            logp_c, logp_r = policy(batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                    batch["response_mask"], batch.get("packed")).chunk(2)
        ref_c, ref_r = ref_logps(batch)
        mine += zip(logp_c.tolist(), logp_r.tolist(), ref_c.tolist(), ref_r.tolist(), batch["weights"].tolist())
    rows = gather_object(mine) if world > 1 else mine
    logp_c, logp_r, ref_c, ref_r, weights = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    loss, stats = loss_of(cfg)(logp_c, logp_r, ref_c, ref_r, weights=weights)
    policy.train()
    return {
        "eval/loss": loss.item(),
        "eval/rewards/chosen": stats.chosen_rewards.mean().item(),
        "eval/rewards/rejected": stats.rejected_rewards.mean().item(),
        "eval/rewards/margin": stats.reward_margin.item(),
        "eval/rewards/accuracy": stats.reward_accuracy.item(),
        "eval/logps/chosen": logp_c.mean().item(),
        "eval/logps/rejected": logp_r.mean().item(),
        "eval/pairs": len(logp_c),
    }


def resolve_max_length(cfg: DPOConfig) -> DPOConfig:
    """`cfg` with max_length in tokens: 0 becomes the policy's context (and the reference's, when shorter),
    read from their configs (no weights); a value longer than either context is a ConfigError naming it."""
    length = resolve_length(cfg.max_length, model_context(cfg.policy), "max_length", "policy")
    if cfg.ref_model:
        ref_context = model_context(cfg.ref_model)
        if cfg.max_length == 0 and ref_context.tokens is not None:
            length = min(length, ref_context.tokens)
        else:
            resolve_length(length, ref_context, "max_length", "reference model")
    return dataclasses.replace(cfg, max_length=length)


def train(cfg: DPOConfig) -> dict[str, float]:
    """Optimise the policy with DPO / IPO as configured; returns the final evaluation metrics."""
    configure_loading(cfg)  # --dtype and --trust-remote-code, for the configs read below too
    cfg = resolve_max_length(cfg)  # before any work: a too-long max_length is one line, not an IndexError
    done = completed_run(cfg)
    if done is not None:
        return done
    resume_path = find_resume(cfg)  # --resume: the newest intact checkpoint in .OUTPUT_DIR.partial, or None
    out_dir = check_output_dir(cfg.output_dir, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    seed_everything(cfg.seed)
    device = accelerator.device

    # 1. Data (checked completely before any model is loaded).
    tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.policy, padding_side="left")
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

    # 2. Policy and reference.
    model = load_causal_lm(cfg.policy, tokenizer)
    spec = LoRASpec.from_config(cfg)
    reference_model = load_reference(cfg, tokenizer) if cfg.ref_model else None
    if reference_model is None and spec is None and not cfg.precompute_ref_logprobs:
        # the frozen start policy (precomputed log-probs need no copy: the policy is the reference until step 1)
        reference_model = copy.deepcopy(model)
    if cfg.gradient_checkpointing:  # recompute activations in the backward: less memory, more time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = None
    if spec is not None:
        lora = add_lora(model, spec, "CAUSAL_LM")  # only the adapters train; B = 0: policy == base at the start
        model = lora.model
    policy = SequenceLogprobs(model)
    optimizer = make_optimizer(policy.parameters(), cfg)
    # the reference reads the same packed rows, so both must take the 4D mask
    pack = cfg.share_prefix and all(packing_supported(m) for m in (model, reference_model) if m is not None)
    if cfg.group_by_length:  # packed: batch by the length of the packed row
        lengths = [packed_length((p + c, p + r)) if pack else len(p) + max(len(c), len(r)) for p, c, r in
                   zip(train_data.prompts, train_data.chosen, train_data.rejected)]
        batches = LengthGroupedBatches(lengths, cfg.batch_size, cfg.seed)
    else:
        batches = ShuffledBatches(len(train_data), cfg.batch_size, cfg.seed)
    total_steps = cfg.epochs * len(batches)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)  # not the scheduler: see make_scheduler
    unwrapped = accelerator.unwrap_model(policy)
    reference = None
    if reference_model is not None:
        reference = SequenceLogprobs(reference_model).to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def reference_forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,), (B,) reference log-probs from one forward of 2B rows through the frozen reference."""
        args = (batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"],
                batch.get("packed"))
        with accelerator.autocast():
            if reference is not None:
                return reference(*args).chunk(2)
            if lora is not None:
                with lora.adapters_off():  # the base weights: the start policy, one copy in memory
                    return unwrapped(*args).chunk(2)
            # only while precomputing, before the first update: the policy is still the reference
            return unwrapped(*args).chunk(2)

    ref_logps: RefLogprobs = reference_forward
    if cfg.precompute_ref_logprobs:
        t0 = time.perf_counter()
        unwrapped.eval()
        for data in (train_data, eval_data):
            precompute_reference(reference_forward, data, accelerator, cfg, tokenizer.pad_token_id, pack)
        unwrapped.train()
        del reference, reference_model  # freed: every reference number the run needs is in the data now

        def ref_logps(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return batch["ref_chosen"], batch["ref_rejected"]  # (B,), (B,) gathered by collate

        if main:
            console.print(f"reference log-probs of {len(train_data)} + {len(eval_data)} pairs precomputed in "
                          f"{time.perf_counter() - t0:.1f} s")
    rank, world = accelerator.process_index, accelerator.num_processes
    pad_id = tokenizer.pad_token_id
    pair_loss = loss_of(cfg)

    def micro_loss(micro: dict[str, torch.Tensor], weight_sum: float, pairs: int, stats: StepStats) -> torch.Tensor:
        """This micro-batch's part of the global batch's loss (divided by the global weight sum); its
        metric contributions divided by the global pair count, so the parts add up to the batch's."""
        micro = _to(micro, device)
        packed = micro.get("packed")
        width = packed.input_ids.shape[1] if packed is not None else micro["prompt_ids"].shape[1] + micro[
            "response_ids"].shape[1]
        with autocast(accelerator, width):
            logp = policy(micro["prompt_ids"], micro["prompt_mask"], micro["response_ids"],
                          micro["response_mask"], packed=packed)  # (2B,), one forward for both
        logp_c, logp_r = logp.chunk(2)
        ref_c, ref_r = ref_logps(micro)
        real = micro["real"]
        loss, s = pair_loss(logp_c, logp_r, ref_c, ref_r, weights=micro["weights"] * real, denominator=weight_sum)
        stats.add("loss/train", loss.detach())
        stats.add("rewards/chosen", (s.chosen_rewards * real).sum() / pairs)
        stats.add("rewards/rejected", (s.rejected_rewards * real).sum() / pairs)
        stats.add("rewards/margin", ((s.chosen_rewards - s.rejected_rewards) * real).sum() / pairs)
        stats.add("rewards/accuracy", ((s.chosen_rewards > s.rejected_rewards).float() * real).sum() / pairs)
        stats.add("logps/chosen", (logp_c.detach() * real).sum() / pairs)
        stats.add("logps/rejected", (logp_r.detach() * real).sum() / pairs)
        return loss

    def held_out() -> dict[str, float]:  # the held-out metrics of the weights that are saved (merged with LoRA)
        with evaluation_weights(lora, accelerator.mixed_precision):
            return evaluate(unwrapped, ref_logps, eval_data, accelerator, cfg, pad_id, pack)

    step, pairs_seen, t_eval, t_before = 0, 0, 0.0, 0.0
    start: dict[str, float] = {}
    if resume_path is not None:
        # after the reference is built or precomputed: it stays the start policy
        state = load_step_checkpoint(resume_path, cfg, "dpo", unwrapped.policy, optimizer, scheduler, total_steps,
                                     main)
        step, pairs_seen, t_before = int(state["step"]), int(state["pairs_seen"]), float(state["elapsed"])
        start = dict(state["start"])  # the start policy's evaluation, logged by the first run
    catch_stop_signals()  # SIGTERM / Ctrl-C: checkpoint after the step, then stop

    with run_folder(out_dir, cfg, main, resume_path, step) as (tmp, logger):
        # 3. The start policy on the held-out pairs (the baseline the final numbers are read against).
        if resume_path is None:
            start = held_out()
            logger.log(0, {**start, **counts})
        checkpoints = StepCheckpoints(tmp, cfg, accelerator, lambda: unwrapped.policy, optimizer, scheduler,
                                      total_steps)

        def elapsed() -> float:
            return t_before + time.perf_counter() - t_start - t_eval

        t_start = time.perf_counter()  # pairs/s counts the whole loop (data included), not the evaluations
        with progress_bar(total_steps, "dpo", keys=("loss", "acc", "eval_acc"), enabled=main) as bar:
            bar.update(step)
            # 4. DPO updates: every process walks the same global batches and trains on its share.
            for rows in remaining_batches(batches, cfg.epochs, step):  # after those a resumed run did
                weight_sum = float(sum(train_data.weights[i] for i in rows))  # of the global batch
                own, real = process_share(rows, rank, world)
                parts = [collate(train_data, chunk.tolist(), pad_id, real, pack)
                         for chunk in micro_batches(torch.tensor(own), cfg.micro_batch_size)]
                stats = StepStats()
                optimizer_step(accelerator, policy, optimizer, scheduler, parts,
                               partial(micro_loss, weight_sum=weight_sum, pairs=len(rows), stats=stats),
                               cfg.max_grad_norm)
                stats.end_step()
                step += 1
                pairs_seen += len(rows)
                shown = stats.summary(accelerator)
                if step % cfg.log_every == 0 or step == total_steps:
                    logger.log(step, {**shown, "train/lr": scheduler.get_last_lr()[0],
                                      "perf/pairs_per_s": pairs_seen / max(elapsed(), 1e-9)})
                bar_values = {"loss": shown["loss/train"], "acc": shown["rewards/accuracy"]}
                # 5. Held-out evaluation.
                if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                    t0 = time.perf_counter()
                    metrics = held_out()
                    t_eval += time.perf_counter() - t0
                    logger.log(step, metrics)
                    bar_values["eval_acc"] = metrics["eval/rewards/accuracy"]
                bar.update(1, **bar_values)
                # 6. Checkpoints on schedule, and when SIGTERM / Ctrl-C asked the run to stop.
                checkpoints.after_step({"step": step, "pairs_seen": pairs_seen, "elapsed": elapsed(),
                                        "start": start}, logger)
        train_s = elapsed()
        metrics = held_out()
        metrics.update({"perf/pairs_per_s": pairs_seen / max(train_s, 1e-9), "perf/train_s": train_s,
                        "train/steps": step, **counts})
        logger.log(step, metrics)
        logger.close()
        restore_signals()
        metrics.update({f"start/{k}": v for k, v in start.items() if k != "eval/pairs"})
        if main:
            save_causal_lm(tmp, unwrapped.policy, tokenizer, lora)  # with LoRA, merged too: a plain LM for --policy
            save_run_config(cfg, tmp)
            (tmp / "eval.json").write_text(json.dumps(metrics, indent=2))
            drop_checkpoints(tmp)
        accelerator.wait_for_everyone()
    if main:
        dropped = int(metrics["data/eval_dropped"])
        pairs = f"{metrics['eval/pairs']} held-out pairs" + (f" ({dropped} did not fit max_length)" if dropped else "")
        print_table(f"dpo ({cfg.loss}, beta {cfg.beta:g}) -> {out_dir}", [
            ("held-out loss, start -> end", f"{start['eval/loss']:.4g} -> {metrics['eval/loss']:.4g}"),
            ("implicit-reward accuracy, start -> end",
             f"{start['eval/rewards/accuracy']:.4g} -> {metrics['eval/rewards/accuracy']:.4g}"),
            ("mean margin r_c - r_r", metrics["eval/rewards/margin"]),
            ("evaluated on", pairs),
            ("comparisons (train / eval)", f"{len(train_data)} / {len(eval_data)}"),
            ("pairs / s", metrics["perf/pairs_per_s"]),
        ])
    return metrics


def run(cfg: DPOConfig) -> Path:
    """CLI entry: train and return the output folder."""
    train(cfg)
    return Path(cfg.output_dir)
