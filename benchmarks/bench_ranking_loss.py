"""Pairwise (Bradley-Terry) vs listwise (Plackett-Luce) reward-model loss on the demo task.

Data as `rlhfkit demo` makes it: K = 4 completions per prompt sampled from the embedded model, ranked
by the simulated labeler (noise 0.02, ties on a grid of 1.0: the demo's settings) and exported as
ranked rows (`rlhfkit.feedback.export.ranked_row`, what the feedback store's ranked export writes
for one annotator). Both losses train on the same first N labelled prompts, with the demo's
reward-model settings (3 epochs, lr 1e-3, batch 32). Held out: the 150 eval prompts' K = 4
completions, ranked by the labeler (the trainer's eval/accuracy and eval/kendall_tau) and scored by
the gold judge, which no stage trains on: pairwise accuracy on the pairs whose gold scores differ,
and the mean per-prompt Kendall tau-b and Spearman rho of the reward model's scores with the gold
scores (prompts whose 4 completions all score the same are left out).

Usage: python benchmarks/bench_ranking_loss.py --out DIR [--prompts 100 250 521] [--seeds 0 1]
       [--listwise-batch 32 8]
Writes DIR/results.json and DIR/table.md; the sampled completions are cached in DIR/completions.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from rlhfkit.data import synthetic
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.labeler import SimulatedLabeler
from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.feedback.export import ranked_row
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.reward_model import build_reward_model, reward_scores
from rlhfkit.rollout.completions import sample_completions
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.trainers.reward import kendall_tau, spearman_rho, train
from rlhfkit.trainers.reward_config import RewardConfig

K, NOISE, RESOLUTION, MAX_NEW_TOKENS, DATA_SEED = 4, 0.02, 1.0, 24, 0  # the demo's defaults


def completions(out: Path) -> dict[str, dict[str, list[str]]]:
    """{split: {prompt: K completions}} sampled as the demo samples them (cached)."""
    cache = out / "completions.json"
    if cache.exists():
        return json.loads(cache.read_text())
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    model = load_causal_lm(EMBEDDED_MODEL, tokenizer).eval()
    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS)
    data = {}
    for split in ("train", "eval"):
        prompts = synthetic.prompts(len(synthetic.all_prompts(split)), seed=DATA_SEED, split=split)
        data[split] = dict(zip(prompts, sample_completions(model, tokenizer, prompts, K, settings, seed=DATA_SEED)))
    cache.write_text(json.dumps(data))
    return data


def ranked_rows(samples: dict[str, list[str]]) -> list[dict]:
    """The labeler's rankings as ranked rows (all-tied prompts give none, as in the feedback export)."""
    labeler = SimulatedLabeler(noise=NOISE, seed=DATA_SEED, ties=True, resolution=RESOLUTION)
    rows = []
    for prompt, comps in samples.items():
        rows += ranked_row(prompt, comps, labeler.rank(prompt, comps))
    return rows


@torch.no_grad()
def gold_metrics(model_dir: Path, samples: dict[str, list[str]]) -> dict[str, float]:
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    model = build_reward_model(model_dir, tokenizer, init_head=False).eval()
    prompts = list(samples)
    seqs = [encode_prompt(tokenizer, p) + encode_response(tokenizer, c) for p in prompts for c in samples[p]]
    scores = torch.cat([reward_scores(model, *pad_right(seqs[i:i + 128], tokenizer.pad_token_id), normalized=False)
                        for i in range(0, len(seqs), 128)]).tolist()
    correct = total = 0
    taus, rhos = [], []
    for n, p in enumerate(prompts):
        s = scores[n * K:(n + 1) * K]
        g = [synthetic.gold_score(p, c) for c in samples[p]]
        for i, j in itertools.combinations(range(K), 2):
            if g[i] != g[j]:
                total += 1
                correct += (s[i] - s[j]) * (g[i] - g[j]) > 0
        if len(set(g)) > 1:
            taus.append(kendall_tau(s, g))
            rhos.append(spearman_rho(s, g))
    return {"gold_accuracy": correct / total, "gold_kendall": sum(taus) / len(taus),
            "gold_spearman": sum(rhos) / len(rhos), "gold_pairs": total, "gold_prompts": len(taus)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompts", type=int, nargs="+", default=[100, 250, 521])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--listwise-batch", type=int, nargs="+", default=[32],
                    help="Lists per step of the listwise runs (32 = the pairwise runs' batch_size setting).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = completions(args.out)
    print(f"completions ready ({time.perf_counter() - t0:.0f} s)")
    train_rows, eval_rows = ranked_rows(data["train"]), ranked_rows(data["eval"])
    eval_file = args.out / "eval.jsonl"
    write_jsonl(eval_file, eval_rows)
    results = []
    for n in args.prompts:
        rows = ranked_rows(dict(list(data["train"].items())[:n]))  # the first n labelled prompts
        train_file = args.out / f"train_{n}.jsonl"
        write_jsonl(train_file, rows)
        variants = [("pairwise", 32)] + [("listwise", b) for b in args.listwise_batch]
        for seed, (loss, batch) in itertools.product(args.seeds, variants):
            run_dir = args.out / f"{loss}_b{batch}_n{n}_s{seed}"
            metrics = train(RewardConfig(
                model=EMBEDDED_MODEL, train_data=str(train_file), eval_data=str(eval_file), output_dir=str(run_dir),
                overwrite=True, ranking_loss=loss, epochs=3, learning_rate=1e-3, batch_size=batch, seed=seed,
                normalize="none", threads=args.threads, log_every=50))
            row = {"loss": loss, "batch": batch, "prompts": n, "rows": len(rows), "seed": seed,
                   "steps": metrics["train/steps"], "train_s": round(metrics["perf/train_s"], 1),
                   "eval_accuracy": metrics["eval/accuracy"], "eval_kendall": metrics["eval/kendall_tau"],
                   **gold_metrics(run_dir, data["eval"])}
            results.append(row)
            print(json.dumps(row))
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    write_table(args.out, results, len(train_rows), len(eval_rows), time.perf_counter() - t0)


def write_table(out: Path, results: list[dict], n_train: int, n_eval: int, seconds: float) -> None:
    keys = ("eval_accuracy", "eval_kendall", "gold_accuracy", "gold_kendall", "gold_spearman", "train_s")
    lines = [f"ranked rows: {n_train} train prompts labelled, {n_eval} held out; total {seconds / 60:.1f} min", "",
             "| loss | batch | prompts (rows) | steps | labeler acc | labeler tau | gold acc | gold tau | gold rho | "
             "train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["prompts"], r["loss"], r["batch"]), []).append(r)
    for (n, loss, batch), rs in sorted(groups.items()):
        cells = []
        for key in keys:
            vals = [r[key] for r in rs]
            mean = sum(vals) / len(vals)
            spread = (max(vals) - min(vals)) / 2
            cells.append(f"{mean:.1f}" if key == "train_s" else f"{mean:.3f} ± {spread:.3f}")
        lines.append(f"| {loss} | {batch} | {n} ({rs[0]['rows']}) | {rs[0]['steps']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"mean ± half-range over seeds {sorted({r['seed'] for r in results})}")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
