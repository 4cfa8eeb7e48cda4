"""`rlhfkit demo`: the whole method on the embedded model, in a few minutes on a CPU.

  1. sample K completions per prompt from the pretrained model;
  2. the simulated labeler ranks them through the feedback store (the path human rankings take)
     and the rankings are exported as comparisons;
  3. train the reward model on the comparisons;
  4. PPO against the reward model with the KL penalty (and the entropy bonus, if set): the guard;
  5. the same PPO with both coefficients 0: the reward-hacking run;
  6. evaluate start and final policies on held-out prompts with the gold judge (which no stage
     trained on), then write demo.json and the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data import synthetic
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.labeler import SimulatedLabeler
from rlhfkit.data.tokenize import encode_prompt, pad_left
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.reward_model import build_reward_model
from rlhfkit.pipelines.demo_config import DemoConfig
from rlhfkit.rollout.collect import decode_responses
from rlhfkit.rollout.completions import sample_completions
from rlhfkit.rollout.sampling import SamplingSettings, sample
from rlhfkit.rollout.scoring import RewardModelScorer
from rlhfkit.tracking.console import console, print_table
from rlhfkit.tracking.diagnostics import distinct_n, repetition_rate

ANNOTATOR = "simulated-labeler"


def gold(prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> list[float]:
    """The task's gold judge as a reward-style function (logged as gold/mean, never trained on)."""
    ended = ended if ended is not None else [True] * len(prompts)
    return [synthetic.gold_score(p, r, finished=e) for p, r, e in zip(prompts, responses, ended)]


def quick_settings(cfg: DemoConfig) -> DemoConfig:
    """The shortened demo of the tests: same stages, a fraction of the work."""
    return replace(cfg, label_prompts=min(cfg.label_prompts, 40), eval_prompts=min(cfg.eval_prompts, 16),
                   iterations=min(cfg.iterations, 2), rollout_batch_size=min(cfg.rollout_batch_size, 16),
                   rm_epochs=1)


def collect_rankings(cfg: DemoConfig, out: Path, model: Any, tokenizer: Any) -> Path:
    """Steps 1-2: sample, rank through the feedback store, export comparisons (ranked lists)."""
    from rlhfkit.feedback.store import FeedbackStore

    prompts = synthetic.prompts(cfg.label_prompts, seed=cfg.seed, split="train")
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens)
    completions = sample_completions(model, tokenizer, prompts, cfg.k, settings, seed=cfg.seed)
    labeler = SimulatedLabeler(noise=cfg.labeler_noise, seed=cfg.seed, ties=True, resolution=cfg.labeler_resolution)
    with FeedbackStore.open(out / "feedback.db") as store:
        project = store.create_project("demo", cfg.k)
        store.add_prompts(project, prompts, completions, model=cfg.model,
                          sampling={"temperature": 1.0, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed})
        store.add_annotator(ANNOTATOR)
        while (view := store.next_prompt(project, ANNOTATOR)) is not None:
            ranks = labeler.rank(view.text, [c.text for c in view.completions])
            store.submit_ranking(ANNOTATOR, view.id, {c.id: r for c, r in zip(view.completions, ranks)})
        rows = store.export_rows(project, format="ranked", merge="majority")
    path = out / "comparisons.jsonl"
    write_jsonl(path, rows)
    return path


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, scorer: RewardModelScorer, prompts: list[str], cfg: DemoConfig
             ) -> dict[str, Any]:
    """One sampled response per held-out prompt (the same seeds for every policy): gold and proxy scores."""
    ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens)
    seeds = [cfg.seed * 7919 + i for i in range(len(prompts))]
    out = sample(model, ids, mask, settings, tokenizer.eos_token_id, tokenizer.pad_token_id, seeds)
    responses = decode_responses(tokenizer, out.response_ids, out.response_mask)
    proxy = scorer(ids, mask, out.response_ids, out.response_mask, out.ended, prompts, responses)
    return {"responses": responses, "gold": gold(prompts, responses, out.ended.tolist()), "proxy": proxy.tolist()}


def win_rate(final: list[float], start: list[float]) -> float:
    """Share of prompts where the final policy's reply beats the start policy's (ties count half)."""
    wins = sum(1.0 if f > s else 0.5 if f == s else 0.0 for f, s in zip(final, start))
    return wins / len(start)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage; returns the summary written to demo.json."""
    from rlhfkit.tracking.report import build_report
    from rlhfkit.trainers.ppo import train as train_ppo
    from rlhfkit.trainers.reward import train as train_reward
    from rlhfkit.trainers.reward_config import RewardConfig
    from rlhfkit.trainers.rl_config import PPOConfig

    if cfg.quick:
        cfg = quick_settings(cfg)
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    start_policy = load_causal_lm(cfg.model, tokenizer).eval()

    console.rule("[bold]1-2. sample completions, rank them with the simulated labeler")
    comparisons = collect_rankings(cfg, out, start_policy, tokenizer)

    console.rule("[bold]3. reward model")
    rm_metrics = train_reward(RewardConfig(
        model=cfg.model, train_data=str(comparisons), output_dir=str(out / "reward_model"), eval_fraction=0.1,
        epochs=cfg.rm_epochs, learning_rate=cfg.rm_learning_rate, batch_size=32, max_length=96, seed=cfg.seed,
        normalize="mean", threads=cfg.threads,
    ))

    prompts_file = out / "prompts.jsonl"
    write_jsonl(prompts_file, [{"prompt": p} for p in synthetic.all_prompts("train")])
    ppo = dict(policy=cfg.model, reward_model=str(out / "reward_model"), prompts=str(prompts_file),
               iterations=cfg.iterations, rollout_batch_size=cfg.rollout_batch_size, max_new_tokens=cfg.max_new_tokens,
               learning_rate=cfg.learning_rate, update_epochs=4, num_minibatches=4, seed=cfg.seed, threads=cfg.threads,
               missing_eos_penalty=1.0, sample_every=max(1, cfg.iterations // 6), log_every=1, lr_schedule="constant")
    bonus = f" and entropy bonus {cfg.ent_coef}" if cfg.ent_coef else ""
    console.rule(f"[bold]4. PPO with the guard: KL penalty {cfg.kl_coef}{bonus}")
    train_ppo(PPOConfig(**ppo, output_dir=str(out / "ppo"), kl_coef=cfg.kl_coef, ent_coef=cfg.ent_coef),
              gold_fn=gold)
    console.rule("[bold]5. PPO without the guard: KL coefficient 0, entropy bonus 0 (reward hacking)")
    train_ppo(PPOConfig(**ppo, output_dir=str(out / "ppo_no_guard"), kl_coef=0.0, ent_coef=0.0), gold_fn=gold)

    console.rule("[bold]6. evaluation on held-out prompts with the gold judge")
    eval_prompts = synthetic.prompts(cfg.eval_prompts, seed=cfg.seed, split="eval")
    rm_tok = load_tokenizer(out / "reward_model", padding_side="right")
    scorer = RewardModelScorer(build_reward_model(out / "reward_model", rm_tok, init_head=False).eval(), rm_tok,
                               tokenizer)
    results = {"start": evaluate(start_policy, tokenizer, scorer, eval_prompts, cfg)}
    for name, folder in (("with_guard", "ppo"), ("without_guard", "ppo_no_guard")):
        results[name] = evaluate(load_causal_lm(out / folder, tokenizer).eval(), tokenizer, scorer, eval_prompts, cfg)
    final_kl = {name: _last(out / folder, "kl/ref") for name, folder in (("with_guard", "ppo"),
                                                                         ("without_guard", "ppo_no_guard"))}
    summary = {
        "reward_model": "reward_model",
        "runs": {"with_guard": "ppo", "without_guard": "ppo_no_guard"},
        "reward_model_accuracy": rm_metrics["eval/accuracy"],
        "win_rate": {k: win_rate(results[k]["gold"], results["start"]["gold"])
                     for k in ("with_guard", "without_guard")},
        "gold": {k: mean(v["gold"]) for k, v in results.items()},
        "proxy": {k: mean(v["proxy"]) for k, v in results.items()},
        "kl_final": final_kl,
        "distinct_1": {k: distinct_n(v["responses"], 1) for k, v in results.items()},
        "distinct_2": {k: distinct_n(v["responses"], 2) for k, v in results.items()},
        "repetition": {k: repetition_rate(v["responses"]) for k, v in results.items()},
        "samples": [
            {"prompt": p, **{k: results[k]["responses"][i] for k in results},
             **{f"gold_{k}": results[k]["gold"][i] for k in results}}
            for i, p in enumerate(eval_prompts[:8])
        ],
        "seconds": round(time.perf_counter() - t_start, 1),
        "settings": asdict(cfg),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    report = build_report(out)
    print_table("rlhfkit demo", [
        ("reward model held-out accuracy", summary["reward_model_accuracy"]),
        ("gold win rate vs start, with guard", summary["win_rate"]["with_guard"]),
        ("gold win rate vs start, without guard", summary["win_rate"]["without_guard"]),
        ("gold score start / guard / no guard", _triple(summary["gold"])),
        ("proxy (RM) score start / guard / no guard", _triple(summary["proxy"])),
        ("distinct-1 start / guard / no guard", _triple(summary["distinct_1"])),
        ("distinct-2 start / guard / no guard", _triple(summary["distinct_2"])),
        ("repetition start / guard / no guard", _triple(summary["repetition"])),
        ("KL to reference at the end, guard / no guard", f"{final_kl['with_guard']:.3f} / "
                                                         f"{final_kl['without_guard']:.3f}"),
        ("minutes", summary["seconds"] / 60),
    ])
    console.print(f"report: {report}\nplots: {report.parent / 'plots'}")
    return summary


def _triple(d: dict[str, float]) -> str:
    return " / ".join(f"{d[k]:.3f}" for k in ("start", "with_guard", "without_guard"))


def _last(run_dir: Path, key: str) -> float:
    from rlhfkit.tracking.metrics import read_metrics

    values = [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if r.get(key) is not None]
    return float(values[-1]) if values else float("nan")
