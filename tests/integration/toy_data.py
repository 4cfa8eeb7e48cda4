"""Toy data with known rules for the integration tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

NEUTRAL = "the a film story day night city road house river table chair window door light water".split()
POSITIVE = ["great", "lovely", "superb", "kind", "bright"]
NEGATIVE = ["awful", "rotten", "grim", "rude", "dull"]
PROMPTS = ["tell me about", "what happened to", "describe", "write about", "say something on"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(NEUTRAL) for _ in range(n))


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Texts covering every word, for training the tiny tokenizer."""
    rng = random.Random(seed)
    words = NEUTRAL + POSITIVE + NEGATIVE
    return [" ".join(rng.choice(PROMPTS).split() + [rng.choice(words) for _ in range(8)]) for _ in range(n)]


def known_rule_pairs(n: int, seed: int) -> list[dict]:
    """The rule: the chosen response holds a positive word, the rejected one a negative word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"
        base = sentence(rng, rng.randint(3, 7)).split()
        pos = rng.randint(0, len(base))
        chosen = base[:pos] + [rng.choice(POSITIVE)] + base[pos:]
        rejected = base[:pos] + [rng.choice(NEGATIVE)] + base[pos:]
        rows.append({"prompt": prompt, "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def known_rule_rankings(n: int, seed: int) -> list[dict]:
    """Ranked lists of 2 to 4 completions, best first: more positive words rank higher.

    Lists of different lengths give pairs of different weights (1 / K-choose-2 each), the case in
    which a per-process weight sum would differ from the global one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"
        k = rng.randint(2, 4)
        completions = []
        for positives in range(k, 0, -1):  # best first
            words = sentence(rng, rng.randint(2, 5)).split() + [rng.choice(POSITIVE) for _ in range(positives)]
            words += [rng.choice(NEGATIVE) for _ in range(k - positives)]
            rng.shuffle(words)
            completions.append(" " + " ".join(words))
        rows.append({"prompt": prompt, "completions": completions})
    return rows
