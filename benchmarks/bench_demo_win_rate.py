"""The demo task's time to quality: wall seconds of guarded PPO (the demo's settings) until the gold win
rate over the start policy on the held-out prompts reaches 0.8.

    python benchmarks/bench_demo_win_rate.py --demo runs/demo [--seeds 0,1,2] [--every 5] [--iterations 60]

Reuses a finished `rlhfkit demo` folder (its reward model and prompts file) and trains the guarded PPO run
again per seed with the held-out evaluation every --every iterations: 150 held-out prompts, one sampled
reply each, scored by the gold judge, the win rate counted against the start policy's replies to the same
prompts with the same draws (ties half; rlhfkit/trainers/rl_evaluation.py). The time of an evaluation is
the sum of the `time/iteration` of the iterations before it (an evaluation logged at step k follows
iteration k - 1; training-loop time: no model loading, and the evaluations themselves not counted).
Results: OUT/demo_win_rate.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TARGET = 0.8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished rlhfkit demo folder")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--every", type=int, default=5, help="iterations between held-out evaluations")
    ap.add_argument("--iterations", type=int, default=0, help="PPO iterations (0 = the demo's)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_win_rate"))
    args = ap.parse_args()
    from rlhfkit.data import synthetic
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.pipelines import demo
    from rlhfkit.pipelines.demo_config import DemoConfig
    from rlhfkit.tracking.metrics import read_metrics
    from rlhfkit.trainers.ppo import train
    from rlhfkit.trainers.rl_config import PPOConfig

    settings = json.loads((args.demo / "demo.json").read_text())["settings"]
    cfg = DemoConfig(**{k: v for k, v in settings.items() if k in DemoConfig.__dataclass_fields__})
    if args.iterations:
        cfg.iterations = args.iterations
    args.out.mkdir(parents=True, exist_ok=True)
    eval_file = args.out / "eval_prompts.jsonl"
    write_jsonl(eval_file, [{"prompt": p} for p in synthetic.prompts(cfg.eval_prompts, seed=cfg.seed, split="eval")])
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = args.out / f"ppo_seed{seed}"
        ppo = {**demo.ppo_settings(cfg, args.out), "seed": seed, "reward_model": str(args.demo / demo.RM_FOLDER),
               "output_dir": str(out), "overwrite": True, "kl_coef": cfg.kl_coef, "ent_coef": cfg.ent_coef,
               "eval_prompts": str(eval_file), "eval_every": args.every, "sample_every": 0}
        t0 = time.perf_counter()
        train(PPOConfig(**ppo), gold_fn=demo.gold)
        rows = read_metrics(out / "metrics.jsonl")
        iter_s = {int(r["step"]): r["time/iteration"] for r in rows if "time/iteration" in r}
        evals = [(int(r["step"]), r["eval/gold_win_rate"]) for r in rows if r.get("eval/gold_win_rate") is not None]
        # an evaluation logged at step k follows iteration k - 1: it saw the updates of iterations 0..k-1
        curve = [{"iteration": k, "seconds": round(sum(s for i, s in iter_s.items() if i < k), 1), "win_rate": w}
                 for k, w in evals]
        reached = next((c for c in curve if c["win_rate"] >= TARGET), None)
        runs[seed] = {"curve": curve, "reached": reached, "process_s": round(time.perf_counter() - t0, 1)}
        print(f"seed {seed}: " + ", ".join(f"it {c['iteration']} ({c['seconds']} s) {c['win_rate']:.3f}"
                                           for c in curve), flush=True)
    times = [r["reached"]["seconds"] for r in runs.values() if r["reached"]]
    result = {"target": TARGET, "every": args.every, "iterations": cfg.iterations, "runs": runs,
              "median_s": statistics.median(times) if times else None, "reached": f"{len(times)} of {len(runs)}"}
    (args.out / "demo_win_rate.json").write_text(json.dumps(result, indent=1))
    print(f"gold win rate >= {TARGET}: {result['reached']} seeds, median {result['median_s']} s of training loop")


if __name__ == "__main__":
    main()
