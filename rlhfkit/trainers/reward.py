"""Reward model training: r(x, y) = linear head on the LM trunk, loss -log sigmoid(r_c - r_r) on pairs,
or -log P(ranking) under Plackett-Luce on whole ranked lists (`ranking_loss = "listwise"`).

The loop, in order:
  1. resolve max_length against the model's context (0 = the context; longer is an error), read and
     check the comparisons (all errors before any model is loaded), split off eval;
     with --criterion, keep the rows of the named criteria (one head each);
  2. build the reward model (trunk of the base LM + a new scalar head, or one head per criterion);
  3. for each batch, all its responses (chosen and rejected, or every completion of every ranked
     list) go through ONE forward pass, and the Bradley-Terry loss (pairwise) or the Plackett-Luce
     loss (listwise; both in rlhfkit.algos.reward) is minimised with AdamW; with several criteria a
     batch may mix them, each comparison's loss reads only its own criterion's head and the batch
     loss is the same mean over comparisons as with one head (every comparison weighs the same, so a
     criterion with more comparisons weighs more);
  4. evaluate on the held-out comparisons (loss, pairwise accuracy, margin, reward mean/std; and
     Kendall tau / Spearman of the scores against ranked lists of 3+ completions); pairs (or
     lists) that do not fit max_length even with the prompt truncated are left out and counted
     (data/*_dropped);
  5. optionally normalise rewards on a reference set (each head its own gain and bias, all heads on
     the same reference responses), then save the model, tokenizer,
     config.yaml, metrics.jsonl and eval.json (into a temporary folder moved into place at the end).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import gather_object

from rlhfkit.algos.masked import masked_mean
from rlhfkit.algos.reward import (
    bradley_terry_loss,
    normalization_gain_bias,
    plackett_luce_loss,
    preference_accuracy,
    ranking_to_pairs,
    reward_centering_penalty,
)
from rlhfkit.data.batching import LengthGroupedBatches, ShuffledBatches, process_share
from rlhfkit.data.io import read_rows, row_numbers
from rlhfkit.data.preferences import PreferenceExample, expand_groups, expand_pairs, load_examples
from rlhfkit.data.tokenize import (
    TokenizedGroups,
    TokenizedPairs,
    collate_groups,
    collate_pairs,
    encode_prompt,
    encode_response,
    pad_right,
    tokenize_groups,
    tokenize_pairs,
)
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models.context import model_context, resolve_length
from rlhfkit.models.kernels import autocast
from rlhfkit.models.loading import configure_loading, load_run_tokenizer
from rlhfkit.models.lora import LoRASpec, add_lora, evaluation_weights
from rlhfkit.models.packing import PackedGroups, pack_if_smaller, packed_length, packing_supported
from rlhfkit.models.reward_model import CriterionScorer, build_reward_model, criteria_of, set_normalization
from rlhfkit.models.trunk_and_heads import score_head
from rlhfkit.tracking.console import console, print_table, progress_bar
from rlhfkit.trainers.common import (
    check_finite,
    check_output_dir,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_run_config,
    seed_everything,
)
from rlhfkit.trainers.master_weights import MasterWeights, check_bf16_weights
from rlhfkit.trainers.optim_step import StepStats, micro_batches, optimizer_step
from rlhfkit.trainers.reward_config import RewardConfig
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


def resolve_max_length(cfg: RewardConfig) -> RewardConfig:
    """`cfg` with max_length in tokens: 0 becomes the model's context (read from its config, no weights);
    a value longer than the context is a ConfigError naming both."""
    return dataclasses.replace(cfg, max_length=resolve_length(cfg.max_length, model_context(cfg.model), "max_length"))


Data = TokenizedPairs | TokenizedGroups  # pairs (pairwise loss) or ranked lists (listwise loss)


def length_counts(train_data: Data, eval_data: Data, max_length: int) -> dict[str, int]:
    """What max_length did to the data: prompts truncated on the left, and pairs (listwise: ranked lists)
    left out because they do not fit even so (in eval.json and metrics.jsonl, so the held-out accuracy
    names the pairs it is over); listwise also counts the lists kept without a completion that does not fit."""
    counts = {"data/max_length": max_length,
              "data/train_truncated": train_data.truncated, "data/train_dropped": train_data.dropped,
              "data/eval_truncated": eval_data.truncated, "data/eval_dropped": eval_data.dropped}
    if isinstance(train_data, TokenizedGroups):
        counts.update({"data/train_trimmed": train_data.trimmed, "data/eval_trimmed": eval_data.trimmed})
    return counts


def accuracy_label(metrics: dict[str, Any]) -> str:
    """'held-out accuracy', or 'held-out accuracy (N of M pairs; K did not fit max_length)' when K > 0
    (listwise: '(N pairs of G of M ranked lists; K did not fit max_length)')."""
    dropped, pairs = int(metrics.get("data/eval_dropped", 0)), int(metrics["eval/pairs"])
    if not dropped:
        return "held-out accuracy"
    if "eval/groups" in metrics:
        groups = int(metrics["eval/groups"])
        return (f"held-out accuracy ({pairs} pairs of {groups} of {groups + dropped} ranked lists; {dropped} did "
                "not fit max_length)")
    return f"held-out accuracy ({pairs} of {pairs + dropped} pairs; {dropped} did not fit max_length)"


NO_CRITERION = "rows without a 'criterion' field"


class Split(NamedTuple):
    """The rows a run trains and evaluates on, after choosing its criteria."""

    train: list[PreferenceExample]
    eval: list[PreferenceExample]
    criteria: tuple[str, ...]  # one head each, in head order; () = one unnamed head
    left_out: tuple[int, int]  # train / eval rows of criteria not chosen


def choose_criteria(cfg: RewardConfig, examples: list[PreferenceExample]) -> tuple[str, ...]:
    """The criteria to train, one head each: --criterion as given (each must have rows in train_data), else
    the data's one named criterion, else () for rows without the field. Rows of several criteria without
    --criterion are a DataError saying which flag to pass."""
    present = sorted({ex.criterion for ex in examples if ex.criterion is not None})
    unnamed = any(ex.criterion is None for ex in examples)
    found = ", ".join(present + ([NO_CRITERION] if unnamed else []))
    if cfg.criterion:
        twice = sorted({name for name in cfg.criterion if cfg.criterion.count(name) > 1})
        if twice:
            raise ConfigError(f"setting 'criterion': {', '.join(twice)} named twice; name each criterion once")
        unknown = [name for name in cfg.criterion if name not in present]
        if unknown:
            raise ConfigError(f"setting 'criterion': {cfg.train_data} has no rows of criterion "
                              f"{', '.join(unknown)}; its rows are of: {found}")
        return tuple(cfg.criterion)
    if len(present) > 1:
        raise DataError(f"{cfg.train_data}: rows of several criteria ({found}); pass --criterion "
                        f"{','.join(present)} (one model, one head each) or --criterion {present[0]} (one criterion)")
    if present and unnamed:
        raise DataError(f"{cfg.train_data}: rows of several criteria ({found}); pass --criterion {present[0]} to "
                        "train on its rows only, or name the criterion of every row")
    return tuple(present)


def split_examples(cfg: RewardConfig) -> Split:
    """Train and eval rows, read and checked, of the chosen criteria (`choose_criteria`; the rows of other
    criteria are left out and counted). Eval is split off by row (prompt), never by pair, so pairs of one
    ranked list never land on both sides."""
    examples = load_examples(cfg.train_data)
    criteria = choose_criteria(cfg, examples)

    def chosen(rows: list[PreferenceExample]) -> list[PreferenceExample]:
        return [ex for ex in rows if not criteria or ex.criterion in criteria]

    kept = chosen(examples)
    left_train = len(examples) - len(kept)
    examples = kept
    left_eval = 0
    if cfg.eval_data:
        eval_examples = load_examples(cfg.eval_data)
        kept = chosen(eval_examples)
        left_eval = len(eval_examples) - len(kept)
        if not kept:
            raise DataError(f"{cfg.eval_data}: no row of criterion {', '.join(criteria)} to evaluate on; "
                            "add some or leave out --eval-data")
        eval_examples = kept
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
    return Split(examples, eval_examples, criteria, (left_train, left_eval))


def load_comparisons(cfg: RewardConfig, tokenizer: Any) -> tuple[TokenizedPairs, TokenizedPairs]:
    """Train and eval comparisons (pairs), tokenised; see `split_examples`."""
    examples, eval_examples, _, _ = split_examples(cfg)
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


def load_data(cfg: RewardConfig, tokenizer: Any) -> tuple[Data, Data, TokenizedGroups | None, Split]:
    """Train and eval data for the configured loss: pairs (pairwise) or ranked lists (listwise), plus the
    eval ranked lists the rank correlations are computed on (None when no eval row ranks 3+ completions),
    and the rows and criteria they come from (`split_examples`)."""
    split = split_examples(cfg)
    examples, eval_examples = split.train, split.eval
    if cfg.ranking_loss == "pairwise":
        train, evals = _tokenize(examples, tokenizer, cfg), _tokenize(eval_examples, tokenizer, cfg)
        if len(train) == 0:
            raise DataError(f"{cfg.train_data}: every comparison is longer than max_length={cfg.max_length}; "
                            "raise --max-length")
        if len(evals) == 0:
            raise DataError(f"{cfg.eval_data or cfg.train_data}: no eval comparison fits "
                            f"max_length={cfg.max_length}")
        ranked = _tokenize_groups(eval_examples, tokenizer, cfg) if _has_lists(eval_examples) else None
        return train, evals, ranked, split
    train, evals = _tokenize_groups(examples, tokenizer, cfg), _tokenize_groups(eval_examples, tokenizer, cfg)
    if len(train) == 0:
        raise DataError(f"{cfg.train_data}: no ranked list keeps two differently ranked completions within "
                        f"max_length={cfg.max_length}; raise --max-length")
    if len(evals) == 0:
        raise DataError(f"{cfg.eval_data or cfg.train_data}: no eval ranked list fits max_length={cfg.max_length}")
    return train, evals, evals if _has_lists(eval_examples) else None, split


def _has_lists(examples: list[PreferenceExample]) -> bool:
    """Whether some row ranks 3 or more completions (where a rank correlation says more than accuracy)."""
    return any(len(ex.completions) > 2 for ex in examples)


def _tokenize_groups(examples: list[PreferenceExample], tokenizer: Any, cfg: RewardConfig) -> TokenizedGroups:
    """Every example as one ranked list (a pair: a list of two), tokenised; lists left out name their rows."""
    return tokenize_groups(expand_groups(examples, tokenizer), tokenizer, cfg.max_length, cfg.truncation,
                           rows=[ex.row for ex in examples])


def _rows_text(rows: list[int], shown: int = 8) -> str:
    """'3, 17, 22' or '3, 17, ... (12 rows)'."""
    text = ", ".join(map(str, rows[:shown]))
    return text if len(rows) <= shown else f"{text}, ... ({len(rows)} rows)"


def heads_of(data: Data, criteria: tuple[str, ...]) -> list[int]:
    """The head each comparison (pairs) or ranked list trains and is evaluated on: its criterion's place in
    `criteria` (0 for everything when the model has one head)."""
    if len(criteria) < 2:
        return [0] * len(data)
    return [criteria.index(c) for c in data.criteria]  # type: ignore[arg-type]  # rows were filtered to criteria


def own_head(scores: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Each row's score on its own criterion's head: (N, C) scores, (N,) head indices -> (N,)."""
    return scores.gather(1, heads.view(-1, 1).to(scores.device)).squeeze(1)


def _collate(data: TokenizedPairs, rows: list[int], pad_id: int, real: bool = True,
             heads: list[int] | None = None, pack: bool = False) -> dict[str, Any]:
    batch: dict[str, Any] = collate_pairs(
        [(data.chosen[i], data.rejected[i], data.weights[i], data.margins[i]) for i in rows], pad_id)
    if pack:  # chosen and rejected after one copy of their prompt; rows of the scores stay [chosen; rejected]
        order = [(g, 0) for g in range(len(rows))] + [(g, 1) for g in range(len(rows))]
        batch["packed"] = pack_if_smaller([(data.chosen[i], data.rejected[i]) for i in rows], order, pad_id,
                                          batch["input_ids"].shape[1])
    batch["real"] = torch.full((len(rows),), float(real))  # 0 for a process's stand-in row (see process_share)
    batch["has_margins"] = any(data.margins[i] for i in rows)  # decided on the CPU: no device sync per step
    batch["heads"] = torch.tensor([heads[i] if heads else 0 for i in rows], dtype=torch.long)  # (B,) criterion
    return batch


def _collate_groups(data: TokenizedGroups, rows: list[int], pad_id: int, real: bool = True,
                    heads: list[int] | None = None, pack: bool = False) -> dict[str, Any]:
    batch: dict[str, Any] = collate_groups([(data.sequences[i], data.ranks[i], data.margins[i]) for i in rows],
                                           pad_id)
    if pack:  # every completion of a list after one copy of its prompt, in collate_groups' row order
        k = max(len(data.sequences[i]) for i in rows)
        order = [(g, j) for j in range(k) for g, i in enumerate(rows) if j < len(data.sequences[i])]
        batch["packed"] = pack_if_smaller([data.sequences[i] for i in rows], order, pad_id,
                                          batch["input_ids"].shape[1])
    batch["real"] = torch.full((len(rows),), float(real))  # (B,) 0 for a process's stand-in list
    batch["pair_real"] = torch.full((len(batch["better"]),), float(real))  # (P,) the same, per pair
    group_heads = torch.tensor([heads[i] if heads else 0 for i in rows], dtype=torch.long)  # (B,) criterion
    batch["heads"] = group_heads[batch["slots"] // batch["mask"].shape[1]]  # (N,) each completion's list's head
    return batch


def group_loss(scores: torch.Tensor, batch: dict[str, torch.Tensor], cfg: RewardConfig, groups: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plackett-Luce loss of (N, C) scores laid out as `collate_groups` lays out its rows, each list on its
    own criterion's head, as this micro-batch's part of the global batch (divided by the global batch's
    number of lists). Returns the loss and the (P,) rewards of every pair's better and worse completion."""
    scores = own_head(scores, batch["heads"])  # (N,)
    b, k = batch["mask"].shape
    flat = scores.float().new_zeros(b * k).scatter(0, batch["slots"], scores.float())  # (B*K,) 0 on padding
    rewards = flat.view(b, k)  # (B, K)
    loss = plackett_luce_loss(rewards, batch["ranks"], batch["mask"], weights=batch["real"], denominator=groups)
    if cfg.center_rewards_coef > 0:
        # (2 * list mean)^2: for a pair exactly the pairwise (r_c + r_r)^2
        centre = masked_mean(rewards, batch["mask"], dim=-1) * batch["real"]  # (B,)
        loss = loss + cfg.center_rewards_coef * reward_centering_penalty(centre, centre, denominator=groups)
    return loss, flat[batch["better"]], flat[batch["worse"]]


def pair_loss(scores: torch.Tensor, batch: dict[str, torch.Tensor], cfg: RewardConfig, weight_sum: float,
              pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss of (2B, C) scores laid out as [chosen; rejected], each pair on its own criterion's
    head, as this micro-batch's part of the global batch: divided by the global batch's weight sum (and
    pair count for the centring term), so the parts add up to the whole batch's loss."""
    r_chosen, r_rejected = own_head(scores, batch["heads"].repeat(2)).float().chunk(2)  # (B,) each
    margin = batch["margins"] if cfg.margin_column and batch["has_margins"] else None
    weights = batch["weights"] * batch["real"]
    loss = bradley_terry_loss(r_chosen, r_rejected, margin=margin, weights=weights, denominator=weight_sum)
    if cfg.center_rewards_coef > 0:
        centred = reward_centering_penalty(r_chosen * batch["real"], r_rejected * batch["real"], denominator=pairs)
        loss = loss + cfg.center_rewards_coef * centred
    return loss, r_chosen, r_rejected


@torch.no_grad()
def pair_scores(scorer: torch.nn.Module, data: TokenizedPairs, accelerator: Any, cfg: RewardConfig, pad_id: int,
                heads: list[int] | None = None) -> list[tuple[float, float, float, float, int]]:
    """(r_c, r_r, weight, margin, head) of every held-out pair, each scored on its own criterion's head.

    Each process scores its share of every eval batch; the scores are gathered before any metric."""
    scorer.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[float, float, float, float, int]] = []
    for start in range(0, len(data), cfg.eval_batch_size):
        rows, real = process_share(range(start, min(start + cfg.eval_batch_size, len(data))), rank, world)
        if not real:
            continue
        batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                 for k, v in _collate(data, rows, pad_id, heads=heads).items()}
        with accelerator.autocast():
            scores = scorer(batch["input_ids"], batch["attention_mask"])  # (2B, C)
        r_c, r_r = own_head(scores, batch["heads"].repeat(2)).float().chunk(2)
        mine += zip(r_c.tolist(), r_r.tolist(), batch["weights"].tolist(), batch["margins"].tolist(),
                    batch["heads"].tolist())
    rows = gather_object(mine) if world > 1 else mine
    scorer.train()
    return rows


def pair_metrics(rows: list[tuple[float, ...]], cfg: RewardConfig) -> dict[str, float]:
    """eval/loss (Bradley-Terry, weighted), eval/accuracy, eval/margin, eval/reward_mean/std (over the pairs'
    entries) and eval/pairs, from (r_c, r_r, weight, margin, ...) per pair."""
    r_c, r_r, w, m = (torch.tensor(col, dtype=torch.float64) for col in list(zip(*rows))[:4])
    use_margin = cfg.margin_column and bool(m.any())
    all_r = torch.cat([r_c, r_r])
    return {
        "eval/loss": bradley_terry_loss(r_c, r_r, margin=m if use_margin else None, weights=w).item(),
        "eval/accuracy": preference_accuracy(r_c, r_r).item(),
        "eval/margin": (r_c - r_r).mean().item(),
        "eval/reward_mean": all_r.mean().item(),
        "eval/reward_std": all_r.std(unbiased=False).item(),
        "eval/pairs": len(r_c),
    }


@torch.no_grad()
def group_scores(scorer: torch.nn.Module, data: TokenizedGroups, accelerator: Any, cfg: RewardConfig,
                 pad_id: int, heads: list[int] | None = None) -> list[list[float]]:
    """The score of every completion of every ranked list (in data order), each completion scored once, on
    its list's criterion's head.

    Each process scores its share of every eval batch of lists; the scores are gathered with their
    list index and put back in order."""
    scorer.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine: list[tuple[int, list[float]]] = []
    for start in range(0, len(data), cfg.eval_batch_size):
        rows, real = process_share(range(start, min(start + cfg.eval_batch_size, len(data))), rank, world)
        if not real:
            continue
        batch = _collate_groups(data, rows, pad_id, heads=heads)
        with accelerator.autocast():
            scores = scorer(batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device))
        scores = own_head(scores, batch["heads"])  # (N,)
        b, k = batch["mask"].shape
        grid = torch.zeros(b * k, dtype=torch.float64).scatter(0, batch["slots"], scores.double().cpu()).view(b, k)
        mine += [(i, grid[g, : len(data.ranks[i])].tolist()) for g, i in enumerate(rows)]
    gathered = gather_object(mine) if world > 1 else mine
    scorer.train()
    return [scores for _, scores in sorted(gathered)]


def fractional_ranks(values: list[float]) -> list[float]:
    """1-based ranks of `values` in increasing order, tied values sharing the mean of their places."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for j in range(start, end + 1):
            out[order[j]] = (start + end) / 2 + 1
        start = end + 1
    return out


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b = (C - D) / sqrt((n0 - n_x)(n0 - n_y)): C, D concordant and discordant pairs, n0 = n(n-1)/2,
    n_x, n_y pairs tied in x, in y (Kendall 1945). 0 when x or y is constant (no order to agree with)."""
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    n0 = len(x) * (len(x) - 1) // 2
    norm = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return (concordant - discordant) / norm if norm > 0 else 0.0


def spearman_rho(x: list[float], y: list[float]) -> float:
    """Spearman's rho: the Pearson correlation of the fractional ranks of x and y (ties share their mean
    rank). 0 when x or y is constant."""
    rx, ry = fractional_ranks(x), fractional_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var > 0 else 0.0


def group_metrics(scores: list[list[float]], data: TokenizedGroups, cfg: RewardConfig) -> dict[str, float]:
    """Everything the evaluation reports from the scores of ranked lists: the pair metrics of `pair_metrics`
    over every pair of every list (weighted 1 / pairs of its list, as the pairwise path weighs them),
    the Plackett-Luce loss (a mean over lists), and the mean Kendall tau-b and Spearman rho of each
    list's scores against its ranks (higher score <-> better rank)."""
    pairs = []
    for s, ranks, margin in zip(scores, data.ranks, data.margins):
        list_pairs = ranking_to_pairs(ranks)
        pairs += [(s[b], s[w], 1.0 / len(list_pairs), margin) for b, w in list_pairs]
    k = max(len(s) for s in scores)
    rewards = torch.zeros(len(scores), k, dtype=torch.float64)
    ranks = torch.zeros(len(scores), k, dtype=torch.long)
    mask = torch.zeros(len(scores), k, dtype=torch.bool)
    for g, (s, r) in enumerate(zip(scores, data.ranks)):
        rewards[g, : len(s)], ranks[g, : len(s)], mask[g, : len(s)] = torch.tensor(s, dtype=torch.float64), \
            torch.tensor(r), True
    taus = [kendall_tau(s, [-float(r) for r in ranks]) for s, ranks in zip(scores, data.ranks)]
    rhos = [spearman_rho(s, [-float(r) for r in ranks]) for s, ranks in zip(scores, data.ranks)]
    return {**pair_metrics(pairs, cfg), "eval/listwise_loss": plackett_luce_loss(rewards, ranks, mask).item(),
            "eval/groups": len(scores), "eval/kendall_tau": sum(taus) / len(taus),
            "eval/spearman": sum(rhos) / len(rhos)}


def evaluate_all(scorer: torch.nn.Module, data: Data, ranked: TokenizedGroups | None, accelerator: Any,
                 cfg: RewardConfig, pad_id: int, criteria: tuple[str, ...] = ()) -> dict[str, float]:
    """The held-out metrics of either loss, comparable between the two.

    Both report eval/accuracy (share of pairs with r_c > r_r), eval/margin and the reward mean/std over
    the pairs; eval/loss is the run's own loss. Pairwise: eval/loss is the Bradley-Terry loss as always
    and, on ranked eval data (lists of 3+), eval/listwise_loss, eval/kendall_tau and eval/spearman are
    added from one score per completion. Listwise: each completion is scored once; eval/loss is the
    Plackett-Luce loss, eval/pairwise_loss the Bradley-Terry loss the pairwise run calls eval/loss; the
    rank correlations come with ranked eval data. Each comparison is scored on its own criterion's head;
    with several criteria every metric also comes per criterion, over its comparisons only
    (eval/accuracy/helpful, ...)."""
    if isinstance(data, TokenizedPairs):
        pairs = pair_scores(scorer, data, accelerator, cfg, pad_id, heads_of(data, criteria))
        groups = ranked
    else:
        pairs, groups = None, data
    lists = group_scores(scorer, groups, accelerator, cfg, pad_id, heads_of(groups, criteria)) if groups else None
    metrics = _eval_metrics(pairs, lists, groups, cfg, ranked is not None)
    if len(criteria) > 1:
        list_heads = heads_of(groups, criteria) if groups else []
        for c, name in enumerate(criteria):
            own = [i for i, h in enumerate(list_heads) if h == c]
            sub_pairs = None if pairs is None else [p for p in pairs if p[4] == c]
            if (sub_pairs is not None and not sub_pairs) or (pairs is None and not own):
                continue  # no held-out comparison of this criterion
            sub_groups = _subset(groups, own) if own else None
            sub_lists = [lists[i] for i in own] if own and lists is not None else None
            found = _eval_metrics(sub_pairs, sub_lists, sub_groups, cfg, ranked is not None)
            metrics.update({f"{key}/{name}": value for key, value in found.items()})
    return metrics


def _subset(groups: TokenizedGroups, index: list[int]) -> TokenizedGroups:
    """The ranked lists at `index` (what `group_metrics` reads of them)."""
    return TokenizedGroups([groups.sequences[i] for i in index], [groups.ranks[i] for i in index],
                           [groups.margins[i] for i in index], criteria=[groups.criteria[i] for i in index])


def _eval_metrics(pairs: list[tuple[float, ...]] | None, lists: list[list[float]] | None,
                  groups: TokenizedGroups | None, cfg: RewardConfig, ranked: bool) -> dict[str, float]:
    """`evaluate_all`'s metrics from the scores: of pairs (pairwise; plus the rank correlations of the ranked
    lists when given) or of ranked lists (listwise; rank correlations only with `ranked` eval data)."""
    if pairs is not None:
        metrics = pair_metrics(pairs, cfg)
        if lists and groups is not None:
            listwise = group_metrics(lists, groups, cfg)
            metrics.update({key: listwise[key] for key in ("eval/listwise_loss", "eval/kendall_tau", "eval/spearman")})
        return metrics
    assert lists is not None and groups is not None
    metrics = group_metrics(lists, groups, cfg)
    metrics["eval/pairwise_loss"] = metrics["eval/loss"]
    metrics["eval/loss"] = metrics.pop("eval/listwise_loss")
    if not ranked:
        metrics.pop("eval/kendall_tau")
        metrics.pop("eval/spearman")
    return metrics


@torch.no_grad()
def normalization_scores(scorer: torch.nn.Module, cfg: RewardConfig, tokenizer: Any,
                         train: Data) -> torch.Tensor:
    """Raw rewards (N, C) of the reference set used for normalisation (Ziegler et al. 2019, section 2.2), on
    every head: each criterion is normalised on the same reference responses."""
    if cfg.normalize_data:
        seqs = []
        rows = read_rows(cfg.normalize_data)
        for i, row in zip(row_numbers(rows), rows):
            prompt, completion = row.get("prompt"), row.get("completion", row.get("response"))
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise DataError(f"{cfg.normalize_data}, row {i}: needs text fields 'prompt' and 'completion'")
            seq = encode_prompt(tokenizer, prompt) + encode_response(tokenizer, completion)
            seqs.append(seq[-cfg.max_length:])
    elif isinstance(train, TokenizedGroups):
        # every completion once, by position in its list (for pairs: all chosen, then all rejected, as below)
        seqs = [group[j] for j in range(max(map(len, train.sequences))) for group in train.sequences if j < len(group)]
    else:
        seqs = train.chosen + train.rejected
    device = next(scorer.parameters()).device
    scores = []
    for i in range(0, len(seqs), cfg.eval_batch_size):
        ids, mask = pad_right(seqs[i:i + cfg.eval_batch_size], tokenizer.pad_token_id)
        scores.append(scorer(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(scores)


def normalize_heads(model: torch.nn.Module, raw: torch.Tensor, cfg: RewardConfig, criteria: tuple[str, ...]
                    ) -> dict[str, float]:
    """Set each head's gain and bias from its (N,) column of the reference rewards `raw` (N, C): mean gives
    r' = r - mean, mean_std r' = (r - mean) / std. Returns normalize/gain, normalize/bias and
    normalize/raw_mean, per criterion (normalize/gain/helpful, ...) when there are several."""
    gains, biases = [], []
    for c in range(raw.shape[1]):
        if cfg.normalize == "mean_std":
            gain, bias = normalization_gain_bias(raw[:, c], target_mean=0.0, target_std=1.0)
            gains.append(float(gain))
            biases.append(float(bias))
        else:
            gains.append(1.0)
            biases.append(-raw[:, c].mean().item())
    if raw.shape[1] == 1:
        set_normalization(model, gains[0], biases[0])
        return {"normalize/gain": gains[0], "normalize/bias": biases[0], "normalize/raw_mean": raw.mean().item()}
    set_normalization(model, gains, biases)
    out = {}
    for c, name in enumerate(criteria):
        out.update({f"normalize/gain/{name}": gains[c], f"normalize/bias/{name}": biases[c],
                    f"normalize/raw_mean/{name}": raw[:, c].mean().item()})
    return out


def train(cfg: RewardConfig) -> dict[str, float]:
    """Train a reward model as configured; returns the final evaluation metrics."""
    configure_loading(cfg)  # --dtype and --trust-remote-code, for the config read below too
    cfg = resolve_max_length(cfg)  # before any work: a too-long max_length is one line, not an IndexError
    out_dir = Path(cfg.output_dir)
    done = completed_run(cfg)
    if done is not None:
        return done
    resume_path = find_resume(cfg)
    check_output_dir(out_dir, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    check_bf16_weights(cfg, accelerator.mixed_precision, accelerator.num_processes)
    main = accelerator.is_main_process
    seed_everything(cfg.seed)

    # 1. Data (checked completely before the model is built).
    tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.model, padding_side="right")
    train_data, eval_data, eval_ranked, picked = load_data(cfg, tokenizer)
    criteria = picked.criteria  # one head each; () = one unnamed head
    train_heads = heads_of(train_data, criteria)
    listwise = isinstance(train_data, TokenizedGroups)
    unit = "ranked lists" if listwise else "pairs"
    counts = length_counts(train_data, eval_data, cfg.max_length)
    if main and (train_data.truncated or eval_data.truncated):
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.truncated} train / {eval_data.truncated} "
                      "eval prompts lose tokens on the left")
    if main and (train_data.dropped or eval_data.dropped):
        named = [f"{split}: {source} rows {_rows_text(data.dropped_rows)}" for split, source, data in
                 (("train", cfg.train_data, train_data), ("eval", cfg.eval_data or cfg.train_data, eval_data))
                 if data.dropped]
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.dropped} train / {eval_data.dropped} eval "
                      f"{unit} do not fit even with the prompt truncated and are left out ({'; '.join(named)}); "
                      "counted in eval.json as data/train_dropped and data/eval_dropped")
    if main and listwise and (train_data.trimmed or eval_data.trimmed):
        console.print(f"[yellow]max_length={cfg.max_length}: {train_data.trimmed} train / {eval_data.trimmed} eval "
                      "ranked lists lose the completions that do not fit (data/train_trimmed, data/eval_trimmed)")
    if main and any(picked.left_out):
        console.print(f"[yellow]--criterion {','.join(criteria)}: {picked.left_out[0]} train / {picked.left_out[1]} "
                      "eval rows of other criteria are left out (data/train_other_criteria, data/eval_other_criteria)")
    if cfg.criterion:
        counts.update({"data/train_other_criteria": picked.left_out[0], "data/eval_other_criteria": picked.left_out[1]})
    if main and listwise and cfg.margin_column and any(train_data.margins):
        console.print("[yellow]the 'margin' column is not used by the listwise loss (--ranking-loss pairwise uses it)")

    # 2. Model, optimiser, schedule.
    model = build_reward_model(cfg.model, tokenizer, criteria=criteria)
    heads = score_head(model).out_features
    if heads != max(1, len(criteria)):  # a saved reward model of several criteria, trained on unnamed rows
        named = ",".join(criteria_of(model))
        raise ConfigError(f"setting 'criterion': {cfg.model} scores {heads} criteria ({named}); name them in the "
                          f"data's 'criterion' field and pass --criterion {named}")
    if cfg.gradient_checkpointing:  # recompute activations in the backward: less memory, more time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = None
    spec = LoRASpec.from_config(cfg)
    if spec is not None:
        # adapters on the trunk; the new score head trains in full (it is a new layer)
        lora = add_lora(model, spec, task=None)
        model = lora.model
        score_head(model).requires_grad_(True)
    scorer = CriterionScorer(model)  # (N, C): every head from one forward pass of the trunk
    pad_id = tokenizer.pad_token_id
    pack = cfg.share_prefix and packing_supported(model)
    if cfg.group_by_length:  # packed: batch by the length of the packed row
        if listwise:
            lengths = [packed_length(group) if pack else max(len(seq) for seq in group)
                       for group in train_data.sequences]
        else:
            lengths = [packed_length((c, r)) if pack else max(len(c), len(r))
                       for c, r in zip(train_data.chosen, train_data.rejected)]
        batches = LengthGroupedBatches(lengths, cfg.batch_size, cfg.seed)
    else:
        batches = ShuffledBatches(len(train_data), cfg.batch_size, cfg.seed)
    master = MasterWeights(scorer) if cfg.bf16_weights else None  # bf16 weights, fp32 copies for AdamW
    optimizer = make_optimizer(scorer.parameters() if master is None else master.parameters(), cfg)
    total_steps = cfg.epochs * len(batches)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)  # not the scheduler: see make_scheduler
    rank, world = accelerator.process_index, accelerator.num_processes

    def micro_loss(micro: dict[str, torch.Tensor], weight_sum: float, pairs: int, stats: StepStats) -> torch.Tensor:
        micro = {k: v.to(accelerator.device) if isinstance(v, (torch.Tensor, PackedGroups)) else v
                 for k, v in micro.items()}
        rows = micro["packed"].input_ids if micro.get("packed") is not None else micro["input_ids"]
        with autocast(accelerator, rows.shape[1]):  # (2B, C) pairwise, (sum_g K_g, C) listwise
            scores = scorer(micro["input_ids"], micro["attention_mask"], packed=micro.get("packed"))
        if listwise:  # weight_sum: the global batch's number of lists
            loss, r_c, r_r = group_loss(scores, micro, cfg, weight_sum)
            real = micro["pair_real"]  # (P,)
        else:
            loss, r_c, r_r = pair_loss(scores, micro, cfg, weight_sum, pairs)
            real = micro["real"]  # (B,)
        stats.add("loss/train", loss.detach())
        # this micro-batch's share of the global batch's accuracy (0 for a stand-in row)
        stats.add("train/accuracy", preference_accuracy(r_c, r_r) * real.sum() / pairs)
        return loss

    def held_out() -> dict[str, float]:  # the held-out metrics of the weights that are saved (merged with LoRA)
        with evaluation_weights(lora, accelerator.mixed_precision):
            return evaluate_all(scorer, eval_data, eval_ranked, accelerator, cfg, pad_id, criteria)

    collate = partial(_collate_groups if listwise else _collate, heads=train_heads, pack=pack)
    list_pairs = [train_data.num_pairs(i) for i in range(len(train_data))] if listwise else []

    step, pairs_seen, t_eval, t_before = 0, 0, 0.0, 0.0
    if resume_path is not None:
        state = load_step_checkpoint(resume_path, cfg, "reward", accelerator.unwrap_model(scorer).model, optimizer,
                                     scheduler, total_steps, main, master)
        step, pairs_seen, t_before = int(state["step"]), int(state["pairs_seen"]), float(state["elapsed"])
    catch_stop_signals()  # SIGTERM / Ctrl-C: checkpoint after the step, then stop

    with run_folder(out_dir, cfg, main, resume_path, step) as (tmp, logger):

        def elapsed() -> float:
            return t_before + time.perf_counter() - t_start - t_eval

        checkpoints = StepCheckpoints(tmp, cfg, accelerator, lambda: accelerator.unwrap_model(scorer).model,
                                      optimizer, scheduler, total_steps, master)

        t_start = time.perf_counter()  # pairs/s counts the whole loop (data included), not the evaluations
        with progress_bar(total_steps, "reward model", keys=("loss", "acc", "eval_acc"), enabled=main) as bar:
            bar.update(step)
            # 3. Bradley-Terry updates: every process walks the same global batches and trains on its share.
            for rows in remaining_batches(batches, cfg.epochs, step):  # after those a resumed run did
                # the global batch's denominator: its pair-weight sum (pairwise) or number of lists
                # (listwise), and its comparisons, for the accuracy
                if listwise:
                    weight_sum, pairs = float(len(rows)), sum(list_pairs[i] for i in rows)
                else:
                    weight_sum, pairs = float(sum(train_data.weights[i] for i in rows)), len(rows)
                own, real = process_share(rows, rank, world)
                parts = [collate(train_data, chunk.tolist(), pad_id, real)
                         for chunk in micro_batches(torch.tensor(own), cfg.micro_batch_size)]
                stats = StepStats()
                optimizer_step(accelerator, scorer, optimizer, scheduler, parts,
                               partial(micro_loss, weight_sum=weight_sum, pairs=pairs, stats=stats),
                               cfg.max_grad_norm, master)
                stats.end_step()
                step += 1
                pairs_seen += pairs
                shown = stats.summary(accelerator)
                if step % cfg.log_every == 0 or step == total_steps:
                    logger.log(step, {**shown, "train/lr": scheduler.get_last_lr()[0],
                                      "perf/pairs_per_s": pairs_seen / max(elapsed(), 1e-9)})
                bar_values = {"loss": shown["loss/train"], "acc": shown["train/accuracy"]}
                # 4. Held-out evaluation.
                if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                    t0 = time.perf_counter()
                    metrics = held_out()
                    t_eval += time.perf_counter() - t0
                    logger.log(step, metrics)
                    bar_values["eval_acc"] = metrics["eval/accuracy"]
                bar.update(1, **bar_values)
                # 5. Checkpoints on schedule, and when SIGTERM / Ctrl-C asked the run to stop.
                checkpoints.after_step({"step": step, "pairs_seen": pairs_seen, "elapsed": elapsed()}, logger)
        train_s = elapsed()
        if master is not None:  # the final evaluation, normalisation and save: the fp32 weights that are saved
            master.restore_fp32()
        metrics = held_out()
        metrics.update({"perf/pairs_per_s": pairs_seen / max(train_s, 1e-9), "perf/train_s": train_s,
                        "perf/processes": accelerator.num_processes,
                        "train/steps": step, **counts})

        # 5. Normalisation and saving.
        unwrapped = accelerator.unwrap_model(scorer).model
        if cfg.normalize != "none":
            # In fp32, without accelerate's autocast wrapper: the saved model scores in fp32, so its gain and
            # bias are fitted to fp32 scores (bf16 ones differ by ~5e-3 and would leave it off-centre).
            fp32_scorer = accelerator.unwrap_model(scorer, keep_fp32_wrapper=False)
            metrics.update(normalize_heads(unwrapped, normalization_scores(fp32_scorer, cfg, tokenizer, train_data),
                                           cfg, criteria))
        logger.log(step, metrics)
        logger.close()
        restore_signals()
        if main:
            check_finite(unwrapped, "the trained reward model")
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
            drop_checkpoints(tmp)
        accelerator.wait_for_everyone()
    if main:
        rows = [
            (accuracy_label(metrics), metrics["eval/accuracy"]),
            ("held-out loss (Plackett-Luce)" if listwise else "held-out loss", metrics["eval/loss"]),
            ("mean margin r_c - r_r", metrics["eval/margin"]),
            (f"{unit if listwise else 'comparisons'} (train / eval)", f"{len(train_data)} / {len(eval_data)}"),
            ("pairs / s", metrics["perf/pairs_per_s"]),
        ]
        if "eval/kendall_tau" in metrics:
            rows.insert(2, ("held-out Kendall tau / Spearman vs the ranks",
                            f"{metrics['eval/kendall_tau']:.3f} / {metrics['eval/spearman']:.3f}"))
        if len(criteria) > 1:
            rows.insert(1, (f"held-out accuracy by criterion ({' / '.join(criteria)})", " / ".join(
                f"{metrics[f'eval/accuracy/{name}']:.3f}" if f"eval/accuracy/{name}" in metrics else "-"
                for name in criteria)))
        print_table(f"reward model -> {out_dir}", rows)
    return metrics


def run(cfg: RewardConfig) -> Path:
    """CLI entry: train and return the output folder."""
    train(cfg)
    return Path(cfg.output_dir)
