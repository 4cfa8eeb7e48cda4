"""Settings of `rlhfkit demo`: the whole method on the embedded model, sized for a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhfkit.config import Settings, require, setting
from rlhfkit.data import synthetic
from rlhfkit.defaults import EMBEDDED_MODEL


@dataclass
class DemoConfig(Settings):
    """Pretrained model -> K samples per prompt -> simulated rankings -> reward model -> PPO (with and
    without the KL guard) -> evaluation with the gold judge -> HTML report."""

    STAGE: ClassVar[str] = "demo"

    output_dir: str = setting("runs/demo", "Folder for every stage's output and the report (replaced on each run).")
    model: str = setting(EMBEDDED_MODEL, "Start policy; the demo task is written for the embedded model.")
    seed: int = setting(0, "Seed of every stage (the same seed gives the same numbers).")
    label_prompts: int = setting(521, "Prompts whose completions the simulated labeler ranks (the task has 521 "
                                 "training prompts).", ge=20)
    k: int = setting(4, "Completions sampled per prompt for ranking.", ge=2, le=9)
    labeler_noise: float = setting(0.02, "Share of completion pairs the simulated labeler orders against the gold "
                                   "judge (like disagreeing annotators).", ge=0, le=0.5)
    labeler_resolution: float = setting(1.0, "The labeler perceives gold scores on a grid of this step and marks "
                                        "replies it cannot tell apart as ties (0 = exact scores).", ge=0)
    eval_prompts: int = setting(150, "Held-out prompts for the final evaluation (the task has 150).")
    max_new_tokens: int = setting(24, "Longest response in tokens.", ge=1)
    rm_epochs: int = setting(3, "Reward-model passes over the comparisons.", ge=1)
    rm_learning_rate: float = setting(1e-3, "Reward-model learning rate.", gt=0)
    iterations: int = setting(60, "PPO iterations of each run.", ge=1)
    rollout_batch_size: int = setting(64, "Episodes per PPO iteration.", ge=4)
    learning_rate: float = setting(1e-4, "PPO learning rate.", gt=0)
    kl_coef: float = setting(0.3, "KL coefficient of the guarded run (the unguarded run uses 0).", ge=0)
    ent_coef: float = setting(0.0, "Entropy bonus of the guarded run (the unguarded run uses 0). On this task a bonus "
                               "of 0.01 lowers the gold win rate by about 0.04, so it is off by default.", ge=0)
    threads: int = setting(0, "CPU threads for torch (0 = torch's default).", ge=0)
    quick: bool = setting(False, "A shortened demo (same code path, a fraction of the work) for tests.")

    def check(self) -> None:
        require(bool(self.output_dir), "output_dir", "must not be empty")
        held_out = len(synthetic.all_prompts("eval"))
        require(4 <= self.eval_prompts <= held_out, "eval_prompts",
                f"must be from 4 to {held_out} (the task's held-out prompts), got {self.eval_prompts}")
        train = len(synthetic.all_prompts("train"))
        require(self.label_prompts <= train, "label_prompts",
                f"must be at most {train} (the task's training prompts), got {self.label_prompts}")
        require(self.rollout_batch_size % 4 == 0, "rollout_batch_size",
                f"must be a multiple of 4 (4 minibatches), got {self.rollout_batch_size}")
