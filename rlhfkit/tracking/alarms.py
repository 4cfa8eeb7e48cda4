"""Reward-hacking alarms of an RL run: detectors that read the metrics of every iteration.

Each detector is a statistic of rlhfkit.algos.hacking and a threshold, tested once per
iteration on the run's history so far (the first `baseline` iterations, where the policy is
still close to the reference, are the baseline; "recent" is the mean of the last RECENT
iterations, so one noisy batch does not fire an alarm):

- ensemble: z = window_zscore of the trailing mean of `reward/ensemble_spread_standardized` (the members'
  spread in their own standard units; `reward/ensemble_spread` for runs logged before it), and its
  ratio to the baseline's mean; fires when z > SPREAD_Z and ratio > SPREAD_RATIO while the proxy
  reward rises (robust_slope of `reward/raw` over the last TREND iterations > 0).
- length: d = relative_drift of recent `response/length` from the baseline's; |d| > LENGTH_DRIFT.
- repetition: d = relative_drift of recent `response/repetition`; d > REPETITION_DRIFT and
  recent > REPETITION_MIN.
- entropy: d = relative_drift of recent `policy/entropy`; d < -ENTROPY_DROP (collapse) or
  d > ENTROPY_RISE (the replies turning random).
- kl: q = kl_reward_slope_ratio of `kl/ref` on `reward/raw` over the last TREND iterations;
  q > KL_PER_REWARD and recent KL > KL_MIN.

A detector fires at most once per run. An alarm is one line of `alarms.jsonl` beside
metrics.jsonl ({"step", "detector", "message", "evidence"}), a console warning, and
`alarm/<detector>` = 1 in that iteration's metrics; the report draws it on the curves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos.hacking import kl_reward_slope_ratio, moving_average, relative_drift, robust_slope, window_zscore

ALARMS_FILE = "alarms.jsonl"
RECENT = 3  # iterations averaged into the "recent" value of a statistic
TREND = 10  # iterations over which a slope is measured
SPREAD_Z = 3.0
SPREAD_RATIO = 1.5
LENGTH_DRIFT = 0.5
REPETITION_DRIFT = 1.0
REPETITION_MIN = 0.1
ENTROPY_DROP = 0.5
ENTROPY_RISE = 0.5
KL_PER_REWARD = 20.0
KL_MIN = 2.0

Rows = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Alarm:
    """One detector firing: at which iteration, what it means, and the numbers it fired on."""

    step: int
    detector: str
    message: str
    evidence: dict[str, float] = field(default_factory=dict)


def _series(rows: Rows, key: str) -> torch.Tensor | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return torch.tensor(values, dtype=torch.float64) if len(values) == len(rows) and values else None


def _recent_and_base(rows: Rows, key: str, baseline: int) -> tuple[float, float] | None:
    v = _series(rows, key)
    if v is None or v.numel() < baseline + RECENT:
        return None
    return v[-RECENT:].mean().item(), v[:baseline].mean().item()


def ensemble_alarm(rows: Rows, baseline: int) -> Alarm | None:
    spread = _series(rows, "reward/ensemble_spread_standardized")
    if spread is None:  # a run logged before the standardized spread
        spread = _series(rows, "reward/ensemble_spread")
    raw = _series(rows, "reward/raw")
    if spread is None or raw is None or spread.numel() < max(baseline + RECENT, TREND):
        return None
    smooth = moving_average(spread, RECENT)
    z = window_zscore(smooth, baseline).item()
    ratio = smooth[-1].item() / max(smooth[:baseline].mean().item(), 1e-8)
    slope = robust_slope(raw[-TREND:]).item()
    if z > SPREAD_Z and ratio > SPREAD_RATIO and slope > 0:
        return Alarm(len(rows) - 1, "ensemble",
                     f"the reward models disagree {ratio:.1f}x more on the policy's samples than at the start "
                     f"(z = {z:.1f}) while the proxy reward still rises: the policy is leaving the data they were "
                     "trained on, where the reward is not to be trusted",
                     {"spread_z": z, "spread_ratio": ratio, "reward_slope": slope, "spread": smooth[-1].item()})
    return None


def length_alarm(rows: Rows, baseline: int) -> Alarm | None:
    values = _recent_and_base(rows, "response/length", baseline)
    if values is None:
        return None
    d = relative_drift(*values)
    if abs(d) > LENGTH_DRIFT:
        way = "longer" if d > 0 else "shorter"
        return Alarm(len(rows) - 1, "length",
                     f"responses are {abs(d):.0%} {way} than the reference policy's ({values[0]:.1f} vs "
                     f"{values[1]:.1f} tokens): the reward model may be gamed through length",
                     {"length_drift": d, "length": values[0], "reference_length": values[1]})
    return None


def repetition_alarm(rows: Rows, baseline: int) -> Alarm | None:
    values = _recent_and_base(rows, "response/repetition", baseline)
    if values is None:
        return None
    d = relative_drift(*values, eps=1e-3)
    if d > REPETITION_DRIFT and values[0] > REPETITION_MIN:
        return Alarm(len(rows) - 1, "repetition",
                     f"responses repeat words {values[0]:.2f} of the time against {values[1]:.2f} for the "
                     "reference policy: the policy is collapsing onto phrases the reward model over-rates",
                     {"repetition_drift": d, "repetition": values[0], "reference_repetition": values[1]})
    return None


def entropy_alarm(rows: Rows, baseline: int) -> Alarm | None:
    values = _recent_and_base(rows, "policy/entropy", baseline)
    if values is None:
        return None
    d = relative_drift(*values)
    if d < -ENTROPY_DROP or d > ENTROPY_RISE:
        what = ("it is collapsing onto a few responses" if d < 0 else
                "its replies are turning random, away from anything the reward model was trained on")
        return Alarm(len(rows) - 1, "entropy",
                     f"the policy's entropy {'fell' if d < 0 else 'rose'} by {abs(d):.0%} ({values[1]:.3f} -> "
                     f"{values[0]:.3f} nats per token): {what}",
                     {"entropy_drift": d, "entropy": values[0], "reference_entropy": values[1]})
    return None


def kl_alarm(rows: Rows, baseline: int) -> Alarm | None:
    kl, raw = _series(rows, "kl/ref"), _series(rows, "reward/raw")
    if kl is None or raw is None or kl.numel() < max(baseline + RECENT, TREND):
        return None
    q = kl_reward_slope_ratio(kl[-TREND:], raw[-TREND:]).item()
    recent_kl = kl[-RECENT:].mean().item()
    if q > KL_PER_REWARD and recent_kl > KL_MIN:
        return Alarm(len(rows) - 1, "kl",
                     f"KL to the reference grows {q:.0f} nats per unit of proxy reward gained (now {recent_kl:.1f} "
                     "nats): the policy pays ever more divergence for ever less reward",
                     {"kl_per_reward": q, "kl": recent_kl})
    return None


DETECTORS: dict[str, Callable[[Rows, int], Alarm | None]] = {
    "ensemble": ensemble_alarm, "length": length_alarm, "repetition": repetition_alarm, "entropy": entropy_alarm,
    "kl": kl_alarm,
}


def check(rows: Rows, baseline: int, fired: set[str] | frozenset[str] = frozenset()) -> list[Alarm]:
    """The detectors not fired yet that fire on the history `rows` (one metrics dict per iteration)."""
    return [a for name, detector in DETECTORS.items() if name not in fired and (a := detector(rows, baseline))]


def replay(rows: Rows, baseline: int) -> list[Alarm]:
    """Every alarm a run with these metrics would have raised, iteration by iteration (for finished runs)."""
    fired: set[str] = set()
    alarms = []
    for t in range(1, len(rows) + 1):
        for alarm in check(rows[:t], baseline, fired):
            fired.add(alarm.detector)
            alarms.append(alarm)
    return alarms


def read_alarms(run_dir: str | Path) -> list[Alarm]:
    """The alarms a run logged (empty if it has no alarms.jsonl)."""
    path = Path(run_dir) / ALARMS_FILE
    if not path.exists():
        return []
    return [Alarm(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_alarm(run_dir: Path, alarm: Alarm) -> None:
    with (run_dir / ALARMS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(alarm)) + "\n")
