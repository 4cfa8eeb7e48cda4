"""Argument checks shared by the algos modules.

Each check raises `ValueError` naming the argument and showing what it received, so a caller
sees "mask must have the shape of logp (4, 7), got (4, 8)" instead of a broadcast error from
deep inside torch. Shape and dtype checks never read tensor values and always run. The few
checks that must look at values (token ids in range, a mask row with no token, weights >= 0)
would make the device wait on every minibatch, so they run only while value checks are on:
inside `with value_checks():`, or everywhere with the environment variable
RLHFKIT_CHECK_VALUES=1. The trainers turn them on for the first iteration of a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_value_checks = os.environ.get("RLHFKIT_CHECK_VALUES", "0") not in ("", "0", "false", "no")


def value_checks_enabled() -> bool:
    """checks_on = the current setting of the value-reading checks.

    Args:
      (none)

    Returns:
      True while checks that read tensor values (and so sync the device) run.
    """
    return _value_checks


@contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """with value_checks(): ...  runs the value-reading checks inside the block (or skips them).

    Args:
      enabled: True to run them, False to skip them.

    Returns:
      a context manager; the previous setting is restored on exit.
    """
    global _value_checks
    before, _value_checks = _value_checks, enabled
    try:
        yield
    finally:
        _value_checks = before


def check_tensor(name: str, x: object) -> torch.Tensor:
    """`x` is a torch.Tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_rank(name: str, x: object, *dims: str) -> torch.Tensor:
    """`x` has one dimension per name in `dims`, e.g. check_rank("logp", logp, "B", "T")."""
    x = check_tensor(name, x)
    if x.dim() != len(dims):
        raise ValueError(f"{name} must have shape ({', '.join(dims)}), got shape {tuple(x.shape)}")
    return x


def check_same_shape(**tensors: object) -> None:
    """All keyword tensors have the shape of the first one."""
    (first_name, first), *rest = tensors.items()
    first = check_tensor(first_name, first)
    for name, x in rest:
        x = check_tensor(name, x)
        if x.shape != first.shape:
            raise ValueError(
                f"{name} must have the shape of {first_name} {tuple(first.shape)}, "
                f"got {name} {tuple(x.shape)}"
            )


def check_mask(mask: object, like: torch.Tensor, like_name: str, name: str = "mask") -> torch.Tensor:
    """`mask` is a torch.bool tensor with the shape of `like`."""
    check_tensor(like_name, like)
    mask = check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{name} must be a torch.bool tensor (True on response tokens), got dtype {mask.dtype}; "
            f"pass `{name}.bool()`"
        )
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(mask.shape)}"
        )
    return mask


def check_per_sequence_or_token(name: str, x: object, like: torch.Tensor) -> torch.Tensor:
    """`x` is (B,) (one value per sequence) or (B, T) like `like`; returns it broadcastable to (B, T)."""
    x = check_tensor(name, x)
    if x.shape == like.shape:
        return x
    if x.dim() == 1 and x.shape[0] == like.shape[0]:
        return x.unsqueeze(-1)  # (B, 1)
    raise ValueError(
        f"{name} must have shape (B,) = ({like.shape[0]},) or (B, T) = {tuple(like.shape)}, "
        f"got {tuple(x.shape)}"
    )


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_unit_interval(name: str, value: object) -> float:
    """0 <= value <= 1 (discounts, decays)."""
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_positive(name: str, value: object) -> float:
    """0 < value < inf."""
    v = _number(name, value)
    if not 0.0 < v < math.inf:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def check_nonnegative(name: str, value: object) -> float:
    """0 <= value < inf."""
    v = _number(name, value)
    if not 0.0 <= v < math.inf:
        raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")
    return v


def check_finite(name: str, value: object) -> float:
    """A finite number (a NaN or inf would poison everything computed from it)."""
    v = _number(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """`value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_group_size(group_size: object, batch_size: int, minimum: int = 2) -> int:
    """`group_size` is an int >= minimum that divides the batch."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < minimum:
        raise ValueError(f"group_size must be an int >= {minimum}, got {group_size!r}")
    if batch_size % group_size != 0:
        raise ValueError(
            f"group_size {group_size} must divide the batch: rewards has {batch_size} entries "
            f"({batch_size} % {group_size} = {batch_size % group_size}); lay the batch out as "
            "consecutive groups of group_size samples of the same prompt"
        )
    return group_size
