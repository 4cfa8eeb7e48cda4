"""Reward-hacking diagnostics of generated text: diversity and repetition.

A policy that hacks its reward model usually collapses onto a few phrases: distinct-n falls
and repetition rises while the proxy reward climbs. These are measured on whitespace words
of the decoded responses, so they mean the same thing for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n = |unique n-grams| / |n-grams| over all texts together (Li et al. 2016); 0 if none."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str]) -> float:
    """Mean share of words in a text that repeat an earlier word of the same text."""
    rates = []
    for t in texts:
        words = t.split()
        if words:
            rates.append(1.0 - len(set(words)) / len(words))
    return sum(rates) / len(rates) if rates else 0.0


def text_metrics(texts: Sequence[str]) -> dict[str, float]:
    """The diversity metrics logged for every batch of responses."""
    return {
        "response/distinct_1": distinct_n(texts, 1),
        "response/distinct_2": distinct_n(texts, 2),
        "response/repetition": repetition_rate(texts),
    }


def win_rate(final: Sequence[float], start: Sequence[float]) -> float:
    """Share of prompts where the final policy's reply scores above the start policy's (ties count half)."""
    if len(final) != len(start) or not start:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists, got {len(final)} and {len(start)}")
    wins = sum(1.0 if f > s else 0.5 if f == s else 0.0 for f, s in zip(final, start))
    return wins / len(start)
