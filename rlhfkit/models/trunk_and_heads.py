"""The pieces of a Hugging Face model that rlhfkit calls directly: trunk, LM head, score head.

Calling the trunk and then a head on chosen positions only is what lets the trainers skip the
LM head over prompt positions and the score head over all but the last token. `output_logits`
does what a causal LM's own forward does after its trunk, including the logit transforms some
families apply after the LM head (Gemma 2/3 soft-capping, Cohere's scale, Granite's scaling), so
its log-probs are those of `model(...).logits` for every family.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from rlhfkit.errors import ModelError


def trunk(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer body under the head (GPT2Model, LlamaModel, ...)."""
    body = getattr(model, model.base_model_prefix, None)
    if body is None:
        raise ModelError(f"{type(model).__name__}: no '{model.base_model_prefix}' trunk to run")
    return body


def lm_head(model: PreTrainedModel) -> torch.nn.Module:
    """The output projection of a causal LM (hidden -> vocabulary logits)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ModelError(f"{type(model).__name__}: no output embeddings (is it a causal LM?)")
    return head


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits from trunk hidden states (..., H) -> (..., V), as the model's forward computes them."""
    logits = lm_head(model)(hidden)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(model, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    scaling = getattr(cfg, "logits_scaling", None)  # Granite: logits / logits_scaling
    if isinstance(scaling, (int, float)) and scaling != 1:
        logits = logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3: cap * tanh(logits / cap)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def score_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The scalar head of a sequence-classification model (`score` in most architectures)."""
    for name in ("score", "classifier", "classification_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise ModelError(f"{type(model).__name__}: no linear score head found (looked for score/classifier)")


def hidden_size(model: PreTrainedModel) -> int:
    """Width of the trunk's output."""
    cfg = model.config
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    raise ModelError(f"{type(model).__name__}: cannot find the hidden size in its config")
