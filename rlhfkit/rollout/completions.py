"""K completions per prompt, for people (or the simulated labeler) to rank.

Uses the same batched KV-cache sampler as the trainers; completion j of prompt i is sampled
with a seed derived from (seed, i, j), so the same call always gives the same completions.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.data.tokenize import encode_prompt, pad_left
from rlhfkit.rollout.collect import decode_responses
from rlhfkit.rollout.sampling import SamplingSettings, sample
from rlhfkit.seeds import COMPLETION, derived_seed


@torch.no_grad()
def sample_completions(model: Any, tokenizer: Any, prompts: list[str], k: int, settings: SamplingSettings,
                       seed: int = 0, batch_size: int = 64, max_prompt_length: int = 512) -> list[list[str]]:
    """`k` sampled completions (text, up to the first EOS) for each prompt."""
    episodes = [(i, j) for i in range(len(prompts)) for j in range(k)]
    ids = [encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    texts: list[str] = []
    device = next(model.parameters()).device
    for start in range(0, len(episodes), batch_size):
        chunk = episodes[start:start + batch_size]
        prompt_ids, prompt_mask = pad_left([ids[i] for i, _ in chunk], tokenizer.pad_token_id)
        out = sample(model, prompt_ids.to(device), prompt_mask.to(device), settings, stop_token_ids(tokenizer),
                     tokenizer.pad_token_id, seeds=[derived_seed(seed, COMPLETION, i, j) for i, j in chunk])
        texts += decode_responses(tokenizer, out.response_ids, out.response_mask)
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
