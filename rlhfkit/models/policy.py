"""The policy's forward over responses: log pi(a_t|s_t), entropy and V(s_t) in one trunk pass.

State s_t = prompt + response[:t], action a_t = response[t]. The hidden state at position
P - 1 + t has seen exactly s_t, so one slice of the trunk's output gives every quantity the
trainers need, and the LM head runs over response positions only (never over the prompt).

The critic is either a value head on the policy's own trunk (one forward gives logits and
values; OAI lm-human-preferences) or a separate value model initialised from the reward model
(N+/TRL); `ActorCritic` hides which, so the PPO loop is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from rlhfkit.algos.logprobs import logprobs_and_entropy, logprobs_from_logits
from rlhfkit.models.loading import position_ids_from_mask
from rlhfkit.models.packing import PackedGroups
from rlhfkit.models.readout import hidden_from
from rlhfkit.models.trunk_and_heads import hidden_size, output_logits, score_head, trunk


@dataclass
class PolicyOutput:
    """Per response token, each (B, T); entropy and values are None when not asked for."""

    logp: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def response_hidden(
    model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor
) -> torch.Tensor:
    """Trunk hidden states of the states s_0..s_{T-1} that predict the response tokens: (B, T, H).

    The last response token is never an input: no state after it is needed (the state it ends is
    terminal), so the trunk runs over P + T - 1 positions, and the prompt's other positions only
    feed the last block's keys and values.
    """
    n_prompt = prompt_ids.shape[1]
    context = response_ids[:, :-1]  # (B, T-1): a_{T-1} predicts nothing we use
    input_ids = torch.cat([prompt_ids, context], dim=1)  # (B, P+T-1)
    # Tokens after EOS are attended to like any other; causality keeps them out of s_t for t <= EOS.
    attention_mask = torch.cat([prompt_mask, torch.ones_like(context)], dim=1)
    # position P-1+t holds s_t; GPT-2 runs its last block on those T positions only (models/readout.py)
    return hidden_from(model, input_ids, attention_mask, position_ids_from_mask(attention_mask), n_prompt - 1)


def packed_response_hidden(model: PreTrainedModel, packed: PackedGroups, prompt_lengths: torch.Tensor,
                           n_resp: int) -> torch.Tensor:
    """`response_hidden` of N sequences (own layout: a prompt of prompt_lengths[n] real tokens, then the
    response) packed after their shared prefixes (models/packing.py): (N, T, H), T = n_resp.

    s_t of sequence n sits at its own position prompt_lengths[n] - 1 + t, mapped into its packed row.
    Slots past a response's end point at some real position of the row (clamped); callers mask them.
    """
    hidden = trunk(model)(**packed.trunk_inputs(model)).last_hidden_state  # (R, L, H)
    steps = torch.arange(n_resp, device=hidden.device)
    at = packed.index(prompt_lengths.to(hidden.device)[:, None] - 1 + steps[None, :])  # (N, T)
    return hidden[packed.row.to(hidden.device)[:, None], at.clamp_max(hidden.shape[1] - 1)]  # (N, T, H)


def token_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    packed: PackedGroups | None = None,
) -> PolicyOutput:
    """log pi(a_t|s_t) of a causal LM (the reference model's forward), logits divided by temperature.

    With `packed` (the same rows' prompt + response packed after shared prefixes), the trunk runs over
    the packed rows; `prompt_mask` then only gives each prompt's length.
    """
    if packed is not None:
        hidden = packed_response_hidden(model, packed, prompt_mask.sum(1), response_ids.shape[1])
    else:
        hidden = response_hidden(model, prompt_ids, prompt_mask, response_ids)
    logits = output_logits(model, hidden)  # (B, T, V)
    if with_entropy:
        return PolicyOutput(*logprobs_and_entropy(logits, response_ids, temperature))
    return PolicyOutput(logprobs_from_logits(logits, response_ids, temperature))


class ActorCritic(torch.nn.Module):
    """Policy plus critic behind one forward: (logp, entropy, values) per response token.

    With `critic=None` and `value_head=True` a value head sits on the policy trunk (zero-initialised,
    as OAI does, so the first value estimates are 0); a `critic` is a sequence-classification model
    whose score head, applied at every position, gives V(s_t); with neither there are no values.
    """

    def __init__(self, policy: PreTrainedModel, critic: PreTrainedModel | None = None,
                 value_head: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = None
        if critic is None and value_head:
            self.value_head = torch.nn.Linear(hidden_size(policy), 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = True,
        with_values: bool = True,
    ) -> PolicyOutput:
        hidden = response_hidden(self.policy, prompt_ids, prompt_mask, response_ids)  # (B, T, H)
        logits = output_logits(self.policy, hidden)  # (B, T, V)
        if with_entropy:
            logp, entropy = logprobs_and_entropy(logits, response_ids, temperature)
        else:
            logp, entropy = logprobs_from_logits(logits, response_ids, temperature), None
        values = None
        if with_values:
            if self.value_head is not None:
                values = self.value_head(hidden).squeeze(-1).float()  # (B, T)
            else:
                values = self.critic_values(prompt_ids, prompt_mask, response_ids)
        return PolicyOutput(logp, entropy, values)

    def critic_values(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor
                      ) -> torch.Tensor:
        """V(s_t) of the separate critic: its score head at every response state, (B, T)."""
        if self.critic is None:
            raise ValueError("values asked for, but this ActorCritic has neither a value head nor a critic")
        critic_hidden = response_hidden(self.critic, prompt_ids, prompt_mask, response_ids)
        return score_head(self.critic)(critic_hidden).squeeze(-1).float()  # (B, T)
