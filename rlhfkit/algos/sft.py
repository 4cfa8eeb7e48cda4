"""Supervised fine-tuning: the masked token-mean cross-entropy of demonstrations.

The loss of SFT is the language-modelling loss restricted to the tokens the model should learn
to write: the completion (assistant) tokens and the EOS that ends them, not the prompt and not
the padding (InstructGPT's SFT stage, Ouyang et al. 2022, section 3.5; the completion-only loss
of TRL's SFTTrainer). Which tokens count is the caller's mask; this module only reduces.
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import check_mask, check_rank
from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.algos.masked import aggregate


def sft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """L = -sum_{i,t} m_{i,t} log softmax(z_{i,t})[y_{i,t}] / D,  D = sum_{i,t} m_{i,t}.

    Token-level cross-entropy averaged over the target tokens (m = True) of the whole batch:
    every target token weighs the same, whichever example it belongs to (the "token" mode of
    `aggregate`, as TRL's SFTTrainer and the pretraining loss average). Row t of `logits` holds
    the logits z_{i,t} that predict y_{i,t} (already shifted by one: z_{i,t} is read at the
    position before y_{i,t}). Positions under m = False (prompt, padding, the first token of a
    packed example) never change the result, whatever their logits or ids: their ids are
    replaced by 0 before the gather and their terms selected away. exp(L) is the perplexity.

    When the batch is one part of a larger one (a micro-batch, or one process's share), pass
    the target-token count D of the whole batch as `denominator`: the parts' losses then add
    up to the whole batch's loss exactly, and so do their gradients.

    Args:
      logits: (B, T, V) logits z_{i,t}, row t predicting targets[:, t]; float16/bfloat16 are
        upcast to float32 (see `logprobs_from_logits`).
      targets: (B, T) integer token ids y_{i,t} in [0, V) where mask is True.
      mask: torch.bool (B, T), True on the target tokens (completion tokens and their EOS).
      denominator: None (this batch's sum_{i,t} m_{i,t}) or the whole batch's target count.

    Returns:
      0-dim tensor, the mean negative log-likelihood per target token (0 for an empty mask).
    """
    check_rank("logits", logits, "B", "T", "V")
    check_rank("targets", targets, "B", "T")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape (B, T) = {tuple(logits.shape[:2])} like logits' first two "
                         f"dimensions, got {tuple(targets.shape)}")
    check_mask(mask, targets, "targets")
    logp = logprobs_from_logits(logits, targets.masked_fill(~mask, 0))  # (B, T)
    return aggregate(-logp, mask, "token", denominator=denominator)
