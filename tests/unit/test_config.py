"""Configs: defaults < YAML < flags, clear errors, and every stage's --help lists every setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import build_config, save_config
from rlhfkit.errors import ConfigError
from rlhfkit.trainers.dpo_config import DPOConfig
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig
from rlhfkit.trainers.sft_config import SFTConfig

STAGES = {"reward": RewardConfig, "score": ScoreConfig, "ppo": PPOConfig, "reinforce": ReinforceConfig,
          "sft": SFTConfig, "dpo": DPOConfig}
runner = CliRunner()


def test_precedence_defaults_then_yaml_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train_data: a.jsonl\nbatch_size: 8\nlearning_rate: 1e-3\n")
    cfg = build_config(RewardConfig, f, {"batch_size": 4, "epochs": None})
    assert (cfg.train_data, cfg.batch_size, cfg.learning_rate, cfg.epochs) == ("a.jsonl", 4, 1e-3, 1)


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = PPOConfig(prompts="p.jsonl", reward_fn="m:f", kl_coef=0.1, adaptive_kl=True)
    save_config(cfg, tmp_path / "config.yaml")
    assert build_config(PPOConfig, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train_data: a\nbatchsize: 3\n", "unknown setting 'batchsize' (did you mean 'batch_size'?)"),
        ("train_data: a\nbatch_size: many\n", "setting 'batch_size': expected an integer"),
        ("train_data: a\nlearning_rate: fast\n", "setting 'learning_rate': expected a number"),
        ("train_data: a\noverwrite: perhaps\n", "setting 'overwrite': expected true or false"),
        ("train_data: a\ntruncation: middle\n", "setting 'truncation': 'middle' is not one of truncate_prompt, drop"),
        ("train_data: a\nbatch_size: 0\n", "setting 'batch_size': must be >= 1"),
        ("- a\n- b\n", "expected a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_gives_one_clear_error(tmp_path: Path, yaml_text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        build_config(RewardConfig, f)
    assert message in str(err.value)


def test_missing_required_setting_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="setting 'train_data': is required: pass --train-data FILE"):
        RewardConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 1.5}, "setting 'lam': must be >= 0 and <= 1, got 1.5"),
        ({"gamma": -0.1}, "setting 'gamma': must be >= 0 and <= 1, got -0.1"),
        ({"clip_eps": 0.0}, "setting 'clip_eps': must be > 0, got 0.0"),
        ({"top_p": 0.0}, "setting 'top_p': must be > 0 and <= 1, got 0.0"),
        ({"micro_batch_size": -1}, "setting 'micro_batch_size': must be >= 0, got -1"),
        ({"num_minibatches": 3}, "setting 'num_minibatches': must divide rollout_batch_size=64"),
        ({"reward_model": "rm"}, "pass only one of --reward-model"),
        ({"critic": "separate", "reward_fn": ""}, "setting 'critic'"),
    ],
)
def test_ppo_settings_are_checked(kwargs: dict, message: str) -> None:
    settings = {"prompts": "p.jsonl", "reward_fn": "m:f", **kwargs}
    with pytest.raises(ConfigError) as err:
        PPOConfig(**settings)
    assert message in str(err.value)


@pytest.mark.parametrize("cls", [RewardConfig, ScoreConfig, PPOConfig, ReinforceConfig])
def test_every_declared_bound_is_enforced(cls: type) -> None:
    """For each bounded setting, the value just outside its bound is refused with the bound in the message."""
    required = {RewardConfig: {"train_data": "a"}, ScoreConfig: {"model": "m", "data": "d"},
                PPOConfig: {"prompts": "p", "reward_fn": "m:f"}, ReinforceConfig: {"prompts": "p", "reward_fn": "m:f"}}
    checked = 0
    for f in dataclasses.fields(cls):
        for key in ("ge", "gt", "le", "lt"):
            bound = f.metadata.get(key)
            if bound is None:
                continue
            value = bound - 1 if key == "ge" else bound if key in ("gt", "lt") else bound + 1
            value = type(f.default)(value) if isinstance(f.default, int) and float(value).is_integer() else value
            with pytest.raises(ConfigError, match=f"setting '{f.name}': must be"):
                cls(**required[cls], **{f.name: value})
            checked += 1
    assert checked >= 2


def test_reinforce_on_policy_loss_needs_one_update_per_rollout() -> None:
    with pytest.raises(ConfigError, match="'reinforce' is on-policy"):
        ReinforceConfig(prompts="p", reward_fn="m:f", policy_loss="reinforce", update_epochs=2)
    with pytest.raises(ConfigError, match="needs >= 2"):
        ReinforceConfig(prompts="p", reward_fn="m:f", baseline="rloo", samples_per_prompt=1)


def test_sequence_ratio_loss_needs_a_per_reply_reduction_and_baseline() -> None:
    with pytest.raises(ConfigError, match="setting 'loss_reduction': policy_loss=clipped_sequence"):
        ReinforceConfig(prompts="p", reward_fn="m:f", policy_loss="clipped_sequence", loss_reduction="token")
    with pytest.raises(ConfigError, match="setting 'baseline': policy_loss=clipped_sequence"):
        ReinforceConfig(prompts="p", reward_fn="m:f", policy_loss="clipped_sequence", loss_reduction="sequence_sum",
                        baseline="value")
    ReinforceConfig(prompts="p", reward_fn="m:f", policy_loss="clipped_sequence", loss_reduction="sequence_sum",
                    update_epochs=4, num_minibatches=4)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_help_lists_every_setting_with_its_default(stage: str) -> None:
    result = runner.invoke(app, [stage, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(STAGES[stage]):
        assert "--" + f.name.replace("_", "-") in result.output, f.name
    assert "[default: " in result.output


def test_top_level_help_lists_the_stages() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_cli_reports_a_user_error_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    result = runner.invoke(app, ["reward", "--model", str(missing), "--train-data", "a.jsonl", "--output-dir",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {missing}: model path does not exist")


def test_cli_flag_overrides_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"train_data: {tmp_path / 'a.jsonl'}\noutput_dir: {tmp_path / 'o'}\n")
    result = runner.invoke(app, ["reward", "--config", str(f), "--batch-size", "0"])
    assert result.exit_code == 2
    assert "setting 'batch_size': must be >= 1, got 0" in result.output
