"""`rlhfkit demo --quick`: the whole pipeline on the embedded model, shortened; twice, to check that
the same seed gives the same numbers.

The summary's numbers are recomputed here from the raw files the stages wrote (the per-prompt
evaluation, the runs' metrics.jsonl, config.yaml and eval.json, the reward model's eval.json, the
feedback database read with sqlite3, the saved policies for the held-out log-probs), so that a
wrong aggregation in the demo fails a test.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoConfig

from rlhfkit.data import synthetic
from rlhfkit.data.tokenize import encode_prompt, encode_response
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import token_logprobs
from rlhfkit.tracking.summary import DPO_ACCURACY_KEY, KL_KEY, RM_ACCURACY_KEY

POLICIES = ("start", "with_guard", "without_guard", "dpo")
RUNS = ("with_guard", "without_guard")  # PPO
TRAINED = ("with_guard", "without_guard", "dpo")


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """Two quick demos with the same seed, at the same time, one thread each (one per core)."""
    base = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "rlhfkit.cli", "demo", "--quick", "--threads", "1", "--output-dir"]
    procs = [subprocess.Popen([*command, str(base / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("a", "b")]
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]
        assert "Traceback" not in output
    return base / "a", json.loads((base / "a" / "demo.json").read_text()), base / "b"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_every_stage_left_its_output(demo_runs) -> None:
    out, summary, _ = demo_runs
    for path in ("config.yaml", "demo.json", "evaluation.jsonl", "feedback.db", "comparisons.jsonl",
                 "reward_model/model.safetensors", "ppo/model.safetensors", "ppo_no_guard/model.safetensors",
                 "dpo/model.safetensors", "dpo/metrics.jsonl", "dpo/eval.json", "report.html", "plots/reward.png",
                 "plots/kl.png", "plots/entropy.png", "plots/diversity.png", "plots/reward_model.png",
                 "plots/dpo.png", "plots/criteria.png", "comparisons_by_criterion.jsonl",
                 "reward_model_criteria/model.safetensors", "ppo_helpful/model.safetensors",
                 "ppo_helpful_concise/model.safetensors"):
        assert (out / path).is_file(), path
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the reward check before PPO (its probes included) is on the report, as the guarded run wrote it
    check = json.loads((out / "ppo" / "reward_check.json").read_text())
    assert sorted(check["probes"]) == ["repeated", "shuffled", "swapped"]
    warnings = ", ".join(f["rule"] for f in check["findings"]) or "none"
    html = (out / "report.html").read_text()
    assert "Reward check before PPO" in html and warnings in html
    # Every config.yaml names the command that wrote it: what the report reads.
    assert read_yaml(out / "config.yaml")["stage"] == "demo"
    assert read_yaml(out / summary["reward_model"]["folder"] / "config.yaml")["stage"] == "reward"
    for name in RUNS:
        assert read_yaml(out / summary[name]["folder"] / "config.yaml")["stage"] == "ppo"
    assert read_yaml(out / summary["dpo"]["folder"] / "config.yaml")["stage"] == "dpo"


def stored_rankings(db: Path, project: str, criterion: str = "helpful") -> dict[str, dict[str, list[tuple[str, int]]]]:
    """prompt -> annotator -> [(completion text, rank)] by one criterion, in the completions' stored
    order, straight from the feedback database's tables."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """SELECT p.text, a.name, c.text, e.rank
               FROM rankings r
               JOIN prompts p ON p.id = r.prompt_id
               JOIN projects pr ON pr.id = p.project_id
               JOIN annotators a ON a.id = r.annotator_id
               JOIN ranking_entries e ON e.ranking_id = r.id
               JOIN criteria cr ON cr.id = e.criterion_id
               JOIN completions c ON c.id = e.completion_id
               WHERE pr.name = ? AND cr.name = ? AND NOT r.skip AND NOT r.unsafe
               ORDER BY p.id, c.position""",
            (project, criterion),
        ).fetchall()
        n_rankings = con.execute(
            "SELECT COUNT(*) FROM rankings r JOIN prompts p ON p.id = r.prompt_id "
            "JOIN projects pr ON pr.id = p.project_id WHERE pr.name = ?", (project,)).fetchone()[0]
    finally:
        con.close()
    out: dict[str, dict[str, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
    for prompt, annotator, text, rank in rows:
        out[prompt][annotator].append((text, rank))
    assert sum(len(v) for v in out.values()) == n_rankings  # none skipped or flagged
    return out


def stored_pairs(out: Path, settings: dict[str, Any], criterion: str) -> set[tuple[str, str, str]]:
    """(prompt, better, worse) of every pair the labeler's stored rankings by `criterion` order, each
    ranking checked against the simulated labeler's own answer for that criterion."""
    from rlhfkit.data.labeler import SimulatedLabeler

    labeler = SimulatedLabeler(noise=settings["labeler_noise"], seed=settings["seed"], ties=True,
                               resolution=settings["labeler_resolution"], criterion=criterion)
    stored = stored_rankings(out / "feedback.db", "demo", criterion)
    assert len(stored) == settings["label_prompts"]  # one ranking of every labelled prompt
    expected: set[tuple[str, str, str]] = set()
    for prompt, by_annotator in stored.items():
        assert len(by_annotator) == 1  # one simulated labeler
        (entries,) = by_annotator.values()
        assert len(entries) == settings["k"]
        assert [rank for _, rank in entries] == labeler.rank(prompt, [text for text, _ in entries])
        best: dict[str, int] = {}  # a text sampled twice keeps its best rank; empty texts teach nothing
        for text, rank in entries:
            if text.strip():
                best[text] = min(rank, best.get(text, rank))
        expected |= {(prompt, a, b) for a in best for b in best if best[a] < best[b]}
    assert expected
    return expected


def trained_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    pairs: list[tuple[str, str, str]] = []
    for row in rows:
        texts = row["completions"]
        ranks = row.get("ranks", list(range(len(texts))))  # best first; "ranks" only when there are ties
        pairs += [(row["prompt"], texts[i], texts[j]) for i in range(len(texts)) for j in range(len(texts))
                  if ranks[i] < ranks[j]]
    assert len(pairs) == len(set(pairs))
    return pairs


def test_rankings_went_through_the_feedback_store(demo_runs) -> None:
    out, summary, _ = demo_runs
    settings = summary["settings"]
    helpful = stored_pairs(out, settings, "helpful")
    concise = stored_pairs(out, settings, "concise")
    assert helpful != concise  # two judges, two orders

    # The reward model was trained on comparisons.jsonl: every pair it holds, and no other.
    rm_config = read_yaml(out / summary["reward_model"]["folder"] / "config.yaml")
    assert Path(rm_config["train_data"]).resolve() == (out / "comparisons.jsonl").resolve()
    rows = read_jsonl(out / "comparisons.jsonl")
    assert {r["criterion"] for r in rows} == {"helpful"}
    assert set(trained_pairs(rows)) == helpful

    # The reward model with a head per criterion: both criteria's pairs, each tagged with its own.
    criteria = summary["criteria"]
    assert criteria["criteria"] == ["helpful", "concise"]
    crit_config = read_yaml(out / criteria["reward_model"] / "config.yaml")
    assert crit_config["criterion"] == ["helpful", "concise"]
    rows = read_jsonl(Path(crit_config["train_data"]))
    for name, expected in (("helpful", helpful), ("concise", concise)):
        assert set(trained_pairs([r for r in rows if r["criterion"] == name])) == expected
    hf_config = AutoConfig.from_pretrained(out / criteria["reward_model"])  # as plain transformers reads it
    assert hf_config.num_labels == 2 and hf_config.rlhfkit_criteria == ["helpful", "concise"]
    crit_eval = json.loads((out / criteria["reward_model"] / "eval.json").read_text())
    for name in ("helpful", "concise"):
        assert criteria["accuracy"][name] == pytest.approx(crit_eval[f"{RM_ACCURACY_KEY}/{name}"])


def test_criteria_numbers_come_from_the_runs(demo_runs) -> None:
    """Every policy's per-criterion gold score recomputed from its saved replies with the task's judges;
    the criteria runs' weights and reward model as their config.yaml holds them."""
    out, summary, _ = demo_runs
    rows = read_jsonl(out / summary["evaluation"])
    judges = {"helpful": synthetic.gold_score, "concise": synthetic.concise_score}
    policies = summary["criteria"]["policies"]
    assert [p["policy"] for p in policies] == [*POLICIES, "helpful_alone", "helpful_concise"]
    for p in policies:
        replies = [r[p["policy"]] for r in rows]
        for r, x in zip(rows, replies):
            for name, judge in judges.items():
                assert x["gold_by_criterion"][name] == pytest.approx(
                    judge(r["prompt"], x["response"], finished=x["ended"]))
        for name in judges:
            assert p["gold"][name] == pytest.approx(
                sum(x["gold_by_criterion"][name] for x in replies) / len(rows), abs=1e-9)
            assert p["proxy"][name] == pytest.approx(
                sum(x["proxy_by_criterion"][name] for x in replies) / len(rows), abs=1e-6)
        assert p["kl"] == pytest.approx(sum(x["kl"] for x in replies) / len(rows), abs=1e-9)
        if p["weights"]:
            config = read_yaml(out / p["folder"] / "config.yaml")
            assert config["reward_weights"] == [f"{c}={w:g}" for c, w in p["weights"].items()]
            assert Path(config["reward_model"]).resolve() == (out / summary["criteria"]["reward_model"]).resolve()
            assert config["kl_coef"] == summary["settings"]["kl_coef"]
            logged = read_jsonl(out / p["folder"] / "metrics.jsonl")
            assert all("gold/helpful" in m and "gold/concise" in m for m in logged if "reward/mean" in m)
    assert {p["policy"]: p["weights"] for p in policies if p["weights"]} == {
        "helpful_alone": {"helpful": 1.0}, "helpful_concise": {"helpful": 1.0, "concise": 1.0}}
    html = (out / "report.html").read_text()
    assert "Several criteria: the trade-off" in html


# -- recomputing the summary from the per-prompt evaluation --------------------------------------
def words_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    grams = [g for t in texts for g in words_ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(texts: list[str]) -> float:
    rates = [1 - len(set(t.split())) / len(t.split()) for t in texts if t.split()]
    return sum(rates) / len(rates) if rates else 0.0


def report_facts(html: str) -> dict[str, str]:
    return dict(re.findall(r'<span class="label">(.*?)</span><span class="value">(.*?)</span>', html))


def percent(text: str) -> float:
    assert text.endswith("%"), text
    return float(text[:-1]) / 100


def test_summary_numbers_come_from_the_runs(demo_runs) -> None:
    out, summary, _ = demo_runs
    settings = summary["settings"]
    rows = read_jsonl(out / summary["evaluation"])
    assert len(rows) == summary["eval_prompts"] == settings["eval_prompts"]
    train_prompts = set(synthetic.all_prompts("train"))
    assert not any(r["prompt"] in train_prompts for r in rows)  # held out from every stage

    for name in POLICIES:
        replies = [r[name] for r in rows]
        texts = [x["response"] for x in replies]
        # The gold judge's score of each saved reply, recomputed from its text.
        for r, x in zip(rows, replies):
            assert x["gold"] == pytest.approx(synthetic.gold_score(r["prompt"], x["response"], finished=x["ended"]))
        record = summary[name]
        assert record["gold"] == pytest.approx(sum(x["gold"] for x in replies) / len(rows), abs=1e-9)
        assert record["proxy"] == pytest.approx(sum(x["proxy"] for x in replies) / len(rows), abs=1e-6)
        assert record["distinct_1"] == pytest.approx(distinct(texts, 1))
        assert record["distinct_2"] == pytest.approx(distinct(texts, 2))
        assert record["repetition"] == pytest.approx(repetition(texts))

    for name in RUNS:
        record = summary[name]
        wins = sum((r[name]["gold"] > r["start"]["gold"]) + 0.5 * (r[name]["gold"] == r["start"]["gold"])
                   for r in rows)
        assert record["win_rate"] == pytest.approx(wins / len(rows), abs=1e-12), name
        # The final KL is the last line of the run's metrics.jsonl.
        last = json.loads((out / record["folder"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["kl_final"] == pytest.approx(last[KL_KEY]), name
        config = read_yaml(out / record["folder"] / "config.yaml")
        assert (config["kl_coef"], config["ent_coef"]) == (record["kl_coef"], record["ent_coef"]), name
        assert Path(config["reward_model"]).resolve() == (out / summary["reward_model"]["folder"]).resolve()
    assert summary["with_guard"]["kl_coef"] == settings["kl_coef"] > 0
    assert (summary["without_guard"]["kl_coef"], summary["without_guard"]["ent_coef"]) == (0.0, 0.0)

    # DPO: its win rate like the PPO runs', its settings as its config.yaml holds them (those of the
    # demo), trained on the same comparisons, its accuracy from its eval.json.
    dpo = summary["dpo"]
    wins = sum((r["dpo"]["gold"] > r["start"]["gold"]) + 0.5 * (r["dpo"]["gold"] == r["start"]["gold"]) for r in rows)
    assert dpo["win_rate"] == pytest.approx(wins / len(rows), abs=1e-12)
    dpo_config = read_yaml(out / dpo["folder"] / "config.yaml")
    assert (dpo_config["beta"], dpo_config["learning_rate"], dpo_config["epochs"]) == \
        (dpo["beta"], dpo["learning_rate"], dpo["epochs"]) == \
        (settings["dpo_beta"], settings["dpo_learning_rate"], settings["dpo_epochs"])
    assert Path(dpo_config["train_data"]).resolve() == (out / "comparisons.jsonl").resolve()
    assert dpo_config["policy"] == settings["model"]  # DPO starts from the start policy, as PPO does
    dpo_eval = json.loads((out / dpo["folder"] / "eval.json").read_text())
    assert dpo["accuracy"] == pytest.approx(dpo_eval[DPO_ACCURACY_KEY])

    # The held-out KL of every policy: per prompt, log pi - log pi_start summed over its own reply's
    # tokens (0 for the start policy), mean over the prompts.
    for name in POLICIES:
        replies = [r[name] for r in rows]
        for x in replies:
            assert x["kl"] == pytest.approx(x["logp"] - x["ref_logp"], abs=1e-9)
            assert x["logp"] <= 0 and x["ref_logp"] <= 0
        assert summary[name]["kl"] == pytest.approx(sum(x["kl"] for x in replies) / len(rows), abs=1e-9), name
    assert all(r["start"]["kl"] == 0.0 for r in rows)

    rm_eval = json.loads((out / summary["reward_model"]["folder"] / "eval.json").read_text())
    assert summary["reward_model"]["accuracy"] == pytest.approx(rm_eval[RM_ACCURACY_KEY])

    # The sample table is the first held-out prompts' replies, as evaluated.
    assert summary["samples"]
    for sample, row in zip(summary["samples"], rows):
        assert sample["prompt"] == row["prompt"]
        for name in POLICIES:
            assert sample[name] == {"text": row[name]["response"], "gold": row[name]["gold"]}

    # The report shows these numbers (to its display precision of 0.1 percentage point).
    facts = report_facts((out / "report.html").read_text())
    assert percent(facts["Reward model held-out accuracy"]) == pytest.approx(rm_eval[RM_ACCURACY_KEY], abs=5e-4)
    for name, label in (("with_guard", "with guard"), ("without_guard", "without guard"), ("dpo", "DPO")):
        assert percent(facts[f"Gold win rate, {label}"]) == pytest.approx(summary[name]["win_rate"], abs=5e-4)
    assert percent(facts["DPO held-out implicit-reward accuracy"]) == pytest.approx(dpo["accuracy"], abs=5e-4)


@torch.no_grad()
def test_held_out_logprobs_come_from_the_saved_policies(demo_runs) -> None:
    """logp / ref_logp of evaluation.jsonl recomputed from the saved policies: each reply re-encoded
    (the demo's tokenizer round-trips these texts) and scored alone by the policy and the start policy."""
    out, summary, _ = demo_runs
    rows = read_jsonl(out / summary["evaluation"])[:4]
    tokenizer = load_tokenizer(summary["settings"]["model"])
    start = load_causal_lm(summary["settings"]["model"], tokenizer).eval()
    checked = 0
    for name in TRAINED:
        policy = load_causal_lm(out / summary[name]["folder"], tokenizer).eval()
        for row in rows:
            reply = row[name]
            response = encode_response(tokenizer, reply["response"], add_eos=reply["ended"])
            if not response or tokenizer.decode(response, skip_special_tokens=True) != reply["response"]:
                continue
            ids = torch.tensor([encode_prompt(tokenizer, row["prompt"])])
            response_ids = torch.tensor([response])
            logp = token_logprobs(policy, ids, torch.ones_like(ids), response_ids).logp.sum().item()
            ref_logp = token_logprobs(start, ids, torch.ones_like(ids), response_ids).logp.sum().item()
            assert reply["logp"] == pytest.approx(logp, abs=1e-3), name
            assert reply["ref_logp"] == pytest.approx(ref_logp, abs=1e-3), name
            checked += 1
    assert checked >= len(rows)


def test_the_same_seed_gives_the_same_numbers(demo_runs) -> None:
    first_dir, first, second_dir = demo_runs
    second = json.loads((second_dir / "demo.json").read_text())
    for key in ("reward_model", *POLICIES, "eval_prompts", "samples"):
        assert first[key] == second[key], key
    assert read_jsonl(first_dir / "evaluation.jsonl") == read_jsonl(second_dir / "evaluation.jsonl")
