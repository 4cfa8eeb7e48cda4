"""Load causal LMs and tokenizers from a Hugging Face id, a local directory, or the embedded model.

A local directory is read as is and nothing is fetched; `"embedded"` is the tiny model shipped
in rlhfkit/assets. Every model is returned with dropout switched off: dropout makes log-probs
stochastic, so the PPO ratio would not be 1 before any update (docs/implementation-details.md,
"Dropout off in every model").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.defaults import EMBEDDED_MODEL as EMBEDDED
from rlhfkit.errors import ModelError
from rlhfkit.models.kernels import use_fused_kernels


@dataclass
class LoadOptions:
    """How every model and tokenizer of a run is loaded (set once per run by `configure_loading`)."""

    dtype: str = "float32"  # weights' dtype: float32, bfloat16, float16 or auto (the checkpoint's own)
    trust_remote_code: bool = False  # run a model folder's own Python code (custom architectures)

    @property
    def torch_dtype(self) -> torch.dtype | str:
        return DTYPES[self.dtype]


DTYPES: dict[str, torch.dtype | str] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16, "auto": "auto"}
OPTIONS = LoadOptions()


def configure_loading(cfg: Any) -> LoadOptions:
    """Take a stage config's `dtype` and `trust_remote_code` for every load of this run (pass `LoadOptions()`
    for the defaults)."""
    OPTIONS.dtype, OPTIONS.trust_remote_code = cfg.dtype, cfg.trust_remote_code
    return OPTIONS


def resolve_model_path(name_or_path: str | Path, need_config: bool = True) -> str:
    """`"embedded"` -> the shipped tiny model; an existing directory -> itself; else a hub id.

    A string that looks like a local path (starts with '.', '/', '~' or exists partly) but is
    not a directory is an error here, so a typo never turns into a hub download attempt.
    """
    name = str(name_or_path)
    if name == EMBEDDED:
        from rlhfkit.assets import embedded_model_path

        return str(embedded_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if need_config and not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model directory (no config.json); pass a saved model's folder")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name}: model path does not exist; pass an existing directory, a Hugging Face id or "
                         f"'{EMBEDDED}'")
    return name


def _hub_unreachable(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("couldn't connect", "offline mode", "HF_HUB_OFFLINE", "Max retries", "resolve"))


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs a warning per failed request before raising; the ModelError below says it once."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pretrained(loader, name_or_path: str | Path, what: str, need_config: bool = True, **kwargs):
    """`loader.from_pretrained` with the path resolved and load errors as one-line ModelErrors: a hub id
    that is neither a local folder nor cached while offline, a truncated weights file, a config or
    tokenizer file that is not valid JSON."""
    from safetensors import SafetensorError

    path = resolve_model_path(name_or_path, need_config)
    kwargs.setdefault("trust_remote_code", OPTIONS.trust_remote_code)
    try:
        with _quiet_hub():
            return loader.from_pretrained(path, **kwargs)
    except OSError as e:
        if not Path(path).is_dir() and _hub_unreachable(e):
            raise ModelError(f"{name_or_path}: not a local folder, and the Hugging Face hub cannot be reached to "
                             f"download it (offline, or no network); pass a local model folder (saved with "
                             f"save_pretrained, or from `rlhfkit models prepare`) or '{EMBEDDED}'") from None
        raise ModelError(f"{name_or_path}: cannot load the {what} ({str(e).splitlines()[0]})") from None
    except SafetensorError as e:
        raise ModelError(f"{name_or_path}: the {what}'s weights file is damaged or cut short ({e}); save or copy "
                         "the model again") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{name_or_path}: a file of the {what} is not valid JSON (cut short? {e.msg}, line "
                         f"{e.lineno} column {e.colno}); save or copy the model again") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"{name_or_path}: the {what} needs the Python code its folder ships; pass "
                             "--trust-remote-code if you trust that code") from None
        if "Unrecognized configuration class" in str(e):  # the architecture has no class of this kind
            raise ModelError(f"{name_or_path}: transformers has no {getattr(loader, '__name__', loader)} for this "
                             f"architecture, so it cannot be the {what}; use a model whose architecture has one (or "
                             "whose auto_map names one)") from None
        raise


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model")


def load_tokenizer(name_or_path: str | Path, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it can pad.

    A tokenizer without a pad token gets its EOS token as pad. That is safe here because rlhfkit
    never derives masks from pad ids: attention and response masks come from lengths and the
    first EOS of each response (docs/implementation-details.md, "Pad token and EOS", explains the
    bug this avoids).
    """
    path = Path(resolve_model_path(name_or_path, need_config=False))
    # transformers quietly builds an empty tokenizer for a folder without one: every text would be [].
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{name_or_path}: no tokenizer files in this folder; pass the tokenizer's folder with "
                         "--tokenizer")
    tok = load_pretrained(AutoTokenizer, name_or_path, "tokenizer", need_config=False)
    if len(tok) < 2:
        raise ModelError(f"{name_or_path}: the tokenizer has {len(tok)} token(s); pass a real one with --tokenizer")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"{name_or_path}: tokenizer has neither a pad nor an EOS token; add a pad token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers turn text into the same ids (compared once, at setup)."""
    if a.eos_token_id != b.eos_token_id:
        return False
    if hasattr(a, "backend_tokenizer") and hasattr(b, "backend_tokenizer"):  # fast tokenizers: whole pipeline
        return a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    return a.get_vocab() == b.get_vocab()


def has_tokenizer(name_or_path: str | Path) -> bool:
    """Whether a model folder ships its own tokenizer files."""
    path = Path(resolve_model_path(name_or_path, need_config=False))
    return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


def load_run_tokenizer(tokenizer: str, model: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """The run's tokenizer: `tokenizer` (--tokenizer) when set, else the model's own. A --tokenizer that does
    not turn text into the ids the model's own tokenizer gives is refused: the model would read (and sample)
    ids that mean other words."""
    tok = load_tokenizer(tokenizer or model, padding_side=padding_side)
    if tokenizer and tokenizer != model and has_tokenizer(model):
        own = load_tokenizer(model, padding_side=padding_side)
        if not same_tokenizer(tok, own):
            raise ModelError(f"setting 'tokenizer': {tokenizer} ({len(tok)} tokens) does not match the tokenizer "
                             f"saved with the model {model} ({len(own)} tokens); drop --tokenizer to use the model's "
                             "own, or pass the tokenizer it was trained with")
    return tok


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (in place) and return the model."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_name: str) -> None:
    """Fail early when the tokenizer can emit ids the model has no embedding for."""
    n_model = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_model:
        raise ModelError(
            f"{model_name}: tokenizer has {len(tokenizer)} tokens but the model's embedding has {n_model}; "
            "use the tokenizer saved with this model"
        )


def load_causal_lm(
    name_or_path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | str | None = None,
) -> PreTrainedModel:
    """Load a causal LM (policy or reference) with dropout off, checked against its tokenizer.

    `dtype` None takes the run's `--dtype` (float32 unless set)."""
    model = load_pretrained(AutoModelForCausalLM, name_or_path, "causal LM",
                            dtype=OPTIONS.torch_dtype if dtype is None else dtype)
    if tokenizer is not None:
        check_vocab(model, tokenizer, str(name_or_path))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    return use_fused_kernels(disable_dropout(model))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: cumsum(mask) - 1, clamped at 0 (docs/implementation-details.md,
    "Position ids skip the left padding").

    With them, a left-padded sequence gets exactly the logits it gets unpadded.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
