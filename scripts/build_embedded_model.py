"""Build the embedded tiny model in rlhfkit/assets/tiny (tokenizer + GPT-2 weights + model card).

    .venv/bin/python scripts/build_embedded_model.py

Deterministic: the corpus comes from `rlhfkit.data.synthetic` with a fixed seed, the tokenizer
trainer is deterministic, and pretraining runs on the CPU with fixed seeds, 2 threads and a fixed
data order, so the same versions of torch/tokenizers give the same weights (the model card records
the sha256 of model.safetensors). About 3 minutes on 2 idle CPU cores.

Recipe:
1. corpus: N_DOCS (prompt, reply) pairs on the train prompts; each document is
   `prompt + " " + reply` followed by the <eos> token, so the model learns to stop.
2. tokenizer: byte-level BPE (`tokenizers`), special tokens <pad> <eos> <bos> <unk> (pad is
   not EOS: masking padding must never mask the real EOS); left padding for generation.
3. model: GPT-2 from GPT2Config (MODEL below), dropout 0 everywhere so RL log-probs are the same
   in train and eval mode; trained from scratch with AdamW, warmup + cosine decay, on the full
   document (prompt and reply tokens), padding masked out of the loss.
4. evaluation: K samples (temperature 1, no top-k/top-p) per eval prompt, scored by the gold
   judge; the figures go into the model card and docs/embedded-model.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhfkit.data import synthetic
from rlhfkit.data.tokenize import pad_right

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "rlhfkit" / "assets" / "tiny"

SEED = 0
THREADS = 2
N_DOCS = 30_000
VOCAB_SIZE = 1024  # an upper bound: BPE stops earlier once no pair occurs twice
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
MODEL = dict(n_layer=4, n_head=4, n_embd=128, n_positions=64)
STEPS, BATCH, LR, WARMUP, MIN_LR_RATIO, WEIGHT_DECAY = 600, 64, 3e-3, 50, 0.1, 0.01
EVAL_K, MAX_NEW_TOKENS = 4, 24


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[PAD, EOS, BOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS,
                                   unk_token=UNK, padding_side="left", model_max_length=MODEL["n_positions"])


def encode(tok: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Token ids of `prompt reply <eos>` per pair (no BOS: prompts are tokenized the same way later)."""
    docs = [ids + [tok.eos_token_id] for ids in tok([f"{p} {r}" for p, r in pairs])["input_ids"]]
    too_long = max(len(d) for d in docs)
    if too_long > MODEL["n_positions"]:
        raise SystemExit(f"a document has {too_long} tokens > n_positions={MODEL['n_positions']}")
    return docs


def lm_loss(model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (non-pad) target tokens."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, T-1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=-100)


def lr_at(step: int, steps: int) -> float:
    """Linear warmup over WARMUP steps, then cosine decay to MIN_LR_RATIO * LR at `steps`."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model: GPT2LMHeadModel, docs: list[list[int]], pad_id: int, steps: int) -> list[float]:
    """AdamW over shuffled epochs of `docs` (order from a seeded generator); returns per-step losses."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    order: list[int] = []
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        if len(order) < BATCH:
            order += torch.randperm(len(docs), generator=gen).tolist()
        chosen, order = order[:BATCH], order[BATCH:]
        ids, mask = pad_right([docs[i] for i in chosen], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        loss = lm_loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {lr_at(step, steps):.2e}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, docs: list[list[int]], pad_id: int) -> float:
    total, count = 0.0, 0
    for i in range(0, len(docs), 256):
        ids, mask = pad_right(docs[i: i + 256], pad_id)
        n = int(mask[:, 1:].sum())
        total += lm_loss(model, ids, mask).item() * n
        count += n
    return total / count


@torch.no_grad()
def sample(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, prompts: list[str]) -> list[tuple[str, bool, int]]:
    """(reply text, ended with EOS, reply tokens before EOS) for each prompt, pure sampling at T=1."""
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    rows = []
    for seq in out[:, enc["input_ids"].shape[1]:].tolist():
        n = seq.index(tok.eos_token_id) if tok.eos_token_id in seq else len(seq)
        rows.append((tok.decode(seq[:n]).strip(), n < len(seq), n))
    return rows


def sample_stats(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast) -> tuple[dict, list[tuple[str, str, float]]]:
    """Gold statistics of K samples per eval prompt, and a few examples for the model card."""
    torch.manual_seed(SEED)
    eval_prompts = synthetic.all_prompts("eval")
    scores, eos, lengths, in_vocab, best, examples, texts = [], [], [], [], [], [], []
    for i in range(0, len(eval_prompts), 50):
        chunk = eval_prompts[i: i + 50]
        rows = sample(model, tok, [p for p in chunk for _ in range(EVAL_K)])
        for j, prompt in enumerate(chunk):
            group = rows[j * EVAL_K: (j + 1) * EVAL_K]
            group_scores = [synthetic.gold_score(prompt, text, finished=ended) for text, ended, _ in group]
            scores += group_scores
            best.append(max(group_scores))
            for text, ended, n in group:
                texts.append(text)
                eos.append(ended)
                lengths.append(n)
                words = text.split()
                in_vocab.append(all(w in synthetic.DOMAIN_VOCAB for w in words))
            if (i + j) % 12 == 0:  # a dozen examples spread over the topics
                examples.append((prompt, group[0][0] + (" <eos>" if group[0][1] else " ..."), group_scores[0]))
    stats = {
        "eval_prompts": len(eval_prompts), "samples": len(scores),
        "gold_mean": statistics.mean(scores), "gold_std": statistics.pstdev(scores),
        "best_of_k_gold_mean": statistics.mean(best), "eos_share": sum(eos) / len(eos),
        "mean_reply_tokens": statistics.mean(lengths), "in_vocab_share": sum(in_vocab) / len(in_vocab),
        "distinct_replies_share": len(set(texts)) / len(texts),
    }
    return stats, examples


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(out: Path, n_params: int, vocab: int, steps: int, train_loss: float, eval_loss: float,
               seconds: tuple[float, float],
               stats: dict, examples: list[tuple[str, str, float]]) -> None:
    config = ", ".join(f"{k}={v}" for k, v in MODEL.items())
    lines = [
        "# rlhfkit embedded tiny model",
        "",
        "A 4-layer GPT-2 trained from scratch on the synthetic customer-support task of",
        "`rlhfkit.data.synthetic` (see docs/embedded-model.md). It is the default base model of",
        "`rlhfkit demo`: small enough for RLHF on a laptop CPU in minutes, with no download.",
        "",
        "Rebuild (deterministic, about 3 minutes on 2 idle CPU cores):",
        "",
        "    .venv/bin/python scripts/build_embedded_model.py",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | GPT2LMHeadModel, {config}, tied input/output embeddings |",
        "| dropout | 0 (resid, embd, attn): train and eval mode give the same log-probs |",
        f"| vocabulary | {vocab} byte-level BPE tokens; `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3 |",
        f"| parameters | {n_params:,} ({n_params * 4 / 1e6:.1f} MB in fp32 safetensors) |",
        f"| pretraining | {N_DOCS:,} documents `prompt reply <eos>`, {steps} AdamW steps of {BATCH}, "
        f"lr {LR} (warmup {WARMUP}, cosine to {MIN_LR_RATIO * LR:.0e}), seed {SEED}, {THREADS} threads |",
        f"| time | {seconds[0]:.0f} s wall, {seconds[1]:.0f} CPU-seconds ({THREADS} threads) |",
        f"| loss | train (mean of last 50 steps) {train_loss:.4f}; held-out (eval prompts) {eval_loss:.4f} |",
        f"| model.safetensors sha256 | `{sha256(out / 'model.safetensors')}` |",
        "",
        "Tokenizer: prompts are encoded without special tokens and left-padded for generation;",
        "padding uses `<pad>`, never `<eos>`. The generation config samples at temperature 1.0",
        "(no top-k / top-p) and stops at `<eos>`.",
        "",
        f"## Samples (temperature 1.0, {EVAL_K} per eval prompt, at most {MAX_NEW_TOKENS} new tokens)",
        "",
        "| | |",
        "|---|---|",
        f"| samples | {stats['samples']} on {stats['eval_prompts']} held-out prompts |",
        f"| gold score | mean {stats['gold_mean']:.3f}, std {stats['gold_std']:.3f} |",
        f"| best of {EVAL_K} by gold score | mean {stats['best_of_k_gold_mean']:.3f} |",
        f"| ended with `<eos>` | {100 * stats['eos_share']:.1f}% |",
        f"| reply length | {stats['mean_reply_tokens']:.1f} tokens on average (before `<eos>`) |",
        f"| every word in the domain vocabulary | {100 * stats['in_vocab_share']:.1f}% |",
        f"| distinct replies | {100 * stats['distinct_replies_share']:.1f}% of the samples |",
        "",
        "| gold | prompt | sampled reply |",
        "|---|---|---|",
        *[f"| {score:+.2f} | {prompt} | {reply} |" for prompt, reply, score in examples],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="optimizer steps (default: %(default)s, the shipped model; fewer for quick checks)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    random.seed(SEED)
    torch.manual_seed(SEED)

    pairs = synthetic.pretraining_corpus(N_DOCS, seed=SEED)
    tok = build_tokenizer([f"{p} {r}" for p, r in pairs])
    if tok.pad_token_id == tok.eos_token_id:
        raise SystemExit("pad and eos must be different tokens")
    docs = encode(tok, pairs)
    heldout_prompts = synthetic.all_prompts("eval")
    rng = random.Random(SEED + 1)
    heldout = encode(tok, [(p, synthetic.sample_response(p, rng)) for p in heldout_prompts for _ in range(4)])
    print(f"corpus: {len(docs)} documents, {sum(map(len, docs))} tokens; vocabulary {len(tok)}")

    config = GPT2Config(vocab_size=len(tok), **MODEL, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        summary_first_dropout=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {MODEL}, {n_params:,} parameters")

    t0, cpu0 = time.perf_counter(), time.process_time()
    losses = pretrain(model, docs, tok.pad_token_id, args.steps)
    # CPU seconds as well as wall seconds: wall time grows when other jobs share the cores
    seconds = (time.perf_counter() - t0, time.process_time() - cpu0)
    train_loss, eval_loss = statistics.mean(losses[-50:]), heldout_loss(model, heldout, tok.pad_token_id)
    print(f"pretraining: {seconds[0]:.0f}s wall, {seconds[1]:.0f} CPU-s, train loss {train_loss:.4f}, "
          f"held-out loss {eval_loss:.4f}")

    model.generation_config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)

    stats, examples = sample_stats(model, tok)
    print(json.dumps(stats, indent=1))
    for prompt, reply, score in examples:
        print(f"{score:+.2f}  {prompt} {reply}")
    write_card(args.out, n_params, len(tok), args.steps, train_loss, eval_loss, seconds, stats, examples)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
