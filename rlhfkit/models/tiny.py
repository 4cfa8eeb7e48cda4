"""Tiny models built from a config, for tests, examples and quick experiments (offline, seconds).

`tiny_tokenizer(texts)` trains a byte-level BPE tokenizer on the given texts (pad, EOS, BOS and
UNK are separate special tokens); `tiny_causal_lm(tokenizer)` builds a randomly initialised
GPT-2 of a few hundred thousand parameters with dropout off, and `tiny_causal_lm(tokenizer,
arch="llama")` the same size of another decoder family (`ARCHITECTURES`: GPT-2, Llama, Qwen2,
Mistral, GPT-NeoX), so every code path can be checked on each family in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox")


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (left padding, for generation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, BOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK)
    hf.padding_side = "left"
    return hf


def tiny_config(tokenizer: PreTrainedTokenizerFast, arch: str = "gpt2", n_layer: int = 2, n_embd: int = 64,
                n_head: int = 2, n_positions: int = 128, **overrides) -> PretrainedConfig:
    """The config of a tiny decoder of family `arch` (one of ARCHITECTURES), every dropout 0.

    Llama, Qwen2 and Mistral get grouped-query attention (half as many key/value heads when
    n_head is even); `overrides` go to the config as they are (e.g. `sliding_window=8`).
    """
    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **special, **overrides)
    llama_like = dict(hidden_size=n_embd, intermediate_size=2 * n_embd, num_hidden_layers=n_layer,
                      num_attention_heads=n_head, max_position_embeddings=n_positions, attention_dropout=0.0)
    kv_heads = n_head // 2 if n_head % 2 == 0 else n_head
    if arch == "llama":
        return LlamaConfig(**llama_like, num_key_value_heads=kv_heads, **special, **overrides)
    if arch == "qwen2":
        return Qwen2Config(**llama_like, num_key_value_heads=kv_heads, **special, **overrides)
    if arch == "mistral":
        return MistralConfig(**llama_like, num_key_value_heads=kv_heads, **special, **overrides)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**llama_like, hidden_dropout=0.0, rotary_pct=0.5, **special, **overrides)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                   n_positions: int = 128, seed: int = 0, arch: str = "gpt2", **overrides) -> PreTrainedModel:
    """A randomly initialised causal LM of family `arch` (GPT-2 by default) with dropout 0, sized for tests."""
    config = tiny_config(tokenizer, arch, n_layer, n_embd, n_head, n_positions, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny(path: str | Path, texts: Iterable[str], vocab_size: int = 256, **model_kwargs) -> Path:
    """Train a tokenizer, build a model and save both to `path` (a model directory)."""
    tokenizer = tiny_tokenizer(texts, vocab_size)
    model = tiny_causal_lm(tokenizer, **model_kwargs)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)
