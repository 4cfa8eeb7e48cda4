"""Run rlhfkit and the peer (TRL) on the shared workload in one session and print the ratios.

    python benchmarks/run.py [--tag TAG] [--iters N] [--bf16 auto|yes|no] [--skip-peer] [--table]

Each benchmark is its own process: reward-model training, SFT (TRL's SFTTrainer on the same work:
benchmarks/peer_sft.py with the peer's python), DPO, then PPO, GRPO and RLOO (seconds per iteration
split into generation / scoring / training, tokens per second, peak RSS, reward per iteration, and the
reward each fp32 run gains over its frozen twin: the same seed at a learning rate that moves nothing).
For each benchmark the peer's run (its own script in ../shared/bench/peer, its venv) and rlhfkit's
run back to back, fp32 and, where the hardware has native bf16 matmuls, bf16, so that the machine's
drift over the half-hour session falls on both sides of each ratio.
Results: benchmarks/results/TAG/{results.json,table.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import workload as W

HERE = Path(__file__).resolve().parent
ALGOS = ("ppo", "grpo", "rloo")


def native_bf16() -> bool:
    """True on a GPU, or a CPU with bf16 matrix instructions (else bf16 matmuls are emulated, and slow)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        label: str | None = None) -> bool:
    t0 = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
    status = "ok" if done.returncode == 0 else f"FAILED (see {log})"
    print(f"  {label or log.stem}: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return done.returncode == 0


def snapshot_reward_model(out: Path) -> Path | None:
    """Copy the peer's fp32 reward model (with the workload's tokenizer beside it) to OUT/reward_model_peer:
    every PPO run, rlhfkit's and TRL's, fp32 and bf16, is scored by this one model (its SHA-256 is in
    results.json), so their reward curves are comparable. None before the peer has run."""
    peer_rm = W.ART / "reward_model"
    if not (peer_rm / "config.json").is_file():
        return None
    raw, target = out / "reward_model_peer_raw", out / "reward_model_peer"
    for folder in (raw, target):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(peer_rm, folder)
    for f in (W.ART / "tokenizer").iterdir():
        shutil.copy(f, target / f.name)
    return target


def restore_reward_model(snapshot: Path) -> None:
    """Put the snapshot back where the peer's PPO reads it (its bf16 run retrains and overwrites it)."""
    peer_rm = W.ART / "reward_model"
    shutil.rmtree(peer_rm, ignore_errors=True)
    shutil.copytree(snapshot.with_name("reward_model_peer_raw"), peer_rm)


def suffix(mp: str) -> str:
    """The file-name suffix of a precision's results: "" for fp32 ("no"), "_bf16" for bf16."""
    return "" if mp == "no" else "_bf16"


def sft(out: Path, mp: str, with_peer: bool) -> None:
    """TRL's SFTTrainer (peer venv, benchmarks/peer_sft.py) and rlhfkit's SFT on the same demonstrations,
    back to back; both write into `out` (peer_sft*.json, sft*.json)."""
    tag = suffix(mp)
    if with_peer:
        run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(HERE / "peer_sft.py"), "--out", str(out)],
            out / f"peer_sft{tag}.log", env={"PEER_DIR": str(W.PEER_DIR), "PEER_BF16": "1" if mp == "bf16" else "0"})
    run([sys.executable, str(HERE / "bench_sft.py"), "--out", str(out), "--mixed-precision", mp],
        out / f"sft{tag}.log")


# Like-for-like rows, beside the default ones: the same algorithm as the peer's, so that a reader sees what is
# faster code and what is less work. PPO with a separate critic initialised from the reward model (TRL's PPO);
# the old log-probs recomputed by a forward (TRL's GRPO/RLOO); the learning rate decaying linearly to 0
# (TRL's default schedule); for RLOO one ratio per reply, clipped, and a mean over replies (TRL's RLOOTrainer).
LIKE_FOR_LIKE = {
    "ppo": ["--critic", "separate", "--old-logprobs", "forward", "--lr-schedule", "linear"],
    "grpo": ["--old-logprobs", "forward", "--lr-schedule", "linear"],
    "rloo": ["--old-logprobs", "forward", "--lr-schedule", "linear", "--policy-loss", "clipped_sequence",
             "--loss-reduction", "sequence_sum"],
}


# The peer harness's own benchmarks, with the iteration counts of its run_all.sh (the peer's torch_ref
# floor is not part of the table and is left out).
PEER_BENCHMARKS = {
    "reward": ["bench_reward.py"],  # also writes the reward model the peer's PPO reads
    "dpo": ["bench_dpo.py"],
    "ppo": ["bench_ppo.py", "--iters", "8"],
    "grpo": ["bench_grpo.py", "--algo", "grpo", "--iters", "6"],
    "rloo": ["bench_grpo.py", "--algo", "rloo", "--iters", "6"],
}


# The frozen twin of each RL run: the same seed (the same prompts, and the same samples until the first
# update) at a learning rate that moves nothing. Reward differences to the trained run, iteration by
# iteration, are the learning; a slope over 8 iterations mostly follows the prompts each iteration draws.
FROZEN_LR = 1e-12  # rlhfkit refuses a learning rate of 0 (TRL takes 0)


def peer_frozen(algo: str, out: Path) -> None:
    """TRL's frozen twin: benchmarks/peer_rl.py at lr 0 with the harness's seed and number of iterations
    (-> OUT/peer_ALGO_frozen.json)."""
    env = {"PEER_DIR": str(W.PEER_DIR), "TRL_EXPERIMENTAL_SILENCE": "1"}
    if algo == "ppo":
        env["PYTHONPATH"] = str(W.PEER_DIR / "trl_1_12")
    iterations = 1 + int(PEER_BENCHMARKS[algo][-1])  # the warm-up and the timed ones, as the harness runs them
    run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(HERE / "peer_rl.py"), "--algo", algo, "--lr", "0",
         "--seed", str(W.SEED), "--iters", str(iterations), "--out", str(out / f"peer_{algo}_frozen.json")],
        out / f"peer_{algo}_frozen.log", env=env, label=f"peer_{algo}_frozen")


def peer_folder(tag: str, mp: str) -> Path:
    return W.PEER_DIR / "results" / (tag if mp == "no" else f"{tag}-bf16")


def peer_bench(name: str, mp: str, tag: str) -> None:
    """One of the peer's benchmarks (its own script and venv) at one precision; TRL 1.12 for PPO."""
    folder = peer_folder(tag, mp)
    folder.mkdir(parents=True, exist_ok=True)
    env = {"PEER_DIR": str(W.PEER_DIR), "BENCH_OUT": str(folder), "PEER_BF16": "1" if mp == "bf16" else "0",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    if name == "ppo":
        env["PYTHONPATH"] = str(W.PEER_DIR / "trl_1_12")  # PPO left TRL after 1.12
    script, *args = PEER_BENCHMARKS[name]
    run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(W.PEER_HARNESS / script), *args],
        folder / f"{name}.log", env=env, cwd=W.PEER_HARNESS, label=f"peer_{name}{suffix(mp)}")


def bf16_weights(mp: str) -> list[str]:
    """rlhfkit's bf16 reward-model and RL runs also store the weights in bf16, with fp32 copies for AdamW
    (--bf16-weights, rlhfkit/trainers/master_weights.py); its fp32 runs are plain fp32."""
    return ["--bf16-weights"] if mp == "bf16" else []


def session(out: Path, tag: str, iters: int, precisions: list[str], with_peer: bool
            ) -> tuple[dict[str, Path], Path | None]:
    """Every benchmark in turn, the peer's run and rlhfkit's back to back at each precision (fp32, then bf16),
    so that a drift of the machine's speed during the session moves both sides of a ratio alike.

    The reward models come first: the peer's fp32 one, snapshotted, scores every PPO run (the peer's bf16
    reward-model run overwrites the file its PPO reads, so the snapshot is put back right after it).
    Returns the peer's result folders and the snapshot."""
    rm = None
    for mp in precisions:
        if with_peer:
            peer_bench("reward", mp, tag)
            if mp == "no":
                rm = snapshot_reward_model(out)
            elif rm:
                restore_reward_model(rm)
        run([sys.executable, str(HERE / "bench_reward.py"), "--out", str(out), "--mixed-precision", mp,
             *bf16_weights(mp)], out / f"reward{suffix(mp)}.log")
    for mp in precisions:
        sft(out, mp, with_peer)
    for mp in precisions:
        if with_peer:
            peer_bench("dpo", mp, tag)
        run([sys.executable, str(HERE / "bench_dpo.py"), "--out", str(out), "--mixed-precision", mp],
            out / f"dpo{suffix(mp)}.log")
    for algo in ALGOS:
        for mp in precisions:
            if with_peer:
                peer_bench(algo, mp, tag)
            extra = ["--reward-model", str(rm)] if rm and algo == "ppo" else []
            cmd = [sys.executable, str(HERE / "bench_rl.py"), "--algo", algo, "--out", str(out), "--iters", str(iters),
                   "--mixed-precision", mp, *bf16_weights(mp), *extra]
            run(cmd, out / f"{algo}{suffix(mp)}.log")
            if mp == "no":
                run([*cmd, *LIKE_FOR_LIKE[algo], "--name", f"{algo}_like"], out / f"{algo}_like.log")
                run([*cmd, "--learning-rate", str(FROZEN_LR), "--name", f"{algo}_frozen"], out / f"{algo}_frozen.log")
                if with_peer:
                    peer_frozen(algo, out)
    return ({"fp32" if mp == "no" else "bf16": peer_folder(tag, mp) for mp in precisions} if with_peer else {}), rm


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def gain(rewards: list[float] | None) -> tuple[float, float | None] | None:
    """Reward change per iteration: the least-squares slope b of r_i = a + b i over the iterations, and its
    standard error sqrt(sum_i e_i^2 / (n - 2) / sum_i (i - mean i)^2) (None below 3 iterations). A slope
    within about two standard errors of 0 does not tell learning from noise; the end points alone
    (last - first) would be a difference of two noisy means."""
    if not rewards or len(rewards) < 2:
        return None
    n = len(rewards)
    mean_i, mean_r = (n - 1) / 2, sum(rewards) / n
    sxx = sum((i - mean_i) ** 2 for i in range(n))
    slope = sum((i - mean_i) * (r - mean_r) for i, r in enumerate(rewards)) / sxx
    if n < 3:
        return slope, None
    residuals = sum((r - mean_r - slope * (i - mean_i)) ** 2 for i, r in enumerate(rewards))
    return slope, (residuals / (n - 2) / sxx) ** 0.5


def over_frozen(trained: list[float] | None, frozen: list[float] | None) -> str:
    """Mean of r_i(trained) - r_i(frozen twin) over iterations i >= 1, +- its standard error: what the updates
    added to the reward on the same prompts. "n/a" when a run is missing or the two do not start alike."""
    if not trained or not frozen or abs(trained[0] - frozen[0]) > 2e-3:  # rewards are stored to 3 decimals
        return "n/a"
    diffs = [a - b for a, b in zip(trained[1:], frozen[1:])]
    if len(diffs) < 2:
        return "n/a"
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    return f"{mean:+.4f} +- {se:.4f}"


def collect(out: Path, peer_dirs: dict[str, Path]) -> dict:
    results: dict = {"ours": {}, "peer": {}}
    for prec, end in (("fp32", ""), ("bf16", "_bf16")):
        for name in ("reward", "sft", *ALGOS, *(a + "_like" for a in ALGOS), *(a + "_frozen" for a in ALGOS), "dpo"):
            r = load(out / f"{name}{end}.json")
            if r:
                results["ours"].setdefault(prec, {})[name] = r
        r = load(out / f"peer_sft{end}.json")  # TRL's SFTTrainer, run by sft() next to rlhfkit's
        if r:
            results["peer"].setdefault(prec, {})["sft"] = r
    for algo in ALGOS:  # TRL's frozen twins (fp32), run by peer_frozen() next to the harness's runs
        r = load(out / f"peer_{algo}_frozen.json")
        if r:
            results["peer"].setdefault("fp32", {})[f"{algo}_frozen"] = r
    for prec, folder in peer_dirs.items():
        for name in ("reward", *ALGOS, "dpo"):
            r = load(folder / f"{name}.json")
            if r:
                results["peer"].setdefault(prec, {})[name] = r
    return results


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def table(results: dict) -> str:
    """Markdown table: each library's fp32 and bf16, rlhfkit's best against the peer's best, the
    equal-precision ratios, and rlhfkit's own bf16 against its fp32."""
    ours, peer = results["ours"], results["peer"]
    lines = ["| benchmark | rlhfkit fp32 | rlhfkit bf16 | TRL fp32 | TRL bf16 | rlhfkit best / TRL best | "
             "fp32 vs fp32 | bf16 vs bf16 | rlhfkit bf16 / fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]

    def get(side: dict, prec: str, name: str, key: str) -> float | None:
        return side.get(prec, {}).get(name, {}).get(key)

    def speed(label: str, name: str, key: str, higher: bool, peer_name: str | None = None,
              peer_key: str | None = None) -> None:
        """One row of a speed figure: higher (pairs/s) or lower (s/iteration) is better."""
        o32, o16 = get(ours, "fp32", name, key), get(ours, "bf16", name, key)
        p32, p16 = (get(peer, prec, peer_name or name, peer_key or key) for prec in ("fp32", "bf16"))
        pick = max if higher else min
        o_best, p_best = (pick(x for x in pair if x) if any(pair) else None for pair in ((o32, o16), (p32, p16)))
        lines.append(f"| {label} ({'higher' if higher else 'lower'} is better) | {o32} | {o16 or 'not run'} | {p32} | "
                     f"{p16 or 'not run'} | {ratio(o_best, p_best)} | {ratio(o32, p32)} | {ratio(o16, p16)} | "
                     f"{ratio(o16, o32)} |")

    def plain(label: str, *cells: object) -> None:
        texts = ["" if c is None else str(c) for c in cells]
        lines.append("| " + " | ".join([label, *texts, *[""] * (8 - len(texts))]) + " |")

    speed("reward model, pairs/s", "reward", "pairs_per_s", True)
    plain("reward model, held-out accuracy", get(ours, "fp32", "reward", "eval_accuracy"),
          get(ours, "bf16", "reward", "eval_accuracy"), get(peer, "fp32", "reward", "eval_accuracy_manual"),
          get(peer, "bf16", "reward", "eval_accuracy_manual"))
    # SFT: non-pad input tokens (counted from each library's tokenised set) / training-loop wall time
    speed("SFT, tokens/s", "sft", "tokens_per_s", True)
    speed("SFT, examples/s", "sft", "examples_per_s", True)
    start = get(ours, "fp32", "sft", "eval_start_loss")
    plain(f"SFT, held-out loss per completion token (before: {start})", get(ours, "fp32", "sft", "eval_loss"),
          get(ours, "bf16", "sft", "eval_loss"), get(peer, "fp32", "sft", "eval_loss"),
          get(peer, "bf16", "sft", "eval_loss"))
    plain("SFT, peak RSS MB", get(ours, "fp32", "sft", "peak_rss_mb"), get(ours, "bf16", "sft", "peak_rss_mb"),
          get(peer, "fp32", "sft", "peak_rss_mb_getrusage"), get(peer, "bf16", "sft", "peak_rss_mb_getrusage"))
    speed("DPO, pairs/s", "dpo", "pairs_per_s", True)
    plain("DPO, held-out implicit-reward accuracy", get(ours, "fp32", "dpo", "eval_reward_accuracy"),
          get(ours, "bf16", "dpo", "eval_reward_accuracy"), get(peer, "fp32", "dpo", "eval_reward_accuracy"),
          get(peer, "bf16", "dpo", "eval_reward_accuracy"))
    for algo in ALGOS:
        speed(f"{algo.upper()}, s/iteration", algo, "iter_s_median", False)
        plain(f"{algo.upper()}, peak RSS MB", *(get(side, prec, algo, k) for side, k in
                                              ((ours, "peak_rss_mb"), (peer, "peak_rss_mb_getrusage"))
                                              for prec in ("fp32", "bf16")))
        key = "scores" if algo == "ppo" else "reward"
        plain(f"{algo.upper()}, reward gain / iteration", *(_f(gain(get(side, prec, algo, k))) for side, k in
                                                           ((ours, "reward"), (peer, key))
                                                           for prec in ("fp32", "bf16")))
        plain(f"{algo.upper()}, reward over the frozen twin (same seed, lr ~0), mean per iteration",
              over_frozen(get(ours, "fp32", algo, "reward"), get(ours, "fp32", algo + "_frozen", "reward")), None,
              over_frozen(get(peer, "fp32", algo, key), get(peer, "fp32", algo + "_frozen", "reward")), None)
        phases = [[get(ours, prec, algo, k) for k in ("gen_s_median", "score_s_median", "train_s_median")]
                  for prec in ("fp32", "bf16")]
        plain(f"{algo.upper()}, rlhfkit generation / scoring / training s",
              *(" / ".join(map(str, p)) if any(p) else None for p in phases))
        like = get(ours, "fp32", algo + "_like", "iter_s_median")
        what = {"ppo": "separate critic from the reward model, old log-probs by a forward, linear lr"}.get(
            algo, "old log-probs by a forward, linear lr")
        p32, p16 = get(peer, "fp32", algo, "iter_s_median"), get(peer, "bf16", algo, "iter_s_median")
        p_best = min(x for x in (p32, p16) if x) if (p32 or p16) else None
        lines.append(f"| {algo.upper()} like-for-like ({what}), s/iteration | {like} | | {p32} | {p16 or 'not run'} | "
                     f"{ratio(like, p_best)} | {ratio(like, p32)} | | |")
        plain(f"{algo.upper()} like-for-like, reward gain / iteration",
              _f(gain(get(ours, "fp32", algo + "_like", "reward"))), None,
              _f(gain(get(peer, "fp32", algo, key))), _f(gain(get(peer, "bf16", algo, key))))
        # a policy that does not move samples the same whatever the critic, old log-probs or schedule: one twin
        plain(f"{algo.upper()} like-for-like, reward over the frozen twin",
              over_frozen(get(ours, "fp32", algo + "_like", "reward"), get(ours, "fp32", algo + "_frozen", "reward")),
              None, over_frozen(get(peer, "fp32", algo, key), get(peer, "fp32", algo + "_frozen", "reward")), None)
    return "\n".join(lines) + "\n"


def _f(x: tuple[float, float | None] | None) -> str:
    """A `gain` as "slope +- standard error"."""
    if x is None:
        return "n/a"
    slope, se = x
    return f"{slope:+.4f}" if se is None else f"{slope:+.4f} +- {se:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default=time.strftime("run_%Y%m%d_%H%M%S"))
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per RL benchmark (after 1 warm-up)")
    ap.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                    help="also run bf16 (auto: only with native bf16 matmuls)")
    ap.add_argument("--skip-peer", action="store_true", help="rlhfkit only (no ratios)")
    ap.add_argument("--table", action="store_true",
                    help="only rebuild results.json and table.md of --tag from the result files already there")
    args = ap.parse_args()
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16())
    out = HERE / "results" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    precisions = ["no", "bf16"] if bf16 else ["no"]
    if args.table:
        peer_dirs = {"fp32" if mp == "no" else "bf16": peer_folder(args.tag, mp) for mp in precisions}
        rm = out / "reward_model_peer" if (out / "reward_model_peer").is_dir() else None
    else:
        W.ensure_artifacts()
        print(f"{'rlhfkit' if args.skip_peer else 'TRL and rlhfkit'}, {'fp32 and bf16' if bf16 else 'fp32'}:",
              flush=True)
        peer_dirs, rm = session(out, args.tag, args.iters, precisions, not args.skip_peer)
    results = collect(out, peer_dirs)
    results["ppo_reward_model_sha256"] = W.folder_sha256(rm) if rm else None
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "native_bf16": native_bf16(), "bf16_run": bf16}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    if not bf16:
        text += ("\nbf16 not run: this machine has no native bf16 matrix instructions (emulated bf16 matmuls run "
                 "about 100x slower than fp32 here), so fp32 is every library's best precision.\n")
    (out / "table.md").write_text(text)
    print(text)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
