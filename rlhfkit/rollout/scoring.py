"""Scores of finished episodes: a reward model, or a Python function of the text.

A reward model that shares the policy's tokenizer scores the token ids directly (no decode and
re-encode); one with another tokenizer gets the decoded prompt and response re-tokenised with
its own tokenizer, ending in its own EOS (docs/implementation-details.md, "A reward model with its
own tokenizer").
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.errors import ConfigError
from rlhfkit.models.context import context_length
from rlhfkit.models.reward_model import reward_scores


class Scorer(Protocol):
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        """(B,) float scores of the episodes."""
        ...


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers turn text into the same ids (compared once, at setup)."""
    if a.eos_token_id != b.eos_token_id:
        return False
    if hasattr(a, "backend_tokenizer") and hasattr(b, "backend_tokenizer"):  # fast tokenizers: whole pipeline
        return a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    return a.get_vocab() == b.get_vocab()


class RewardModelScorer:
    """Score episodes with a reward model (normalised scores, as saved by `rlhfkit reward`)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, policy_tokenizer: Any, batch_size: int = 64,
                 max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.shares_tokenizer = same_tokenizer(tokenizer, policy_tokenizer)
        self.batch_size = batch_size
        # re-encoded episodes keep their last tokens: at most the reward model's context
        self.max_length = max_length or context_length(model) or 2048

    @torch.no_grad()
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        if self.shares_tokenizer:
            # [left-padded prompt | response | right pad]: positions skip the left pad and the score is
            # read at the last real token, the EOS (or the last token of a response without one).
            ids = torch.cat([prompt_ids, response_ids], dim=1)
            mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
            return torch.cat([
                reward_scores(self.model, ids[i:i + self.batch_size], mask[i:i + self.batch_size])
                for i in range(0, ids.shape[0], self.batch_size)
            ])
        seqs = []
        for p, r in zip(prompts, responses):
            response = encode_response(self.tokenizer, r)
            prompt = encode_prompt(self.tokenizer, p)
            seqs.append((prompt + response)[-self.max_length:])
        device = next(self.model.parameters()).device
        scores = []
        for i in range(0, len(seqs), self.batch_size):
            ids, mask = pad_right(seqs[i:i + self.batch_size], self.tokenizer.pad_token_id)
            scores.append(reward_scores(self.model, ids.to(device), mask.to(device)))
        return torch.cat(scores)


def call_text_fn(fn: Callable[..., Sequence[float]], prompts: Sequence[str], responses: Sequence[str],
                 ended: Sequence[bool]) -> list[float]:
    """`fn(prompts, responses)`, plus `ended=` (did each response emit EOS?) when fn takes that keyword."""
    try:
        takes_ended = "ended" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some callables have no signature
        takes_ended = False
    kwargs = {"ended": list(ended)} if takes_ended else {}
    return [float(x) for x in fn(list(prompts), list(responses), **kwargs)]


class FunctionScorer:
    """Score episodes with a Python function `fn(prompts, responses[, ended]) -> list[float]`."""

    def __init__(self, fn: Callable[..., Sequence[float]]) -> None:
        self.fn = fn

    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        scores = call_text_fn(self.fn, prompts, responses, ended.tolist())
        out = torch.as_tensor(scores, dtype=torch.float32, device=response_ids.device)
        if out.shape != (len(prompts),):
            raise ValueError(f"reward function returned {tuple(out.shape)} scores for {len(prompts)} episodes")
        return out


def import_function(spec: str) -> Callable[..., Any]:
    """`package.module:function` -> the function (for --reward-fn)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"setting 'reward_fn': expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"setting 'reward_fn': cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"setting 'reward_fn': {module_name!r} has no function {attr!r}")
    return fn
