"""Step 1 of an RL iteration: plan the minibatches, sample and score this process's share, gather.

`RolloutWorker` holds what sampling and scoring need (the policy, the reference, the scorer,
the tokenizer and the sampling settings), so the trainers call one method per iteration and
nothing here reaches back up into trainers/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator

from rlhfkit import seeds
from rlhfkit.data.prompts import PromptSet
from rlhfkit.models.policy import ActorCritic
from rlhfkit.rollout.batch import Rollout
from rlhfkit.rollout.collect import ReferenceFn, collect_rollout
from rlhfkit.rollout.gather import IterationPlan, gather_rollout, plan_iteration
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.rollout.scoring import Scorer, scores_checked_at


def episode_seeds(seed: int, iteration: int, rows: Sequence[int]) -> list[int]:
    """The sampling seed of each episode: a function of (seed, iteration, global row) only."""
    return [seeds.derived_seed(seed, seeds.EPISODE, iteration, j) for j in rows]


@dataclass
class RolloutWorker:
    """Samples and scores episodes for one process; the same on 1 and N processes."""

    accelerator: Accelerator
    actor: ActorCritic  # unwrapped (no DDP): sampling needs no gradient sync
    reference: ReferenceFn
    scorer: Scorer
    tokenizer: Any
    sampling: SamplingSettings
    missing_eos_penalty: float = 0.0
    old_logprobs: str = "forward"
    generation_batch_size: int = 0  # episodes sampled at once (0 = this process's whole share)

    def collect(self, prompts: PromptSet, prompt_indices: list[int], seed: int, iteration: int, update_epochs: int,
                num_minibatches: int, with_values: bool) -> tuple[Rollout, IterationPlan, dict[str, float]]:
        """This process samples and scores its share of the episodes (old log-probs in the first epoch's
        minibatch groups, so the ratio is exactly 1 there); the whole batch is then gathered in global
        order. Returns the rollout, the iteration's minibatch plan and the timings."""
        acc = self.accelerator
        plan = plan_iteration(seeds.generator(seed, seeds.MINIBATCHES, iteration), len(prompt_indices),
                              update_epochs, num_minibatches, acc.process_index, acc.num_processes)
        ids, mask, texts = prompts.batch(prompt_indices, self.tokenizer.pad_token_id)
        own = plan.own
        with acc.autocast(), scores_checked_at(f"iteration {iteration}"):
            local, times = collect_rollout(
                self.actor, self.reference, self.scorer, self.tokenizer, ids[own].to(acc.device),
                mask[own].to(acc.device), [texts[j] for j in own.tolist()], self.sampling,
                episode_seeds(seed, iteration, own.tolist()), plan.first_epoch_groups(), with_values=with_values,
                missing_eos_penalty=self.missing_eos_penalty, old_logprobs=self.old_logprobs,
                generation_batch_size=self.generation_batch_size,
            )
        rollout = gather_rollout(acc, local, own, len(prompt_indices), self.tokenizer.pad_token_id)
        return rollout, plan, times
