"""PPO on a real pretrained chat model, SmolLM2-135M-Instruct: full fine-tuning vs LoRA, fp32 vs bf16.

Each configuration runs in its own process (so its peak RSS is its own): 8 prompts of the
embedded task's style x 16 new tokens per iteration, 2 epochs x 2 minibatches, a Python reward
(the reply's share of polite words), one warm-up iteration and N timed ones. bf16 runs only where
the CPU multiplies bf16 natively (avx512_bf16 / AMX) or on a GPU; elsewhere it is emulated and
slower than fp32, so it is skipped.

Usage: python benchmarks/bench_real_model.py --out DIR [--iters N] [--model DIR]
       (one configuration: --one full|lora --precision no|bf16)
The model folder comes from `rlhfkit models prepare smollm2` (done here when missing).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

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


def one(args: argparse.Namespace) -> None:
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
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"mode": args.one, "precision": args.precision, "iter_s_median": round(statistics.median(timed), 2),
              "iter_s_all": [round(t, 2) for t in timed], "peak_rss_mb": round(peak_mb),
              "gen_s": round(statistics.median(h["time/generation"] for h in history[1:]), 2),
              "train_s": round(statistics.median(h["time/training"] for h in history[1:]), 2)}
    try:
        import torch

        if torch.cuda.is_available():
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:
        pass
    (args.out / f"{args.one}_{args.precision}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--one", choices=("full", "lora"), default=None)
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from rlhfkit.models.prepare import prepare_smollm2

        args.model = prepare_smollm2()
    if args.one:
        one(args)
        return
    import torch

    from rlhfkit.trainers.precision import cpu_has_native_bf16

    precisions = ["no"] + (["bf16"] if torch.cuda.is_available() or cpu_has_native_bf16() else [])
    rows = []
    for precision in precisions:
        for mode in ("full", "lora"):
            subprocess.run([sys.executable, __file__, "--out", str(args.out), "--iters", str(args.iters),
                            "--model", str(args.model), "--one", mode, "--precision", precision], check=True)
            rows.append(json.loads((args.out / f"{mode}_{precision}.json").read_text()))
    lines = ["| mode | precision | s / iteration | generation s | training s | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['precision']} | {r['iter_s_median']} | {r['gen_s']} | {r['train_s']} | "
              f"{r['peak_rss_mb']} |" for r in rows]
    by = {(r["mode"], r["precision"]): r for r in rows}
    lines.append("")
    ratio = by["lora", "no"]["peak_rss_mb"] / by["full", "no"]["peak_rss_mb"]
    lines.append(f"LoRA / full peak RSS (fp32): {ratio:.2f}x")
    if ("full", "bf16") in by:
        lines.append(f"bf16 / fp32 s per iteration (full): "
                     f"{by['full', 'bf16']['iter_s_median'] / by['full', 'no']['iter_s_median']:.2f}x")
    else:
        lines.append("bf16: skipped (no native bf16 on this CPU and no GPU)")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
