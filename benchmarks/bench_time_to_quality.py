"""Time to quality: wall seconds until the mean reward reaches a fixed target, rlhfkit and TRL, on the shared
workload, at a learning rate where both learn; median over seeds, with the spread.

    python benchmarks/bench_time_to_quality.py [--algos ppo,grpo,rloo] [--seeds 1,2,3] [--iters 24]
        [--lr 3e-5] [--tag TAG] [--like-for-like] [--bf16]

--bf16 runs both libraries in bf16 autocast (rlhfkit `--mixed-precision bf16`, TRL `PEER_BF16=1`): each
one's best precision on hardware with native bf16.

Each run is its own process and trains for a fixed number of iterations with a constant learning rate
(rlhfkit: benchmarks/bench_rl.py; TRL: benchmarks/peer_rl.py in the peer venv), recording each
iteration's wall time and the mean reward of the rollout it trained on. PPO's reward is the score of the
peer's reward model (one model for both libraries, its SHA-256 in the results), GRPO's and RLOO's the
number of positive words.

The target (unless --targets fixes it): start + 0.8 x (gain), where start is the mean first-iteration reward
of all runs of the algorithm (the same start policy for both libraries) and gain is the smaller of the two
libraries' median final reward (trailing mean of the last 3 iterations) minus start: a level both libraries
reach with their median seed, fixed by one rule for both before any time is compared.

Reaching the target: the first iteration k at which the mean reward over iterations k-2..k (a window of 3,
so one lucky rollout does not count) is >= the target. Time to target = the sum of the wall times of
iterations 0..k (training-loop time only: no model loading, no trainer construction). A run that never
reaches it within --iters counts as not reached. Results: benchmarks/results/TAG/ttq.json and ttq.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import workload as W
from run import LIKE_FOR_LIKE, run, snapshot_reward_model

HERE = Path(__file__).resolve().parent
WINDOW = 3
TARGET_SHARE = 0.8  # of the smaller median gain of the two libraries


def first_reached(rewards: list[float], target: float, window: int = WINDOW) -> int | None:
    """Index k of the first iteration whose trailing mean over `window` iterations is >= target."""
    for k in range(window - 1, len(rewards)):
        if sum(rewards[k - window + 1:k + 1]) / window >= target:
            return k
    return None


def auto_target(runs: dict[str, dict[int, dict | None]], window: int = WINDOW) -> float | None:
    """start + TARGET_SHARE x (smaller median final gain of the two libraries); see the module doc."""
    done = {side: [r for r in seeds.values() if r and len(r["reward"]) >= window] for side, seeds in runs.items()}
    if not all(done.values()):
        return None
    start = statistics.mean(r["reward"][0] for rs in done.values() for r in rs)
    finals = [statistics.median(sum(r["reward"][-window:]) / window for r in rs) for rs in done.values()]
    return round(start + TARGET_SHARE * (min(finals) - start), 3)


def time_to_target(iter_s: list[float], rewards: list[float], target: float) -> float | None:
    k = first_reached(rewards, target)
    return None if k is None else sum(iter_s[:k + 1])


def like_for_like(algo: str) -> list[str]:
    """run.py's like-for-like settings of `algo`, without the schedule (time to quality keeps the rate constant)."""
    args = LIKE_FOR_LIKE[algo]
    i = args.index("--lr-schedule")
    return args[:i] + args[i + 2:]


def ours(algo: str, lr: float, seed: int, iters: int, out: Path, rm: Path | None, like: bool = False,
         bf16: bool = False) -> dict | None:
    name = f"ttq_{algo}{'_like' if like else ''}_s{seed}"
    extra = ["--reward-model", str(rm)] if algo == "ppo" and rm else []
    extra += like_for_like(algo) if like else []
    extra += ["--mixed-precision", "bf16"] if bf16 else []
    ok = run([sys.executable, str(HERE / "bench_rl.py"), "--algo", algo, "--out", str(out), "--iters", str(iters - 1),
              "--learning-rate", str(lr), "--seed", str(seed), "--lr-schedule", "constant", "--name", name, *extra],
             out / f"{name}.log")
    if not ok:
        return None
    r = json.loads((out / f"{name}.json").read_text())
    return {"iter_s": r["iter_s_every"], "reward": r["reward"], "reward_model_sha256": r.get("reward_model_sha256")}


def peer(algo: str, lr: float, seed: int, iters: int, out: Path, rm: Path | None, bf16: bool = False) -> dict | None:
    name = f"peer_ttq_{algo}_s{seed}"
    env = {"PEER_DIR": str(W.PEER_DIR), "TRL_EXPERIMENTAL_SILENCE": "1", "PEER_BF16": "1" if bf16 else "0"}
    if algo == "ppo":
        env["PYTHONPATH"] = str(W.PEER_DIR / "trl_1_12")
        if rm:
            env["PEER_REWARD_MODEL"] = str(rm.with_name("reward_model_peer_raw"))
    ok = run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(HERE / "peer_rl.py"), "--algo", algo,
              "--lr", str(lr), "--seed", str(seed), "--iters", str(iters), "--out", str(out / f"{name}.json")],
             out / f"{name}.log", env=env)
    if not ok:
        return None
    r = json.loads((out / f"{name}.json").read_text())
    if rm and algo == "ppo":
        r["reward_model_sha256"] = W.folder_sha256(rm.with_name("reward_model_peer_raw"))
    return r


def summarise(times: list[float | None]) -> dict:
    reached = [t for t in times if t is not None]
    return {"reached": f"{len(reached)}/{len(times)}",
            "median_s": round(statistics.median(reached), 1) if reached else None,
            "min_s": round(min(reached), 1) if reached else None, "max_s": round(max(reached), 1) if reached else None,
            "all_s": [None if t is None else round(t, 1) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default="ppo,grpo,rloo")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--iters", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--targets", default=None, help="e.g. ppo=1.0,grpo=2.5 (default: the rule of the module doc)")
    ap.add_argument("--tag", default=time.strftime("ttq_%Y%m%d_%H%M%S"))
    ap.add_argument("--like-for-like", action="store_true",
                    help="rlhfkit runs run.py's like-for-like settings, the rate kept constant (for RLOO: TRL's "
                         "ratio per reply)")
    ap.add_argument("--bf16", action="store_true", help="both libraries in bf16 autocast (hardware with native bf16)")
    args = ap.parse_args()
    targets: dict[str, float | None] = {}
    for item in filter(None, (args.targets or "").split(",")):
        key, value = item.split("=")
        targets[key] = float(value)
    out = HERE / "results" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    W.ensure_artifacts()
    algos, seeds = args.algos.split(","), [int(s) for s in args.seeds.split(",")]
    rm = None
    if "ppo" in algos:
        if not (W.ART / "reward_model" / "config.json").is_file():  # the peer's reward-model benchmark writes it
            run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(W.PEER_HARNESS / "bench_reward.py")],
                out / "peer_reward.log", env={"PEER_DIR": str(W.PEER_DIR), "BENCH_OUT": str(out / "peer_reward")})
        rm = snapshot_reward_model(out)
    results: dict = {"lr": args.lr, "iters": args.iters, "window": WINDOW, "targets": targets,
                     "like_for_like": args.like_for_like, "bf16": args.bf16,
                     "runs": {}, "summary": {}}
    for algo in algos:
        for seed in seeds:  # TRL then rlhfkit for each seed, back to back, so load changes hit both alike
            for side, fn in (("trl", partial(peer, bf16=args.bf16)),
                             ("rlhfkit", partial(ours, like=args.like_for_like, bf16=args.bf16))):
                results["runs"].setdefault(algo, {}).setdefault(side, {})[seed] = fn(
                    algo, args.lr, seed, args.iters, out, rm)
        if algo not in targets:
            targets[algo] = auto_target(results["runs"][algo])
        for side in ("trl", "rlhfkit"):
            for r in results["runs"][algo][side].values():
                if r and targets[algo] is not None:
                    r["time_to_target_s"] = time_to_target(r["iter_s"], r["reward"], targets[algo])
            runs = results["runs"][algo][side]
            results["summary"].setdefault(algo, {})[side] = summarise(
                [r.get("time_to_target_s") if r else None for r in runs.values()])
        (out / "ttq.json").write_text(json.dumps(results, indent=2))
    lines = [f"Time to the reward target (lr {args.lr}, constant; trailing mean of {WINDOW} iterations >= target; "
             f"at most {args.iters} iterations; seeds {args.seeds}; {os.cpu_count()} cores; "
             f"{'bf16' if args.bf16 else 'fp32'})", "",
             "| algorithm | target | TRL median s (min-max, reached) | rlhfkit median s (min-max, reached) | "
             "rlhfkit / TRL |", "|---|---|---|---|---|"]
    for algo, sides in results["summary"].items():
        t, o = sides["trl"], sides["rlhfkit"]
        ratio = f"{o['median_s'] / t['median_s']:.2f}x" if o["median_s"] and t["median_s"] else "n/a"
        lines.append(f"| {algo.upper()} | {targets[algo]} "
                     f"| {t['median_s']} ({t['min_s']}-{t['max_s']}, {t['reached']}) "
                     f"| {o['median_s']} ({o['min_s']}-{o['max_s']}, {o['reached']}) | {ratio} |")
    text = "\n".join(lines) + "\n"
    (out / "ttq.md").write_text(text)
    print(text)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
