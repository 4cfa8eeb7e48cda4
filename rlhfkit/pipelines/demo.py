"""`rlhfkit demo`: the whole method on the embedded model, in a few minutes on a CPU.

  1. sample K completions per prompt from the pretrained model;
  2. the simulated labeler ranks them through the feedback store (the path human rankings take)
     and the rankings are exported as comparisons;
  3. train the reward model on the comparisons;
  4. PPO against the reward model with the KL penalty (and the entropy bonus, if set): the guard;
  5. the same PPO with both coefficients 0: the reward-hacking run;
  6. DPO of the start policy on the same comparisons (no reward model, no sampling);
  7. several criteria: the labeler ranked every prompt twice, by the `helpful` judge (the rankings
     every stage above trains on) and by the `concise` one (rlhfkit.data.synthetic); one reward
     model with a head per criterion is trained on both, and PPO with the guard's settings runs
     twice on it: on helpful alone (--reward-weights helpful=1) and on the sum helpful=1,concise=1;
  8. evaluate start and final policies on held-out prompts with the gold judges (which no stage
     trained on), and each reply's log-probs under its policy and the start policy (the held-out
     KL every run shares), then write evaluation.jsonl (per prompt), demo.json (the `DemoSummary`
     of rlhfkit.tracking.summary, computed from evaluation.jsonl) and the HTML report.

The demo folder holds its own config.yaml (`stage: demo`) beside demo.json, and one folder per
stage (reward_model/, ppo/, ppo_no_guard/, dpo/, reward_model_criteria/, ppo_helpful/,
ppo_helpful_concise/), each with the config.yaml its trainer wrote.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit import seeds
from rlhfkit.config import save_config
from rlhfkit.data import synthetic
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.labeler import SimulatedLabeler
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.data.tokenize import encode_prompt, pad_left
from rlhfkit.models.loading import LoadOptions, configure_loading, load_causal_lm, load_tokenizer
from rlhfkit.models.policy import token_logprobs
from rlhfkit.models.reward_model import build_reward_model
from rlhfkit.pipelines.demo_config import DemoConfig
from rlhfkit.rollout.collect import decode_responses
from rlhfkit.rollout.completions import sample_completions
from rlhfkit.rollout.sampling import SamplingSettings, sample
from rlhfkit.rollout.scoring import RewardModelScorer
from rlhfkit.tracking.console import console, print_table, progress_bar
from rlhfkit.tracking.diagnostics import distinct_n, repetition_rate
from rlhfkit.tracking.summary import (
    DPO_ACCURACY_KEY,
    EVALUATION_FILE,
    KL_KEY,
    POLICIES,
    RM_ACCURACY_KEY,
    SUMMARY_FILE,
    CriteriaPolicy,
    CriteriaRecord,
    DemoSummary,
    DPORecord,
    PolicyRecord,
    Reply,
    RewardModelRecord,
    RunRecord,
    SampleRecord,
)

ANNOTATOR = "simulated-labeler"
RM_FOLDER = "reward_model"
# What the labeler ranks by (the page shows these descriptions); the first is the demo's main criterion.
CRITERIA = {"helpful": "Polite, positive, well formed, not repetitive.",
            "concise": "Short, and still does something for the customer."}
MAIN_CRITERION = "helpful"
CRITERIA_RM_FOLDER = "reward_model_criteria"
CRITERIA_FILE = "comparisons_by_criterion.jsonl"
CRITERIA_RUNS = {"helpful_alone": ("ppo_helpful", {"helpful": 1.0}),  # name -> (folder, --reward-weights)
                 "helpful_concise": ("ppo_helpful_concise", {"helpful": 1.0, "concise": 1.0})}
RUN_FOLDERS = {"with_guard": "ppo", "without_guard": "ppo_no_guard"}
DPO_FOLDER = "dpo"
SAMPLES_SHOWN = 8  # held-out prompts in the summary's sample table


def gold(prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> list[float]:
    """The task's gold judge as a reward-style function (logged as gold/mean, never trained on)."""
    ended = ended if ended is not None else [True] * len(prompts)
    return [synthetic.gold_score(p, r, finished=e) for p, r, e in zip(prompts, responses, ended)]


def gold_concise(prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> list[float]:
    """The task's second hidden judge, `concise`, as a reward-style function (never trained on)."""
    ended = ended if ended is not None else [True] * len(prompts)
    return [synthetic.concise_score(p, r, finished=e) for p, r, e in zip(prompts, responses, ended)]


GOLD_FNS = {"helpful": gold, "concise": gold_concise}


def quick_settings(cfg: DemoConfig) -> DemoConfig:
    """The shortened demo of the tests: same stages, a fraction of the work."""
    return replace(cfg, label_prompts=min(cfg.label_prompts, 40), eval_prompts=min(cfg.eval_prompts, 16),
                   iterations=min(cfg.iterations, 2), rollout_batch_size=min(cfg.rollout_batch_size, 16),
                   rm_epochs=1, dpo_epochs=1)


def collect_rankings(cfg: DemoConfig, out: Path, model: Any, tokenizer: Any) -> Path:
    """Steps 1-2: sample, rank through the feedback store by every criterion, export comparisons
    (ranked lists): the main criterion's to comparisons.jsonl (returned), all to CRITERIA_FILE."""
    from rlhfkit.feedback.store import FeedbackStore

    prompts = synthetic.prompts(cfg.label_prompts, seed=cfg.seed, split="train")
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens)
    completions = sample_completions(model, tokenizer, prompts, cfg.k, settings, seed=cfg.seed)
    labelers = {name: SimulatedLabeler(noise=cfg.labeler_noise, seed=cfg.seed, ties=True,
                                       resolution=cfg.labeler_resolution, criterion=name) for name in CRITERIA}
    with FeedbackStore.open(out / "feedback.db") as store:
        project = store.create_project("demo", cfg.k, criteria=CRITERIA)
        store.add_prompts(project, prompts, completions, model=cfg.model,
                          sampling={"temperature": 1.0, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed})
        store.add_annotator(ANNOTATOR)
        while (view := store.next_prompt(project, ANNOTATOR)) is not None:
            texts = [c.text for c in view.completions]
            store.submit_ranking(ANNOTATOR, view.id, rankings={
                name: {c.id: r for c, r in zip(view.completions, labeler.rank(view.text, texts))}
                for name, labeler in labelers.items()})
        write_jsonl(out / CRITERIA_FILE, store.export_rows(project, format="ranked", merge="majority"))
        rows = store.export_rows(project, format="ranked", merge="majority", criteria=[MAIN_CRITERION])
    path = out / "comparisons.jsonl"
    write_jsonl(path, rows)
    return path


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, scorer: RewardModelScorer | None, prompts: list[str], cfg: DemoConfig,
             reference: Any, criteria_scorer: RewardModelScorer | None = None) -> dict[str, Any]:
    """One sampled response per held-out prompt (the same seeds for every policy): gold and proxy scores,
    and the log-probs of the reply under the policy and under the start policy (`reference`). With
    `criteria_scorer` (the reward model with a head per criterion), also every criterion's gold and
    proxy score of each reply."""
    ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens)
    draws = eval_seeds(cfg, len(prompts))
    out = sample(model, ids, mask, settings, stop_token_ids(tokenizer), tokenizer.pad_token_id, draws)
    responses = decode_responses(tokenizer, out.response_ids, out.response_mask)
    proxy = (scorer(ids, mask, out.response_ids, out.response_mask, out.ended, prompts, responses).tolist()
             if scorer is not None else [0.0] * len(prompts))
    logp, ref_logp = response_logprobs(model, reference, ids, mask, out.response_ids, out.response_mask)
    ended = out.ended.tolist()
    result = {"responses": responses, "ended": ended, "gold": gold(prompts, responses, ended), "proxy": proxy,
              "logp": logp, "ref_logp": ref_logp}
    if criteria_scorer is not None:
        table = criteria_scorer.table(ids, mask, out.response_ids, out.response_mask, out.ended, prompts, responses)
        result["gold_by_criterion"] = {c: fn(prompts, responses, ended) for c, fn in GOLD_FNS.items()}
        result["proxy_by_criterion"] = {c: table[:, j].tolist() for j, c in enumerate(CRITERIA)}
    return result


@torch.no_grad()
def response_logprobs(model: Any, reference: Any, ids: torch.Tensor, mask: torch.Tensor, response_ids: torch.Tensor,
                      response_mask: torch.Tensor, batch_size: int = 64) -> tuple[list[float], list[float]]:
    """log pi(y|x) and log pi_start(y|x) of each reply, summed over its tokens (EOS included, padding not).

    Their difference, averaged over the prompts, is the held-out KL(pi || pi_start) of the table: the
    same k1 estimate as PPO's `kl/ref` (sum over response tokens of log pi - log pi_ref, mean over
    episodes), but on every policy's own held-out replies, so that PPO and DPO compare. The start
    policy's is exactly 0 (its reference is itself)."""
    logp, ref_logp = [], []
    for i in range(0, len(ids), batch_size):
        part = slice(i, i + batch_size)
        m = response_mask[part].float()
        own = token_logprobs(model, ids[part], mask[part], response_ids[part]).logp.float()
        logp += (own * m).sum(-1).tolist()
        if reference is model:
            ref_logp += (own * m).sum(-1).tolist()
        else:
            ref = token_logprobs(reference, ids[part], mask[part], response_ids[part]).logp.float()
            ref_logp += (ref * m).sum(-1).tolist()
    return logp, ref_logp


def eval_seeds(cfg: DemoConfig, n: int) -> list[int]:
    """The sampling seed of held-out prompt i: the same for every policy, so they face the same draws."""
    return [seeds.derived_seed(cfg.seed, seeds.EVALUATION, i) for i in range(n)]


def evaluation_rows(prompts: list[str], seeds: list[int], results: dict[str, dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """The per-prompt scores every number of the summary is computed from (evaluation.jsonl)."""
    def reply(r: dict[str, Any], i: int) -> dict[str, Any]:
        row = {"response": r["responses"][i], "ended": bool(r["ended"][i]), "gold": r["gold"][i],
               "proxy": r["proxy"][i], "logp": r["logp"][i], "ref_logp": r["ref_logp"][i],
               "kl": r["logp"][i] - r["ref_logp"][i]}
        for key in ("gold_by_criterion", "proxy_by_criterion"):
            if key in r:
                row[key] = {c: values[i] for c, values in r[key].items()}
        return row

    return [{"prompt": p, "seed": seed, **{name: reply(r, i) for name, r in results.items()}}
            for i, (p, seed) in enumerate(zip(prompts, seeds))]


def win_rate(final: list[float], start: list[float]) -> float:
    """Share of prompts where the final policy's reply beats the start policy's (ties count half)."""
    wins = sum(1.0 if f > s else 0.5 if f == s else 0.0 for f, s in zip(final, start))
    return wins / len(start)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def ppo_settings(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """The PPO settings both demo runs share (each adds its output_dir and coefficients); writes the prompts file."""
    prompts_file = out / "prompts.jsonl"
    write_jsonl(prompts_file, [{"prompt": p} for p in synthetic.all_prompts("train")])
    return dict(policy=cfg.model, reward_model=str(out / RM_FOLDER), prompts=str(prompts_file),
                iterations=cfg.iterations, rollout_batch_size=cfg.rollout_batch_size,
                max_new_tokens=cfg.max_new_tokens, learning_rate=cfg.learning_rate, update_epochs=4, num_minibatches=4,
                seed=cfg.seed, threads=cfg.threads, missing_eos_penalty=1.0,
                sample_every=max(1, cfg.iterations // 6), log_every=1, lr_schedule="constant")


def reward_settings(cfg: DemoConfig, comparisons: Path, out: Path) -> dict[str, Any]:
    """The demo's reward-model training settings (step 3)."""
    return dict(model=cfg.model, train_data=str(comparisons), output_dir=str(out / RM_FOLDER), eval_fraction=0.1,
                epochs=cfg.rm_epochs, learning_rate=cfg.rm_learning_rate, batch_size=32, seed=cfg.seed,
                normalize="mean", threads=cfg.threads)


def load_scorer(folder: Path, policy_tokenizer: Any) -> RewardModelScorer:
    """A saved reward model (one head or one per criterion) as a frozen scorer of the policy's replies."""
    rm_tok = load_tokenizer(folder, padding_side="right")
    return RewardModelScorer(build_reward_model(folder, rm_tok, init_head=False).eval(), rm_tok, policy_tokenizer)


def criteria_record(results: dict[str, dict[str, Any]], accuracy: dict[str, float]) -> CriteriaRecord:
    """Every policy's held-out mean gold and proxy score per criterion (from the evaluation's replies)."""
    weights = {name: w for name, (_, w) in CRITERIA_RUNS.items()}
    folders = {**RUN_FOLDERS, "dpo": DPO_FOLDER, **{name: f for name, (f, _) in CRITERIA_RUNS.items()}}
    return CriteriaRecord(
        criteria=list(CRITERIA), reward_model=CRITERIA_RM_FOLDER, accuracy=accuracy,
        policies=[CriteriaPolicy(policy=name, folder=folders.get(name, ""), weights=weights.get(name, {}),
                                 gold={c: mean(v) for c, v in r["gold_by_criterion"].items()},
                                 proxy={c: mean(v) for c, v in r["proxy_by_criterion"].items()},
                                 kl=mean([a - b for a, b in zip(r["logp"], r["ref_logp"])]))
                  for name, r in results.items()])


def run_demo(cfg: DemoConfig) -> DemoSummary:
    """Run every stage; returns the summary written to demo.json."""
    from rlhfkit.tracking.report import build_report
    from rlhfkit.trainers.dpo import train as train_dpo
    from rlhfkit.trainers.dpo_config import DPOConfig
    from rlhfkit.trainers.output_dir import check_writable, remove_run_folder
    from rlhfkit.trainers.ppo import train as train_ppo
    from rlhfkit.trainers.reward import train as train_reward
    from rlhfkit.trainers.reward_config import RewardConfig
    from rlhfkit.trainers.rl_config import PPOConfig

    if cfg.quick:
        cfg = quick_settings(cfg)
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    if out.is_dir():
        remove_run_folder(out)  # an earlier demo; a folder holding anything else is refused, never deleted
    check_writable(out)
    out.mkdir(parents=True)
    save_config(cfg, out / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    configure_loading(LoadOptions())  # fp32 weights, no remote code (whatever an earlier run in this process set)
    tokenizer = load_tokenizer(cfg.model)
    start_policy = load_causal_lm(cfg.model, tokenizer).eval()

    console.rule("[bold]1-2. sample completions, rank them with the simulated labeler")
    with progress_bar(1, "sample and rank") as bar:
        comparisons = collect_rankings(cfg, out, start_policy, tokenizer)
        bar.update(1)

    console.rule("[bold]3. reward model")
    rm_metrics = train_reward(RewardConfig(**reward_settings(cfg, comparisons, out)))

    ppo = ppo_settings(cfg, out)
    coefs = {"with_guard": (cfg.kl_coef, cfg.ent_coef), "without_guard": (0.0, 0.0)}
    bonus = f" and entropy bonus {cfg.ent_coef}" if cfg.ent_coef else ""
    for name, title in (("with_guard", f"4. PPO with the guard: KL penalty {cfg.kl_coef}{bonus}"),
                        ("without_guard", "5. PPO without the guard: KL coefficient 0, entropy bonus 0 "
                                          "(reward hacking)")):
        console.rule(f"[bold]{title}")
        kl_coef, ent_coef = coefs[name]
        train_ppo(PPOConfig(**ppo, output_dir=str(out / RUN_FOLDERS[name]), kl_coef=kl_coef, ent_coef=ent_coef),
                  gold_fn=gold)

    console.rule(f"[bold]6. DPO on the same rankings: beta {cfg.dpo_beta:g}, learning rate {cfg.dpo_learning_rate:g}, "
                 f"{cfg.dpo_epochs} epoch(s)")
    # The DPO settings were picked on this task (seed 0, full demo, held-out gold judge): the settings
    # tried and their numbers are beside DemoConfig.dpo_beta and in docs/report.md. The reference
    # log-probs are precomputed: one forward per step and no second model in memory.
    dpo_metrics = train_dpo(DPOConfig(
        policy=cfg.model, train_data=str(comparisons), output_dir=str(out / DPO_FOLDER), eval_fraction=0.1,
        beta=cfg.dpo_beta, learning_rate=cfg.dpo_learning_rate, epochs=cfg.dpo_epochs, batch_size=32, seed=cfg.seed,
        threads=cfg.threads, precompute_ref_logprobs=True,
    ))

    console.rule(f"[bold]7. several criteria ({', '.join(CRITERIA)}): a reward model with a head per criterion, "
                 "PPO on helpful alone and on their sum")
    criteria_metrics = train_reward(RewardConfig(**{
        **reward_settings(cfg, out / CRITERIA_FILE, out), "output_dir": str(out / CRITERIA_RM_FOLDER),
        "criterion": list(CRITERIA)}))
    gold_fns = [f"{name}={__name__}:{fn.__name__}" for name, fn in GOLD_FNS.items()]
    for folder, weights in CRITERIA_RUNS.values():
        train_ppo(PPOConfig(**{**ppo, "reward_model": str(out / CRITERIA_RM_FOLDER)}, output_dir=str(out / folder),
                            kl_coef=cfg.kl_coef, ent_coef=cfg.ent_coef, gold_fns=gold_fns,
                            reward_weights=[f"{c}={w:g}" for c, w in weights.items()]))

    console.rule("[bold]8. evaluation on held-out prompts with the gold judges")
    eval_prompts = synthetic.prompts(cfg.eval_prompts, seed=cfg.seed, split="eval")
    scorer = load_scorer(out / RM_FOLDER, tokenizer)
    criteria_scorer = load_scorer(out / CRITERIA_RM_FOLDER, tokenizer)
    folders = {**RUN_FOLDERS, "dpo": DPO_FOLDER, **{name: f for name, (f, _) in CRITERIA_RUNS.items()}}
    with progress_bar(1 + len(folders), "evaluation (policies)") as bar:
        results = {"start": evaluate(start_policy, tokenizer, scorer, eval_prompts, cfg, start_policy,
                                     criteria_scorer)}
        bar.update(1)
        for name, folder in folders.items():
            results[name] = evaluate(load_causal_lm(out / folder, tokenizer).eval(), tokenizer, scorer, eval_prompts,
                                     cfg, start_policy, criteria_scorer)
            bar.update(1)
    write_jsonl(out / EVALUATION_FILE, evaluation_rows(eval_prompts, eval_seeds(cfg, len(eval_prompts)), results))

    def policy(name: str) -> dict[str, float]:
        r = results[name]
        return dict(gold=mean(r["gold"]), proxy=mean(r["proxy"]), distinct_1=distinct_n(r["responses"], 1),
                    distinct_2=distinct_n(r["responses"], 2), repetition=repetition_rate(r["responses"]),
                    kl=mean([a - b for a, b in zip(r["logp"], r["ref_logp"])]))

    def run(name: str) -> RunRecord:
        folder, (kl_coef, ent_coef) = RUN_FOLDERS[name], coefs[name]
        return RunRecord(**policy(name), folder=folder, kl_coef=kl_coef, ent_coef=ent_coef,
                         win_rate=win_rate(results[name]["gold"], results["start"]["gold"]),
                         kl_final=_last(out / folder, KL_KEY))

    summary = DemoSummary(
        reward_model=RewardModelRecord(folder=RM_FOLDER, accuracy=rm_metrics[RM_ACCURACY_KEY]),
        start=PolicyRecord(**policy("start")),
        with_guard=run("with_guard"),
        without_guard=run("without_guard"),
        dpo=DPORecord(**policy("dpo"), folder=DPO_FOLDER, beta=cfg.dpo_beta, learning_rate=cfg.dpo_learning_rate,
                      epochs=cfg.dpo_epochs, win_rate=win_rate(results["dpo"]["gold"], results["start"]["gold"]),
                      accuracy=dpo_metrics[DPO_ACCURACY_KEY]),
        eval_prompts=len(eval_prompts),
        seconds=round(time.perf_counter() - t_start, 1),
        evaluation=EVALUATION_FILE,
        samples=[SampleRecord(prompt=p, **{k: Reply(results[k]["responses"][i], results[k]["gold"][i])
                                           for k in POLICIES})
                 for i, p in enumerate(eval_prompts[:SAMPLES_SHOWN])],
        settings=asdict(cfg),
        criteria=criteria_record(results, {c: criteria_metrics[f"{RM_ACCURACY_KEY}/{c}"] for c in CRITERIA}),
    )
    summary.save(out / SUMMARY_FILE)
    report = build_report(out)
    kl = [r.kl_final for _, r in summary.runs()]
    print_table("rlhfkit demo", [
        ("reward model held-out accuracy", summary.reward_model.accuracy),
        ("DPO held-out implicit-reward accuracy", summary.dpo.accuracy),
        ("gold win rate vs start, guard / no guard / DPO",
         " / ".join(f"{r.win_rate:.3f}" for _, r in summary.trained())),
        ("gold score start / guard / no guard / DPO", _row(summary, "gold")),
        ("proxy (RM) score start / guard / no guard / DPO", _row(summary, "proxy")),
        ("distinct-1 start / guard / no guard / DPO", _row(summary, "distinct_1")),
        ("distinct-2 start / guard / no guard / DPO", _row(summary, "distinct_2")),
        ("repetition start / guard / no guard / DPO", _row(summary, "repetition")),
        ("held-out KL to start, guard / no guard / DPO",
         " / ".join(f"{r.kl:.3f}" for _, r in summary.trained())),
        ("training KL at the end, guard / no guard", " / ".join("n/a" if x is None else f"{x:.3f}" for x in kl)),
        *[(f"gold {c} score start / guard / no guard / DPO / PPO on helpful alone / on helpful + concise",
           " / ".join(f"{p.gold[c]:.3f}" for p in summary.criteria.policies)) for c in CRITERIA],
        ("minutes", summary.seconds / 60),
    ])
    console.print(f"report: {report}\nplots: {report.parent / 'plots'}")
    return summary


def _row(summary: DemoSummary, metric: str) -> str:
    return " / ".join(f"{getattr(summary.policy(k), metric):.3f}" for k in POLICIES)


def _last(run_dir: Path, key: str) -> float | None:
    """The last logged value of `key` in the run's metrics.jsonl (None if never logged)."""
    from rlhfkit.tracking.metrics import read_metrics

    values = [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if r.get(key) is not None]
    return float(values[-1]) if values else None
