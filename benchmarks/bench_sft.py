"""rlhfkit SFT on the shared workload, against TRL's SFTTrainer (benchmarks/peer_sft.py, the same work).

Usage: python benchmarks/bench_sft.py --out DIR [--group-by-length] [--mixed-precision no|bf16]

Demonstrations from the shared preference pairs (prompt = the pair's prompt, completion = the chosen
text): 2,000 train and 500 eval rows, written to DIR/sft_data/. Loss on the completion tokens only,
batch 32, one epoch, max_length 48, lr 1e-4 linear to 0 with no warmup, AdamW (eps 1e-8, no weight
decay, clip 1.0), fp32, 2 threads, no packing, random batches (no length grouping, as TRL's default;
--group-by-length for rlhfkit's default).

tokens/s, examples/s and the held-out loss are computed as in peer_sft.py, with its helpers: tokens =
non-pad input tokens of rlhfkit's own tokenised training set, over the training loop's wall time
(perf/train_s: the first step's start to the last step's end, no evaluation, loading or saving); the
held-out loss is a plain forward of the saved model over the eval rows. Writes DIR/sft.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import peer_sft as P  # the measurement helpers shared with the TRL side (importing it sets nothing)
import workload as W


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--group-by-length", action="store_true", help="rlhfkit's default: batches of similar length")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    args = ap.parse_args()
    W.ensure_artifacts()
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.trainers.sft import load_splits, resolve_max_length, train
    from rlhfkit.trainers.sft_config import SFTConfig

    torch.set_num_threads(W.THREADS)
    data = args.out / "sft_data"
    train_rows, eval_rows = P.demonstrations("train"), P.demonstrations("eval")
    write_jsonl(data / "train.jsonl", train_rows)
    write_jsonl(data / "eval.jsonl", eval_rows)
    suffix = ("_grouped" if args.group_by_length else "") + ("_bf16" if args.mixed_precision == "bf16" else "")
    cfg = SFTConfig(
        model=str(W.ART / "policy"), tokenizer=str(W.ART / "tokenizer"), train_data=str(data / "train.jsonl"),
        eval_data=str(data / "eval.jsonl"), output_dir=str(args.out / f"sft_model{suffix}"), overwrite=True,
        batch_size=P.BATCH, eval_batch_size=P.EVAL_BATCH, epochs=P.EPOCHS, max_length=P.MAX_LENGTH,
        truncation="truncate_right", loss_on="completion", packing=False, group_by_length=args.group_by_length,
        learning_rate=P.LEARNING_RATE, lr_schedule="linear", warmup_steps=0, weight_decay=P.WEIGHT_DECAY,
        adam_eps=P.ADAM_EPS, max_grad_norm=P.MAX_GRAD_NORM, eval_on_start=False, seed=W.SEED, threads=W.THREADS,
        log_every=10, mixed_precision=args.mixed_precision,
    )

    # Tokens from rlhfkit's own tokenised training set (what train() builds), checked against the reference.
    tok = load_tokenizer(cfg.tokenizer, padding_side="right")
    train_data, _ = load_splits(resolve_max_length(cfg), tok)
    n_tokens = sum(len(ids) for ids in train_data.ids)
    n_targets = sum(sum(t) for t in train_data.targets)
    same_tokens = sorted(map(tuple, train_data.ids)) == sorted(map(tuple, P.reference_tokens(tok, train_rows)))
    start_loss, eval_tokens = P.heldout_loss(AutoModelForCausalLM.from_pretrained(cfg.model), tok, eval_rows)

    t0 = time.perf_counter()
    metrics = train(cfg)
    total_s = time.perf_counter() - t0
    train_s = metrics["perf/train_s"]
    model = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    loss, _ = P.heldout_loss(model, tok, eval_rows)
    W.save_result(args.out, "sft" + suffix, {
        "library": "rlhfkit", "group_by_length": args.group_by_length, "mixed_precision": args.mixed_precision,
        "n_examples": len(train_data), "batch": P.BATCH, "steps": metrics["train/steps"], "train_tokens": n_tokens,
        "train_target_tokens": n_targets, "same_tokens_as_reference": same_tokens,
        "train_s": round(train_s, 3), "train_call_s": round(total_s, 3),
        "tokens_per_s": round(n_tokens / train_s, 1), "examples_per_s": round(len(train_data) / train_s, 2),
        "rlhfkit_tokens_per_s": round(metrics["perf/tokens_per_s"], 1),
        "eval_loss": round(loss, 4), "eval_start_loss": round(start_loss, 4), "eval_tokens": eval_tokens,
        "rlhfkit_eval_loss": round(metrics["eval/loss"], 4),
    })


if __name__ == "__main__":
    main()
