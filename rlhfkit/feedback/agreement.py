"""Agreement between two annotators' rankings of the same completions (pure functions).

A ranking is a rank vector: `ranks[i]` is the rank of completion i, 0 is best, equal ranks are
ties. Two rankings of n completions are compared on their n(n-1)/2 pairs {i, j}; each annotator
says i is better (sign -1), worse (+1) or tied (0) with j.

    pairwise agreement = #pairs where both give the same sign (both tied counts) / #pairs

    Kendall tau-b      = (C - D) / sqrt((n0 - n1) (n0 - n2))
        C, D = pairs ordered the same / opposite way by both (ties in either count in neither)
        n0 = #pairs, n1 = #pairs tied by the first annotator, n2 = by the second
        (Kendall 1945, "The treatment of ties in ranking problems"); undefined (None) when
        either annotator tied everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairCounts:
    """How two rank vectors order the pairs of completions."""

    concordant: int  # both strict, same direction
    discordant: int  # both strict, opposite directions
    tied_first: int  # tied by the first annotator only
    tied_second: int  # tied by the second annotator only
    tied_both: int

    @property
    def pairs(self) -> int:
        return self.concordant + self.discordant + self.tied_first + self.tied_second + self.tied_both

    @property
    def agreeing(self) -> int:
        return self.concordant + self.tied_both

    def tau_b(self) -> float | None:
        untied_first = self.concordant + self.discordant + self.tied_second  # n0 - n1
        untied_second = self.concordant + self.discordant + self.tied_first  # n0 - n2
        if untied_first == 0 or untied_second == 0:
            return None
        return (self.concordant - self.discordant) / math.sqrt(untied_first * untied_second)


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def pair_counts(ranks_a: Sequence[int], ranks_b: Sequence[int]) -> PairCounts:
    """Count concordant, discordant and tied pairs of two rank vectors over the same items."""
    if len(ranks_a) != len(ranks_b):
        raise ValueError(f"rank vectors differ in length: {len(ranks_a)} vs {len(ranks_b)}")
    c = d = ta = tb = tab = 0
    n = len(ranks_a)
    for i in range(n):
        for j in range(i + 1, n):
            sa, sb = _sign(ranks_a[i] - ranks_a[j]), _sign(ranks_b[i] - ranks_b[j])
            if sa == 0 and sb == 0:
                tab += 1
            elif sa == 0:
                ta += 1
            elif sb == 0:
                tb += 1
            elif sa == sb:
                c += 1
            else:
                d += 1
    return PairCounts(c, d, ta, tb, tab)


@dataclass(frozen=True)
class PairAgreement:
    """Agreement of two annotators over the prompts both ranked."""

    first: str
    second: str
    prompts: int  # shared prompts
    pairs: int  # completion pairs over those prompts
    agreement: float  # fraction of pairs with the same preference (or the same tie)
    kendall_tau: float | None  # mean over shared prompts of tau-b (prompts where it is undefined left out)


@dataclass(frozen=True)
class AgreementReport:
    pairs: list[PairAgreement]  # one per pair of annotators sharing at least one prompt
    agreement: float | None  # over all annotator pairs and their shared prompts' completion pairs
    kendall_tau: float | None  # mean tau-b over all (annotator pair, shared prompt)


def agreement_report(rankings: dict[int, dict[str, Sequence[int]]]) -> AgreementReport:
    """Agreement between every two annotators.

    `rankings[prompt_id][annotator] = rank vector` (completions in one fixed order per prompt).
    Annotator pairs are listed in name order.
    """
    names = sorted({name for by_name in rankings.values() for name in by_name})
    rows: list[PairAgreement] = []
    all_agree = all_pairs = 0
    all_taus: list[float] = []
    for a_index, a in enumerate(names):
        for b in names[a_index + 1 :]:
            shared = [r for r in rankings.values() if a in r and b in r]
            if not shared:
                continue
            counts = [pair_counts(r[a], r[b]) for r in shared]
            agree, total = sum(c.agreeing for c in counts), sum(c.pairs for c in counts)
            taus = [t for t in (c.tau_b() for c in counts) if t is not None]
            rows.append(
                PairAgreement(
                    first=a,
                    second=b,
                    prompts=len(shared),
                    pairs=total,
                    agreement=agree / total,
                    kendall_tau=sum(taus) / len(taus) if taus else None,
                )
            )
            all_agree, all_pairs = all_agree + agree, all_pairs + total
            all_taus += taus
    return AgreementReport(
        pairs=rows,
        agreement=all_agree / all_pairs if all_pairs else None,
        kendall_tau=sum(all_taus) / len(all_taus) if all_taus else None,
    )
