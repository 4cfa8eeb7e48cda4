"""The reward-hacking guards on a tiny GPT-2: an ensemble of real reward models, the conservative reward,
alarms that stop a run, and `rlhfkit diagnose` on the result."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from toy_data import NEUTRAL, PROMPTS
from toy_rewards import count_a, letters

from rlhfkit.tracking.diagnose import diagnose
from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig
from rlhfkit.trainers.rl_config import PPOConfig


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"}) + "\n"
                            for _ in range(32)))
    return path


@pytest.fixture(scope="module")
def members(tiny_model_dir, rule_pairs_file, tmp_path_factory) -> list[str]:
    """Two reward models trained on the same comparisons with different seeds (a short epoch each)."""
    out = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        train_reward(RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file),
                                  output_dir=str(out / f"rm{seed}"), learning_rate=2e-3, batch_size=32, max_length=96,
                                  seed=seed, eval_fraction=0.1))
    return [str(out / "rm0"), str(out / "rm1")]


def ppo(tiny_model_dir, prompts_file, out, **kw) -> PPOConfig:
    base = dict(policy=str(tiny_model_dir), prompts=str(prompts_file), output_dir=str(out), rollout_batch_size=16,
                max_new_tokens=8, learning_rate=3e-3, sample_every=0, seed=0, update_epochs=1, num_minibatches=2,
                mixed_precision="no")
    return PPOConfig(**{**base, **kw})


def test_conservative_reward_is_the_ensemble_mean_minus_k_spreads(tiny_model_dir, prompts_file, members, tmp_path):
    k = 0.5
    history = train_ppo(ppo(tiny_model_dir, prompts_file, tmp_path / "run", iterations=2, reward_model=members[0],
                            reward_ensemble=members[1:], conservative_k=k))
    for row in history:
        assert row["reward/ensemble_spread"] > 0  # two differently seeded models never agree exactly
        # reward/mean is the mean over episodes of (mean_i - k s_i): the mean of the means minus k times the mean spread
        assert row["reward/mean"] == pytest.approx(row["reward/ensemble_mean"] - k * row["reward/ensemble_spread"],
                                                   abs=1e-5)
    check = json.loads((tmp_path / "run" / "reward_check.json").read_text())
    assert check["samples"] == 16 and 0 <= check["heldout_accuracy"] <= 1
    assert -1 <= check["length_correlation"] <= 1
    assert sorted(check["probes"]) == ["repeated", "shuffled", "swapped"]  # a real reward model's probes
    assert all(math.isfinite(e["shift"]) and 0 <= e["raised"] <= 1 for e in check["probes"].values())


def test_an_alarm_stops_the_run_and_diagnose_explains_it(tiny_model_dir, prompts_file, tmp_path):
    # count_a at a large learning rate with no KL guard: the policy piles on 'a' tokens and drifts fast
    out = tmp_path / "run"
    history = train_ppo(ppo(tiny_model_dir, prompts_file, out, iterations=30, kl_coef=0.0, learning_rate=1e-2,
                            alarm_baseline=2, on_alarm="stop"), reward_fn=count_a)
    alarms = [json.loads(line) for line in (out / "alarms.jsonl").read_text().splitlines()]
    assert alarms, "no alarm fired"
    first = min(a["step"] for a in alarms)
    assert len(history) == first + 1 < 30  # the run ended at the iteration of the first alarm
    assert all(a["step"] == first for a in alarms)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("alarm/") for k in rows[-1])
    assert (out / "model.safetensors").exists() or (out / "config.json").exists()  # the stopped policy was saved
    lines = diagnose(out)
    assert any(f"alarm at iteration {first} ({alarms[0]['detector']}, alarms.jsonl)" in line for line in lines)


def test_reward_probes_warn_before_the_first_update(tiny_model_dir, prompts_file, tmp_path):
    """A reward that counts letters ignores word order and the prompt (shuffled or swapped replies keep the
    batch's letters): reward_check.json and diagnose say so."""
    out = tmp_path / "run"
    train_ppo(ppo(tiny_model_dir, prompts_file, out, iterations=1), reward_fn=letters)
    check = json.loads((out / "reward_check.json").read_text())
    assert check["score_std"] > 0.1  # the replies differ in length, so the shifts are measured
    assert check["probes"]["shuffled"] == {"shift": 0.0, "raised": 0.0}
    assert check["probes"]["swapped"]["shift"] == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(check["probes"]["repeated"]["shift"]) and 0 <= check["probes"]["repeated"]["raised"] <= 1
    text = "\n".join(diagnose(out))
    for rule in ("reward ignores word order", "reward ignores the prompt"):
        assert rule in text and rule in [f["rule"] for f in check["findings"]]
    assert "reward change for shuffled +0.00, repeated " in text


def test_on_alarm_checkpoint_saves_that_iteration_and_goes_on(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    history = train_ppo(ppo(tiny_model_dir, prompts_file, out, iterations=30, kl_coef=0.0, learning_rate=1e-2,
                            alarm_baseline=2, on_alarm="checkpoint", keep_checkpoints=5), reward_fn=count_a)
    first = min(json.loads(line)["step"] for line in (out / "alarms.jsonl").read_text().splitlines())
    assert len(history) == 30  # the run went on
    assert (out / f"checkpoint-{first + 1}").is_dir()  # checkpoint-N holds N iterations done
    assert (out / "checkpoint-30").is_dir()
