"""LoRA through peft: adapters on a causal LM or a reward model, the reference as the base with the
adapters off, and saving as an adapter (peft's format) or as merged weights.

With LoRA only the low-rank matrices (and the reward model's score head, or the RL value head)
train. peft injects its layers into the model's own modules, so the trainers keep calling the
base model's trunk and heads as before (`LoRAModel.model`), and the frozen reference of the RL
stages is the same weights with the adapters disabled: one copy of the weights in memory, and
log pi_ref equals the start policy's log-probs exactly (the adapters' B matrices start at 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from rlhfkit.errors import ConfigError

ALL_LINEAR = "all-linear"


@dataclass
class LoRASpec:
    """What `--lora-r`, `--lora-alpha`, `--lora-dropout` and `--lora-target-modules` ask for."""

    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (ALL_LINEAR,)

    @classmethod
    def from_config(cls, cfg: Any) -> LoRASpec | None:
        """The spec of a stage config (its lora_* settings), or None when LoRA is off (lora_r = 0)."""
        if not cfg.lora_r:
            return None
        return cls(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_target_modules or (ALL_LINEAR,)))


class LoRAModel:
    """A model with LoRA adapters: `model` is the (adapted) transformers model the trainers call,
    `peft` the peft wrapper that switches adapters off and saves them."""

    def __init__(self, peft_model: torch.nn.Module) -> None:
        self.peft = peft_model
        self.model: PreTrainedModel = peft_model.get_base_model()
        self.is_merged = False

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        """The base model, as it was before training, inside the block (inside `merged` too: the adapters
        are taken out for the block and folded back in after it)."""
        was_merged = self.is_merged
        if was_merged:
            self.peft.unmerge_adapter()
        try:
            with self.peft.disable_adapter():
                yield
        finally:
            if was_merged:
                self.peft.merge_adapter()

    @contextmanager
    def merged(self) -> Iterator[None]:
        """The adapters folded into the base weights inside the block (W + s B A, peft's merge_adapter),
        taken out again on exit (the weights come back to within float32 rounding)."""
        self.peft.merge_adapter()
        self.is_merged = True
        try:
            yield
        finally:
            self.is_merged = False
            self.peft.unmerge_adapter()

    def save(self, folder: str | Path, merged: bool = False) -> None:
        """The adapter in peft's format (adapter_config.json, adapter_model.safetensors), or with
        `merged` the base weights with the adapters folded in, as a plain transformers folder."""
        if merged:
            import copy

            merged_model = copy.deepcopy(self.peft).merge_and_unload()
            merged_model.save_pretrained(folder, safe_serialization=True)
        else:
            self.peft.save_pretrained(folder, safe_serialization=True)


def add_lora(model: PreTrainedModel, spec: LoRASpec, task: str | None) -> LoRAModel:
    """Wrap `model` with LoRA adapters (task "CAUSAL_LM", or None for a plain wrapper); every other
    weight is frozen (a caller unfreezes a new head itself, which keeps it a plain layer)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = ALL_LINEAR if ALL_LINEAR in spec.target_modules else list(spec.target_modules)
    # heads never get adapters: the LM head stays tied to the embeddings, a score head trains in full
    config = LoraConfig(task_type=task, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=targets, exclude_modules=["lm_head", "score", "classifier"])
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ConfigError(f"setting 'lora_target_modules': {str(e).splitlines()[0]}") from None
    return LoRAModel(peft_model)


@contextmanager
def evaluation_weights(lora: LoRAModel | None, mixed_precision: str) -> Iterator[None]:
    """Inside the block the model computes what its saved, merged weights compute: for a held-out evaluation.

    Under bf16 autocast an unmerged adapter's output is added to the base layer's output after that has
    been rounded to bf16, so round(round(x W) + x A B) = round(x W) wherever the adapters' change is
    under half a bf16 step of the output: early in training most of what the adapters learned is
    invisible, and the evaluation under-reports it (a LoRA reward model on SmolLM2 read a held-out
    margin of 0.60 where its saved weights give 0.93 in bf16). Merged, x (W + s B A) is one product and the
    change survives the rounding of the weights on average. In fp32 (or without LoRA) nothing changes.
    """
    if lora is None or mixed_precision == "no":
        yield
        return
    with lora.merged():
        yield
