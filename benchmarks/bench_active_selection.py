"""Active selection vs random on the demo task: labelled prompts needed for a held-out reward-model accuracy.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_active_selection.py [--out benchmarks/results] [--seeds 0 1 2]

For each seed:
  1. the start policy (the embedded model) samples K completions for every training prompt of the demo
     task (the pool) and for every held-out prompt; the held-out completions get their gold ranking
     (the gold judge, exact scores; ties give no pair): the fixed held-out set;
  2. a random seed set of --start prompts is ranked by the demo's simulated labeler (its noise and
     resolution) and the reward model is trained on it as the demo trains it (rlhfkit.trainers.reward);
  3. in rounds, each strategy adds --step prompts from the rest of the pool: `random` (seeded) or
     `uncertain` (the current reward model's top-pair uncertainty, rlhfkit.feedback.selection, the
     code of `rlhfkit feedback sample --select uncertain`); the labeler ranks them and the reward model
     is retrained from the start on everything labelled so far;
  4. after every training: held-out accuracy = share of the held-out gold pairs the model orders right.

A prompt counts as labelled when the labeler ranked it, also when it tied every completion (such a
ranking gives no pair: a label spent for nothing, as with people). Then, per target accuracy, the
labelled prompts each seed's curve needs to reach it (linear interpolation between rounds; the first
crossing), mean and spread over seeds. Writes active_selection.json (curves, targets, timings) and
active_selection.png into --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.algos.reward import preference_accuracy, ranking_to_pairs
from rlhfkit.data import synthetic
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.labeler import SimulatedLabeler
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.feedback.selection import score_completions, select_prompts
from rlhfkit.models.loading import LoadOptions, configure_loading, load_causal_lm, load_tokenizer
from rlhfkit.pipelines.demo_config import DemoConfig
from rlhfkit.rollout.completions import sample_completions
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig

STRATEGIES = ("random", "uncertain")
HELD_OUT_SEED = 10_000  # the held-out completions: one fixed set for every seed and strategy


def ranked_rows(labeler: SimulatedLabeler, prompts: list[str], completions: list[list[str]]) -> list[dict]:
    """The labeler's rankings as ranked-list rows; a ranking that ties everything holds no pair and is left out."""
    rows = [{"prompt": p, "completions": c, "ranks": labeler.rank(p, c)} for p, c in zip(prompts, completions)]
    return [r for r in rows if len(set(r["ranks"])) > 1]


def held_out_accuracy(folder: Path, rows: list[dict]) -> float:
    """Share of the held-out gold pairs (better, worse) the reward model scores in the gold order."""
    scores = score_completions(folder, [r["prompt"] for r in rows], [r["completions"] for r in rows])[0]  # (P, K)
    better, worse = [], []
    for i, row in enumerate(rows):
        for b, w in ranking_to_pairs(row["ranks"]):
            better.append(scores[i, b])
            worse.append(scores[i, w])
    return preference_accuracy(torch.stack(better), torch.stack(worse)).item()


def first_reach(budgets: list[int], accuracy: list[float], target: float) -> float | None:
    """Labelled prompts at which the curve first reaches `target` (linear between rounds); None if never."""
    if accuracy[0] >= target:
        return float(budgets[0])
    for (n0, a0), (n1, a1) in zip(zip(budgets, accuracy), zip(budgets[1:], accuracy[1:])):
        if a0 < target <= a1:
            return n0 + (target - a0) / (a1 - a0) * (n1 - n0)
    return None


def run_seed(seed: int, args: argparse.Namespace, demo: DemoConfig, policy, tokenizer, held_out: list[dict],
             work: Path) -> dict:
    pool = synthetic.all_prompts("train")
    settings = SamplingSettings(max_new_tokens=demo.max_new_tokens)
    t0 = time.perf_counter()
    completions = sample_completions(policy, tokenizer, pool, args.k, settings, seed=seed)
    sample_s = time.perf_counter() - t0
    labeler = SimulatedLabeler(noise=demo.labeler_noise, seed=seed, ties=True, resolution=demo.labeler_resolution)
    # the trainer needs eval rows of its own; the held-out accuracy is computed here, on every held-out pair
    trainer_eval = work / "trainer_eval.jsonl"
    write_jsonl(trainer_eval, held_out[:1])
    budgets = list(range(args.start, args.max + 1, args.step))

    def fit(labelled: list[int], name: str) -> tuple[Path, float, float, int]:
        """Train on the labelled prompts; (folder, held-out accuracy, seconds, training pairs)."""
        rows = ranked_rows(labeler, [pool[i] for i in labelled], [completions[i] for i in labelled])
        data, folder = work / f"{name}.jsonl", work / name
        write_jsonl(data, rows)
        t = time.perf_counter()
        train_reward(RewardConfig(
            model=EMBEDDED_MODEL, train_data=str(data), eval_data=str(trainer_eval), output_dir=str(folder),
            overwrite=True, epochs=args.epochs, learning_rate=demo.rm_learning_rate, batch_size=32, seed=seed,
            normalize="none", threads=args.threads,
        ))
        pairs = sum(len(ranking_to_pairs(r["ranks"])) for r in rows)
        return folder, held_out_accuracy(folder, held_out), time.perf_counter() - t, pairs

    start = sorted(random.Random(seed).sample(range(len(pool)), args.start))
    folder0, acc0, train0_s, pairs0 = fit(start, "seed_set")
    curves: dict[str, dict] = {}
    for strategy in STRATEGIES:
        labelled, folder, accuracy, pairs = list(start), folder0, [acc0], [pairs0]
        seconds = {"train": train0_s, "select": 0.0}
        for round_index, budget in enumerate(budgets[1:], start=1):
            taken = set(labelled)
            rest = [i for i in range(len(pool)) if i not in taken]
            t = time.perf_counter()
            picked = select_prompts(strategy, budget - len(labelled), [pool[i] for i in rest],
                                    [completions[i] for i in rest], [folder], seed=seed * 1000 + round_index)
            seconds["select"] += time.perf_counter() - t
            labelled += [rest[j] for j in picked.chosen]
            folder, acc, train_s, n_pairs = fit(labelled, f"{strategy}_{budget}")
            accuracy.append(acc)
            pairs.append(n_pairs)
            seconds["train"] += train_s
            print(f"seed {seed} {strategy:9s} {budget:4d} labelled: held-out accuracy {acc:.4f}", flush=True)
        # pairs: the training comparisons the labelled prompts gave (a prompt ranked all-tied gives none)
        curves[strategy] = {"accuracy": accuracy, "pairs": pairs,
                            "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    return {"seed": seed, "budgets": budgets, "sample_s": round(sample_s, 1), "curves": curves}


def summarise(runs: list[dict]) -> dict:
    """Targets: the highest accuracy every curve reaches (so every seed of both strategies has a number),
    and what random reaches (mean over seeds) at the middle and at the largest budget; for each, the
    labelled prompts each strategy needs (seeds that never reach it give None and are left out of the
    mean: compare `reached`)."""
    budgets = runs[0]["budgets"]
    mean = {s: [statistics.fmean(r["curves"][s]["accuracy"][i] for r in runs) for i in range(len(budgets))]
            for s in STRATEGIES}
    every = min(max(r["curves"][s]["accuracy"]) for r in runs for s in STRATEGIES)
    by_key = {}  # targets that print alike (4 decimals) are one target: the lower, so every curve reaching
    for target in sorted({every, mean["random"][len(budgets) // 2], mean["random"][-1]}, reverse=True):
        by_key[f"{target:.4f}"] = target  # either reaches it
    targets = sorted(by_key.values())
    needed = {}
    for target in targets:
        needed[f"{target:.4f}"] = {}
        for s in STRATEGIES:
            per_seed = [first_reach(budgets, r["curves"][s]["accuracy"], target) for r in runs]
            reached = [n for n in per_seed if n is not None]
            needed[f"{target:.4f}"][s] = {
                "per_seed": per_seed, "reached": len(reached),
                "mean": round(statistics.fmean(reached), 1) if reached else None,
                "std": round(statistics.pstdev(reached), 1) if len(reached) > 1 else None,
                "min": min(reached) if reached else None, "max": max(reached) if reached else None,
            }
    return {"mean_accuracy": mean, "targets": targets, "labels_needed": needed}


def plot(runs: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = runs[0]["budgets"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s, colour in zip(STRATEGIES, ("tab:gray", "tab:blue")):
        for r in runs:
            ax.plot(budgets, r["curves"][s]["accuracy"], color=colour, alpha=0.3, linewidth=0.8)
        ax.plot(budgets, summary["mean_accuracy"][s], color=colour, marker="o", linewidth=2,
                label=f"{s} (mean of {len(runs)} seeds)")
    for target in summary["targets"]:
        ax.axhline(target, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("labelled prompts (4 completions each, ranked by the simulated labeler)")
    ax.set_ylabel("held-out reward-model accuracy (gold pairs)")
    ax.set_title("Active selection vs random on the demo task")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--start", type=int, default=20, help="random seed set (labelled prompts before round 1)")
    ap.add_argument("--step", type=int, default=20, help="prompts added per round")
    ap.add_argument("--max", type=int, default=160, help="labelled prompts after the last round")
    ap.add_argument("--k", type=int, default=4, help="completions per prompt")
    ap.add_argument("--epochs", type=int, default=DemoConfig().rm_epochs, help="reward-model epochs per training")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    demo = DemoConfig()
    configure_loading(LoadOptions())
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    policy = load_causal_lm(EMBEDDED_MODEL, tokenizer).eval()
    held_prompts = synthetic.all_prompts("eval")
    held_completions = sample_completions(policy, tokenizer, held_prompts, args.k,
                                          SamplingSettings(max_new_tokens=demo.max_new_tokens), seed=HELD_OUT_SEED)
    gold = SimulatedLabeler(noise=0.0, ties=True, resolution=0.0)  # the gold order itself
    held_out = ranked_rows(gold, held_prompts, held_completions)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(seed, args, demo, policy, tokenizer, held_out, Path(tmp) / f"seed{seed}")
                for seed in args.seeds]
    summary = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "labeler_noise": demo.labeler_noise, "labeler_resolution": demo.labeler_resolution,
                     "max_new_tokens": demo.max_new_tokens, "rm_learning_rate": demo.rm_learning_rate,
                     "held_out_prompts": len(held_out),
                     "held_out_pairs": sum(len(ranking_to_pairs(r["ranks"])) for r in held_out)},
        "runs": runs, **summary, "total_s": round(time.perf_counter() - t0, 1),
    }
    (args.out / "active_selection.json").write_text(json.dumps(result, indent=2))
    plot(runs, summary, args.out / "active_selection.png")
    for target, by in summary["labels_needed"].items():
        print(f"held-out accuracy {target}: " + "; ".join(
            f"{s} {v['mean']} +- {v['std']} labelled prompts ({v['reached']}/{len(runs)} seeds reach it)"
            for s, v in by.items()))
    print(f"{result['total_s']:.0f} s -> {args.out / 'active_selection.json'}, {args.out / 'active_selection.png'}")


if __name__ == "__main__":
    main()
