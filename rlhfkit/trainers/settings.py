"""Setting groups shared by the stage configs (each stage's config inherits the groups it needs).

Only dataclasses live here (no torch import), so `rlhfkit --help` stays fast. Each setting is
declared once, in one group or one stage, with its bounds; `rlhfkit.config.Settings` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhfkit.config import setting


def micro_batch_from_accumulation(steps: int, cfg: Any) -> int:
    """micro_batch_size = ceil(rows of one optimizer step / steps) (1 = no accumulation)."""
    rows = cfg.rows_per_step()
    return 0 if steps == 1 else -(-rows // steps)


@dataclass
class RunSettings:
    output_dir: str = setting("runs/out", "Directory the stage writes its model, config.yaml and metrics.jsonl to.")
    seed: int = setting(0, "Random seed for torch, numpy, Python and data shuffling.")
    overwrite: bool = setting(False, "Replace output_dir if it already holds a finished run.")
    report_to: list[str] = setting(
        [], "Experiment trackers that get every logged metric besides metrics.jsonl (comma separated): tensorboard "
        "(output_dir/tb), wandb (W&B; set WANDB_MODE=offline to keep it local), mlflow (MLFLOW_TRACKING_URI, "
        "default a SQLite store in output_dir/mlflow.db); empty or none = metrics.jsonl only.",
        choices=("none", "tensorboard", "wandb", "mlflow"))
    log_every: int = setting(1, "Write training metrics to metrics.jsonl every N optimizer steps (reward, sft, dpo) or "
                             "iterations (ppo, reinforce); the last one is always written.", ge=1)
    threads: int = setting(0, "CPU threads for torch (0 = torch's default).", ge=0)
    dtype: str = setting(
        "float32", "Dtype the weights of every model of the run are loaded in (auto = the checkpoint's own). "
        "float32 keeps fp32 master weights (use --mixed-precision for bf16 matmuls); bfloat16 trains and keeps bf16 "
        "weights (half the memory, less precise updates).", choices=("float32", "bfloat16", "float16", "auto"),
        aliases={"torch_dtype": None})
    trust_remote_code: bool = setting(False, "Let transformers run the Python code a model or tokenizer folder "
                                      "ships (architectures that are not part of transformers). Only for folders "
                                      "you trust.")
    mixed_precision: str = setting(
        "auto", "Autocast precision for matmuls; master weights and losses stay fp32. auto: bf16 on a GPU or a CPU "
        "with native bf16 (avx512_bf16/AMX), else fp32 (no); fp16 (with loss scaling) needs a GPU.",
        choices=("auto", "no", "bf16", "fp16"),
    )


@dataclass
class OptimSettings:
    learning_rate: float = setting(1e-4, "Peak learning rate of AdamW (1e-4 trains the embedded model in tens of "
                                   "steps; real models usually want 1e-6 to 1e-5, or about 1e-4 with LoRA).", gt=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    adam_eps: float = setting(1e-5, "AdamW epsilon (1e-5 as in the RLHF reference implementations).", gt=0)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this value (0 = no clipping).", ge=0)
    lr_schedule: str = setting(
        "linear", "Learning-rate schedule after warmup.", choices=("constant", "linear", "cosine")
    )
    warmup_steps: int = setting(0, "Linear warmup steps from 0 to learning_rate.", ge=0)
    micro_batch_size: int = setting(0, "Rows per forward/backward pass; gradients of a batch's micro-batches are "
                                    "accumulated into one optimizer step with the same result (0 = the whole batch "
                                    "at once). Lower it to bound memory.", ge=0,
                                    aliases={"gradient_accumulation_steps": micro_batch_from_accumulation})
    gradient_checkpointing: bool = setting(False, "Recompute activations during the backward pass instead of "
                                           "keeping them: less memory, about a third more compute.")

    def rows_per_step(self) -> int:
        """Rows of one optimizer step, the unit of gradient_accumulation_steps (a stage's batch_size)."""
        return self.batch_size  # type: ignore[attr-defined]


@dataclass
class MasterWeightSettings:
    """bf16 weights with fp32 master copies (reward, ppo, reinforce); see trainers/master_weights.py."""

    bf16_weights: bool = setting(False, "With --mixed-precision bf16: store the trained weights in bf16 for the "
                                 "forward and backward passes, and fp32 copies that AdamW updates and checkpoints "
                                 "and the saved model hold (about 8% faster steps on a CPU with native bf16; the "
                                 "residual stream is then bf16). Full fine-tuning on one process.")


@dataclass
class LoRASettings:
    lora_r: int = setting(0, "LoRA rank: train low-rank adapters (peft) instead of every weight (0 = off, full "
                          "fine-tuning). In ppo/reinforce the reference is then the base with the adapters off.", ge=0)
    lora_alpha: float = setting(16.0, "LoRA alpha: the adapters' output is scaled by alpha / r.", gt=0)
    lora_dropout: float = setting(0.0, "Dropout on the adapters' input (0 keeps log-probs deterministic).", ge=0, lt=1)
    lora_target_modules: list[str] = setting(["all-linear"], "Modules that get adapters: module names (comma "
                                             "separated, e.g. q_proj,v_proj) or all-linear. A reward model "
                                             "trained with LoRA is saved merged (head included), its adapter in "
                                             "output_dir/adapter.")


@dataclass
class StepCheckpointSettings:
    """Checkpoints of the stages counted in optimizer steps (reward, sft, dpo); see trainers/step_resume.py."""

    checkpoint_every: int = setting(0, "Write a resumable checkpoint every N optimizer steps (0 = only when stopped "
                                    "by SIGTERM or Ctrl-C), in the hidden folder .OUTPUT_DIR.partial beside "
                                    "output_dir until the run completes.", ge=0)
    keep_checkpoints: int = setting(1, "Checkpoints kept: the newest N, older ones are removed once a new one is "
                                    "complete.", ge=1, aliases={"save_total_limit": None})
    resume: bool = setting(False, "Continue a stopped or killed run from its last checkpoint "
                           "(.OUTPUT_DIR.partial/checkpoint-N); without one the run starts from the beginning.")
