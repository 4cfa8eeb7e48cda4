"""transformers' TrainingArguments names are accepted for the settings that mean the same: one setting, two
names, the same resolved config (and the same config.yaml) whichever is used."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import aliases, build_config, save_config
from rlhfkit.errors import ConfigError
from rlhfkit.trainers.reward_config import RewardConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig

runner = CliRunner()


@pytest.mark.parametrize(("cls", "alias", "value", "setting", "expected"), [
    (RewardConfig, "num_train_epochs", 3, "epochs", 3),
    (RewardConfig, "torch_dtype", "bfloat16", "dtype", "bfloat16"),
    (RewardConfig, "gradient_accumulation_steps", 4, "micro_batch_size", 8),   # 32 comparisons / 4
    (RewardConfig, "gradient_accumulation_steps", 5, "micro_batch_size", 7),   # ceil(32 / 5): 5 micro-batches
    (RewardConfig, "gradient_accumulation_steps", 1, "micro_batch_size", 0),   # no accumulation
    (PPOConfig, "gradient_accumulation_steps", 2, "micro_batch_size", 8),      # 64 episodes / 4 minibatches / 2
    (PPOConfig, "max_steps", 33, "iterations", 3),                             # 16 optimizer steps per iteration
    (ReinforceConfig, "max_steps", 5, "iterations", 5),                        # 1 step per iteration
    (PPOConfig, "save_total_limit", 3, "keep_checkpoints", 3),
])
def test_an_alias_sets_its_setting(cls, alias, value, setting, expected, tmp_path: Path) -> None:
    base = {"train_data": "a.jsonl"} if cls is RewardConfig else {"prompts": "p.jsonl", "reward_fn": "m:f"}
    cfg = build_config(cls, None, {**base, alias: value})
    assert getattr(cfg, setting) == expected
    # the same from a YAML file, and the saved config.yaml records the setting's own name only
    f = tmp_path / "c.yaml"
    f.write_text("".join(f"{k}: {v}\n" for k, v in {**base, alias: value}.items()))
    assert build_config(cls, f) == cfg
    save_config(cfg, tmp_path / "saved.yaml")
    assert alias not in (tmp_path / "saved.yaml").read_text().replace(f"{setting}:", "")
    assert build_config(cls, tmp_path / "saved.yaml") == cfg


def test_every_alias_of_micro_batches_splits_a_step_into_that_many_parts() -> None:
    """Property: with gradient_accumulation_steps n, the step's rows fall into exactly n micro-batches."""
    for batch in range(1, 40):
        for n in range(1, batch + 1):
            micro = build_config(RewardConfig, None, {"train_data": "a", "batch_size": batch,
                                                      "gradient_accumulation_steps": n}).micro_batch_size
            parts = 1 if micro == 0 else -(-batch // micro)
            assert parts <= n and (micro == 0 or -(-batch // n) == micro), (batch, n, micro)


def test_both_names_in_one_place_is_an_error_and_a_later_source_wins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'epochs' and 'num_train_epochs' are the same setting"):
        build_config(RewardConfig, None, {"train_data": "a", "epochs": 2, "num_train_epochs": 3})
    f = tmp_path / "c.yaml"
    f.write_text("train_data: a\nmicro_batch_size: 2\nepochs: 2\n")
    cfg = build_config(RewardConfig, f, {"gradient_accumulation_steps": 2, "num_train_epochs": 5})
    assert (cfg.micro_batch_size, cfg.epochs) == (16, 5)


def test_bad_alias_values_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="'gradient_accumulation_steps': must be >= 1"):
        build_config(RewardConfig, None, {"train_data": "a", "gradient_accumulation_steps": 0})
    with pytest.raises(ConfigError, match="'max_steps': expected an integer"):
        build_config(PPOConfig, None, {"prompts": "p", "reward_fn": "m:f", "max_steps": "ten"})
    with pytest.raises(ConfigError, match="did you mean 'num_train_epochs'"):
        build_config(RewardConfig, None, {"train_data": "a", "num_train_epoch": 1})


@pytest.mark.parametrize("stage", ["reward", "ppo", "reinforce"])
def test_help_shows_each_alias_beside_its_setting(stage: str) -> None:
    cls = {"reward": RewardConfig, "ppo": PPOConfig, "reinforce": ReinforceConfig}[stage]
    result = runner.invoke(app, [stage, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for alias in aliases(cls):
        assert "--" + alias.replace("_", "-") in text


def test_report_to_none_and_lists() -> None:
    assert build_config(RewardConfig, None, {"train_data": "a", "report_to": "none"}).report_to == []
    assert build_config(RewardConfig, None, {"train_data": "a", "report_to": "tensorboard,mlflow"}).report_to == [
        "tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="'report_to': 'tb' is not one of"):
        build_config(RewardConfig, None, {"train_data": "a", "report_to": "tb"})
