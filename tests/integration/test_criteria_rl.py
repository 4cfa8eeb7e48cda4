"""Several criteria in the policy stages on a tiny GPT-2: a two-head reward model (and two one-head models)
combined by --reward-weights and --reward-gate in PPO and GRPO, per-criterion metrics, gold judges per
criterion, the report's criteria plot, and the one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from toy_data import NEUTRAL, PROMPTS

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import build_reward_model
from rlhfkit.tracking import plots
from rlhfkit.tracking.report import build_report
from rlhfkit.trainers.checkpoint import STATE
from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reinforce import train as train_reinforce
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig

CRITERIA = ("helpful", "concise")


def words(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge per criterion for the tests: the response's word count."""
    return [float(len(r.split())) for r in responses]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"}) + "\n"
                            for _ in range(24)))
    return path


@pytest.fixture(scope="module")
def reward_models(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """A two-head model (helpful, concise) and two one-head models over the tiny trunk, heads drawn at random
    (their scores differ per criterion, which is all these tests need), saved like rlhfkit reward saves them."""
    out = tmp_path_factory.mktemp("rms")
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    folders = {}
    torch.manual_seed(0)
    for name, criteria in (("both", CRITERIA), ("both2", CRITERIA), ("helpful", ("helpful",)),
                           ("concise", ("concise",))):
        model = build_reward_model(tiny_model_dir, tok, criteria=criteria)
        model.save_pretrained(out / name)
        tok.save_pretrained(out / name)
        folders[name] = str(out / name)
    return folders


def ppo(tiny_model_dir, prompts_file, out, **kw) -> PPOConfig:
    base = dict(policy=str(tiny_model_dir), prompts=str(prompts_file), output_dir=str(out), rollout_batch_size=8,
                max_new_tokens=6, learning_rate=3e-3, sample_every=0, seed=0, update_epochs=1, num_minibatches=2,
                mixed_precision="no", iterations=3)
    return PPOConfig(**{**base, **kw})


def test_ppo_with_a_two_head_model_logs_each_criterion_and_their_weighted_sum(
        tiny_model_dir, prompts_file, reward_models, tmp_path):
    out = tmp_path / "run"
    w = {"helpful": 1.0, "concise": 2.0}
    cfg = ppo(tiny_model_dir, prompts_file, out, reward_model=reward_models["both"],
              reward_weights=["helpful=1", "concise=2"], gold_fns=["helpful=toy_rewards:count_a"],
              eval_prompts=str(prompts_file), eval_batch_size=8)
    history = train_ppo(cfg, gold_fns={"concise": words})
    state = torch.load(out / "checkpoint-3" / STATE, weights_only=True)["extra"]["scorer"]["criteria"]
    mu, sigma = dict(zip(CRITERIA, state["mean"])), dict(zip(CRITERIA, state["std"]))
    for row in history:
        for c in CRITERIA:
            assert {f"reward/{c}", f"reward/{c}_z", f"gold/{c}"} <= set(row)
            # the normalisation is frozen: each iteration's z mean is (raw mean - mu) / sigma
            assert row[f"reward/{c}_z"] == pytest.approx((row[f"reward/{c}"] - mu[c]) / sigma[c], abs=1e-4)
        # the reward is the weighted sum of the normalised criteria (the mean of a sum is the sum of the means)
        combined = sum(w[c] * row[f"reward/{c}_z"] for c in CRITERIA)
        assert row["reward/combined"] == pytest.approx(combined, abs=1e-5)
        assert row["reward/mean"] == pytest.approx(row["reward/combined"], abs=1e-5)  # no transform is on
    first = history[0]
    for c in CRITERIA:  # the reference is the first batch: its raw mean is mu, its z mean 0
        assert first[f"reward/{c}"] == pytest.approx(mu[c], abs=1e-5)
        assert first[f"reward/{c}_z"] == pytest.approx(0.0, abs=1e-5)
    assert sigma["helpful"] != sigma["concise"]  # two heads, two scales
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 3]  # the start (after the first rollout) and the end
    for r in evals:
        assert {"eval/reward/helpful", "eval/reward/concise", "eval/gold/helpful", "eval/gold/concise"} <= set(r)
    # the report: one chart with a line per criterion, proxy and gold, from the run's own rows
    lines = plots.criteria_runs(rows)
    assert list(lines) == list(CRITERIA)
    for c in CRITERIA:
        train_rows = [r for r in rows if f"reward/{c}_z" in r]
        assert [p["proxy"] for p in lines[c] if p["proxy"] is not None] == [r[f"reward/{c}_z"] for r in train_rows]
        assert [p["gold"] for p in lines[c] if p["gold"] is not None] == [r[f"gold/{c}"] for r in train_rows]
    html = build_report(out).read_text()
    assert (out / "plots" / "criteria.png").is_file() and "One line per criterion" in html
    assert "Proxy, concise (normalised z)" in html and "Gold judge, helpful" in html


def test_grpo_with_two_one_head_models_and_a_zero_weight(tiny_model_dir, prompts_file, reward_models, tmp_path):
    cfg = ReinforceConfig(policy=str(tiny_model_dir), prompts=str(prompts_file), output_dir=str(tmp_path / "grpo"),
                          rollout_batch_size=8, samples_per_prompt=4, baseline="grpo", kl_in="loss",
                          max_new_tokens=6, learning_rate=3e-3, sample_every=0, seed=0, mixed_precision="no",
                          iterations=2, criterion_models=[f"{c}={reward_models[c]}" for c in CRITERIA],
                          reward_weights=["helpful=1"])
    history = train_reinforce(cfg)
    for row in history:
        assert {"reward/helpful", "reward/concise", "reward/helpful_z", "reward/concise_z"} <= set(row)
        assert row["reward/combined"] == pytest.approx(row["reward/helpful_z"], abs=1e-5)  # concise has weight 0
    assert history[1]["reward/concise"] != history[0]["reward/concise"]  # still scored and logged


def test_the_gate_takes_the_gate_criterion_where_it_is_low(tiny_model_dir, prompts_file, reward_models, tmp_path):
    # threshold far above every z: every episode is gated, so the reward is the concise z alone
    history = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "gate", iterations=2,
                            reward_model=reward_models["both"], reward_weights=["helpful=1"],
                            reward_gate="concise=1000"))
    for row in history:
        assert row["reward/combined"] == pytest.approx(row["reward/concise_z"], abs=1e-5)
        assert row["reward/gated"] == pytest.approx(1.0)  # the share of gated episodes


def test_the_ensemble_and_its_conservative_reward_act_on_the_combined_reward(
        tiny_model_dir, prompts_file, reward_models, tmp_path):
    k = 0.5
    history = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "ens", iterations=2,
                            reward_model=reward_models["both"], reward_weights=["helpful=1", "concise=1"],
                            reward_ensemble=[reward_models["both2"]], conservative_k=k))
    for row in history:
        assert row["reward/ensemble_spread"] > 0
        # reward/raw is the primary's combined reward; the trained reward is mean minus k spreads
        assert row["reward/raw"] == pytest.approx(row["reward/combined"], abs=1e-5)
        assert row["reward/mean"] == pytest.approx(row["reward/ensemble_mean"] - k * row["reward/ensemble_spread"],
                                                   abs=1e-5)
    with pytest.raises(ConfigError, match="an ensemble member must score the same criteria"):
        train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "ens_bad", reward_model=reward_models["both"],
                      reward_weights=["helpful=1"], reward_ensemble=[reward_models["helpful"]]))


def test_one_head_reward_model_is_unchanged(tiny_model_dir, prompts_file, reward_models, tmp_path):
    """--reward-model DIR with one head and no weights: the plain score, no criteria metrics, the same keys."""
    history = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "one", iterations=1,
                            reward_model=reward_models["helpful"]))
    keys = set(history[0])
    assert {k for k in keys if k.startswith(("reward/", "gold/"))} == {"reward/mean", "reward/std", "reward/total",
                                                                        "reward/raw"}
    assert history[0]["reward/mean"] == pytest.approx(history[0]["reward/raw"], abs=1e-6)
    weighted = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "one_w", iterations=1,
                             reward_model=reward_models["helpful"], reward_weights=["helpful=1"]))
    # the same samples (same seed), now normalised on themselves: raw mean as before, z mean 0
    assert weighted[0]["reward/helpful"] == pytest.approx(history[0]["reward/raw"], abs=1e-5)
    assert weighted[0]["reward/mean"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(("settings", "message"), [
    ({"reward_weights": ["helpful=1", "harmless=2"]},
     "setting 'reward_weights': no criterion 'harmless'; the reward models score helpful, concise"),
    ({}, "setting 'reward_weights': the reward models score 2 criteria (helpful, concise); say how to combine them"),
    ({"reward_weights": ["helpful=1"], "reward_gate": "safety=0"},
     "setting 'reward_gate': no criterion 'safety'; the reward models score helpful, concise"),
])
def test_bad_criteria_settings_are_one_line_errors(tiny_model_dir, prompts_file, reward_models, tmp_path, settings,
                                                   message):
    with pytest.raises(ConfigError) as e:
        train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "bad", reward_model=reward_models["both"], **settings))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # nothing ran


@pytest.mark.parametrize(("settings", "message"), [
    ({"criterion_models": ["helpful=a", "concise=b"]},
     "setting 'reward_weights': --criterion-models scores helpful, concise; say how to combine them"),
    ({"criterion_models": ["helpful"], "reward_weights": ["helpful=1"]},
     "setting 'criterion_models': expected criterion=value items"),
    ({"reward_model": "x", "reward_weights": ["helpful=one"]}, "setting 'reward_weights': helpful='one' is not a"),
    ({"reward_fn": "m:f", "reward_weights": ["helpful=1"]}, "setting 'reward_weights': combines the criteria"),
    ({"reward_model": "x", "reward_gate": "helpful=0"}, "setting 'reward_gate': needs --reward-weights"),
    ({"reward_model": "x", "gold_fns": ["mean=m:f"]}, "setting 'gold_fns': a criterion may not be named 'mean'"),
    ({"reward_model": "x", "reward_weights": ["a=1"], "reward_gate_column": "risky"},
     "setting 'reward_gate_column': marks prompts for the gate"),
])
def test_malformed_criteria_settings_fail_in_the_config(settings, message):
    with pytest.raises(ConfigError) as e:
        PPOConfig(prompts="p.jsonl", **settings)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_resumed_run_keeps_the_frozen_normalisation(tiny_model_dir, prompts_file, reward_models, tmp_path):
    """The reference statistics are part of the checkpoint: 2 iterations + resume to 3 repeat the 3-iteration
    run's criteria metrics (a resumed scorer that re-froze mu and sigma on iteration 2's batch would give z = 0)."""
    settings = dict(reward_model=reward_models["both"], reward_weights=["helpful=1", "concise=-1"],
                    lr_schedule="constant")  # the same schedule whatever the iterations
    full = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "full", iterations=3, **settings))
    train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "part", iterations=2, **settings))
    resumed = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "part", iterations=3, resume=True, **settings))
    keys = [f"reward/{c}{z}" for c in CRITERIA for z in ("", "_z")] + ["reward/combined"]
    assert abs(full[-1]["reward/helpful_z"]) > 1e-3  # the check below could fail
    assert [resumed[-1][k] for k in keys] == pytest.approx([full[-1][k] for k in keys], abs=1e-6)


def test_tagged_prompts_are_always_gated(tiny_model_dir, prompts_file, reward_models, tmp_path):
    """With --reward-gate-column, a prompt whose column is true takes the gate criterion's z whatever it is:
    every prompt tagged and a threshold below every z, so the reward is the concise z everywhere."""
    tagged = tmp_path / "tagged.jsonl"
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    tagged.write_text("".join(json.dumps({**r, "risky": True}) + "\n" for r in rows))
    history = train_ppo(ppo(tiny_model_dir, tagged, tmp_path / "tag", iterations=2, reward_model=reward_models["both"],
                            reward_weights=["helpful=1"], reward_gate="concise=-1000", reward_gate_column="risky"))
    for row in history:
        assert row["reward/gated"] == pytest.approx(1.0)
        assert row["reward/combined"] == pytest.approx(row["reward/concise_z"], abs=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "describe the road", "risky": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, field 'risky': expected true or false, got 'yes'"):
        train_ppo(ppo(tiny_model_dir, bad, tmp_path / "tag_bad", reward_model=reward_models["both"],
                      reward_weights=["helpful=1"], reward_gate="concise=0", reward_gate_column="risky"))
