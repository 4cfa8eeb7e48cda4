"""Setting groups shared by the stage configs (each stage's config inherits the groups it needs).

Only dataclasses and checks live here (no torch import), so `rlhfkit --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import require, setting


@dataclass
class RunSettings:
    output_dir: str = setting("runs/out", "Directory the stage writes its model, config.yaml and metrics.jsonl to.")
    seed: int = setting(0, "Random seed for torch, numpy, Python and data shuffling.")
    overwrite: bool = setting(False, "Replace output_dir if it already holds a finished run.")
    tensorboard: bool = setting(False, "Also write TensorBoard logs to output_dir/tb.")
    log_every: int = setting(10, "Log training metrics every N optimizer steps (iterations for RL stages).")
    threads: int = setting(0, "CPU threads for torch (0 = torch's default).")
    mixed_precision: str = setting(
        "no", "Autocast precision for matmuls; master weights and losses stay fp32.", choices=("no", "bf16", "fp16")
    )

    def __post_init__(self) -> None:
        require(bool(self.output_dir), "output_dir", "must not be empty")
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")


@dataclass
class OptimSettings:
    learning_rate: float = setting(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    adam_eps: float = setting(1e-5, "AdamW epsilon (1e-5 as in the RLHF reference implementations).")
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this value (0 = no clipping).")
    lr_schedule: str = setting(
        "linear", "Learning-rate schedule after warmup.", choices=("constant", "linear", "cosine")
    )
    warmup_steps: int = setting(0, "Linear warmup steps from 0 to learning_rate.")

    def __post_init__(self) -> None:
        require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        require(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
