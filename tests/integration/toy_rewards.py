"""Reward functions with a known optimum, for policy-optimisation tests (importable as --reward-fn)."""


def count_a(prompts: list[str], responses: list[str]) -> list[float]:
    """The number of letters 'a' in the response: dense, and easy to raise by shifting token odds."""
    return [float(r.count("a")) for r in responses]


def letters(prompts: list[str], responses: list[str]) -> list[float]:
    """The number of ASCII letters of the response: blind to order and prompt, and longer is better. (ASCII:
    a byte-level token's ASCII bytes decode to the same letters wherever the token stands.)"""
    return [float(sum(c.isascii() and c.isalpha() for c in r)) for r in responses]
