"""Reward models: a causal LM's trunk plus a linear head that outputs one number.

The model is a plain `AutoModelForSequenceClassification(num_labels=1)`, so a saved reward
model loads back with transformers alone. rlhfkit reads the score itself, at the last real
token of each sequence (from the attention mask, whatever the padding side), with position ids
that skip left padding, and applies the optional normalisation stored in the config.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.models.kernels import use_fused_kernels
from rlhfkit.models.loading import check_vocab, disable_dropout, load_pretrained
from rlhfkit.models.readout import hidden_at
from rlhfkit.models.trunk_and_heads import score_head

# Normalisation r' = gain * r + bias lives in the config (docs/implementation-details.md, "Reward
# normalisation: gain and bias"), so the head stays the
# stock bias-free layer that plain transformers knows how to load.
GAIN_KEY, BIAS_KEY = "rlhfkit_reward_gain", "rlhfkit_reward_bias"


def build_reward_model(
    name_or_path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype = torch.float32,
    init_head: bool = True,
) -> PreTrainedModel:
    """Load a reward model from a causal LM (new head) or from a saved reward model (its head).

    A new head is initialised N(0, 1/sqrt(d_model + 1)) with zero bias (docs/implementation-details.md,
    "Reward model head initialisation"), which
    gives rewards of about unit scale at the start. `init_head=False` keeps a loaded head.
    """
    model = load_pretrained(AutoModelForSequenceClassification, name_or_path, "reward model",
                             num_labels=1, dtype=dtype)
    check_vocab(model, tokenizer, str(name_or_path))
    model.config.pad_token_id = tokenizer.pad_token_id
    head = score_head(model)
    if init_head and not is_reward_model(name_or_path):
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()
    model.config.problem_type = "regression"
    return use_fused_kernels(disable_dropout(model))


def is_reward_model(name_or_path: str | Path) -> bool:
    """True when the checkpoint already is a one-output sequence-classification model."""
    from transformers import AutoConfig

    from rlhfkit.models.loading import resolve_model_path

    try:
        cfg = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except OSError:
        return False
    archs = getattr(cfg, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and getattr(cfg, "num_labels", 0) == 1


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token in each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)  # (B,)


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalized: bool = True
) -> torch.Tensor:
    """Scalar rewards (B,) read at the last real token of each sequence.

    Only the readout hidden states go through the head. With `normalized`, the gain and bias
    saved by reward normalisation are applied.
    """
    # The last block runs on the readout token only where the architecture allows (models/readout.py).
    last = hidden_at(model, input_ids, attention_mask, last_token_index(attention_mask))  # (B, H)
    head = score_head(model)
    scores = head(last.to(head.weight.dtype)).squeeze(-1).float()  # (B,)
    if normalized:
        gain = getattr(model.config, GAIN_KEY, 1.0)
        bias = getattr(model.config, BIAS_KEY, 0.0)
        scores = scores * gain + bias
    return scores


def set_normalization(model: PreTrainedModel, gain: float, bias: float) -> None:
    """Store r' = gain * r + bias in the model config (saved with save_pretrained)."""
    setattr(model.config, GAIN_KEY, float(gain))
    setattr(model.config, BIAS_KEY, float(bias))


class RewardScorer(torch.nn.Module):
    """`reward_scores` as a module, so accelerate/DDP can wrap the whole scoring forward."""

    def __init__(self, model: PreTrainedModel, normalized: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalized = normalized

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_scores(self.model, input_ids, attention_mask, normalized=self.normalized)
