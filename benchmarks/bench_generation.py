"""Generation on a real chat model: rlhfkit's sampling loop against Hugging Face `generate`, with its
default dynamic cache and with a static cache, on SmolLM2-135M-Instruct.

    python benchmarks/bench_generation.py [--batch 8] [--new-tokens 64] [--reps 3] [--precision no|bf16]
        [--out DIR] [--model DIR]

All three sample at temperature 1 from the same left-padded chat prompts, with EOS stopping turned off
(every row writes exactly --new-tokens tokens, so each does the same number of forward steps). rlhfkit:
`rlhfkit.rollout.sampling.sample` (one forward per token with the model's own KV cache; inverse-CDF draws,
one uniform number per step from a generator per episode; log-probs and entropies kept, as PPO asks of
it). HF: `model.generate(do_sample=True, min_new_tokens=max_new_tokens)`, with
`cache_implementation="static"` for the static cache (eager, no torch.compile: compiling takes longer
than a whole RL run at this size on a CPU). Figures: generated tokens per second (batch x new tokens /
wall time), the median of --reps rounds in which the three take turns, after one warm-up each. The model
folder comes from `rlhfkit models prepare smollm2` (done here when missing). bf16 only where it is native.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PROMPTS = ["My order has not arrived yet.", "The app crashes when I log in.", "I was charged twice this month.",
           "How do I cancel my plan?", "Where is my refund?", "The parcel came damaged.",
           "Can I change my delivery address?", "How do I reset my password?"]


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each fn over `reps` rounds, the fns taking turns within each round, so that a change
    of machine load hits them alike; one warm-up call each first (allocations, the static cache's buffers)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "generation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.models.prepare import prepare_smollm2
    from rlhfkit.rollout.sampling import SamplingSettings, sample

    folder = args.model or prepare_smollm2()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False,
                                     add_generation_prompt=True) for i in range(args.batch)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    n = args.new_tokens
    settings = SamplingSettings(max_new_tokens=n, temperature=1.0, stop_at_eos=False)
    seeds = list(range(args.batch))

    @torch.no_grad()
    def ours() -> None:
        out = sample(model, enc.input_ids, enc.attention_mask, settings, tok.eos_token_id, tok.pad_token_id,
                     seeds=seeds, with_logprobs=True)
        assert out.response_ids.shape == (args.batch, n)

    def hf(cache: str | None):
        @torch.no_grad()
        def run() -> None:
            extra = {"cache_implementation": cache} if cache else {}
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=tok.pad_token_id, **extra)
            assert out.shape[1] - enc.input_ids.shape[1] == n
        return run

    rows = {}
    medians = interleaved({"rlhfkit sample": ours, "HF generate, dynamic cache": hf(None),
                           "HF generate, static cache": hf("static")}, args.reps)
    for name, s in medians.items():
        rows[name] = {"s": round(s, 3), "tokens_per_s": round(args.batch * n / s, 1)}
        print(f"{name}: {s:.3f} s, {args.batch * n / s:.1f} tokens/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": str(folder), "batch": args.batch, "new_tokens": n, "prompt_tokens": enc.input_ids.shape[1],
              "precision": args.precision, "threads": args.threads, "reps": args.reps, "rows": rows}
    path = args.out / f"generation_b{args.batch}_n{n}_{args.precision}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
