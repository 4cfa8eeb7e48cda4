"""Active selection: which prompts of a pool people rank next, under a labelling budget.

`rlhfkit feedback sample --select uncertain --budget N --reward-model DIR` samples K completions for
every prompt of the file (the pool), scores them with the current reward model and keeps the N
prompts it is least sure about (rlhfkit.algos.selection):

- one `--reward-model`: the top-pair uncertainty 2 sigmoid(r_(2) - r_(1)), highest when the model
  cannot tell its two best completions apart;
- several (an ensemble, e.g. reward models trained with different seeds): their disagreement, the
  spread of the members' prompt-centred scores.

`--select random` keeps N prompts drawn uniformly with `--seed` and samples completions for those
only (the baseline active selection must beat). Ties in uncertainty go to the earlier prompt of the
file. The scores are read exactly as `rlhfkit score` and PPO read them (prompt ids + response ids +
EOS, right-padded, at the last real token). docs/active-selection.md has the method and the
benchmark (benchmarks/bench_active_selection.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.algos.selection import ensemble_disagreement, top_pair_uncertainty
from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.errors import UserError

STRATEGIES = ("uncertain", "random")


@dataclass(frozen=True)
class Selection:
    """The prompts chosen from a pool, as indices into it (in pool order), and why."""

    chosen: list[int]
    uncertainty: list[float] | None  # per pool prompt; None for random selection
    measure: str  # "top-pair uncertainty", "ensemble disagreement" or "random"


def check_selection(select: str | None, budget: int | None, reward_models: Sequence[Path] | None,
                    pool: int) -> None:
    """Refuse flags that do not fit together, naming the flag and the fix (before any model work)."""
    reward_models = list(reward_models or [])
    if select is None:
        if budget is not None or reward_models:
            flag = "--budget" if budget is not None else "--reward-model"
            raise UserError(f"{flag} is read only with --select uncertain|random; add --select or leave {flag} out")
        return
    if select not in STRATEGIES:
        raise UserError(f"--select: must be one of {', '.join(STRATEGIES)}, got {select!r}")
    if budget is None:
        raise UserError(f"--select {select} needs --budget N (how many prompts people rank next)")
    if budget < 1:
        raise UserError(f"--budget: must be at least 1, got {budget}")
    if budget > pool:
        raise UserError(f"--budget {budget} is larger than the pool: the file has {pool} prompt(s); "
                        f"lower --budget or give more prompts")
    if select == "random" and reward_models:
        raise UserError("--reward-model is read only by --select uncertain; leave it out with --select random")
    if select == "uncertain":
        if not reward_models:
            raise UserError("--select uncertain needs --reward-model DIR (a folder written by `rlhfkit reward`; "
                            "repeat the flag for an ensemble)")
        for folder in reward_models:
            check_reward_model_folder(folder)


def check_reward_model_folder(folder: Path) -> None:
    """A folder written by `rlhfkit reward` (one head, or one per criterion), or a UserError."""
    from rlhfkit.models.reward_model import is_reward_model

    if not folder.is_dir():
        raise UserError(f"--reward-model {folder}: folder not found; pass the output folder of `rlhfkit reward`")
    if not (folder / "config.json").is_file() or not is_reward_model(folder):
        raise UserError(f"--reward-model {folder}: not a reward model folder (its config.json is not a "
                        "sequence-classification model with one head, or one per named criterion); pass the "
                        "output folder of `rlhfkit reward`")


def check_same_criteria(reward_models: Sequence[str | Path]) -> None:
    """An ensemble's members must score the same criteria (their disagreement is compared per criterion)."""
    from rlhfkit.models.reward_model import saved_criteria

    named = [(m, saved_criteria(m)) for m in reward_models]
    first = named[0][1]
    for folder, criteria in named[1:]:
        if criteria != first:
            raise UserError(f"--reward-model {folder} scores {', '.join(criteria or ())} but {named[0][0]} scores "
                            f"{', '.join(first or ())}; an ensemble's members must score the same criteria")


@torch.no_grad()
def score_completions(reward_model: str | Path, prompts: Sequence[str], completions: Sequence[Sequence[str]],
                      batch_size: int = 64) -> torch.Tensor:
    """(C, P, K) float64 scores of every completion of every prompt by each of the model's C criteria
    (raw, before the saved normalisation: a shift per model changes no uncertainty, and the raw scale
    is the Bradley-Terry scale)."""
    from rlhfkit.models.context import model_context, resolve_length
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model, criterion_scores

    k = len(completions[0])
    if any(len(c) != k for c in completions):
        raise ValueError("every prompt needs the same number of completions")
    tokenizer = load_tokenizer(reward_model, padding_side="right")
    model = build_reward_model(reward_model, tokenizer, init_head=False).eval()
    context = resolve_length(0, model_context(reward_model), "max_length", what="reward model")  # 0 = its context
    seqs = []
    for row, (prompt, texts) in enumerate(zip(prompts, completions), start=1):
        prompt_ids = encode_prompt(tokenizer, prompt)
        for text in texts:
            # an empty completion is the rollout that stopped at once: its EOS alone
            response = encode_response(tokenizer, text) or [tokenizer.eos_token_id]
            if len(response) >= context:
                raise UserError(f"prompt {row}: a completion is {len(response)} tokens, longer than the reward model "
                                f"{reward_model}'s context of {context}; lower --max-new-tokens")
            keep = context - len(response)  # prompts lose tokens on the left, never the completion
            seqs.append(prompt_ids[-keep:] + response)
    scores = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[start:start + batch_size], tokenizer.pad_token_id)
        scores.append(criterion_scores(model, ids, mask, normalized=False).double())  # (B, C)
    return torch.cat(scores).T.reshape(-1, len(prompts), k)  # (C, P, K)


def prompt_uncertainty(reward_models: Sequence[str | Path], prompts: Sequence[str],
                       completions: Sequence[Sequence[str]], batch_size: int = 64) -> tuple[torch.Tensor, str]:
    """(P,) uncertainty of each prompt and its name: top-pair uncertainty with one reward model,
    ensemble disagreement with several. A model with a head per criterion gives each criterion's
    uncertainty, and a prompt counts by its most uncertain criterion (max over the criteria): a
    ranking is worth asking for when any of its criteria is in doubt."""
    check_same_criteria(reward_models)
    scores = torch.stack([score_completions(m, prompts, completions, batch_size) for m in reward_models])  # (E,C,P,K)
    criteria = scores.shape[1]
    if len(reward_models) == 1:
        per_criterion, name = torch.stack([top_pair_uncertainty(scores[0, c]) for c in range(criteria)]), \
            "top-pair uncertainty"
    else:
        per_criterion, name = torch.stack([ensemble_disagreement(scores[:, c]) for c in range(criteria)]), \
            "ensemble disagreement"
    if criteria == 1:
        return per_criterion[0], name
    return per_criterion.max(dim=0).values, f"{name}, the most uncertain of {criteria} criteria"


def most_uncertain(uncertainty: Sequence[float], budget: int) -> list[int]:
    """Indices of the `budget` highest uncertainties, in pool order (ties: the earlier prompt)."""
    order = sorted(range(len(uncertainty)), key=lambda i: (-uncertainty[i], i))
    return sorted(order[:budget])


def random_prompts(pool: int, budget: int, seed: int) -> list[int]:
    """`budget` indices drawn uniformly without replacement from range(pool), in pool order."""
    return sorted(random.Random(seed).sample(range(pool), budget))


def select_prompts(select: str, budget: int, prompts: Sequence[str], completions: Sequence[Sequence[str]] | None,
                   reward_models: Sequence[str | Path] = (), seed: int = 0, batch_size: int = 64) -> Selection:
    """The `budget` prompts to rank next by `select` ("uncertain" needs the completions and reward models)."""
    if select == "random":
        return Selection(random_prompts(len(prompts), budget, seed), None, "random")
    if completions is None or not reward_models:
        raise ValueError("uncertain selection needs the completions and at least one reward model")
    uncertainty, measure = prompt_uncertainty(reward_models, prompts, completions, batch_size)
    values = uncertainty.tolist()
    return Selection(most_uncertain(values, budget), values, measure)


def sample_selected(texts: list[str], sample: Callable[[list[str]], list[list[str]]], select: str | None,
                    budget: int | None, reward_models: Sequence[Path] | None, seed: int = 0,
                    batch_size: int = 64) -> tuple[list[str], list[list[str]], str | None]:
    """What `feedback sample` stores: (prompts, their completions, a note to print or None).

    Without `select`, every prompt with `sample(texts)`'s completions, as before. With it, the
    flags are checked first (a UserError names the wrong one), then `random` samples the chosen
    prompts only and `uncertain` samples the whole pool and keeps the most uncertain.
    """
    check_selection(select, budget, reward_models, len(texts))
    if select is None:
        return texts, sample(texts), None
    assert budget is not None  # checked above
    if select == "random":
        picked = [texts[i] for i in random_prompts(len(texts), budget, seed)]
        return picked, sample(picked), f"chose {budget} of {len(texts)} prompts at random (seed {seed})"
    pool = sample(texts)
    selection = select_prompts("uncertain", budget, texts, pool, list(reward_models or []), batch_size=batch_size)
    values = selection.uncertainty or []  # set for "uncertain"
    kept = [values[i] for i in selection.chosen]
    note = (f"chose {budget} of {len(texts)} prompts by {selection.measure}: {min(kept):.4f} to {max(kept):.4f} "
            f"(pool mean {sum(values) / len(values):.4f})")
    return [texts[i] for i in selection.chosen], [pool[i] for i in selection.chosen], note
