"""Tiny models built from a config, for tests, examples and quick experiments (offline, seconds).

`tiny_tokenizer(texts)` trains a byte-level BPE tokenizer on the given texts (pad, EOS, BOS and
UNK are separate special tokens); `tiny_causal_lm(tokenizer)` builds a randomly initialised
GPT-2 of a few hundred thousand parameters with dropout off.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"


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


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                   n_positions: int = 128, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 with dropout 0, sized for tests."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def save_tiny(path: str | Path, texts: Iterable[str], vocab_size: int = 256, **model_kwargs: int) -> Path:
    """Train a tokenizer, build a model and save both to `path` (a model directory)."""
    tokenizer = tiny_tokenizer(texts, vocab_size)
    model = tiny_causal_lm(tokenizer, **model_kwargs)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)
