"""PPO and the reward model on a real pretrained chat model, SmolLM2-135M-Instruct: full vs LoRA, fp32 vs bf16.

Each configuration runs in its own process (so its peak RSS is its own).
- PPO: 8 chat prompts x 16 new tokens per iteration, 2 epochs x 2 minibatches, a Python reward
  (the reply's share of polite words), one warm-up iteration and N timed ones.
- Reward model: 96 chat comparisons (`reward_pairs`: a polite, helpful reply against a curt one to
  the same customer message), batch 16, one epoch, lr linear from 1e-5 (full) or 1e-4 (LoRA);
  pairs/s of the training loop, accuracy on the first batch (before any update: where the random
  head starts) and held-out accuracy on 32 more after the epoch.
LoRA is r=16, alpha=32 on every linear layer. bf16 runs only where the CPU multiplies bf16 natively
(avx512_bf16 / AMX) or on a GPU; elsewhere it is emulated and slower than fp32, so it is skipped.
With --peer, TRL runs each configuration right after rlhfkit (benchmarks/peer_real_model.py in the
peer venv: TRL 1.12's PPOTrainer, TRL 1.16's RewardTrainer), so a drift of the machine moves both.

Usage: python benchmarks/bench_real_model.py --out DIR [--iters N] [--model DIR] [--stages ppo,reward] [--peer]
       (one configuration: --one full|lora --precision no|bf16 --stage ppo|reward;
       --table: rebuild DIR/table.md from the result files in DIR)
The model folder comes from `rlhfkit models prepare smollm2` (done here when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import workload as W

POLITE = {"please", "thank", "thanks", "sorry", "happy", "glad", "help", "welcome"}


def polite_share(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of a reply's words that are polite: a smooth reward any chat model can move."""
    out = []
    for r in responses:
        words = [w.strip(".,!?").lower() for w in r.split()]
        out.append(sum(w in POLITE for w in words) / max(len(words), 1))
    return out


PROMPTS = ["My order has not arrived yet.", "The app crashes when I log in.", "I was charged twice this month.",
           "How do I cancel my plan?", "Where is my refund?", "The parcel came damaged.",
           "Can I change my delivery address?", "How do I reset my password?"]


OPENERS = ("Thank you for writing to us.", "I am so sorry about this.", "Thanks for letting us know.",
           "I am glad you reached out.")
HELPS = ("I will look into it right away.", "Please send me your order number and I will help.",
         "I can fix this for you today.", "Here is what we can do for you.")
CLOSERS = ("Have a lovely day!", "Happy to help.", "You are welcome to reply any time.")
CURT = ("Not my problem.", "Read the manual.", "We cannot do anything.", "Try again later.", "That is your fault.",
        "Wait like everyone else.", "No.", "Figure it out yourself.")
REWARD_TRAIN, REWARD_EVAL, REWARD_BATCH = 96, 32, 16
# LoRA trains a few adapters and a new head: at full fine-tuning's 1e-5 it barely moves in 6 steps
REWARD_LR = {"full": 1e-5, "lora": 1e-4}


def reward_pairs(n: int, seed: int) -> list[dict]:
    """Chat comparisons: a polite, helpful three-sentence reply (chosen) against three curt ones (rejected)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen = " ".join((rng.choice(OPENERS), rng.choice(HELPS), rng.choice(CLOSERS)))
        rows.append({"prompt": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": " ".join(rng.sample(CURT, 3))}]})
    return rows


def write_reward_data(out: Path) -> tuple[Path, Path]:
    """The comparisons both libraries train and evaluate on (the peer script reads these files)."""
    paths = out / "reward_train.jsonl", out / "reward_eval.jsonl"
    for path, (n, seed) in zip(paths, ((REWARD_TRAIN, 1), (REWARD_EVAL, 2))):
        path.write_text("".join(json.dumps(r) + "\n" for r in reward_pairs(n, seed)))
    return paths


def one_reward(args: argparse.Namespace) -> dict:
    from rlhfkit.trainers.reward import train
    from rlhfkit.trainers.reward_config import RewardConfig

    train_data, eval_data = write_reward_data(args.out)
    lora = {"lora_r": 16, "lora_alpha": 32} if args.one == "lora" else {}
    cfg = RewardConfig(model=str(args.model), train_data=str(train_data), eval_data=str(eval_data),
                       output_dir=str(args.out / f"reward_{args.one}_{args.precision}"), overwrite=True,
                       batch_size=REWARD_BATCH, eval_batch_size=REWARD_EVAL, epochs=1, max_length=128,
                       learning_rate=REWARD_LR[args.one], weight_decay=0.0, lr_schedule="linear", normalize="none",
                       seed=1234, threads=2, log_every=1, mixed_precision=args.precision, **lora)
    metrics = train(cfg)
    # the first step's batch is scored before any update: where the random head started
    first = json.loads((Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()[0])
    return {"stage": "reward", "mode": args.one, "precision": args.precision,
            "pairs_per_s": round(metrics["perf/pairs_per_s"], 2), "train_s": round(metrics["perf/train_s"], 2),
            "start_accuracy": first["train/accuracy"], "eval_accuracy": metrics["eval/accuracy"],
            "eval_margin": round(metrics["eval/margin"], 3), "peak_rss_mb": round(W.peak_rss_mb())}


def one(args: argparse.Namespace) -> None:
    result = one_ppo(args) if args.stage == "ppo" else one_reward(args)
    try:
        import torch

        if torch.cuda.is_available():
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:
        pass
    (args.out / f"{args.stage}_{args.one}_{args.precision}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def one_ppo(args: argparse.Namespace) -> dict:
    from rlhfkit.trainers.ppo import train
    from rlhfkit.trainers.rl_config import PPOConfig

    prompts = args.out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    lora = {"lora_r": 16, "lora_alpha": 32, "save_merged": False} if args.one == "lora" else {}
    cfg = PPOConfig(policy=str(args.model), prompts=str(prompts), output_dir=str(args.out / f"run_{args.one}_"
                    f"{args.precision}"), overwrite=True, iterations=1 + args.iters, rollout_batch_size=8,
                    max_new_tokens=16, update_epochs=2, num_minibatches=2, learning_rate=1e-5, kl_coef=0.05,
                    sample_every=0, mixed_precision=args.precision, lr_schedule="constant",
                    old_logprobs="sampling", **lora)
    history = train(cfg, reward_fn=polite_share)
    timed = [h["time/iteration"] for h in history[1:]]
    return {"stage": "ppo", "mode": args.one, "precision": args.precision,
            "iter_s_median": round(statistics.median(timed), 2), "iter_s_all": [round(t, 2) for t in timed],
            "peak_rss_mb": round(W.peak_rss_mb()),
            "gen_s": round(statistics.median(h["time/generation"] for h in history[1:]), 2),
            # tokens kept (each reply up to its first EOS) per second of the sampling loop
            "gen_tokens_per_s": round(statistics.median(cfg.rollout_batch_size * h["response/length"]
                                                        / h["time/generation"] for h in history[1:]), 1),
            "train_s": round(statistics.median(h["time/training"] for h in history[1:]), 2)}


def run_peer(args: argparse.Namespace, stage: str, mode: str, precision: str) -> None:
    """TRL on the same configuration, in the peer venv (DIR/trl_STAGE_MODE_PRECISION.json); a line saying
    why, and no result file, when it fails."""
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    if stage == "ppo":
        env["PYTHONPATH"] = str(W.PEER_DIR / "trl_1_12")  # PPO left TRL after 1.12
    log = args.out / f"trl_{stage}_{mode}_{precision}.log"
    (args.out / f"trl_{stage}_{mode}_{precision}.json").unlink(missing_ok=True)  # no stale result if this run fails
    with log.open("w") as f:
        done = subprocess.run([str(W.PEER_DIR / "venv" / "bin" / "python"), str(Path(__file__).with_name(
            "peer_real_model.py")), "--out", str(args.out), "--iters", str(args.iters), "--model", str(args.model),
            "--one", mode, "--precision", precision, "--stage", stage], env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        print(f"TRL {stage} {mode} {precision}: failed (exit {done.returncode}); see {log}")


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(rows: list[tuple[dict, dict | None]]) -> list[str]:
    ppo = [(r, t) for r, t in rows if r["stage"] == "ppo"]
    rm = [(r, t) for r, t in rows if r["stage"] == "reward"]
    lines = []
    if ppo:
        lines += ["| PPO mode | precision | s / iteration | generation s | generated tokens/s | training s | "
                  "peak RSS MB | TRL s / iteration | TRL generation s | TRL peak RSS MB | rlhfkit / TRL time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['mode']} | {r['precision']} | {r['iter_s_median']} | {r['gen_s']} | "
                  f"{r.get('gen_tokens_per_s', '-')} | {r['train_s']} | {r['peak_rss_mb']} | "
                  f"{t['iter_s_median'] if t else '-'} | {t['gen_s'] if t else '-'} | "
                  f"{t['peak_rss_mb'] if t else '-'} | "
                  f"{ratio(r['iter_s_median'], t and t['iter_s_median'])} |" for r, t in ppo]
        lines.append("")
    if rm:
        def acc(x: dict) -> str:  # first batch (before any update) -> held-out after the epoch
            return f"{x['start_accuracy']:.2f} -> {x['eval_accuracy']:.2f}"

        lines += ["| reward-model mode | precision | pairs/s | accuracy: first batch -> held-out | peak RSS MB | "
                  "TRL pairs/s | TRL accuracy | TRL peak RSS MB | rlhfkit / TRL pairs/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['mode']} | {r['precision']} | {r['pairs_per_s']} | {acc(r)} | {r['peak_rss_mb']} | "
                  f"{t['pairs_per_s'] if t else '-'} | {acc(t) if t else '-'} | {t['peak_rss_mb'] if t else '-'} | "
                  f"{ratio(r['pairs_per_s'], t and t['pairs_per_s'])} |" for r, t in rm]
        lines.append("")
    by = {(r["stage"], r["mode"], r["precision"]): r for r, _ in rows}
    if ("ppo", "lora", "no") in by and ("ppo", "full", "no") in by:
        lines.append(f"LoRA / full peak RSS, PPO fp32: "
                     f"{by['ppo', 'lora', 'no']['peak_rss_mb'] / by['ppo', 'full', 'no']['peak_rss_mb']:.2f}x")
    if ("ppo", "full", "bf16") in by:
        lines.append(f"bf16 / fp32 s per iteration, PPO full: "
                     f"{by['ppo', 'full', 'bf16']['iter_s_median'] / by['ppo', 'full', 'no']['iter_s_median']:.2f}x")
    if not any(k[2] == "bf16" for k in by):
        lines.append("bf16: skipped (no native bf16 on this CPU and no GPU)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=2, help="PPO: timed iterations after one warm-up")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--stages", default="ppo,reward", help="comma-separated: ppo, reward")
    ap.add_argument("--peer", action="store_true", help="run TRL on each configuration right after rlhfkit")
    ap.add_argument("--one", choices=("full", "lora"), default=None)
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    ap.add_argument("--stage", choices=("ppo", "reward"), default="ppo")
    ap.add_argument("--table", action="store_true", help="only rebuild DIR/table.md from the results in DIR")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := sorted(set(stages) - {"ppo", "reward"}):
        ap.error(f"--stages: unknown stage(s) {', '.join(unknown)}; use ppo, reward")
    if args.peer and not (W.PEER_DIR / "venv" / "bin" / "python").is_file():
        ap.error(f"--peer: no peer venv at {W.PEER_DIR}/venv; run `make bench` once (it builds it) or set PEER_DIR")
    if args.table:
        write_table(args.out, stages)
        return
    if args.model is None:
        from rlhfkit.models.prepare import prepare_smollm2

        args.model = prepare_smollm2()
    if args.one:
        one(args)
        return
    import torch

    from rlhfkit.trainers.precision import cpu_has_native_bf16

    precisions = ["no"] + (["bf16"] if torch.cuda.is_available() or cpu_has_native_bf16() else [])
    for stage in stages:
        for precision in precisions:
            for mode in ("full", "lora"):
                subprocess.run([sys.executable, __file__, "--out", str(args.out), "--iters", str(args.iters),
                                "--model", str(args.model), "--one", mode, "--precision", precision,
                                "--stage", stage], check=True)
                if args.peer:
                    run_peer(args, stage, mode, precision)
    write_table(args.out, stages)


def write_table(out: Path, stages: list[str]) -> None:
    """DIR/table.md from the configurations' result files in DIR (TRL's beside rlhfkit's where present)."""
    rows = []
    for stage in stages:
        for precision in ("no", "bf16"):
            for mode in ("full", "lora"):
                ours, peer = out / f"{stage}_{mode}_{precision}.json", out / f"trl_{stage}_{mode}_{precision}.json"
                if ours.is_file():
                    theirs = json.loads(peer.read_text()) if peer.is_file() else None
                    rows.append((json.loads(ours.read_text()), theirs))
    lines = table(rows)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
