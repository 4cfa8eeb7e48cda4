"""Reward-model probes before training: does the reward rise for replies that got worse?

Three edits of the start policy's own replies that no judge of quality should reward, each scored
by the run's reward model (or reward function) beside the replies as sampled:

- shuffled: each reply's tokens in a random order (its EOS stays last): word salad. A reward that
  barely falls does not read word order, and the policy can earn it with incoherent text.
- repeated: the second half of each reply replaced by its first half again (the same length, so
  the edit fits wherever the reply did, and tests repetition apart from length). A reward that
  rises pays for repetition.
- swapped: each reply given to the next episode's prompt. A reward that barely falls does not read
  the prompt, and a generic reply can earn it.

The edits work on the token ids (the reward model sees exactly what the policy could write) and
on the decoded texts (for a reward model with its own tokenizer, or a Python reward). The effect
of an edit is algos.hacking.perturbation_effect; tracking/health.py turns it into a warning. This
is a check of the reward before any update, so it can warn of a hack before the policy finds it:
the alarms (tracking/alarms.py) can only see a hack the policy has already started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlhfkit.algos.hacking import perturbation_effect
from rlhfkit.rollout.collect import decode_responses

Episodes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]
PROBES = ("shuffled", "repeated", "swapped")


def _content(response_ids: torch.Tensor, response_mask: torch.Tensor, ended: torch.Tensor) -> list[torch.Tensor]:
    """Each reply's tokens without its EOS (the mask covers the EOS when the reply ended)."""
    lengths = response_mask.sum(-1) - ended.long()
    return [ids[: int(n)] for ids, n in zip(response_ids, lengths)]


def _pack(rows: list[torch.Tensor], ended: torch.Tensor, eos_id: int, pad_id: int, like: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) of the rows, each ended one followed by eos_id."""
    full = [torch.cat([r, r.new_tensor([eos_id])]) if e else r for r, e in zip(rows, ended.tolist())]
    width = max(1, max(len(r) for r in full))
    ids = like.new_full((len(full), width), pad_id)
    mask = torch.zeros(len(full), width, dtype=torch.bool, device=like.device)
    for i, r in enumerate(full):
        ids[i, : len(r)], mask[i, : len(r)] = r, True
    return ids, mask


def shuffled(episodes: Episodes, tokenizer: Any, generator: torch.Generator) -> Episodes:
    """Every reply's tokens permuted at random (its EOS kept last)."""
    prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, _ = episodes
    rows = [r[torch.randperm(len(r), generator=generator).to(r.device)] for r in
            _content(response_ids, response_mask, ended)]
    ids, mask = _pack(rows, ended, _eos_id(tokenizer, response_ids, response_mask, ended), _pad_id(tokenizer),
                      response_ids)
    return prompt_ids, prompt_mask, ids, mask, ended, prompts, decode_responses(tokenizer, ids, mask)


def repeated(episodes: Episodes, tokenizer: Any, generator: torch.Generator | None = None) -> Episodes:
    """Every reply's first ceil(n/2) tokens written twice, cut to its n tokens, then its EOS (if it had one)."""
    prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, _ = episodes
    rows = [torch.cat([r[: (len(r) + 1) // 2]] * 2)[: len(r)] for r in _content(response_ids, response_mask, ended)]
    ids, mask = _pack(rows, ended, _eos_id(tokenizer, response_ids, response_mask, ended), _pad_id(tokenizer),
                      response_ids)
    return prompt_ids, prompt_mask, ids, mask, ended, prompts, decode_responses(tokenizer, ids, mask)


def swapped(episodes: Episodes, tokenizer: Any = None, generator: torch.Generator | None = None) -> Episodes:
    """Reply i given to prompt i + 1 (cyclically): every prompt gets another prompt's reply."""
    prompt_ids, prompt_mask, response_ids, response_mask, ended, prompts, responses = episodes
    roll = lambda x: x.roll(1, dims=0)  # noqa: E731
    return (prompt_ids, prompt_mask, roll(response_ids), roll(response_mask), roll(ended), prompts,
            responses[-1:] + responses[:-1])


EDITS: dict[str, Callable[..., Episodes]] = {"shuffled": shuffled, "repeated": repeated, "swapped": swapped}


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _eos_id(tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor, ended: torch.Tensor) -> int:
    """The stop token the policy wrote (a chat model may stop on another token than eos_token_id)."""
    if bool(ended.any()):
        i = int(torch.nonzero(ended)[0])
        return int(response_ids[i, int(response_mask[i].sum()) - 1])
    return int(tokenizer.eos_token_id)


def probe_reward(score: Callable[..., torch.Tensor], episodes: Episodes, tokenizer: Any, seed: int = 0
                 ) -> dict[str, dict[str, float]]:
    """{edit: {"shift": d, "raised": p}} for each edit of PROBES (algos.hacking.perturbation_effect), scoring
    with `score(*episodes)`, the run's reward without transforms. Episodes of fewer than 2 replies give {}."""
    if episodes[2].shape[0] < 2:
        return {}
    generator = torch.Generator().manual_seed(seed)
    original = score(*episodes).double().cpu()
    effects = {}
    for name in PROBES:
        edited = score(*EDITS[name](episodes, tokenizer, generator)).double().cpu()
        shift, raised = perturbation_effect(original, edited)
        effects[name] = {"shift": shift.item(), "raised": raised.item()}
    return effects
