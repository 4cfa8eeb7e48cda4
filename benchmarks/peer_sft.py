"""TRL SFTTrainer on the shared workload: the peer side of benchmarks/bench_sft.py.

Run with the peer venv (trl 1.16); it never imports rlhfkit:

    ~/.cache/rlhfkit-peer/venv/bin/python benchmarks/peer_sft.py --out DIR [--group-by-length]

Demonstrations: prompt/completion rows built from the shared preference pairs (prompt = the pair's
prompt, completion = its chosen text), 2,000 train and 500 eval rows. Loss on the completion tokens
only (TRL's prompt/completion format with completion_only_loss=True), batch 32, one epoch,
max_length 48, lr 1e-4 linear to 0 with no warmup, AdamW, fp32, 2 threads, no packing.

The measurement helpers below (demonstrations, reference_encoding, heldout_loss) need only torch and
a tokenizer, and importing this module has no side effect (the shared common.py, which sets the
peer's environment, is imported in main()), so bench_sft.py (rlhfkit) imports them from here: both
sides count tokens and compute the held-out loss with the same code.

  tokens/s   = non-pad input tokens of the library's own tokenised training set / training wall time
  examples/s = training examples / training wall time
  training wall time: train begin to the last optimizer step's end (data loading, forward, backward,
  optimizer, logging; no evaluation, no model loading or saving).
  held-out loss: a plain forward of the trained GPT2LMHeadModel over the 500 eval rows, cross-entropy
  summed over every completion token (EOS included) / their count.
Writes DIR/peer_sft.json (peer_sft_grouped.json with --group-by-length; a _bf16 suffix with PEER_BF16=1,
TRL's bf16 mixed precision, as for the other peer benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PEER_HARNESS = Path(os.environ.get("PEER_HARNESS", Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer"))
ART = Path(os.environ.get("PEER_DIR", Path.home() / ".cache" / "rlhfkit-peer")) / "artifacts"  # as common.ART
N_ROWS = {"train": 2000, "eval": 500}  # common.N_PAIRS_TRAIN, common.N_PAIRS_EVAL
BATCH, EPOCHS, MAX_LENGTH, LEARNING_RATE, EVAL_BATCH = 32, 1, 48, 1e-4, 100
ADAM_EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-8, 0.0, 1.0


def demonstrations(split: str) -> list[dict]:
    """prompt/completion rows of a split ('train': 2,000, 'eval': 500), in the pairs' order."""
    with (ART / f"pairs_{split}.jsonl").open() as f:
        pairs = [json.loads(line) for line in f]
    assert len(pairs) == N_ROWS[split], len(pairs)
    return [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]


def reference_encoding(tok, row: dict) -> tuple[list[int], int]:
    """(token ids of prompt + completion + EOS, number of prompt tokens): what both libraries should train on."""
    prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    full = tok(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert full[: len(prompt)] == prompt, row  # the prompt ends on a token boundary
    assert len(full) <= MAX_LENGTH, len(full)  # nothing is truncated at this max_length
    return full, len(prompt)


def heldout_loss(model, tok, rows: list[dict], batch: int = EVAL_BATCH) -> tuple[float, int]:
    """Mean cross-entropy per completion token (EOS included) over `rows`, and the token count: a plain
    forward of the causal LM over right-padded prompt + completion + EOS, no library code."""
    import torch
    import torch.nn.functional as F

    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            enc = [reference_encoding(tok, r) for r in rows[start:start + batch]]
            width = max(len(ids) for ids, _ in enc)
            ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            target = torch.zeros((len(enc), width), dtype=torch.bool)
            for i, (x, n_prompt) in enumerate(enc):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
                target[i, n_prompt: len(x)] = True
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, L, V)
            pred, tgt = logits[:, :-1][target[:, 1:]], ids[:, 1:][target[:, 1:]]
            nll += F.cross_entropy(pred, tgt, reduction="sum").double().item()
            count += int(target.sum())
    model.train()
    return nll / count, count


def reference_tokens(tok, rows: list[dict]) -> list[list[int]]:
    return [reference_encoding(tok, r)[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--group-by-length", action="store_true",
                    help="TRL's length-grouped sampler (transformers' train_sampling_strategy='group_by_length')")
    args = ap.parse_args()
    sys.path.insert(0, str(PEER_HARNESS))
    import common as C  # the peer's offline, 2-thread environment, set before torch is imported

    assert Path(C.ART) == ART and (N_ROWS["train"], N_ROWS["eval"]) == (C.N_PAIRS_TRAIN, C.N_PAIRS_EVAL)
    torch = C.setup_torch()
    import trl
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    tok = C.load_tokenizer(padding_side="right")
    train_rows, eval_rows = demonstrations("train"), demonstrations("eval")
    torch.manual_seed(C.SEED)
    model = GPT2LMHeadModel.from_pretrained(os.path.join(C.ART, "policy"))
    start_loss, eval_tokens = heldout_loss(model, tok, eval_rows)

    extra = {"train_sampling_strategy": "group_by_length"} if args.group_by_length else {}
    cfg = SFTConfig(
        **C.common_trainer_kwargs("sft"), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
        max_length=MAX_LENGTH, packing=False, completion_only_loss=True, learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=WEIGHT_DECAY, adam_epsilon=ADAM_EPS,
        max_grad_norm=MAX_GRAD_NORM, logging_steps=10, eval_strategy="no", **extra,
    )
    cb = C.step_timer_callback()
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(train_rows),
                         callbacks=[cb])
    init_s = time.perf_counter() - t0
    # Tokens from TRL's own tokenised training set (after its truncation), checked against the reference.
    ds = trainer.train_dataset
    trl_ids = [list(x) for x in ds["input_ids"]]
    trl_targets = sum(sum(1 for y in labels if y != -100) for labels in ds["labels"])
    n_tokens = sum(len(x) for x in trl_ids)
    same_tokens = sorted(map(tuple, trl_ids)) == sorted(map(tuple, reference_tokens(tok, train_rows)))

    t0 = time.perf_counter()
    out = trainer.train()
    train_call_s = time.perf_counter() - t0
    steps = cb.step_durations()
    train_s = sum(steps)  # on_train_begin -> the last step's end
    loss, _ = heldout_loss(trainer.model, tok, eval_rows)
    opt = trainer.optimizer
    os.environ["BENCH_OUT"] = str(args.out)
    suffix = ("_grouped" if args.group_by_length else "") + ("_bf16" if cfg.bf16 else "")
    C.save_result("peer_sft" + suffix, {
        "library": "trl", "trl_version": trl.__version__, "trainer": "SFTTrainer", "bf16": cfg.bf16,
        "group_by_length": args.group_by_length, "optimizer": type(getattr(opt, "optimizer", opt)).__name__,
        "n_examples": len(ds), "batch": BATCH, "steps": len(steps), "train_tokens": n_tokens,
        "train_target_tokens": trl_targets, "same_tokens_as_reference": same_tokens,
        "train_s": round(train_s, 3), "train_call_s": round(train_call_s, 3), "trainer_init_s": round(init_s, 3),
        "tokens_per_s": round(n_tokens / train_s, 1), "examples_per_s": round(len(ds) / train_s, 2),
        "step_s_median": round(C.median(steps), 4), "step_s_first": round(steps[0], 4),
        "eval_loss": round(loss, 4), "eval_start_loss": round(start_loss, 4), "eval_tokens": eval_tokens,
        "train_loss": out.metrics.get("train_loss"),
    })


if __name__ == "__main__":
    main()
