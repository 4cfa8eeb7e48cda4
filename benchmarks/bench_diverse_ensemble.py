"""A pretrain-diverse ensemble member: does a reward model from another base model warn earlier?

bench_hacking.py's ensemble members differ only in their fine-tuning seed, and they share the demo
reward model's blind spot. This script adds a member from another pretrained trunk: SmolLM2-135M-Instruct
(`rlhfkit models prepare smollm2`), trained on the same comparisons (one epoch, lr 3e-5, batch 32, the
same held-out tenth). Its own tokenizer is handled by the scorer, and the ensemble alarm reads the
members' spread in their own standard units (`reward/ensemble_spread_standardized`), so its other scale does not
matter. PPO at bench_hacking's settings (lr 3e-5, 32 episodes, 28 iterations), ensemble = the seed
members + the SmolLM2 member, over training seeds: unguarded (KL 0) and guarded (KL 0.3 + reward clip 2,
the guard that holds in bench_guard_demo.py). Per run: the gold landmarks of bench_hacking.py and the
alarms with their iterations; the ensemble's lead times and false alarms.

Usage: python benchmarks/bench_diverse_ensemble.py [--out benchmarks/results/hacking] [--seeds 0,1,2]
                                                   [--base DIR] [--iterations 28] [--rerun]
OUT is bench_hacking.py's folder (its rankings and seed members are reused or made); writes
OUT/diverse_ensemble.json and prints the table. About 25 minutes for the SmolLM2 member on 2 CPU
cores and 3 minutes per run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_hacking import BATCH, LR, SMOOTH, alarm_steps, bench_config, gold_below_start, gold_peak, setup

GUARD = {"kl_coef": 0.3, "reward_clip": 2.0}
MEMBER = "reward_model_smollm2"


def train_member(out: Path, base: Path, cfg) -> Path:
    """The SmolLM2 reward model on the demo's comparisons (reused when OUT already holds it)."""
    from rlhfkit.pipelines import demo
    from rlhfkit.trainers.reward import train as train_reward
    from rlhfkit.trainers.reward_config import RewardConfig

    folder = out / MEMBER
    if not (folder / "eval.json").exists():
        settings = {**demo.reward_settings(cfg, out / "comparisons.jsonl", out), "model": str(base),
                    "output_dir": str(folder), "epochs": 1, "learning_rate": 3e-5, "threads": 2, "overwrite": True}
        train_reward(RewardConfig(**settings))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hacking"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--base", type=Path, default=Path.home() / ".cache" / "rlhfkit" / "smollm2-135m-instruct",
                    help="the SmolLM2 folder of `rlhfkit models prepare smollm2`")
    ap.add_argument("--iterations", type=int, default=28)
    ap.add_argument("--rerun", action="store_true", help="train every run again (default: reuse finished runs)")
    args = ap.parse_args()
    if not (args.base / "config.json").exists():
        raise SystemExit(f"{args.base}: no model there; run: rlhfkit models prepare smollm2")
    torch.set_num_threads(1)
    from rlhfkit.pipelines import demo
    from rlhfkit.tracking.metrics import read_metrics
    from rlhfkit.trainers.ppo import train as train_ppo
    from rlhfkit.trainers.rl_config import PPOConfig

    t0 = time.perf_counter()
    cfg = bench_config(args.out, args.iterations)
    _, _, folders = setup(args.out, cfg)
    member = train_member(args.out, args.base, cfg)
    accuracy = json.loads((member / "eval.json").read_text())["eval/accuracy"]
    result: dict = {"settings": {"learning_rate": LR, "rollout_batch_size": BATCH, "iterations": args.iterations,
                                 "members": [*folders, str(member)], "member_accuracy": accuracy}, "runs": {}}
    lines = ["| run | seed | gold peak | gold back below the start's level | gold, last 5 iterations | largest KL | "
             "alarms (iteration) |", "|---|---|---|---|---|---|---|"]
    for label, settings in (("unguarded", {}), ("KL 0.3 + clip 2", GUARD)):
        for seed in map(int, args.seeds.split(",")):
            name = f"diverse_{'guarded' if settings else 'unguarded'}_seed{seed}"
            if args.rerun or not (args.out / name / "model.safetensors").exists():
                ppo = {**demo.ppo_settings(replace(cfg, seed=seed), args.out),
                       "reward_ensemble": [*folders[1:], str(member)], "sample_every": 0,
                       "output_dir": str(args.out / name), "overwrite": True, "kl_coef": 0.0, **settings}
                train_ppo(PPOConfig(**ppo), gold_fn=demo.gold)
            rows = [r for r in read_metrics(args.out / name / "metrics.jsonl") if "reward/mean" in r]
            gold = [r["gold/mean"] for r in rows]
            peak = gold_peak(rows)
            run = {"label": label, "seed": seed, "gold": gold, "gold_peak": peak,
                   "gold_below_start": gold_below_start(gold, peak), "gold_last5": sum(gold[-5:]) / 5,
                   "max_kl": max(r["kl/ref"] for r in rows), "alarms": alarm_steps(args.out / name),
                   "spread_z": [r.get("reward/ensemble_spread_standardized") for r in rows]}
            result["runs"][name] = run
            alarms = ", ".join(f"{d} {s}" for d, s in sorted(run["alarms"].items(), key=lambda x: x[1])) or "none"
            lines.append(f"| {label} | {seed} | {peak} | {run['gold_below_start']} | {run['gold_last5']:.2f} | "
                         f"{run['max_kl']:.1f} | {alarms} |")
            print(lines[-1], flush=True)
    unguarded = [r for r in result["runs"].values() if r["label"] == "unguarded"]
    guarded = [r for r in result["runs"].values() if r["label"] != "unguarded"]
    fired = [r for r in unguarded if "ensemble" in r["alarms"]]
    result["ensemble"] = {
        "fired": f"{len(fired)} of {len(unguarded)}",
        "lead_to_peak": [r["gold_peak"] - r["alarms"]["ensemble"] for r in fired],
        "lead_to_below_start": [r["gold_below_start"] - r["alarms"]["ensemble"] for r in fired
                                if r["gold_below_start"] is not None],
        "false_alarms": f"{sum('ensemble' in r['alarms'] for r in guarded)} of {len(guarded)}"}
    result["seconds"] = time.perf_counter() - t0
    (args.out / "diverse_ensemble.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    print(f"SmolLM2 member held-out accuracy {accuracy:.3f}; ensemble alarm: {result['ensemble']}")
    print(f"total {result['seconds'] / 60:.1f} min (smoothing {SMOOTH})")


if __name__ == "__main__":
    main()
