"""A guard that holds at the demo's own settings, and what the alarms say with and without it.

bench_hacking.py runs PPO at a smaller learning rate than the demo's; this script keeps the demo's
(1e-4, 64 episodes, its reward model, the seed ensemble of bench_hacking's setup) and compares, over
training seeds, the reward clip alone (KL 0, --reward-clip 2: the policy still drifts without bound)
with the KL penalty of 0.3 plus the same clip. Per run: the iteration where a centred 5-iteration mean
of the training gold score peaks, the first iteration after it back below its level over the first 5
iterations (None: never), the gold score over the last 5 iterations, the largest KL to the start
policy, and the alarms (tracking/alarms.py, default settings) with their iterations.

Usage: python benchmarks/bench_guard_demo.py [--out benchmarks/results/hacking] [--seeds 0,1,2]
                                             [--iterations 40] [--rerun]
OUT is bench_hacking.py's folder: its rankings and reward models are reused (or made). Writes
OUT/guard_demo.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_hacking import SMOOTH, alarm_steps, gold_below_start, gold_peak, run_ppo, setup

CLIP = 2.0
RUNS = {"clip alone": {"reward_clip": CLIP}, "KL 0.3 + clip": {"kl_coef": 0.3, "reward_clip": CLIP}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hacking"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--rerun", action="store_true", help="train every run again (default: reuse finished runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from rlhfkit.models.loading import LoadOptions, configure_loading
    from rlhfkit.pipelines.demo_config import DemoConfig
    from rlhfkit.tracking.metrics import read_metrics

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(output_dir=str(args.out), threads=1, iterations=args.iterations)  # the demo's lr and batch
    configure_loading(LoadOptions())
    _, _, folders = setup(args.out, cfg)
    result: dict = {"settings": {"learning_rate": cfg.learning_rate, "rollout_batch_size": cfg.rollout_batch_size,
                                 "iterations": args.iterations, "smooth": SMOOTH, "threads": 1}, "runs": {}}
    lines = ["| run | seed | gold peak (iteration, value) | gold back below the start's level | gold, last 5 "
             "iterations | largest KL | alarms (iteration) |", "|---|---|---|---|---|---|---|"]
    for label, settings in RUNS.items():
        for seed in map(int, args.seeds.split(",")):
            name = "guard_demo_" + "_".join(f"{k}{v}" for k, v in settings.items()) + f"_seed{seed}"
            if args.rerun or not (args.out / name / "model.safetensors").exists():
                run_ppo(args.out, cfg, folders, name, seed, **settings)
            rows = [r for r in read_metrics(args.out / name / "metrics.jsonl") if "reward/mean" in r]
            gold = [r["gold/mean"] for r in rows]
            peak = gold_peak(rows)
            smooth_peak = sum(gold[max(0, peak - SMOOTH // 2):peak + SMOOTH // 2 + 1]) / len(
                gold[max(0, peak - SMOOTH // 2):peak + SMOOTH // 2 + 1])
            run = {"label": label, "seed": seed, "gold": gold, "gold_peak": peak, "gold_peak_value": smooth_peak,
                   "gold_below_start": gold_below_start(gold, peak), "gold_last5": sum(gold[-5:]) / 5,
                   "max_kl": max(r["kl/ref"] for r in rows), "alarms": alarm_steps(args.out / name)}
            result["runs"][name] = run
            alarms = ", ".join(f"{d} {s}" for d, s in sorted(run["alarms"].items(), key=lambda x: x[1])) or "none"
            lines.append(f"| {label} | {seed} | {peak} ({smooth_peak:.2f}) | {run['gold_below_start']} | "
                         f"{run['gold_last5']:.2f} | {run['max_kl']:.1f} | {alarms} |")
            print(lines[-1], flush=True)
    result["seconds"] = time.perf_counter() - t0
    (args.out / "guard_demo.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    print(f"total {result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
