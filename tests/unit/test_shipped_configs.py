"""Every YAML file shipped in configs/ loads: stage configs through rlhfkit, the rest through accelerate."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from rlhfkit.config import build_config
from rlhfkit.trainers.reward_config import RewardConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGES = {"reward.yaml": RewardConfig, "ppo.yaml": PPOConfig, "rloo.yaml": ReinforceConfig,
          "grpo.yaml": ReinforceConfig}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_configs_load(name: str) -> None:
    cfg = build_config(STAGES[name], CONFIGS / name)
    assert cfg.output_dir.startswith("runs/")


def test_every_stage_yaml_is_tested() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(STAGES)


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path: Path) -> None:
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 2 and cfg.distributed_type is not None


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_STAGES = {"reward": RewardConfig, "ppo": PPOConfig, "reinforce": ReinforceConfig}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_configs_load_and_name_files_that_exist(path: Path) -> None:
    import yaml

    stage = yaml.safe_load(path.read_text())["stage"]
    cfg = build_config(EXAMPLE_STAGES[stage], path)
    root = EXAMPLES.parent
    for name in ("train_data", "eval_data", "prompts"):
        value = getattr(cfg, name, "")
        if value:
            assert (root / value).is_file(), f"{path.name}: {name} {value} does not exist"
