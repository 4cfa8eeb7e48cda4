"""Several reward models as one scorer, and the reward transforms that guard against reward hacking.

`GuardedScorer` wraps the run's scorer (`--reward-model` or `--reward-fn`). With
`--reward-ensemble DIR,DIR,...` it also scores every episode with each extra reward model,
trained on the same comparisons with other seeds (`rlhfkit reward --seed N`) or from another base
model; the members' spread on the policy's samples is what the ensemble alarm watches. That spread
is logged twice: `reward/ensemble_spread` in the reward's units (the term of the conservative
reward) and `reward/ensemble_spread_standardized` with each member in its own standard units of
the run's first batch (algos.hacking.standardized_spread), which the alarm reads, so members with
different scales count alike. The reward the policy is trained on is then, in this order:

  1. the reward model's score, or with --conservative-k k > 0 the ensemble's mean minus k times
     its spread (algos.reward_transforms.conservative_reward);
  2. minus --length-penalty c times the length beyond the reference policy's mean length, measured
     on the run's first scored batch (the start policy's own samples) (length_penalty);
  3. clipped to [-c, c] with --reward-clip c (clip_reward).

With several criteria (rollout/criteria.py) the run's scorer is a `CriteriaScorer` and "the
reward model's score" in step 1 is the criteria's combined reward: the ensemble members are then
models with the same criteria, combined the same way, and the length penalty and the clip act on
the combined reward. The criteria's own means join the batch statistics (`reward/<criterion>`,
`reward/<criterion>_z`, `reward/combined`).

The held-out evaluation scores inside `raw()`: the reward model's own score, and nothing counted.
The scorer keeps sums of the batch statistics it saw since the last `take_stats()`, so the
monitor logs them once per iteration (each process its own share; see tracking/alarms.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from rlhfkit.algos.criteria import criteria_reference
from rlhfkit.algos.hacking import ensemble_spread, standardized_spread
from rlhfkit.algos.reward_transforms import clip_reward, conservative_reward, length_penalty
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import build_reward_model, is_reward_model, saved_criteria
from rlhfkit.rollout.criteria import CriteriaScorer
from rlhfkit.rollout.scoring import RewardModelScorer, Scorer

STAT_KEYS = ("reward/raw", "reward/ensemble_mean", "reward/ensemble_spread", "reward/ensemble_spread_standardized")


def load_members(folders: Sequence[str], policy_tokenizer: Any, device: torch.device,
                 criteria: CriteriaScorer | None = None) -> list[Scorer]:
    """One frozen, eval-mode scorer per reward-model folder of --reward-ensemble; with several criteria,
    each member scores the same criteria and combines them like `criteria` does."""
    members: list[Scorer] = []
    for folder in folders:
        if not is_reward_model(folder):
            raise ConfigError(f"setting 'reward_ensemble': {folder} is not a reward model folder saved by "
                              "rlhfkit reward (train one with: rlhfkit reward --seed N --output-dir DIR)")
        if criteria is not None and saved_criteria(folder) != criteria.criteria:
            raise ConfigError(f"setting 'reward_ensemble': {folder} scores {', '.join(saved_criteria(folder) or ())}"
                              f", not the run's criteria {', '.join(criteria.criteria)}; an ensemble member must "
                              "score the same criteria in one model")
        tokenizer = load_tokenizer(folder, padding_side="right")
        model = build_reward_model(folder, tokenizer, init_head=False).to(device).eval().requires_grad_(False)
        scorer = RewardModelScorer(model, tokenizer, policy_tokenizer)
        members.append(scorer if criteria is None else criteria.like([(scorer, criteria.criteria)]))
    return members


class GuardedScorer:
    """The run's scorer, an optional ensemble beside it, and the reward transforms (see the module doc)."""

    def __init__(self, primary: Scorer, members: Sequence[Scorer] = (), conservative_k: float = 0.0,
                 length_coef: float = 0.0, clip: float = 0.0,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if conservative_k and not members:
            raise ConfigError("setting 'conservative_k': the conservative reward needs an ensemble; pass "
                              "--reward-ensemble DIR,... (reward models trained with other seeds)")
        self.primary, self.members = primary, list(members)
        # With several criteria the primary and every member are CriteriaScorers, each with its own
        # normalisation state; None otherwise.
        self.criteria = primary if isinstance(primary, CriteriaScorer) else None
        self.criteria_members = [m for m in self.members if isinstance(m, CriteriaScorer)]
        self.conservative_k, self.length_coef, self.clip = conservative_k, length_coef, clip
        self.reference_length: float | None = None  # mean length of the first scored batch
        self.first_batch: dict[str, list[float]] | None = None  # scores and lengths of the start policy's samples
        self.first_episodes: tuple | None = None  # those samples themselves, for the reward probes (rollout/probes.py)
        # each member's mean and std on the first batch (all processes' shares: `gather`), for the spread in
        # standard units; frozen like the reference length
        self.member_mean: torch.Tensor | None = None  # (E,)
        self.member_std: torch.Tensor | None = None
        self.gather = gather
        self._sums: dict[str, float] = {}
        self._count = 0
        self._raw = False

    @contextmanager
    def raw(self) -> Iterator[None]:
        """Inside: the reward model's own score, no transform, no statistics (the held-out evaluation)."""
        before, self._raw = self._raw, True
        try:
            with ExitStack() as stack:
                if self.criteria is not None:
                    stack.enter_context(self.criteria.raw())
                yield
        finally:
            self._raw = before

    @property
    def last_criteria(self) -> dict[str, list[float]]:
        """Each criterion's raw scores of the last batch ({} without several criteria)."""
        return self.criteria.last_scores if self.criteria is not None else {}

    @property
    def reference_pending(self) -> bool:
        """True while the criteria's normalisation still waits for the first training batch."""
        return self.criteria is not None and self.criteria.reference_pending

    def state_dict(self) -> dict[str, Any]:
        """The references frozen on the first batch (criteria statistics, reference length), for checkpoints."""
        state: dict[str, Any] = {"reference_length": self.reference_length}
        if self.member_mean is not None and self.member_std is not None:
            state["member_reference"] = {"mean": self.member_mean.tolist(), "std": self.member_std.tolist()}
        if self.criteria is not None:
            state["criteria"] = self.criteria.state_dict()
            state["members"] = [m.state_dict() for m in self.criteria_members]
        return state

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        if state.get("reference_length") is not None:
            self.reference_length = float(state["reference_length"])
        if state.get("member_reference"):
            self.member_mean = torch.tensor(state["member_reference"]["mean"], dtype=torch.float32)
            self.member_std = torch.tensor(state["member_reference"]["std"], dtype=torch.float32)
        if self.criteria is not None:
            self.criteria.load_state_dict(state.get("criteria"))
            for member, member_state in zip(self.criteria_members, state.get("members") or []):
                member.load_state_dict(member_state)

    @torch.no_grad()
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        args = (prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, responses)
        raw = self.primary(*args).float()  # (B,)
        if self._raw:
            return raw
        lengths = response_mask.sum(-1).float().to(raw.device)  # (B,)
        if self.first_batch is None:
            self.first_batch = {"scores": raw.tolist(), "lengths": lengths.tolist()}
            self.first_episodes = (*args[:5], list(prompts), list(responses))
        stats = {"reward/raw": raw.sum().item()}
        if self.criteria is not None:
            stats.update(self.criteria.batch_sums())  # reward/<criterion>, reward/<criterion>_z, reward/combined
        scores = raw
        if self.members:
            table = torch.stack([raw] + [m(*args).float().to(raw.device) for m in self.members])  # (E, B)
            stats["reward/ensemble_mean"] = table.mean(0).sum().item()
            stats["reward/ensemble_spread"] = ensemble_spread(table).sum().item()
            if self.member_mean is None:  # the start policy's samples: every process's share
                reference = table.T if self.gather is None else self.gather(table.T.contiguous())  # (B_all, E)
                self.member_mean, self.member_std = criteria_reference(reference)
            spread_z = standardized_spread(table, self.member_mean, self.member_std)  # (B,)
            stats["reward/ensemble_spread_standardized"] = spread_z.sum().item()
            if self.conservative_k:
                scores = conservative_reward(table, self.conservative_k)
        if self.length_coef:
            if self.reference_length is None:
                self.reference_length = max(lengths.mean().item(), 1.0)
            scores = length_penalty(scores, lengths, self.length_coef, self.reference_length)
        if self.clip:
            scores = clip_reward(scores, self.clip)
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += raw.numel()
        return scores

    def take_stats(self) -> tuple[dict[str, float], int]:
        """The sums of each statistic over the episodes scored since the last call, and their count."""
        sums, count = self._sums, self._count
        self._sums, self._count = {}, 0
        return sums, count


def guard_scorer(cfg: Any, scorer: Scorer, policy_tokenizer: Any, device: torch.device,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> GuardedScorer:
    """Wrap the run's scorer with the ensemble and transforms its settings ask for."""
    criteria = scorer if isinstance(scorer, CriteriaScorer) else None
    members = load_members(cfg.reward_ensemble, policy_tokenizer, device, criteria) if cfg.reward_ensemble else []
    return GuardedScorer(scorer, members, cfg.conservative_k, cfg.length_penalty, cfg.reward_clip, gather)
