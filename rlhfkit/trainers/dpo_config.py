"""Settings of `rlhfkit dpo` (direct preference optimisation of the policy on comparisons)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhfkit.config import Settings, require, setting
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.trainers.settings import LoRASettings, OptimSettings, RunSettings, StepCheckpointSettings


@dataclass
class DPOConfig(RunSettings, OptimSettings, LoRASettings, StepCheckpointSettings, Settings):
    """Optimise the policy straight from comparisons: loss -log sigmoid(beta h), h the chosen-minus-rejected
    log-ratio to a frozen reference (DPO), or (h - 1/(2 beta))^2 (IPO)."""

    STAGE: ClassVar[str] = "dpo"

    policy: str = setting(EMBEDDED_MODEL, "Start policy (HF id, local dir or 'embedded'), e.g. an SFT output; the "
                          "output folder is a policy for --policy of ppo / reinforce.")
    ref_model: str = setting("", "Frozen reference policy (empty = a copy of the start policy; with LoRA the "
                             "start policy with the adapters off, so ref_model must stay empty).")
    tokenizer: str = setting("", "Tokenizer folder or HF id (empty = the policy's own).")
    train_data: str = setting("", "Preference data: .jsonl/.json/.csv/.parquet or a saved datasets folder (pairs, "
                              "chat pairs or ranked lists, as for rlhfkit reward).")
    eval_data: str = setting("", "Held-out preference data (empty = split eval_fraction off train_data).")
    eval_fraction: float = setting(0.1, "Share of train_data rows held out for evaluation when eval_data is empty.",
                                   ge=0, lt=1)
    max_length: int = setting(0, "Longest prompt + response in tokens (0 = the policy's context, read from its "
                              "config.json; a longer value is an error).", ge=0)
    truncation: str = setting(
        "truncate_prompt", "Longer pairs lose prompt tokens on the left, or are dropped; pairs that do not fit "
        "even so are dropped and counted in eval.json (data/train_dropped, data/eval_dropped).",
        choices=("truncate_prompt", "drop"),
    )
    loss: str = setting("dpo", "dpo: -log sigmoid(beta h) (Rafailov et al. 2023); ipo: (h - 1/(2 beta))^2 "
                        "(Azar et al. 2023), h summed over completion tokens.", choices=("dpo", "ipo"))
    beta: float = setting(0.1, "beta: strength of the pull to the reference (implicit reward = beta (logp - "
                          "ref_logp)); Rafailov et al. use 0.1.", gt=0)
    label_smoothing: float = setting(0.0, "eps of conservative DPO: the share of labels assumed flipped, loss "
                                     "-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h) (dpo only).",
                                     ge=0, lt=0.5)
    precompute_ref_logprobs: bool = setting(False, "Compute the reference log-probs of every pair once before "
                                            "training; the reference model is then freed (no second copy in "
                                            "memory, one forward per step instead of two).")
    batch_size: int = setting(32, "Comparisons per optimizer step (chosen and rejected go in one forward pass).",
                              ge=1)
    eval_batch_size: int = setting(64, "Comparisons per evaluation (and reference precomputation) forward pass.",
                                   ge=1)
    group_by_length: bool = setting(True, "Batch comparisons of similar length together (less padding), in a "
                                    "random order of batches.")
    share_prefix: bool = setting(
        True, "Pack each comparison into one row, its prompt once, then the chosen and the rejected completion "
        "(each attending to the prompt and to itself only): the prompt's tokens go through the policy (and the "
        "reference) once per comparison instead of twice, with the same log-probs and gradients (where the "
        "model's attention takes such a mask: SDPA or eager, no sliding window).")
    epochs: int = setting(1, "Passes over the training comparisons.", ge=1, aliases={"num_train_epochs": None})
    eval_every: int = setting(0, "Evaluate on the held-out comparisons every N optimizer steps (0 = only before "
                              "training and at the end).", ge=0)

    def check(self) -> None:
        require(bool(self.train_data), "train_data", "is required: pass --train-data FILE")
        require(bool(self.output_dir), "output_dir", "must not be empty")
        require(self.eval_fraction > 0 or bool(self.eval_data), "eval_fraction",
                f"must be in (0, 1) when eval_data is empty, got {self.eval_fraction}")
        require(self.loss == "dpo" or self.label_smoothing == 0, "label_smoothing",
                f"applies to --loss dpo only (conservative DPO), got {self.label_smoothing} with --loss {self.loss}")
        require(not (self.lora_r and self.ref_model), "ref_model",
                "must be empty with LoRA (lora_r > 0): the reference is the policy with its adapters off")
