"""PPO and REINFORCE on a tiny GPT-2 with a reward of known form (count of the letter 'a')."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from toy_rewards import count_a

from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reinforce import train as train_reinforce
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig


@pytest.fixture(scope="module")
def prompts_file(toy_prompts_file: Path) -> Path:
    return toy_prompts_file


def common(tiny_model_dir: Path, prompts_file: Path, out: Path, **kw) -> dict:
    base = dict(policy=str(tiny_model_dir), prompts=str(prompts_file), output_dir=str(out), rollout_batch_size=32,
                max_new_tokens=12, learning_rate=3e-3, sample_every=0, seed=0,
                mixed_precision="no")  # these tests check fp32 arithmetic, also where bf16 is native
    base.update(kw)
    return base


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def ppo_history(tiny_model_dir, prompts_file, tmp_path_factory) -> list[dict]:
    cfg = PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path_factory.mktemp("ppo") / "run", iterations=16,
                             num_minibatches=2, update_epochs=2, kl_coef=0.0))
    return train_ppo(cfg, reward_fn=count_a)


def test_ppo_raises_the_reward(ppo_history: list[dict]) -> None:
    start, end = mean(ppo_history[:2], "reward/mean"), mean(ppo_history[-2:], "reward/mean")
    # a random tiny model writes ~0.1 'a' in 12 tokens; PPO must make it clearly more frequent
    assert end > start + 1.0, (start, end)


def test_first_minibatch_is_exactly_on_policy(ppo_history: list[dict]) -> None:
    # Old log-probs come from the same forward in the same row groups, so ratio == 1 bit for bit
    # (docs/implementation-details.md, "The first minibatch has ratio exactly 1")
    for row in ppo_history:
        assert row["policy/clipfrac_first"] == 0.0
        assert row["policy/approx_kl_first"] == 0.0


def test_kl_to_reference_is_zero_before_the_first_update(ppo_history: list[dict]) -> None:
    # policy == reference at iteration 0: only float rounding between batch shapes can differ
    assert abs(ppo_history[0]["kl/ref"]) < 1e-4
    assert ppo_history[-1]["kl/ref"] > 0.1  # and the policy did move away afterwards


@pytest.mark.parametrize("baseline", ["rloo", "moving_mean"])
def test_reinforce_with_a_baseline_raises_the_reward(tiny_model_dir, prompts_file, tmp_path, baseline) -> None:
    # one on-policy step per iteration, so a larger step size than PPO's four
    cfg = ReinforceConfig(**common(tiny_model_dir, prompts_file, tmp_path / "run", iterations=20, baseline=baseline,
                                   samples_per_prompt=4, kl_coef=0.0, policy_loss="reinforce", learning_rate=1e-2))
    history = train_reinforce(cfg, reward_fn=count_a)
    start, end = mean(history[:2], "reward/mean"), mean(history[-2:], "reward/mean")
    assert end > start + 1.0, (start, end)


def test_kl_and_entropy_guard_slow_the_entropy_collapse(tiny_model_dir, prompts_file, tmp_path) -> None:
    guarded = train_ppo(PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path / "guarded", iterations=12,
                                           num_minibatches=2, update_epochs=2, kl_coef=0.5, ent_coef=0.05)),
                        reward_fn=count_a)
    unguarded = train_ppo(PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path / "free", iterations=12,
                                             num_minibatches=2, update_epochs=2, kl_coef=0.0, ent_coef=0.0)),
                          reward_fn=count_a)
    drop_guarded = guarded[0]["policy/entropy"] - mean(guarded[-3:], "policy/entropy")
    drop_free = unguarded[0]["policy/entropy"] - mean(unguarded[-3:], "policy/entropy")
    assert drop_free > drop_guarded + 0.2, (drop_free, drop_guarded)
    assert mean(unguarded[-3:], "kl/ref") > mean(guarded[-3:], "kl/ref")


@pytest.mark.parametrize(("baseline", "extra"), [("none", {}), ("value", {}), ("rloo", {}), ("grpo", {"kl_in": "loss"}),
                                                 ("moving_mean", {}), ("none", {"policy_loss": "clipped_sequence"}),
                                                 ("rloo", {"policy_loss": "clipped_sequence"})])
def test_every_baseline_optimises_its_own_advantages(tiny_model_dir, prompts_file, tmp_path, baseline, extra) -> None:
    """One clipped update per rollout, sequence-mean reduction: the update's ratio is exactly 1, so the
    policy loss is -mean_i A_i, which each baseline fixes independently of the code's arithmetic:
    none: A = R, so the loss is -mean(score - beta KL) = -reward/total, every iteration;
    value and moving_mean: the baseline starts at 0 (zero-initialised head, no mean yet), so the
    same holds at iteration 0; rloo and grpo: advantages are centred in each group, so the loss is 0.
    The sequence-ratio loss (one ratio per reply) gives the same: at rho = 1 it is -mean_i A_i too."""
    cfg = ReinforceConfig(**common(tiny_model_dir, prompts_file, tmp_path / "run", iterations=2, baseline=baseline,
                                   samples_per_prompt=4, kl_coef=0.1, update_epochs=1, num_minibatches=1,
                                   loss_reduction="sequence", **{"policy_loss": "clipped", **extra}))
    history = train_reinforce(cfg, reward_fn=count_a)
    assert len(history) == 2
    checked = history if baseline == "none" else history[:1]
    for row in checked:
        if baseline in ("rloo", "grpo"):
            assert abs(row["loss/policy"]) < 1e-6
        elif extra.get("kl_in") != "loss":  # baseline none, value, moving_mean
            assert row["loss/policy"] == pytest.approx(-row["reward/total"], rel=1e-5, abs=1e-6)
        assert row["policy/clipfrac_first"] == 0.0
    if baseline == "value":
        assert history[0]["loss/value"] > 0 and "value/explained_variance" in history[0]
    if baseline == "grpo":
        assert 0 <= history[0]["loss/kl"] < 1e-4  # k3 >= 0, and the policy is the reference before any update
    if baseline == "moving_mean":
        # the mean starts at the first batch's mean return, then moves by (1 - decay) towards the second's
        first, second = history[0]["reward/return_mean"], history[1]["reward/return_mean"]
        assert history[1]["baseline/moving_mean"] == pytest.approx(0.9 * first + 0.1 * second, rel=1e-6)


def test_separate_critic_and_a_reward_model_with_another_tokenizer(tiny_model_dir, prompts_file, tmp_path) -> None:
    """PPO scores with a reward model whose tokenizer differs from the policy's (decode and re-encode),
    and a separate critic initialised from a reward model that shares the policy's tokenizer."""
    from toy_data import corpus

    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.trainers.reward import train as train_reward
    from rlhfkit.trainers.reward_config import RewardConfig

    other = save_tiny(tmp_path / "other", corpus(seed=3), vocab_size=300, n_layer=1, n_embd=32)
    rows = [{"prompt": "describe the", "chosen": " road light", "rejected": " a a a"}] * 8
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, base in (("rm_other", other), ("rm_same", tiny_model_dir)):
        data = str(tmp_path / "p.jsonl")
        train_reward(RewardConfig(model=str(base), train_data=data, eval_data=data, output_dir=str(tmp_path / name),
                                  max_length=64, batch_size=4))
    history = train_ppo(PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path / "ppo_other", iterations=2,
                                           reward_model=str(tmp_path / "rm_other"), num_minibatches=2)))
    assert all(math.isfinite(h["reward/mean"]) for h in history)
    history = train_ppo(PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path / "ppo_critic", iterations=2,
                                           reward_model=str(tmp_path / "rm_same"), critic="separate",
                                           num_minibatches=2, report_to=["tensorboard"])))
    assert history[0]["policy/clipfrac_first"] == 0.0
    assert (tmp_path / "ppo_critic" / "critic" / "model.safetensors").is_file()
    assert list((tmp_path / "ppo_critic" / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_old_logprobs_from_the_sampling_loop(tiny_model_dir, prompts_file, tmp_path, critic) -> None:
    """old_logprobs=sampling runs PPO with no extra forward: the first ratio is 1 to float precision, not bit for
    bit, and the run learns like the default one."""
    extra = {}
    if critic == "separate":
        from rlhfkit.trainers.reward import train as train_reward
        from rlhfkit.trainers.reward_config import RewardConfig

        rows = [{"prompt": "describe the", "chosen": " a a a", "rejected": " road light"}] * 8
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        train_reward(RewardConfig(model=str(tiny_model_dir), train_data=str(tmp_path / "p.jsonl"),
                                  eval_data=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "rm"), max_length=64,
                                  batch_size=4))
        extra = {"critic": "separate", "reward_model": str(tmp_path / "rm")}
    cfg = PPOConfig(**common(tiny_model_dir, prompts_file, tmp_path / "run", iterations=3 if extra else 16,
                             num_minibatches=2, update_epochs=2, kl_coef=0.0, old_logprobs="sampling", **extra))
    history = train_ppo(cfg, reward_fn=None if extra else count_a)
    for row in history:
        assert row["policy/clipfrac_first"] == 0.0
        assert abs(row["policy/approx_kl_first"]) < 1e-6
    if not extra:
        start, end = mean(history[:2], "reward/mean"), mean(history[-2:], "reward/mean")
        assert end > start + 1.0, (start, end)


def test_held_out_evaluation_and_log_every(tiny_model_dir, prompts_file, tmp_path) -> None:
    """--eval-prompts scores the policy before training, every eval_every iterations and at the end;
    --log-every writes every Nth iteration's metrics (and the last)."""
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("describe the river\nwrite about the door\ntell me about a window\nsay something on light\n")
    out = tmp_path / "run"
    cfg = PPOConfig(**common(tiny_model_dir, prompts_file, out, iterations=3, num_minibatches=2, update_epochs=1,
                             eval_prompts=str(held_out), eval_every=2, log_every=2, eval_batch_size=3))
    # the gold judge is the training reward itself, so gold and proxy figures must agree exactly
    history = train_ppo(cfg, reward_fn=count_a, gold_fn=count_a)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "reward/mean" in r]
    evals = {r["step"]: r for r in rows if "eval/reward_mean" in r}
    assert train_steps == [1, 2]  # (iteration + 1) % 2 == 0, and the last iteration
    assert sorted(evals) == [0, 2, 3]  # before training, after iteration 2 (eval_every), after the last
    assert abs(evals[0]["eval/kl"]) < 1e-4  # the start policy is the reference
    assert "eval/win_rate" not in evals[0]  # the start is the baseline of the win rates
    for step in (2, 3):
        assert evals[step]["eval/gold_mean"] == evals[step]["eval/reward_mean"]
        assert evals[step]["eval/gold_win_rate"] == evals[step]["eval/win_rate"]
        assert 0.0 <= evals[step]["eval/win_rate"] <= 1.0
        assert evals[step]["eval/eos_share"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 held-out prompts
    assert len(history) == 3 and history[-1]["eval/win_rate"] == evals[3]["eval/win_rate"]
