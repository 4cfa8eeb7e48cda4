"""LoRA through peft: only the adapters (and the new heads) train, the RL reference is the base with
the adapters off, and the saved adapter and merged weights load in plain transformers / peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from toy_data import known_rule_pairs, known_rule_rankings, write_jsonl
from toy_rewards import count_a
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.lora import LoRASpec, add_lora
from rlhfkit.models.policy import token_logprobs
from rlhfkit.models.reward_model import build_reward_model, reward_scores
from rlhfkit.pipelines.score import score_rows
from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.rl_config import PPOConfig


def test_ppo_with_lora_reference_is_the_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the river\ndescribe the city\nwrite about a door\nwhat happened to light\n")
    out = tmp_path / "ppo"
    cfg = PPOConfig(policy=str(tiny_model_dir), prompts=str(prompts), output_dir=str(out), iterations=4,
                    rollout_batch_size=16, num_minibatches=2, update_epochs=2, max_new_tokens=12, learning_rate=1e-2,
                    lora_r=4, lora_alpha=8, sample_every=0, mixed_precision="no")
    history = train_ppo(cfg, reward_fn=count_a)
    # B = 0 at the start: the adapted policy is the reference bit for bit, so the first KL is exactly 0
    assert history[0]["kl/ref"] == 0.0
    assert history[-1]["kl/ref"] != 0.0  # and the adapters did move the policy

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # save_merged: a plain transformers folder
    batch = tokenizer(["tell me about the river", "describe"], return_tensors="pt", padding=True)
    response = torch.tensor([[5, 9, 17, 3], [8, 8, 2, 40]])
    with torch.no_grad():
        want_base = token_logprobs(base, batch["input_ids"], batch["attention_mask"], response).logp
        with adapted.disable_adapter():
            off = token_logprobs(adapted.get_base_model(), batch["input_ids"], batch["attention_mask"], response).logp
        on = token_logprobs(adapted.get_base_model(), batch["input_ids"], batch["attention_mask"], response).logp
        want_merged = token_logprobs(merged, batch["input_ids"], batch["attention_mask"], response).logp
    assert torch.equal(off, want_base)  # the reference: the base model's log-probs exactly
    torch.testing.assert_close(on, want_merged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(on, want_base, atol=1e-4)
    # only the adapters are in the adapter file (a few thousand numbers, not the whole model)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["peft_type"] == "LORA"


def test_lora_trains_only_the_adapters_and_the_value_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rlhfkit.trainers.rl_run import build_rl

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the river\n")
    cfg = PPOConfig(policy=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / "run"),
                    iterations=1, rollout_batch_size=4, num_minibatches=1, max_new_tokens=4, lora_r=2,
                    reward_fn="toy_rewards:count_a")
    run = build_rl(cfg, with_critic=True)
    trained = {name for name, p in run.unwrapped.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or name.startswith("value_head") for name in trained), sorted(trained)
    in_optimizer = sum(p.numel() for group in run.optimizer.param_groups for p in group["params"])
    total = sum(p.numel() for p in run.unwrapped.parameters())
    assert in_optimizer == sum(p.numel() for name, p in run.unwrapped.named_parameters() if name in trained)
    assert in_optimizer < 0.1 * total


def test_reward_model_with_lora_scores_the_same_in_plain_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ranked.jsonl", known_rule_rankings(40, seed=6))
    out = tmp_path / "rm"
    metrics = train_reward(RewardConfig(model=str(tiny_model_dir), train_data=str(data), output_dir=str(out),
                                        batch_size=8, learning_rate=5e-3, lora_r=4, normalize="none",
                                        mixed_precision="no"))
    assert metrics["train/steps"] >= 4
    assert (out / "adapter" / "adapter_config.json").is_file()
    rows = [{"prompt": "tell me about the river", "completion": " the great door"},
            {"prompt": "describe", "completion": " a rotten day"}]
    rows_file = write_jsonl(tmp_path / "rows.jsonl", rows)
    ours = [r["score"] for r in score_rows(ScoreConfig(model=str(out), data=str(rows_file), normalized=False))]
    tokenizer = load_tokenizer(out, padding_side="right")
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    for row, score in zip(rows, ours):
        # the text rlhfkit scores: prompt + completion + EOS (docs/real-models.md)
        ids = tokenizer(row["prompt"])["input_ids"] + tokenizer(row["completion"])["input_ids"]
        ids = ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            theirs = plain(torch.tensor([ids])).logits[0, 0].item()
        assert theirs == pytest.approx(score, abs=1e-4)


def test_bf16_evaluation_of_a_lora_reward_model_is_that_of_its_saved_weights(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    # Under bf16 autocast an unmerged adapter's small output is lost when added to the bf16-rounded base
    # output; the held-out numbers must be those of the merged weights the run saves.
    train_file = write_jsonl(tmp_path / "train.jsonl", known_rule_pairs(96, seed=1))
    eval_rows = known_rule_pairs(64, seed=2)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    out = tmp_path / "rm"
    metrics = train_reward(RewardConfig(model=str(tiny_model_dir), train_data=str(train_file),
                                        eval_data=str(eval_file), output_dir=str(out), batch_size=16,
                                        learning_rate=1e-4, lora_r=4, normalize="none", mixed_precision="bf16",
                                        seed=0))
    tok = load_tokenizer(out, padding_side="right")
    saved = build_reward_model(out, tok, init_head=False).eval()  # the merged weights, loaded afresh
    scores = []
    for key in ("chosen", "rejected"):
        seqs = [encode_prompt(tok, r["prompt"]) + encode_response(tok, r[key]) for r in eval_rows]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            scores.append(reward_scores(saved, *pad_right(seqs, tok.pad_token_id)).double())
    # the same weights and precision give the same numbers (the unmerged adapters were 1e-3 off here)
    assert metrics["eval/margin"] == pytest.approx((scores[0] - scores[1]).mean().item(), abs=4e-4)
    assert metrics["eval/reward_mean"] == pytest.approx(torch.cat(scores).mean().item(), abs=4e-4)


def test_merged_adapters_compute_the_unmerged_model_and_the_reference_inside(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    lora = add_lora(model, LoRASpec(r=4, alpha=8), "CAUSAL_LM")
    torch.manual_seed(0)
    for name, p in lora.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # adapters that change the model
    ids = torch.tensor([[5, 9, 17, 3, 22, 41]])
    with torch.no_grad():
        with lora.adapters_off():
            base = lora.model(ids).logits.double()
        adapted = lora.model(ids).logits.double()
        with lora.merged():
            merged = lora.model(ids).logits.double()
            with lora.adapters_off():
                off_inside = lora.model(ids).logits.double()
            merged_again = lora.model(ids).logits.double()
        after = lora.model(ids).logits.double()
    assert (adapted - base).abs().max() > 1e-2  # the adapters matter
    for got in (merged, merged_again, after):
        torch.testing.assert_close(got, adapted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(off_inside, base, atol=1e-5, rtol=1e-5)
