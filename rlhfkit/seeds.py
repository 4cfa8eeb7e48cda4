"""The one way rlhfkit derives seeds: a 63-bit seed mixed from integers (run seed, iteration, row, ...).

Randomness is derived from named integers rather than carried in a global generator: episode j
of iteration i always samples with `derived_seed(seed, ITERATION_EPISODE, i, j)`, pass e over the
prompts is shuffled with `derived_seed(seed, PROMPT_PASS, e)`, and so on. A resumed run therefore
repeats the uninterrupted run exactly, and the split of episodes over processes does not change
what is sampled. The first part after the run seed names the stream, so two streams never share
seeds. This module imports nothing from rlhfkit, so data/ and rollout/ can both use it.
"""

from __future__ import annotations

import torch

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)

# Streams: the second part of every derived seed.
EPISODE = 1  # (seed, EPISODE, iteration, global row): sampling of one RL episode
MINIBATCHES = 2  # (seed, MINIBATCHES, iteration): the iteration's minibatch permutations
PROMPT_PASS = 3  # (seed, PROMPT_PASS, pass): order of the prompts in one pass
PAIR_PASS = 4  # (seed, PAIR_PASS, pass): order of the reward model's batches in one pass
COMPLETION = 5  # (seed, COMPLETION, prompt, sample): completions sampled for ranking
EVALUATION = 6  # (seed, EVALUATION, prompt): responses sampled for evaluation (same for every policy)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers; equal parts give equal seeds, any change gives another."""
    h = 0
    for i, p in enumerate(parts):
        h = (h ^ (int(p) + 1) * _MIX[i % 3]) * 0x2545F4914F6CDD1D % 2**64
    return h % 2**63


def generator(*parts: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `derived_seed(*parts)`."""
    return torch.Generator().manual_seed(derived_seed(*parts))
