"""Every setting a stage shows in --help is read by that stage's code, and is declared once.

Mechanical check: a setting counts as read when one of the modules on the stage's code path
accesses it as `cfg.<name>` (or `<x>.cfg.<name>`). The module lists below are the files each
stage's `train`/`run` goes through; a new module that reads settings must be added here.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from rlhfkit.pipelines.demo_config import DemoConfig
from rlhfkit.trainers.dpo_config import DPOConfig
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig
from rlhfkit.trainers.sft_config import SFTConfig

PKG = Path(__file__).resolve().parents[2] / "rlhfkit"
SHARED = ["trainers/common.py", "models/lora.py", "models/loading.py", "tracking/metrics.py"]
RL = ["trainers/rl_run.py", "trainers/checkpoint.py", "trainers/rl_evaluation.py", "rollout/ensemble.py",
      "tracking/monitor.py", *SHARED]
STEPS = ["trainers/step_resume.py", *SHARED]  # the stages counted in optimizer steps
CODE_PATHS = {
    RewardConfig: ["trainers/reward.py", *STEPS],
    SFTConfig: ["trainers/sft.py", *STEPS],
    DPOConfig: ["trainers/dpo.py", *STEPS],
    ScoreConfig: ["pipelines/score.py"],
    PPOConfig: ["trainers/ppo.py", *RL],
    ReinforceConfig: ["trainers/reinforce.py", *RL],
    DemoConfig: ["pipelines/demo.py"],
}


def settings_read(files: list[str]) -> set[str]:
    names = set()
    for name in files:
        for node in ast.walk(ast.parse((PKG / name).read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "cfg") or (
                        isinstance(owner, ast.Attribute) and owner.attr == "cfg"):
                    names.add(node.attr)
    return names


@pytest.mark.parametrize("cls", list(CODE_PATHS), ids=lambda c: c.__name__)
def test_every_setting_is_read_on_the_stage_code_path(cls: type) -> None:
    read = settings_read(CODE_PATHS[cls])
    unread = [f.name for f in dataclasses.fields(cls) if f.name not in read]
    assert not unread, f"{cls.__name__}: settings shown in --help that no code of the stage reads: {unread}"


@pytest.mark.parametrize("cls", list(CODE_PATHS), ids=lambda c: c.__name__)
def test_every_setting_is_declared_once(cls: type) -> None:
    """No setting is declared in two classes of one config, where base-class order would pick the default."""
    seen: dict[str, str] = {}
    for base in cls.__mro__:
        for name in base.__dict__.get("__annotations__", {}):
            if name == "STAGE":
                continue
            assert name not in seen, f"{cls.__name__}.{name}: declared in {seen[name]} and {base.__name__}"
            seen[name] = base.__name__


def test_the_check_finds_an_unread_setting() -> None:
    """The check itself can fail: a stage's file list without its trainer leaves settings unread."""
    read = settings_read(["trainers/common.py"])
    assert "clip_eps" not in read and "kl_coef" not in read
