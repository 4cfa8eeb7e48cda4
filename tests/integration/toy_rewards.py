"""Reward functions with a known optimum, for policy-optimisation tests (importable as --reward-fn)."""


def count_a(prompts: list[str], responses: list[str]) -> list[float]:
    """The number of letters 'a' in the response: dense, and easy to raise by shifting token odds."""
    return [float(r.count("a")) for r in responses]
