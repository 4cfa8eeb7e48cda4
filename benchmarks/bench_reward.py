"""rlhfkit reward-model training on the shared workload: 2,000 pairs, batch 32, one epoch, length <= 48.

Usage: python benchmarks/bench_reward.py --out DIR [--mixed-precision no|bf16] [--bf16-weights]
Writes DIR/reward.json and the trained reward model to DIR/reward_model (used by bench_rl.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import workload as W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    ap.add_argument("--bf16-weights", action="store_true", help="with bf16: bf16 weights, fp32 copies for AdamW")
    args = ap.parse_args()
    W.ensure_artifacts()
    from rlhfkit.trainers.reward import train
    from rlhfkit.trainers.reward_config import RewardConfig

    cfg = RewardConfig(
        model=str(W.ART / "policy"), tokenizer=str(W.ART / "tokenizer"), train_data=str(W.ART / "pairs_train.jsonl"),
        eval_data=str(W.ART / "pairs_eval.jsonl"), output_dir=str(args.out / "reward_model"), overwrite=True,
        batch_size=32, eval_batch_size=100, epochs=1, max_length=48, learning_rate=1e-4, weight_decay=0.0,
        lr_schedule="linear", normalize="none", seed=W.SEED, threads=W.THREADS, log_every=10,
        mixed_precision=args.mixed_precision, bf16_weights=args.bf16_weights,
    )
    t0 = time.perf_counter()
    metrics = train(cfg)
    W.save_result(args.out, "reward" + ("_bf16" if args.mixed_precision == "bf16" else ""), {
        "n_pairs": 2000, "batch": 32, "mixed_precision": args.mixed_precision, "bf16_weights": args.bf16_weights,
        "pairs_per_s": round(metrics["perf/pairs_per_s"], 2), "epoch_s": round(metrics["perf/train_s"], 3),
        "eval_accuracy": metrics["eval/accuracy"], "eval_loss": round(metrics["eval/loss"], 4),
        "total_s": round(time.perf_counter() - t0, 2),
    })


if __name__ == "__main__":
    main()
