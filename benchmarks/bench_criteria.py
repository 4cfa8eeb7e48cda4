"""Two criteria on the demo task: what does optimising one of them, or their weighted sum, do to the other?

The demo's pipeline (rlhfkit/pipelines/demo.py, its settings reused), with the task's two hidden
judges (rlhfkit/data/synthetic.py): `helpful` (gold_score: polite, positive, well formed) and
`concise` (concise_score: a helpful action on the topic, 0.1 per word beyond 10).

  1. sample K = 4 replies to each of the 521 training prompts from the embedded model (once);
  2. rank them twice with the simulated labeler (the demo's noise 0.02, ties kept): by helpful,
     and by concise;
  3. train one reward model per criterion on its rankings (the demo's reward settings; two
     separate one-head models, so PPO reads them with --criterion-models);
  4. PPO with the demo's settings (KL 0.3, lr 1e-4, 64 episodes, 4 x 4 updates) on
     --reward-weights helpful=1 (criterion A alone), concise=1 (B alone), helpful=1,concise=1
     (the weighted sum of the normalised scores) and the gate helpful=1 with --reward-gate
     concise=-1 (where concise is more than one reference standard deviation low, it alone is
     the reward), each for ITERATIONS iterations over SEEDS seeds;
  5. every final policy and the start policy answer the 150 held-out prompts (one sample each,
     the demo's evaluation seeds): mean gold helpful and concise, each reward model's mean score
     (proxy), and the held-out KL to the start policy.

Usage: python benchmarks/bench_criteria.py [--out benchmarks/results/criteria] [--iterations 30]
                                           [--seeds 1] [--runs helpful,concise,sum,gate] [--setup-only] [--rerun]
Writes OUT/criteria.json and OUT/table.md. Data, reward models and finished runs in OUT are reused
unless --rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

CRITERIA = ("helpful", "concise")
RUNS: dict[str, dict[str, Any]] = {  # run name -> the settings that combine the criteria
    "helpful": {"reward_weights": ["helpful=1"]},
    "concise": {"reward_weights": ["concise=1"]},
    "sum": {"reward_weights": ["helpful=1", "concise=1"]},
    "gate": {"reward_weights": ["helpful=1"], "reward_gate": "concise=-1"},
}
LABEL = {"start": "start policy", "helpful": "helpful=1 (A alone)", "concise": "concise=1 (B alone)",
         "sum": "helpful=1,concise=1 (sum)", "gate": "helpful=1, gate concise < -1"}


def judge(criterion: str) -> Any:
    """The hidden judge of one criterion as a gold function (prompts, responses, ended) -> scores."""
    from rlhfkit.data.synthetic import GOLD_JUDGES

    fn = GOLD_JUDGES[criterion]

    def gold(prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> list[float]:
        ended = ended if ended is not None else [True] * len(prompts)
        return [fn(p, r, finished=e) for p, r, e in zip(prompts, responses, ended)]

    gold.__qualname__ = f"gold_{criterion}"
    return gold


def setup(out: Path, cfg: Any) -> tuple[Any, Any]:
    """Steps 1-3: the comparisons of each criterion and its reward model (reused when OUT holds them)."""
    from rlhfkit.data import synthetic
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.data.labeler import SimulatedLabeler
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.pipelines import demo
    from rlhfkit.rollout.completions import sample_completions
    from rlhfkit.rollout.sampling import SamplingSettings
    from rlhfkit.trainers.reward import train as train_reward
    from rlhfkit.trainers.reward_config import RewardConfig

    tokenizer = load_tokenizer(cfg.model)
    start = load_causal_lm(cfg.model, tokenizer).eval()
    samples = out / "samples.json"
    if not samples.exists():
        prompts = synthetic.prompts(cfg.label_prompts, seed=cfg.seed, split="train")
        completions = sample_completions(start, tokenizer, prompts, cfg.k,
                                         SamplingSettings(max_new_tokens=cfg.max_new_tokens), seed=cfg.seed)
        samples.write_text(json.dumps({"prompts": prompts, "completions": completions}))
    data = json.loads(samples.read_text())
    for criterion in CRITERIA:
        comparisons = out / f"comparisons_{criterion}.jsonl"
        if not comparisons.exists():
            labeler = SimulatedLabeler(noise=cfg.labeler_noise, seed=cfg.seed, ties=True, criterion=criterion)
            rows = []
            for prompt, completions in zip(data["prompts"], data["completions"]):
                completions = [c for c in completions if c.strip()]  # an immediate EOS: nothing to rank
                if len(completions) < 2:
                    continue
                ranks = labeler.rank(prompt, completions)
                if len(set(ranks)) > 1:  # all tied: no comparison
                    rows.append({"prompt": prompt, "completions": completions, "ranks": ranks})
            write_jsonl(comparisons, rows)
        folder = out / f"rm_{criterion}"
        if not (folder / "eval.json").exists():
            settings = {**demo.reward_settings(cfg, comparisons, out), "output_dir": str(folder), "overwrite": True}
            train_reward(RewardConfig(**settings))
    return tokenizer, start


def run_ppo(out: Path, cfg: Any, name: str, seed: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Step 4: one PPO run with the demo's settings, the two reward models and the combination `settings`."""
    from rlhfkit.pipelines import demo
    from rlhfkit.trainers.ppo import train as train_ppo
    from rlhfkit.trainers.rl_config import PPOConfig

    models = [f"{c}={out / f'rm_{c}'}" for c in CRITERIA]
    ppo = {**demo.ppo_settings(replace(cfg, seed=seed), out), "reward_model": "", "criterion_models": models,
           "sample_every": 0, "output_dir": str(out / f"{name}_seed{seed}"), "overwrite": True,
           "kl_coef": cfg.kl_coef, **settings}
    return train_ppo(PPOConfig(**ppo), gold_fns={c: judge(c) for c in CRITERIA})


def evaluate(out: Path, cfg: Any, tokenizer: Any, start: Any, folder: str | None) -> dict[str, Any]:
    """Step 5: the demo's held-out evaluation of one policy, with both judges and both reward models."""
    from rlhfkit.data import synthetic
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model
    from rlhfkit.pipelines import demo
    from rlhfkit.rollout.scoring import RewardModelScorer

    prompts = synthetic.prompts(cfg.eval_prompts, seed=cfg.seed, split="eval")
    model = start if folder is None else load_causal_lm(out / folder, tokenizer).eval()
    result: dict[str, Any] = {}
    for c in CRITERIA:  # the same evaluation seeds each time: the same replies, scored by each reward model
        rm_dir = out / f"rm_{c}"
        rm_tok = load_tokenizer(rm_dir, padding_side="right")
        scorer = RewardModelScorer(build_reward_model(rm_dir, rm_tok, init_head=False).eval(), rm_tok, tokenizer)
        r = demo.evaluate(model, tokenizer, scorer, prompts, cfg, start)
        result[f"proxy_{c}"] = demo.mean(r["proxy"])
    for c in CRITERIA:
        result[f"gold_{c}"] = demo.mean(judge(c)(prompts, r["responses"], r["ended"]))
    result["kl"] = demo.mean([a - b for a, b in zip(r["logp"], r["ref_logp"])])
    result["length_words"] = demo.mean([len(x.split()) for x in r["responses"]])
    result["samples"] = [[p, x] for p, x in list(zip(prompts, r["responses"]))[:3]]
    return result


def table(results: dict[str, Any], seeds: list[int]) -> str:
    def cell(name: str, key: str) -> str:
        values = [results[name][str(s)][key] for s in seeds] if name != "start" else [results["start"][key]]
        mean = sum(values) / len(values)
        spread = f" ({min(values):.3f} to {max(values):.3f})" if len(values) > 1 else ""
        return f"{mean:.3f}{spread}"

    header = ("| run | gold helpful | gold concise | proxy helpful | proxy concise | held-out KL | words |\n"
              "|---|---|---|---|---|---|---|\n")
    keys = ("gold_helpful", "gold_concise", "proxy_helpful", "proxy_concise", "kl", "length_words")
    lines = [f"| {LABEL[name]} | " + " | ".join(cell(name, k) for k in keys) + " |"
             for name in results if name in LABEL]
    return header + "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from rlhfkit.pipelines.demo_config import DemoConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/criteria")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--setup-only", action="store_true", help="steps 1-3 only")
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(output_dir=str(out), iterations=args.iterations, threads=1)
    t0 = time.perf_counter()
    tokenizer, start = setup(out, cfg)
    if args.setup_only:
        print(f"setup: {time.perf_counter() - t0:.0f} s")
        return
    path = out / "criteria.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() and not args.rerun else {}
    results["start"] = evaluate(out, cfg, tokenizer, start, None)
    seeds = list(range(args.seeds))
    for name in args.runs.split(","):
        for seed in seeds:
            if str(seed) in results.get(name, {}) and not args.rerun:
                continue
            t = time.perf_counter()
            history = run_ppo(out, cfg, name, seed, RUNS[name])
            record = evaluate(out, cfg, tokenizer, start, f"{name}_seed{seed}")
            record["seconds"] = round(time.perf_counter() - t, 1)
            record["train_last"] = {k: v for k, v in history[-1].items() if k.startswith(("reward/", "gold/", "kl/"))}
            results.setdefault(name, {})[str(seed)] = record
            path.write_text(json.dumps(results, indent=2))
            print(f"{name} seed {seed}: {record['seconds']} s", flush=True)
    path.write_text(json.dumps(results, indent=2))
    text = table(results, seeds)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
