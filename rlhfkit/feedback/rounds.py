"""One job: where `rlhfkit feedback sample` puts the completions it samples (which round, which prompts).

The iterated recipe (Stiennon et al. 2020, "Learning to summarize from human feedback";
Bai et al. 2022, "Training a Helpful and Harmless Assistant with Reinforcement Learning from
Human Feedback", its "iterated online RLHF") samples the same kind of prompts again from
each newly trained policy, and people rank the new completions. Here each such sampling is a
round of the same project:

    round 1   prompts (imported bare, or sampled) with K completions of the start policy
    round 2   `sample --new-round --model ppo_out/`: the prompts again, K completions of the
              trained policy, as new prompt rows of round 2 (round 1's rankings stay as they are)

Without `--new-round`, `sample` writes into the project's latest round: prompts of the file
that are there without completions (imported with `feedback import` and no `completions`) get
theirs, new prompts are appended, and prompts that already have all K are refused (sampling
them again is what a new round is for).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.errors import UserError
from rlhfkit.feedback.records import ProjectInfo
from rlhfkit.feedback.store import FeedbackStore


@dataclass(frozen=True)
class SamplePlan:
    round: int
    fill: dict[str, tuple[int, int]]  # prompt text -> (prompt id, completions it still needs)
    new: list[str]  # prompt texts to add to `round` with all K completions

    @property
    def texts(self) -> list[str]:
        """The prompts to sample for: those to fill, then the new ones (each in file order)."""
        return list(self.fill) + self.new


def plan(store: FeedbackStore, info: ProjectInfo | None, texts: list[str], new_round: bool, file: str) -> SamplePlan:
    """Which round the sampled completions go to and which prompts need them (see the module doc)."""
    seen: dict[str, int] = {}
    for row, text in enumerate(texts, start=1):
        if text in seen:
            raise UserError(f"{file}, row {row}: the same prompt as row {seen[text]}; remove one of them")
        seen[text] = row
    if info is None:
        return SamplePlan(1, {}, list(texts))
    rounds = store.rounds(info)
    latest = rounds[-1] if rounds else 1
    if new_round and rounds:
        return SamplePlan(latest + 1, {}, list(texts))
    there = store.round_prompts(info, latest)
    full = [t for t in texts if t in there and there[t][1] >= info.k]
    if full:
        raise UserError(
            f"{file}: {len(full)} prompt(s) already have their {info.k} completions in round {latest} of project "
            f"{info.name!r} (the first: {full[0][:60]!r}); pass --new-round to sample them again from another "
            "policy, or remove them from the file"
        )
    fill = {t: (there[t][0], info.k - there[t][1]) for t in texts if t in there}
    return SamplePlan(latest, fill, [t for t in texts if t not in there])


def narrow(p: SamplePlan, chosen: list[str]) -> SamplePlan:
    """The plan for only the `chosen` prompts (active selection keeps a budget of them)."""
    keep = set(chosen)
    return SamplePlan(p.round, {t: v for t, v in p.fill.items() if t in keep}, [t for t in p.new if t in keep])


def store_samples(
    store: FeedbackStore, info: ProjectInfo, p: SamplePlan, completions: dict[str, list[str]], model: str,
    sampling: dict[str, object],
) -> int:
    """Write the sampled completions as planned; returns how many prompts got completions."""
    for text, (prompt_id, need) in p.fill.items():
        store.add_completions(prompt_id, completions[text][:need], model=model, sampling=sampling)
    if p.new:
        store.add_prompts(info, p.new, [completions[t] for t in p.new], model=model, sampling=sampling, round=p.round)
    return len(p.fill) + len(p.new)
