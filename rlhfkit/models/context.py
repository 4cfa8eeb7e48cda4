"""A model's context length (the most positions it can read), from its config alone.

Length settings are checked against it before any work starts: `max_length` of `rlhfkit reward`
and `rlhfkit score` defaults to 0 = the model's context, and a value beyond the context is a
one-line `ConfigError` instead of an `IndexError` from the position embedding deep inside torch.
The context is read with `AutoConfig` (config.json only, no weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "max_seq_len",
                "max_seq_length", "seq_length")
"""Config fields that hold the context length, in the order they are looked up (first found wins)."""


@dataclass(frozen=True)
class ModelContext:
    """A model's context: `tokens` (None when its config names none) and where that number came from."""

    tokens: int | None
    source: str = ""  # e.g. "config.json n_positions"
    model: str = ""


def _config_of(model_or_config: Any) -> Any:
    """The (text) config of a model, a config, or a config dict."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):  # multimodal configs keep the language model's under text_config
        try:
            config = config.get_text_config(decoder=True)
        except TypeError:
            config = config.get_text_config()
    return config


def _context_field(model_or_config: Any) -> tuple[int, str] | None:
    """(context length, the config field holding it), or None when no field of CONTEXT_KEYS is set."""
    config = _config_of(model_or_config)
    stored = config if isinstance(config, dict) else config.to_dict()
    for key in CONTEXT_KEYS:  # the fields as written in config.json first (GPT-2 stores n_positions)
        value = stored.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    if not isinstance(config, dict):
        for key in CONTEXT_KEYS:  # then aliases (attribute_map), e.g. max_position_embeddings -> n_positions
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, key
    return None


def context_length(model_or_config: Any) -> int | None:
    """Context length in tokens of a model, its config or a config dict (None when the config names none)."""
    found = _context_field(model_or_config)
    return found[0] if found else None


def model_context(name_or_path: str | Path, **config_kwargs: Any) -> ModelContext:
    """The context of a model named like every model setting (HF id, folder or 'embedded'), read from its
    config without loading weights. A LoRA adapter folder (adapter_config.json, no config.json) reads
    the config of its base model."""
    from transformers import AutoConfig

    from rlhfkit.models.loading import load_pretrained, resolve_model_path

    path = Path(resolve_model_path(name_or_path, need_config=False))
    adapter = path / "adapter_config.json"
    if path.is_dir() and not (path / "config.json").is_file() and adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base:
            return model_context(base, **config_kwargs)
    config = load_pretrained(AutoConfig, name_or_path, "model config", **config_kwargs)
    found = _context_field(config)
    if found is None:
        return ModelContext(None, "", str(name_or_path))
    return ModelContext(found[0], f"config.json {found[1]}", str(name_or_path))


def resolve_length(setting_value: int, context: int | ModelContext | None, name: str, what: str = "model") -> int:
    """The length a setting stands for: 0 = the model's context; a value beyond the context is refused.

    `what` names the model in the message ("model", "policy", "reward model"). Negative values are
    refused by the setting's declared bound, before this is called.
    """
    ctx = context if isinstance(context, ModelContext) else ModelContext(context, "")
    where = f"{ctx.tokens} tokens, {ctx.source}" if ctx.source else f"{ctx.tokens} tokens"
    if setting_value == 0:
        if ctx.tokens is None:
            raise ConfigError(f"setting '{name}': 0 means the {what}'s context, but the config of "
                              f"{ctx.model or 'the ' + what} names none ({', '.join(CONTEXT_KEYS)}); pass "
                              f"--{name.replace('_', '-')} N")
        return ctx.tokens
    if ctx.tokens is not None and setting_value > ctx.tokens:
        raise ConfigError(f"setting '{name}': {setting_value} is longer than the {what}'s context ({where}); "
                          f"use at most {ctx.tokens}")
    return setting_value


def fit_prompt_and_response(prompt_length: int, new_tokens: int, context: ModelContext, what: str = "policy", *,
                            prompt_is_default: bool = False, new_is_default: bool = False) -> tuple[int, int, str]:
    """(max_prompt_length, max_new_tokens, note) that fit `context`: prompt + response <= its tokens.

    A default that does not fit is lowered (both defaults: the response keeps its length up to half
    the context, the prompt gets the rest) and `note` says so; a value the user set that does not fit
    is a one-line ConfigError naming the setting and the context. Fitting values come back as they are.
    """
    budget = context.tokens
    if budget is None or prompt_length + new_tokens <= budget:
        return prompt_length, new_tokens, ""
    where = f"{budget} tokens, {context.source}" if context.source else f"{budget} tokens"
    if budget < 2:
        raise ConfigError(f"setting 'max_prompt_length': the {what}'s context ({where}) holds no prompt and response")
    prompt, new = prompt_length, new_tokens
    if prompt_is_default and new_is_default:
        new = min(new_tokens, budget // 2)
        prompt = budget - new
    elif prompt_is_default:
        if new_tokens >= budget:
            raise ConfigError(f"setting 'max_new_tokens': {new_tokens} leaves no room for a prompt in the {what}'s "
                              f"context ({where}); use at most {budget - 1}")
        prompt = budget - new_tokens
    elif new_is_default:
        if prompt_length >= budget:
            raise ConfigError(f"setting 'max_prompt_length': {prompt_length} leaves no room for a response in the "
                              f"{what}'s context ({where}); use at most {budget - 1}")
        new = budget - prompt_length
    else:
        raise ConfigError(f"setting 'max_prompt_length': {prompt_length} + max_new_tokens {new_tokens} = "
                          f"{prompt_length + new_tokens} tokens is longer than the {what}'s context ({where}); make "
                          f"the two add up to at most {budget}")
    changed = [f"{name} {old} -> {value}" for name, old, value in
               (("max_prompt_length", prompt_length, prompt), ("max_new_tokens", new_tokens, new)) if old != value]
    lowered = "the defaults lowered" if len(changed) > 1 else "the default lowered"
    note = f"{', '.join(changed)}: {lowered} to fit the {what}'s context ({where})"
    return prompt, new, note
