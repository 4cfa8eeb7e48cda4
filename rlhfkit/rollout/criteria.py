"""Several criteria's scores (helpful, harmless, concise, ...) as the one reward the policy trains on.

The scores come from one reward model with a head per criterion (`--reward-model DIR`, the
criteria named in its config) or from one-head models, one per criterion
(`--criterion-models helpful=DIR1,concise=DIR2`). Every episode gets C scores r_c from one
forward pass per model; then (rlhfkit.algos.criteria, docs/criteria.md):

  1. each criterion is normalised, z_c = (r_c - mu_c) / sigma_c, with mu and sigma frozen on the
     first batch scored for training (the start policy's own samples; on N processes, all their
     shares gathered), so weights compare criteria in standard deviations rather than in each
     model's arbitrary units;
  2. the reward is the weighted sum sum_c w_c z_c (`--reward-weights`), or with `--reward-gate
     g=tau` the Llama 2 gate: z_g where z_g < tau, else the weighted sum.

The result goes through the run's reward transforms like any score (rollout/ensemble.py). Each
call keeps the batch's per-criterion scores: `batch_sums()` (raw and normalised, for the
iteration's metrics) and `last_scores` (for the held-out evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rlhfkit.algos.criteria import criteria_reference, gated_reward, normalize_criteria, weighted_sum
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import DEFAULT_CRITERION, build_reward_model, criteria_of, saved_criteria
from rlhfkit.rollout.scoring import RewardModelScorer, check_trained_reward_model

# Metric keys of the run's own reward statistics: a criterion may not take one of these names.
RESERVED = frozenset(("mean", "std", "total", "raw", "combined", "gated", "ensemble_mean", "ensemble_spread",
                      "ensemble_spread_standardized", "return_mean"))


class CriteriaScorer:
    """C criteria from one or more reward models, normalised and combined (see the module doc)."""

    def __init__(self, models: Sequence[tuple[RewardModelScorer, tuple[str, ...]]], weights: Mapping[str, float],
                 gate: tuple[str, float] | None = None, tagged: frozenset[str] = frozenset(),
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.models = list(models)  # (scorer, the criteria of its columns)
        self.criteria = tuple(name for _, names in self.models for name in names)
        self.weights = dict(weights)
        self.gate = gate
        self.tagged = tagged  # prompt texts that are always gated (Llama 2's safety-tagged prompts)
        # On N processes: every process's share of the first batch, so all freeze the same reference
        self.gather = gather
        self.weight_vector = torch.tensor([self.weights.get(c, 0.0) for c in self.criteria], dtype=torch.float32)
        self.mean: torch.Tensor | None = None  # (C,) frozen reference, set by the first training batch
        self.std: torch.Tensor | None = None
        self.last_scores: dict[str, list[float]] = {}  # raw score per criterion of the last batch
        self.last_normalized: dict[str, list[float]] = {}
        self._sums: dict[str, float] = {}
        self._raw = False

    @property
    def reference_pending(self) -> bool:
        """True until the first training batch has frozen mu and sigma."""
        return self.mean is None

    @contextmanager
    def raw(self) -> Iterator[None]:
        """Inside (the held-out evaluation): the reference is never set from these batches and nothing
        is added to the iteration's statistics."""
        before, self._raw = self._raw, True
        try:
            yield
        finally:
            self._raw = before

    @torch.no_grad()
    def table(self, *args: Any) -> torch.Tensor:
        """(B, C) raw scores, one column per criterion (`self.criteria` order)."""
        columns = [scorer.table(*args).float() for scorer, _ in self.models]
        device = columns[0].device
        return torch.cat([c.to(device) for c in columns], dim=1)

    @torch.no_grad()
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        scores = self.table(prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, responses)  # (B, C)
        if self.mean is None:
            reference = scores if self._raw or self.gather is None else self.gather(scores)  # (B_all, C)
            mean, std = criteria_reference(reference)
            if self._raw:  # before any training batch (not reached by the trainers): this batch's own statistics
                z = normalize_criteria(scores, mean, std)
            else:
                self.mean, self.std = mean, std
        if self.mean is not None:
            z = normalize_criteria(scores, self.mean, self.std)  # type: ignore[arg-type]
        weights = self.weight_vector.to(z)
        gated = None
        if self.gate is None:
            combined = weighted_sum(z, weights)
        else:
            g, tau = self.criteria.index(self.gate[0]), self.gate[1]
            tagged = torch.tensor([p in self.tagged for p in prompts], dtype=torch.bool, device=z.device)
            combined = gated_reward(z, weights, g, tau, tagged=tagged)
            gated = (z[:, g] < tau) | tagged  # (B,) which episodes the gate criterion decided, for the metric
        self.last_scores = {c: scores[:, i].tolist() for i, c in enumerate(self.criteria)}
        self.last_normalized = {c: z[:, i].tolist() for i, c in enumerate(self.criteria)}
        if not self._raw:
            sums = {f"reward/{c}": scores[:, i].sum().item() for i, c in enumerate(self.criteria)}
            sums.update({f"reward/{c}_z": z[:, i].sum().item() for i, c in enumerate(self.criteria)})
            sums["reward/combined"] = combined.sum().item()
            if gated is not None:
                sums["reward/gated"] = gated.sum().item()  # its mean is the share of gated episodes
            self._sums = sums
        return combined

    def batch_sums(self) -> dict[str, float]:
        """Sums over the last training batch of each criterion's raw and normalised score and of the
        combined reward (then cleared); rollout/ensemble.py turns them into the iteration's means."""
        sums, self._sums = self._sums, {}
        return sums

    def state_dict(self) -> dict[str, list[float]]:
        """The frozen reference, for checkpoints (a resumed run keeps the start policy's mu and sigma)."""
        if self.mean is None or self.std is None:
            return {}
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state_dict(self, state: Mapping[str, Sequence[float]] | None) -> None:
        if state and "mean" in state and "std" in state:
            self.mean = torch.tensor(list(state["mean"]), dtype=torch.float32)
            self.std = torch.tensor(list(state["std"]), dtype=torch.float32)

    def like(self, models: Sequence[tuple[RewardModelScorer, tuple[str, ...]]]) -> CriteriaScorer:
        """The same combination over other models scoring the same criteria (an ensemble member)."""
        return CriteriaScorer(models, self.weights, self.gate, self.tagged, self.gather)


def model_criteria(folder: str, name: str | None, setting: str) -> tuple[str, ...]:
    """The criteria a saved reward model's heads score (from its config alone): its own names, or
    `name` for a one-head model given as name=DIR."""
    saved = saved_criteria(folder)
    if saved is None:
        return (name or DEFAULT_CRITERION,)  # an untrained head (allowed by the caller): one criterion
    if name is None:
        return saved
    if len(saved) != 1:
        raise ConfigError(f"setting '{setting}': {folder} has {len(saved)} heads ({', '.join(saved)}); give each "
                          "criterion its own one-head model, or pass the model as --reward-model DIR")
    if saved[0] not in (DEFAULT_CRITERION, name):
        raise ConfigError(f"setting '{setting}': {folder} scores '{saved[0]}', not '{name}'; pass it as "
                          f"{saved[0]}={folder}")
    return (name,)


def plan_criteria(models: Sequence[tuple[str | None, str]], weights: Mapping[str, float],
                  gate: tuple[str, float] | None, weights_setting: str = "reward_weights",
                  models_setting: str = "criterion_models") -> list[tuple[str, tuple[str, ...]]]:
    """Check the criteria, weights and gate against the models' configs (no weights loaded):
    (folder, criteria) per model, or a one-line ConfigError naming the setting and the fix."""
    plan = [(folder, model_criteria(folder, name, models_setting)) for name, folder in models]
    available = [c for _, names in plan for c in names]
    duplicates = sorted({c for c in available if available.count(c) > 1})
    if duplicates:
        raise ConfigError(f"setting '{models_setting}': criterion {', '.join(duplicates)} is scored twice; give each "
                          "criterion one model")
    reserved = sorted(set(available) & RESERVED)
    if reserved:
        raise ConfigError(f"setting '{models_setting}': a criterion may not be named {', '.join(reserved)} (a "
                          "metric of the run has that name); rename it")
    listed = ", ".join(available)
    if not weights:
        example = ",".join(f"{c}=1" for c in available)
        raise ConfigError(f"setting '{weights_setting}': the reward models score {len(available)} criteria "
                          f"({listed}); say how to combine them, e.g. --reward-weights {example} (a weighted sum of "
                          f"normalised scores), or --reward-weights {available[0]}=1 for one criterion alone")
    for name in [*weights, *([gate[0]] if gate else [])]:
        if name not in available:
            which = weights_setting if name in weights else "reward_gate"
            raise ConfigError(f"setting '{which}': no criterion '{name}'; the reward models score {listed}")
    return plan


def load_criteria_scorer(models: Sequence[tuple[str | None, str]], weights: Mapping[str, float],
                         gate: tuple[str, float] | None, policy_tokenizer: Any, device: torch.device,
                         allow_untrained: bool = False, weights_setting: str = "reward_weights",
                         models_setting: str = "criterion_models", tagged: frozenset[str] = frozenset(),
                         gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CriteriaScorer:
    """Load every reward model (frozen, eval mode) and the combination of their criteria.

    `models` are (criterion name or None, folder): None for a `--reward-model DIR`, whose saved
    config names its criteria."""
    plan = plan_criteria(models, weights, gate, weights_setting, models_setting)
    scorers = []
    for (name, folder), (_, names) in zip(models, plan):
        setting = models_setting if name is not None else "reward_model"
        check_trained_reward_model(folder, setting, allow_untrained, "--allow-untrained-reward-model")
        tokenizer = load_tokenizer(folder, padding_side="right")
        model = build_reward_model(folder, tokenizer, init_head=False).to(device).eval().requires_grad_(False)
        if name is None and criteria_of(model) != names:  # cannot happen for a saved model; guards the order
            raise ConfigError(f"setting 'reward_model': {folder} scores {', '.join(criteria_of(model))}")
        scorers.append((RewardModelScorer(model, tokenizer, policy_tokenizer), names))
    return CriteriaScorer(scorers, weights, gate, tagged, gather)


def tagged_prompts(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], column: str, name: str,
                   numbers: Sequence[int]) -> frozenset[str]:
    """The texts of the prompt rows whose `column` is true (Llama 2's safety tag); a row without the
    column is untagged. A DataError names the file, row and field of a value that is not true or false."""
    if not any(column in row for row in rows):
        raise DataError(f"{name}: no row has the column '{column}' that --reward-gate-column names")
    out = set()
    for number, row, text in zip(numbers, rows, texts):
        value = row.get(column, False)
        if value not in (True, False, 0, 1) or isinstance(value, float):
            raise DataError(f"{name}, row {number}, field '{column}': expected true or false, got {value!r}")
        if value:
            out.add(text)
    return frozenset(out)
