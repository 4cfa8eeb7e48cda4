"""Scale curves: how PPO's seconds per iteration and peak memory grow with the rollout batch and the response
length, rlhfkit and TRL (1.12) on the shared model, each point its own process, back to back.

    python benchmarks/bench_scale.py [--batches 16,32,64,128,256] [--lengths 16,32,64,112] [--iters 2] [--tag TAG]

Batches are run at the workload's 32 new tokens, lengths at its 64 episodes; everything else is the
workload's PPO (4 epochs x 4 minibatches, KL 0.05, lr 3e-6, fp32, the peer's reward model for both). The
shared policy has 128 positions and 8-token prompts, so responses stop at 120 tokens (not 256).
Seconds per iteration: the median of --iters timed iterations after one warm-up. Peak memory: the
process's peak RSS. Results: benchmarks/results/TAG/scale.json, scale.md and scale.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import workload as W
from run import run, snapshot_reward_model

HERE = Path(__file__).resolve().parent


def point(side: str, batch: int, length: int, iters: int, out: Path, rm: Path) -> dict | None:
    name = f"scale_{side}_b{batch}_l{length}"
    if side == "rlhfkit":
        cmd = [sys.executable, str(HERE / "bench_rl.py"), "--algo", "ppo", "--out", str(out), "--iters", str(iters),
               "--rollout-batch", str(batch), "--response-length", str(length), "--reward-model", str(rm),
               "--name", name]
        env = None
    else:
        cmd = [str(W.PEER_DIR / "venv" / "bin" / "python"), str(HERE / "peer_rl.py"), "--algo", "ppo",
               "--lr", str(W.LEARNING_RATE), "--seed", str(W.SEED), "--iters", str(iters + 1),
               "--rollout-batch", str(batch), "--response-length", str(length), "--out", str(out / f"{name}.json")]
        env = {"PEER_DIR": str(W.PEER_DIR), "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(W.PEER_DIR / "trl_1_12"),
               "PEER_REWARD_MODEL": str(rm.with_name("reward_model_peer_raw"))}
    if not run(cmd, out / f"{name}.log", env=env):
        return None
    r = json.loads((out / f"{name}.json").read_text())
    every = r["iter_s_every"] if side == "rlhfkit" else r["iter_s"]
    return {"iter_s": round(statistics.median(every[1:]), 3), "peak_rss_mb": r["peak_rss_mb"]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (axis, label) in enumerate((("batch", "episodes per iteration (32 tokens)"),
                                         ("length", "new tokens per episode (64 episodes)"))):
        for side, style in (("rlhfkit", "o-"), ("trl", "s--")):
            pts = [(p["x"], p[side]) for p in results[axis] if p[side]]
            xs = [x for x, _ in pts]
            axes[0][col].plot(xs, [v["iter_s"] for _, v in pts], style, label=side)
            axes[1][col].plot(xs, [v["peak_rss_mb"] for _, v in pts], style, label=side)
        for row, ylabel in ((0, "seconds per PPO iteration"), (1, "peak RSS, MB")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="16,32,64,128,256")
    ap.add_argument("--lengths", default="16,32,64,112")
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per point, after one warm-up")
    ap.add_argument("--tag", default=time.strftime("scale_%Y%m%d_%H%M%S"))
    args = ap.parse_args()
    out = HERE / "results" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    W.ensure_artifacts()
    if not (W.ART / "reward_model" / "config.json").is_file():  # the peer's reward-model benchmark writes it
        run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(W.PEER_HARNESS / "bench_reward.py")],
            out / "peer_reward.log", env={"PEER_DIR": str(W.PEER_DIR), "BENCH_OUT": str(out / "peer_reward")})
    rm = snapshot_reward_model(out)
    assert rm is not None
    grid = {"batch": [(int(b), W.RESPONSE_LENGTH) for b in args.batches.split(",")],
            "length": [(W.ROLLOUT_BATCH, int(n)) for n in args.lengths.split(",")]}
    results: dict = {"iters": args.iters, "reward_model_sha256": W.folder_sha256(rm), "batch": [], "length": []}
    for axis, points in grid.items():
        for batch, length in points:
            row = {"x": batch if axis == "batch" else length, "batch": batch, "length": length}
            for side in ("trl", "rlhfkit"):
                row[side] = point(side, batch, length, args.iters, out, rm)
            results[axis].append(row)
            (out / "scale.json").write_text(json.dumps(results, indent=2))
    lines = ["| episodes x tokens | TRL s/iteration | rlhfkit s/iteration | ratio | TRL peak RSS MB | "
             "rlhfkit peak RSS MB |", "|---|---|---|---|---|---|"]
    for axis in ("batch", "length"):
        for row in results[axis]:
            t, o = row["trl"] or {}, row["rlhfkit"] or {}
            ratio = f"{o['iter_s'] / t['iter_s']:.2f}x" if o and t else "n/a"
            lines.append(f"| {row['batch']} x {row['length']} | {t.get('iter_s')} | {o.get('iter_s')} | {ratio} | "
                         f"{t.get('peak_rss_mb')} | {o.get('peak_rss_mb')} |")
    text = "\n".join(lines) + "\n"
    (out / "scale.md").write_text(text)
    plot(results, out / "scale.png")
    print(text)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
