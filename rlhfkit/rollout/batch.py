"""The Rollout batch: everything the trainers consume about one batch of episodes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """One batch of B episodes; response tensors are right-padded to T tokens.

    The `old_` fields hold the numbers of the policy that sampled the batch (pi_old, V_old); the
    trainer fills `advantages` and `returns` after scoring.
    """

    prompt_ids: torch.Tensor  # (B, P) left-padded prompt ids
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) sampled ids, pad after the first EOS
    mask: torch.Tensor  # (B, T) bool: real response tokens up to and including the first EOS
    ended: torch.Tensor  # (B,) bool: the response emitted EOS
    old_logp: torch.Tensor  # (B, T) log pi_old(a_t|s_t) at logits / T (trainer's forward or the sampling loop)
    ref_logp: torch.Tensor  # (B, T) log pi_ref(a_t|s_t), same temperature
    scores: torch.Tensor  # (B,) reward-model (or function) score, after the missing-EOS penalty
    old_values: torch.Tensor | None = None  # (B, T) V_old(s_t) from the critic, when there is one
    entropy: torch.Tensor | None = None  # (B, T) H(pi_old(.|s_t)), the sampling policy's entropy
    advantages: torch.Tensor | None = None  # (B, T) or (B,)
    returns: torch.Tensor | None = None  # (B, T) value targets
    prompts: list[str] = dataclasses.field(default_factory=list)  # decoded prompt texts
    responses: list[str] = dataclasses.field(default_factory=list)  # decoded response texts (up to EOS)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor field by name (to check devices, move or gather them)."""
        return {f.name: v for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)}

    def index(self, idx: torch.Tensor) -> Rollout:
        """A minibatch: every per-episode field restricted to the rows in `idx`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value[idx]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in idx.tolist()] if value else []
            else:
                out[f.name] = value
        return Rollout(**out)
