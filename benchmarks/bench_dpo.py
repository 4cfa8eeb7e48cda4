"""rlhfkit DPO on the shared workload: 2,000 pairs, batch 32, one epoch, length <= 48, beta 0.1, lr 1e-5.

The peer's settings (../shared/bench/peer/bench_dpo.py, TRL DPOTrainer): the pretrained workload policy
as the start policy and, as a second frozen copy, the reference; sigmoid loss, no label smoothing,
linear decay without warmup, no weight decay, gradient clipping at 1.0, held-out evaluation in batches
of 100. AdamW's eps is the HF Trainer default 1e-8 here (rlhfkit's own default is 1e-5), so both
libraries make the same updates and the held-out accuracies compare.

Usage: python benchmarks/bench_dpo.py --out DIR [--mixed-precision no|bf16] [--precompute-ref-logprobs]
Writes DIR/dpo.json (dpo_bf16.json, dpo_precomputed.json) and the trained policy to DIR/dpo_policy.
pairs/s counts the training loop only (as the peer's: trainer.train() over the 2,000 pairs), without the
evaluations before and after it.
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
    ap.add_argument("--precompute-ref-logprobs", action="store_true",
                    help="reference log-probs once before training (not what the peer does; reported apart)")
    args = ap.parse_args()
    W.ensure_artifacts()
    from rlhfkit.trainers.dpo import train
    from rlhfkit.trainers.dpo_config import DPOConfig

    cfg = DPOConfig(
        policy=str(W.ART / "policy"), tokenizer=str(W.ART / "tokenizer"), train_data=str(W.ART / "pairs_train.jsonl"),
        eval_data=str(W.ART / "pairs_eval.jsonl"), output_dir=str(args.out / "dpo_policy"), overwrite=True,
        batch_size=32, eval_batch_size=100, epochs=1, max_length=48, loss="dpo", beta=0.1, label_smoothing=0.0,
        learning_rate=1e-5, adam_eps=1e-8, weight_decay=0.0, max_grad_norm=1.0, lr_schedule="linear", warmup_steps=0,
        precompute_ref_logprobs=args.precompute_ref_logprobs, seed=W.SEED, threads=W.THREADS, log_every=10,
        mixed_precision=args.mixed_precision,
    )
    t0 = time.perf_counter()
    metrics = train(cfg)
    name = "dpo" + ("_bf16" if args.mixed_precision == "bf16" else "") + \
        ("_precomputed" if args.precompute_ref_logprobs else "")
    W.save_result(args.out, name, {
        "n_pairs": 2000, "batch": 32, "steps": metrics["train/steps"], "mixed_precision": args.mixed_precision,
        "precompute_ref_logprobs": args.precompute_ref_logprobs,
        "pairs_per_s": round(metrics["perf/pairs_per_s"], 2), "epoch_s": round(metrics["perf/train_s"], 3),
        "eval_reward_accuracy": metrics["eval/rewards/accuracy"], "eval_loss": round(metrics["eval/loss"], 4),
        "eval_margin": round(metrics["eval/rewards/margin"], 4),
        "start_eval_loss": round(metrics["start/eval/loss"], 4), "eval_pairs": metrics["eval/pairs"],
        "total_s": round(time.perf_counter() - t0, 2),
    })


if __name__ == "__main__":
    main()
