"""Scores of finished episodes: a reward model, or a Python function of the text.

A reward model that shares the policy's tokenizer scores the token ids directly (no decode and
re-encode); one with another tokenizer gets the decoded prompt and response re-tokenised with
its own tokenizer, ending in its own EOS (docs/implementation-details.md, "A reward model with its
own tokenizer").
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch

from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.errors import ConfigError, UserError
from rlhfkit.models.context import context_length
from rlhfkit.models.loading import same_tokenizer
from rlhfkit.models.reward_model import CRITERIA_KEY, criterion_scores, reward_scores


class Scorer(Protocol):
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        """(B,) float scores of the episodes."""
        ...


class RewardModelScorer:
    """Score episodes with a reward model (normalised scores, as saved by `rlhfkit reward`)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, policy_tokenizer: Any, batch_size: int = 64,
                 max_length: int | None = None, name: str = "") -> None:
        self.model = model
        self.name = name or str(getattr(model.config, "_name_or_path", ""))
        self.tokenizer = tokenizer
        self.shares_tokenizer = same_tokenizer(tokenizer, policy_tokenizer)
        self.batch_size = batch_size
        # re-encoded episodes keep their last tokens: at most the reward model's context
        self.max_length = max_length or context_length(model) or 2048

    @torch.no_grad()
    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        scores = self._scores(prompt_ids, prompt_mask, response_ids, response_mask, prompts, responses)
        finite = torch.isfinite(scores)
        if not bool(finite.all()):  # one device sync per rollout: NaN must never reach the optimizer
            check_scores(scores.tolist(), len(scores), f"the reward model {self.name}")
        return scores

    @torch.no_grad()
    def table(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
              ) -> torch.Tensor:
        """(B, C) scores, one column per criterion of the model (one forward pass of its trunk)."""
        scores = self._scores(prompt_ids, prompt_mask, response_ids, response_mask, prompts, responses,
                              read=criterion_scores)
        if not bool(torch.isfinite(scores).all()):
            check_scores(scores.reshape(-1).tolist(), scores.numel(), f"the reward model {self.name}")
        return scores

    def _scores(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, prompts: Sequence[str], responses: Sequence[str],
                read: Callable[..., torch.Tensor] = reward_scores) -> torch.Tensor:
        """`read(model, ids, mask)` over the episodes in batches: (B,) for reward_scores, (B, C) for
        criterion_scores."""
        if self.shares_tokenizer:
            # [left-padded prompt | response | right pad]: positions skip the left pad and the score is
            # read at the last real token, the EOS (or the last token of a response without one).
            ids = torch.cat([prompt_ids, response_ids], dim=1)
            mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
            return torch.cat([
                read(self.model, ids[i:i + self.batch_size], mask[i:i + self.batch_size])
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
            scores.append(read(self.model, ids.to(device), mask.to(device)))
        return torch.cat(scores)


class ScoreError(UserError):
    """A reward function or reward model gave scores that cannot be trained on (the run stops before any
    update uses them): '<who>[, <where>]: <what it did and what was expected>'."""

    def __init__(self, who: str, detail: str, where: str = "") -> None:
        self.who, self.detail, self.where = who, detail, where
        super().__init__(f"{who}{', ' + where if where else ''}: {detail}")

    def at(self, where: str) -> ScoreError:
        """The same error, saying where it happened (e.g. 'iteration 3')."""
        return self if self.where else ScoreError(self.who, self.detail, where)


@contextlib.contextmanager
def scores_checked_at(where: str) -> Iterator[None]:
    """Add `where` (e.g. 'iteration 3') to a ScoreError raised inside."""
    try:
        yield
    except ScoreError as e:
        raise e.at(where) from None


def function_name(fn: Any) -> str:
    """'module:function' as --reward-fn takes it."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def _episodes(rows: list[int], n: int) -> str:
    shown = ", ".join(map(str, rows[:6])) + (", ..." if len(rows) > 6 else "")
    return f"episode{'s' if len(rows) > 1 else ''} {shown} (of {n}, counted from 0)"


def check_scores(scores: Any, n: int, what: str) -> list[float]:
    """`scores` as n finite floats, or a ScoreError naming `what`, what came back and what was expected."""
    expected = f"expected one finite number per episode ({n})"

    def error(detail: str) -> ScoreError:
        return ScoreError(what, detail)

    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().reshape(-1).tolist() if scores.dim() <= 1 else scores
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__") or isinstance(scores, torch.Tensor):
        raise error(f"returned {type(scores).__name__} {str(scores)[:40]!r}; {expected}")
    values = list(scores)
    if len(values) != n:
        raise error(f"returned {len(values)} score(s) for {n} episodes; {expected}")
    bad = [i for i, v in enumerate(values) if isinstance(v, (bool, str, bytes)) or not isinstance(v, numbers.Real)]
    if bad:
        raise error(f"returned {type(values[bad[0]]).__name__} {str(values[bad[0]])[:40]!r} for {_episodes(bad, n)}; "
                    f"{expected}")
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise error(f"returned {out[bad[0]]} for {_episodes(bad, n)}; {expected} (a non-finite reward would "
                    "turn every weight into NaN; nothing was trained on it)")
    return out


def call_text_fn(fn: Callable[..., Sequence[float]], prompts: Sequence[str], responses: Sequence[str],
                 ended: Sequence[bool], what: str = "reward function") -> list[float]:
    """`fn(prompts, responses)`, plus `ended=` (did each response emit EOS?) when fn takes that keyword;
    its scores checked (`check_scores`): an error in the function or in what it returns is a ScoreError
    that names the function."""
    try:
        takes_ended = "ended" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some callables have no signature
        takes_ended = False
    kwargs = {"ended": list(ended)} if takes_ended else {}
    name = f"{what} {function_name(fn)}"
    try:
        scores = fn(list(prompts), list(responses), **kwargs)
    except Exception as e:  # the user's code: any exception is theirs to fix, with its first line
        message = str(e).splitlines()[0] if str(e).strip() else ""
        raise ScoreError(name, f"raised {type(e).__name__}{': ' + message if message else ''} (scoring "
                         f"{len(prompts)} episodes); fix the function") from None
    return check_scores(scores, len(prompts), name)


class FunctionScorer:
    """Score episodes with a Python function `fn(prompts, responses[, ended]) -> list[float]`."""

    def __init__(self, fn: Callable[..., Sequence[float]]) -> None:
        self.fn = fn

    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 response_mask: torch.Tensor, ended: torch.Tensor, prompts: Sequence[str], responses: Sequence[str]
                 ) -> torch.Tensor:
        scores = call_text_fn(self.fn, prompts, responses, ended.tolist())
        return torch.as_tensor(scores, dtype=torch.float32, device=response_ids.device)


def check_trained_reward_model(name: str, setting: str, allow: bool, flag: str) -> None:
    """A ConfigError unless `name` is a saved reward model (a *ForSequenceClassification with one output, or
    one per criterion named in its config, as `rlhfkit reward` writes): a plain causal LM would get a head
    of random weights that was never trained, and a run would optimise against noise.
    `allow` (the `flag`) accepts it anyway."""
    from transformers import AutoConfig

    from rlhfkit.models.loading import load_pretrained

    config = load_pretrained(AutoConfig, name, "reward model's config")  # a damaged config.json is one line here
    archs = getattr(config, "architectures", None) or []
    heads, named = getattr(config, "num_labels", 0), getattr(config, CRITERIA_KEY, None)
    trained = any(a.endswith("ForSequenceClassification") for a in archs) and (
        (heads == 1 and not named) or (isinstance(named, list) and len(named) == heads))
    if not allow and not trained:
        raise ConfigError(f"setting '{setting}': {name} is not a trained reward model (its config.json names no "
                          "one-output ...ForSequenceClassification head), so its score head would be random; train "
                          f"one with `rlhfkit reward --model {name}`, or pass {flag} to use an untrained head")


def import_function(spec: str, setting: str = "reward_fn") -> Callable[..., Any]:
    """`package.module:function` -> the function (for --reward-fn, --gold-fn, --gold-fns); errors name `setting`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"setting '{setting}': expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"setting '{setting}': cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"setting '{setting}': {module_name!r} has no function {attr!r}")
    return fn
