"""Settings of `rlhfkit reward` (reward model training) and `rlhfkit score`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhfkit.config import Settings, require, setting
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.trainers.settings import (
    LoRASettings,
    MasterWeightSettings,
    OptimSettings,
    RunSettings,
    StepCheckpointSettings,
)


@dataclass
class RewardConfig(RunSettings, OptimSettings, MasterWeightSettings, LoRASettings, StepCheckpointSettings, Settings):
    """Train a reward model on comparisons with the loss -log sigmoid(r_chosen - r_rejected), or on whole
    ranked lists with the Plackett-Luce loss (--ranking-loss listwise)."""

    STAGE: ClassVar[str] = "reward"

    model: str = setting(EMBEDDED_MODEL, "Base causal LM (HF id, local dir or 'embedded') or a saved reward model.")
    tokenizer: str = setting("", "Tokenizer folder or HF id (empty = the model's own).")
    train_data: str = setting("", "Preference data: .jsonl/.json/.csv/.parquet or a saved datasets folder.")
    eval_data: str = setting("", "Held-out preference data (empty = split eval_fraction off train_data).")
    criterion: list[str] = setting(
        [], "Criteria to train (rows name theirs in a 'criterion' field), comma separated: one name "
        "trains a one-head model on that criterion's rows; several train ONE model with one head per criterion "
        "over a shared trunk, each comparison's loss on its own criterion's head (empty = the data's one "
        "criterion, or rows without the field; rows of several criteria then need this setting).")
    eval_fraction: float = setting(0.1, "Share of train_data rows held out for evaluation when eval_data is empty.",
                                   ge=0, lt=1)
    max_length: int = setting(0, "Longest prompt + response in tokens (0 = the model's context, read from its "
                              "config.json; a longer value is an error).", ge=0)
    truncation: str = setting(
        "truncate_prompt", "Longer pairs lose prompt tokens on the left, or are dropped; pairs that do not fit "
        "even so are dropped and counted in eval.json (data/train_dropped, data/eval_dropped).",
        choices=("truncate_prompt", "drop"),
    )
    ranking_loss: str = setting(
        "pairwise", "pairwise: every ranked list becomes its K(K-1)/2 pairs, loss -log sigmoid(r_c - r_r) with each "
        "prompt weighing 1; listwise: each ranked list stays one group, loss -log P(ranking) under Plackett-Luce "
        "(ties do not compete; a pair is a list of two, where both losses are the same). See docs/ranking-loss.md.",
        choices=("pairwise", "listwise"),
    )
    batch_size: int = setting(32, "Comparisons (pairwise) or ranked lists (listwise) per optimizer step; all "
                              "responses of a batch go in one forward pass.", ge=1)
    eval_batch_size: int = setting(64, "Comparisons (pairwise) or ranked lists (listwise) per evaluation forward "
                                   "pass.", ge=1)
    group_by_length: bool = setting(True, "Batch comparisons of similar length together (less padding), in a "
                                    "random order of batches.")
    share_prefix: bool = setting(
        True, "Pack each comparison's responses into one row after ONE copy of their shared prompt, so the "
        "prompt's tokens go through the model once per comparison instead of once per response; attention masks "
        "keep the responses apart, so scores and gradients are the same (used where the model's attention takes "
        "such a mask: SDPA or eager, no sliding window; a batch that would not be smaller stays padded).")
    epochs: int = setting(1, "Passes over the training comparisons (one is the usual choice: more overfits).", ge=1,
                          aliases={"num_train_epochs": None})
    eval_every: int = setting(0, "Evaluate every N optimizer steps (0 = only at the end).", ge=0)
    margin_column: bool = setting(True, "Use a 'margin' column when present: -log sigmoid(r_c - r_r - m) (the "
                                  "pairwise loss only).")
    center_rewards_coef: float = setting(0.0, "Add c * mean((r_c + r_r)^2) to keep rewards centred; listwise: "
                                         "c * mean over lists of (2 * mean reward of the list)^2 (0 = off).", ge=0)
    normalize: str = setting(
        "mean", "After training, shift (mean) or shift and scale (mean_std) rewards on normalize_data to mean 0 "
        "(std 1); stored in the model config.", choices=("none", "mean", "mean_std"),
    )
    normalize_data: str = setting(
        "", "prompt/completion rows for normalisation (empty = the training responses, chosen and rejected; "
        "listwise: every completion of every list once)."
    )

    def check(self) -> None:
        require(bool(self.train_data), "train_data", "is required: pass --train-data FILE")
        require(bool(self.output_dir), "output_dir", "must not be empty")
        require(self.eval_fraction > 0 or bool(self.eval_data), "eval_fraction",
                f"must be in (0, 1) when eval_data is empty, got {self.eval_fraction}")


@dataclass
class ScoreConfig(Settings):
    """Score prompt + completion rows with a saved reward model."""

    STAGE: ClassVar[str] = "score"

    model: str = setting("", "Saved reward model directory (from rlhfkit reward).")
    data: str = setting("", "Rows with 'prompt' and 'completion' (or 'response') fields, text or chat messages "
                        "(rendered with the chat template as in training): .jsonl/.csv/.parquet.")
    output: str = setting("", "Where to write the rows with a 'score' field added, or for a reward model of "
                          "several criteria a 'scores' field {criterion: score} (.jsonl; empty = print).")
    batch_size: int = setting(64, "Rows per forward pass.", ge=1)
    max_length: int = setting(0, "Longest prompt + completion in tokens; prompts are truncated on the left "
                              "(0 = the reward model's context, read from its config.json; a longer value is "
                              "an error).", ge=0)
    normalized: bool = setting(True, "Apply the normalisation saved with the model.")
    allow_untrained_head: bool = setting(False, "Accept a --model that is not a trained reward model (a plain "
                                         "causal LM gets a score head of random weights).")

    def check(self) -> None:
        require(bool(self.model), "model", "is required: pass --model DIR")
        require(bool(self.data), "data", "is required: pass --data FILE")
