"""The embedded tiny model: loads offline, pads with its own token, stops, speaks the domain.

Thresholds come from the build's own measurement (rlhfkit/assets/tiny/README.md): on 600 samples
(4 per eval prompt, temperature 1) about 96% ended with <eos> and every one used only domain
words. Here 128 samples: a true EOS rate of 0.96 has a standard error of sqrt(.96 * .04 / 128) =
0.017, so 0.85 sits more than 6 standard errors below it and only a worse model fails.
"""

from __future__ import annotations

import hashlib
import re
import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.assets import EMBEDDED_MODEL_DIR, embedded_model_path
from rlhfkit.data import synthetic

# documented in the model card and docs/embedded-model.md
N_LAYER, N_EMBD, N_HEAD, N_POSITIONS = 4, 128, 4, 64
MIN_EOS_SHARE, MIN_IN_VOCAB_SHARE = 0.85, 0.90


@pytest.fixture(scope="module")
def tiny():
    path = embedded_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return model, tok


def test_tokenizer_special_tokens(tiny):
    _, tok = tiny
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.bos_token == "<bos>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left" and tok.model_max_length == N_POSITIONS
    # no special tokens are added to prompts; a prompt round-trips exactly
    prompt = synthetic.prompts(1, seed=0, split="eval")[0]
    ids = tok(prompt)["input_ids"]
    assert tok.eos_token_id not in ids and tok.decode(ids) == prompt


def test_config_and_weights_match_the_model_card(tiny):
    model, tok = tiny
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions) == (N_LAYER, N_EMBD, N_HEAD, N_POSITIONS)
    assert cfg.vocab_size == len(tok)
    assert (cfg.pad_token_id, cfg.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    # GPT-2 parameter count with tied embeddings: token + position embeddings, per block
    # 12 d^2 weights + 9 d biases + 4 d layer-norm, final layer norm 2 d
    d, v = N_EMBD, cfg.vocab_size
    expected = v * d + N_POSITIONS * d + N_LAYER * (12 * d * d + 13 * d) + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected

    card = (EMBEDDED_MODEL_DIR / "README.md").read_text()
    assert f"| parameters | {expected:,} " in card
    digest = hashlib.sha256((EMBEDDED_MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert re.search(r"sha256 \| `([0-9a-f]{64})`", card).group(1) == digest


@torch.no_grad()
def test_samples_stop_and_use_domain_words(tiny):
    model, tok = tiny
    prompts = [p for p in synthetic.prompts(32, seed=0, split="eval") for _ in range(4)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24)
    replies, ended = [], []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        n = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        ended.append(n < len(row))
        replies.append(tok.decode(row[:n]).strip())
    assert sum(ended) / len(ended) >= MIN_EOS_SHARE
    in_vocab = [set(r.split()) <= synthetic.DOMAIN_VOCAB for r in replies]
    assert sum(in_vocab) / len(in_vocab) >= MIN_IN_VOCAB_SHARE
    # samples of varied quality: the reward model needs both good and bad replies to rank
    scores = [synthetic.gold_score(p, r, finished=e) for p, r, e in zip(prompts, replies, ended)]
    assert statistics.pstdev(scores) > 0.5
    assert max(scores) >= 1.5 and min(scores) <= -1.5


@torch.no_grad()
def test_left_padding_does_not_change_greedy_replies(tiny):
    model, tok = tiny
    short, long = "customer : i forgot my password . agent :", synthetic.prompts(1, seed=1, split="eval")[0]
    alone = model.generate(**tok([short], return_tensors="pt"), do_sample=False, max_new_tokens=12)
    batch = tok([short, long], return_tensors="pt", padding=True)
    both = model.generate(**batch, do_sample=False, max_new_tokens=12)
    n = alone.shape[1] - tok([short], return_tensors="pt")["input_ids"].shape[1]
    assert both[0, batch["input_ids"].shape[1]:][:n].tolist() == alone[0, -n:].tolist()


def test_loads_as_a_scalar_reward_model():
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_path(), num_labels=1,
                                                               local_files_only=True)
    tok = AutoTokenizer.from_pretrained(embedded_model_path(), local_files_only=True)
    batch = tok(synthetic.prompts(3, seed=0, split="eval"), return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (3, 1)
