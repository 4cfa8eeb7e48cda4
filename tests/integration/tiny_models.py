"""Tiny float64 sequence-classification models built from configs, for exactness tests (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)


def tiny_gpt2(attn_implementation: str = "sdpa", **overrides) -> torch.nn.Module:
    """A 3-block GPT-2 scorer (1 label, 32 positions unless overridden), dropout off, eval mode."""
    torch.manual_seed(0)
    settings = dict(vocab_size=50, n_positions=32, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0)
    cfg = GPT2Config(**{**settings, **overrides})
    cfg._attn_implementation = attn_implementation
    return GPT2ForSequenceClassification(cfg).double().eval()


def tiny_other(arch: str, attn_implementation: str = "sdpa", **overrides) -> torch.nn.Module:
    """A 2-layer scorer of a non-GPT-2 family: llama, qwen2, mistral (sliding window 6) or gpt_neox."""
    torch.manual_seed(0)
    common = {**dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=32, pad_token_id=0, num_labels=1), **overrides}
    configs = {
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, sliding_window=6),
        "gpt_neox": lambda: GPTNeoXConfig(**common, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0),
    }
    cfg = configs[arch]()
    cfg._attn_implementation = attn_implementation
    return AutoModelForSequenceClassification.from_config(cfg).double().eval()
