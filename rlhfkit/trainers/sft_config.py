"""Settings of `rlhfkit sft` (supervised fine-tuning on demonstrations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhfkit.config import Settings, require, setting
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.trainers.settings import LoRASettings, OptimSettings, RunSettings, StepCheckpointSettings


@dataclass
class SFTConfig(RunSettings, OptimSettings, LoRASettings, StepCheckpointSettings, Settings):
    """Fine-tune a causal LM on demonstrations: token-mean cross-entropy on the completion tokens."""

    STAGE: ClassVar[str] = "sft"

    model: str = setting(EMBEDDED_MODEL, "Base causal LM (HF id, local dir or 'embedded').")
    tokenizer: str = setting("", "Tokenizer folder or HF id (empty = the model's own).")
    train_data: str = setting("", "Demonstrations: .jsonl/.json/.csv/.parquet or a saved datasets folder, with "
                              "prompt/completion (or response), chat messages, or text per row.")
    eval_data: str = setting("", "Held-out demonstrations (empty = split eval_fraction off train_data).")
    eval_fraction: float = setting(0.1, "Share of train_data rows held out for evaluation when eval_data is empty.",
                                   ge=0, lt=1)
    max_length: int = setting(0, "Longest example (and packed row) in tokens (0 = the model's context, read from "
                              "its config.json; a longer value is an error).", ge=0)
    truncation: str = setting(
        "truncate_left", "Longer examples lose tokens on the left (the prompt's start; the completion's end and "
        "its EOS stay), on the right (the end, EOS included), or are dropped; examples left without a completion "
        "token are dropped too. Counted in eval.json (data/train_truncated, data/train_dropped, ...).",
        choices=("truncate_left", "truncate_right", "drop"),
    )
    loss_on: str = setting("completion", "Tokens in the loss: the completion (assistant) tokens and their EOS, or "
                           "all tokens of the example (prompt too; never padding).", choices=("completion", "all"))
    packing: bool = setting(False, "Pack whole examples into rows of max_length tokens (position ids restart per "
                            "example, so no token attends across examples); batch_size then counts packed rows.")
    batch_size: int = setting(16, "Examples (or packed rows) per optimizer step.", ge=1)
    eval_batch_size: int = setting(32, "Examples per evaluation forward pass (evaluation never packs).", ge=1)
    group_by_length: bool = setting(True, "Batch examples of similar length together (less padding), in a random "
                                    "order of batches (unpacked only).")
    epochs: int = setting(1, "Passes over the training examples.", ge=1, aliases={"num_train_epochs": None})
    eval_every: int = setting(0, "Evaluate every N optimizer steps (0 = only at the end).", ge=0)
    eval_on_start: bool = setting(True, "Also evaluate the start model before the first step (logged at step 0).")
    save_merged: bool = setting(True, "With LoRA, also write the merged weights as a plain transformers folder in "
                                "output_dir (the adapter always goes to output_dir/adapter, in peft's format).")

    def check(self) -> None:
        require(bool(self.train_data), "train_data", "is required: pass --train-data FILE")
        require(bool(self.output_dir), "output_dir", "must not be empty")
        require(self.eval_fraction > 0 or bool(self.eval_data), "eval_fraction",
                f"must be in (0, 1) when eval_data is empty, got {self.eval_fraction}")
