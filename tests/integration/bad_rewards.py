"""Reward functions that misbehave, for the bad-input catalogue (importable as --reward-fn bad_rewards:NAME)."""

import math


def wrong_count(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0]


def nan(prompts: list[str], responses: list[str]) -> list[float]:
    return [math.nan] * len(responses)


def inf(prompts: list[str], responses: list[str]) -> list[float]:
    return [math.inf] * len(responses)


def one_nan(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0] * (len(responses) - 1) + [math.nan]


def strings(prompts: list[str], responses: list[str]) -> list[str]:
    return ["good"] * len(responses)


def raises(prompts: list[str], responses: list[str]) -> list[float]:
    raise KeyError("label")


def returns_none(prompts: list[str], responses: list[str]) -> None:
    return None


def length(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


not_callable = 3
