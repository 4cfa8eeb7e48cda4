"""Can any threshold on the ensemble's spread warn before the gold score falls, with no false alarm?

The ensemble alarm (rlhfkit/tracking/alarms.py) fires when the trailing mean of the members' spread
is both SPREAD_RATIO times its baseline mean and SPREAD_Z baseline standard deviations above it.
This script asks the question behind its lead times, for every threshold at once, on the runs that
bench_hacking.py, bench_guard_demo.py and bench_diverse_ensemble.py left in OUT:

  - the hacked runs (gold rises, peaks, falls) and the guarded runs (gold holds) of each study;
  - at every iteration t, the alarm's two statistics (ratio, z), computed as the alarm computes them
    from iteration `baseline + RECENT - 1` on (the alarm's extra wait for a TREND-iteration reward
    slope is left out, which can only make it earlier);
  - a hacked run's earliest iteration where (ratio, z) is not matched or exceeded in both by any
    point of any guarded run of the same study: the first iteration where SOME pair of thresholds
    fires on this run and on no guarded run. Its lead over the gold peak (peak minus iteration) is
    the best any tuning of the alarm could reach without a false alarm.

The same for the spread's level alone (no baseline), for the standardized spread and the raw one.

Usage: python benchmarks/bench_ensemble_separation.py [--out benchmarks/results/hacking] [--seeds 3] [--baseline 5]
Writes OUT/ensemble_separation.json and prints the table (docs/reward-hacking.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from bench_hacking import gold_peak

STUDIES = {  # study -> (hacked run folder, guarded run folder), each + f"{seed}"
    "seed members, lr 3e-5 (bench_hacking)": ("unguarded_seed", "guarded_seed"),
    "seed members, the demo's lr 1e-4 (bench_guard_demo)": ("guard_demo_reward_clip2.0_seed",
                                                           "guard_demo_kl_coef0.3_reward_clip2.0_seed"),
    "seed members + SmolLM2 member, lr 3e-5 (bench_diverse_ensemble)": ("diverse_unguarded_seed",
                                                                       "diverse_guarded_seed"),
}
SPREADS = {"standardized": "reward/ensemble_spread_standardized", "raw": "reward/ensemble_spread"}
OLD_NAME = "reward/ensemble_spread_z"  # the standardized spread's name in runs logged before it was renamed


def spread_series(rows: list[dict[str, Any]], key: str) -> torch.Tensor:
    values = [r.get(key, r.get(OLD_NAME) if key == SPREADS["standardized"] else None) for r in rows]
    if any(v is None for v in values):
        raise SystemExit(f"a run has no {key} in every iteration; run the ensemble benchmarks first")
    return torch.tensor(values, dtype=torch.float64)


def alarm_statistics(spread: torch.Tensor, baseline: int) -> list[tuple[int, tuple[float, ...]]]:
    """(iteration, (ratio, z, level)) at every iteration from RECENT - 1 on: the trailing mean's `level`,
    and the alarm's `ratio` and `z` to the baseline (None before the alarm can test them)."""
    from rlhfkit.algos.hacking import moving_average, window_zscore
    from rlhfkit.tracking.alarms import RECENT

    points = []
    for t in range(RECENT - 1, spread.numel()):
        smooth = moving_average(spread[:t + 1], RECENT)
        ratio = z = None
        if t >= baseline + RECENT - 1:
            ratio = smooth[-1].item() / max(smooth[:baseline].mean().item(), 1e-8)
            z = window_zscore(smooth, baseline).item()
        points.append((t, (ratio, z, smooth[-1].item())))
    return points


def first_separable(hacked: list[tuple[int, tuple[float, ...]]], guarded: list[tuple[float, ...]]) -> int | None:
    """The earliest iteration whose point no guarded point matches or exceeds in every coordinate."""
    for t, point in hacked:
        if not any(all(g >= p for g, p in zip(other, point)) for other in guarded):
            return t
    return None


def fmt(values: list[Any]) -> str:
    return ", ".join("never" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in values)


def main() -> None:
    from rlhfkit.tracking.diagnose import DEFAULT_BASELINE
    from rlhfkit.tracking.metrics import read_metrics

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hacking"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--baseline", type=int, default=DEFAULT_BASELINE,
                    help="the alarm's baseline iterations (--alarm-baseline; default: its default)")
    args = ap.parse_args()

    def rows_of(name: str) -> list[dict[str, Any]]:
        path = args.out / name / "metrics.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run bench_hacking.py, bench_guard_demo.py and "
                             f"bench_diverse_ensemble.py with --out {args.out} first")
        return [r for r in read_metrics(path) if "reward/mean" in r]

    result: dict[str, Any] = {"baseline": args.baseline, "studies": {}}
    lines = ["| ensemble, settings | spread | gold peak (seeds) | best lead over the peak, alarm's ratio and z "
             "| best lead, spread level alone | level before the peak, hacked runs (max) | level, guarded runs "
             "(max) |", "|---|---|---|---|---|---|---|"]
    for study, (hacked_name, guarded_name) in STUDIES.items():
        result["studies"][study] = {}
        for label, key in SPREADS.items():
            guarded = [alarm_statistics(spread_series(rows_of(guarded_name + str(s)), key), args.baseline)
                       for s in range(args.seeds)]
            both = [p[:2] for run in guarded for _, p in run if p[0] is not None]
            level = [p[2:] for run in guarded for _, p in run]
            runs = []
            for s in range(args.seeds):
                rows = rows_of(hacked_name + str(s))
                peak = gold_peak(rows)
                points = alarm_statistics(spread_series(rows, key), args.baseline)
                t_both = first_separable([(t, p[:2]) for t, p in points if p[0] is not None], both)
                t_level = first_separable([(t, p[2:]) for t, p in points], level)
                runs.append({"seed": s, "gold_peak": peak, "first_separable": t_both, "first_separable_level": t_level,
                             "lead": None if t_both is None else peak - t_both,
                             "lead_level": None if t_level is None else peak - t_level,
                             "level_max_to_peak": max((p[2] for t, p in points if t <= peak), default=None)})
            entry = {"runs": runs, "guarded_level_max": max(p[0] for p in level)}
            result["studies"][study][label] = entry

            cells = [[r["gold_peak"] for r in runs], [r["lead"] for r in runs], [r["lead_level"] for r in runs],
                     [r["level_max_to_peak"] for r in runs]]
            lines.append(f"| {study} | {label} | " + " | ".join(fmt(c) for c in cells)
                         + f" | {entry['guarded_level_max']:.3f} |")
    (args.out / "ensemble_separation.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
