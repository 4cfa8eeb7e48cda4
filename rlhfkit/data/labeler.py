"""A simulated human labeler: ranks K completions by a gold judge (one criterion), with annotator noise.

Noise model (Mallows, sampled by repeated insertion). Real annotators disagree with each other
on a good share of pairs (InstructGPT's training labelers agreed on 72.6% of them; Ouyang et al.
2022, section 5.1), so the labeler's ranking disagrees with the gold order on a share of pairs
that one number controls. Take the completions in gold
order, best first (ties broken by index), and build the ranking by inserting them one at a time:
the i-th item (i = 0..K-1) goes in front of m of the i items already placed with probability
proportional to q^m, m = 0..i. Each such m adds exactly m pairs ordered against gold, so

    E[pairs against gold] = sum_{i=0}^{K-1} sum_m m q^m / sum_m q^m,

and dividing by K(K-1)/2 gives the expected disagreement rate. `noise` IS that rate: the
dispersion q is solved from it (bisection; the rate rises monotonically from 0 at q = 0 to 0.5 at
q = 1, a uniformly random ranking). For K = 2 this is q = noise / (1 - noise), i.e. the pair is
flipped with probability `noise`. Near-misses (adjacent places) are the most likely mistakes, as
with people.

Determinism: the noise of one ranking is drawn from a generator seeded by (seed, prompt,
completions), so the same question always gets the same answer, in any order and any process;
a resumed feedback collection reproduces its labels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from rlhfkit.data.synthetic import CRITERIA, GOLD_JUDGES

MAX_NOISE = 0.5  # a uniformly random ranking; more would be an adversarial labeler


def expected_disagreement(q: float, k: int) -> float:
    """Expected share of the K(K-1)/2 pairs that a Mallows(q) ranking orders against gold."""
    if k < 2:
        return 0.0
    inversions = 0.0
    for i in range(k):  # the i-th insertion adds m inversions with probability q^m / Z_i
        weights = [q**m for m in range(i + 1)]
        inversions += sum(m * w for m, w in enumerate(weights)) / sum(weights)
    return inversions / (k * (k - 1) / 2)


@lru_cache(maxsize=64)
def dispersion_for(noise: float, k: int) -> float:
    """The Mallows dispersion q in [0, 1] whose expected disagreement rate with K items is `noise`."""
    if not 0.0 <= noise <= MAX_NOISE:
        raise ValueError(f"noise must be in [0, {MAX_NOISE}] (a share of pairs ranked against gold), got {noise}")
    if noise == 0.0 or k < 2:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(60):  # 2^-60: exact to float precision
        mid = 0.5 * (low + high)
        if expected_disagreement(mid, k) < noise:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def gold_order(scores: Sequence[float]) -> list[int]:
    """Indices from best to worst gold score; equal scores keep their index order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def noisy_ranks(scores: Sequence[float], noise: float, rng: random.Random) -> list[int]:
    """Rank per item (0 = best) from `scores` with Mallows noise of expected disagreement `noise`."""
    q = dispersion_for(float(noise), len(scores))
    placed: list[int] = []  # item indices, best first
    for i, item in enumerate(gold_order(scores)):
        weights = [q**m for m in range(i + 1)]  # m = how many better items it jumps ahead of
        m = rng.choices(range(i + 1), weights=weights)[0] if q > 0 else 0
        placed.insert(len(placed) - m, item)
    ranks = [0] * len(scores)
    for rank, item in enumerate(placed):
        ranks[item] = rank
    return ranks


def tied_noisy_ranks(scores: Sequence[float], noise: float, rng: random.Random) -> list[int]:
    """Like `noisy_ranks`, but completions with equal scores share a rank (a tie).

    The noise acts on the distinct score levels: the labeler may misorder two different
    replies, and marks replies it cannot tell apart as tied, as annotators do.
    """
    levels = sorted(set(scores), reverse=True)
    level_ranks = noisy_ranks(levels, noise, rng)  # rank of each distinct level
    return [level_ranks[levels.index(s)] for s in scores]


class SimulatedLabeler:
    """Ranks completions like a human annotator would: by the gold judge, with noise.

    `noise` is the expected share of completion pairs the labeler orders against the gold score
    (0 = always the gold order, 0.5 = random). See the module docstring for the model. With
    `ties=True`, completions of equal gold score get equal ranks instead of an arbitrary order;
    `resolution` > 0 makes the labeler perceive gold scores on a grid of that step (1.0: five levels
    from -2 to 2), so replies that differ by less look equally good. `criterion` names the hidden
    judge it ranks by: `helpful` (`gold_score`, the default) or `concise` (`concise_score`).
    """

    def __init__(self, noise: float = 0.1, seed: int = 0, ties: bool = False, resolution: float = 0.0,
                 criterion: str = "helpful") -> None:
        dispersion_for(float(noise), 2)  # validates noise now, not at the first ranking
        if resolution < 0:
            raise ValueError(f"resolution must be >= 0, got {resolution}")
        if criterion not in GOLD_JUDGES:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        self.noise = float(noise)
        self.seed = int(seed)
        self.ties = ties
        self.resolution = float(resolution)

    def score(self, prompt: str, completion: str) -> float:
        """The gold score as the labeler perceives it (noise-free): rounded to `resolution` when set,
        like an annotator who cannot tell replies less than about one step of quality apart."""
        score = GOLD_JUDGES[self.criterion](prompt, completion)
        return round(score / self.resolution) * self.resolution if self.resolution else score

    def rank(self, prompt: str, completions: Sequence[str]) -> list[int]:
        """A rank per completion, 0 = best: a permutation of range(len(completions)), or with ties
        the rank of each completion's gold level (equal scores, equal ranks)."""
        if isinstance(completions, str):
            raise TypeError("completions must be a list of strings, not one string")
        if len(completions) == 0:
            raise ValueError("rank() needs at least one completion")
        # str seeds hash with SHA-512 in `random`: stable across processes, unlike hash()
        # (another criterion's noise is drawn apart: its name joins the seed; the default keeps the old seed)
        extra = [] if self.criterion == "helpful" else [self.criterion]
        rng = random.Random("\x1f".join([str(self.seed), *extra, prompt, *completions]))
        scores = [self.score(prompt, c) for c in completions]
        return (tied_noisy_ranks if self.ties else noisy_ranks)(scores, self.noise, rng)
