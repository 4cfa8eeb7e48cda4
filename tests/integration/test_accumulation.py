"""Gradient accumulation gives the one-pass result, and every rollout tensor lives on the models' device.

Accumulation: a minibatch of 8 episodes (or 8 comparisons) trained as 8 micro-batches of 1
must give the same losses and weights as one pass of 8, since each micro-batch's loss divides
by the whole minibatch's count. Only float32 summation order differs (about 1e-7 relative per
step); we allow 1e-5 after a few AdamW steps, while dividing each micro-batch by its own count
(the usual fault) changes the loss of a ragged minibatch by percents.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_data import known_rule_rankings, write_jsonl
from toy_rewards import count_a

from rlhfkit.data import synthetic
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import ActorCritic, token_logprobs
from rlhfkit.rollout.collect import collect_rollout
from rlhfkit.rollout.sampling import SamplingSettings
from rlhfkit.rollout.scoring import FunctionScorer
from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig
from rlhfkit.trainers.rl_config import PPOConfig

KEYS = ("loss/total", "loss/policy", "loss/value", "policy/clipfrac", "policy/approx_kl", "reward/mean", "kl/ref")


def same_weights(a: Path, b: Path, atol: float) -> None:
    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=atol, msg=name)


def test_ppo_one_pass_of_8_equals_8_micro_batches_of_1(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(synthetic.prompts(16, seed=1, split="train")) + "\n")

    def run(name: str, **memory: int | bool) -> list[dict]:
        cfg = PPOConfig(policy="embedded", prompts=str(prompts), output_dir=str(tmp_path / name),
                        iterations=2, rollout_batch_size=16, num_minibatches=2, update_epochs=2, max_new_tokens=12,
                        learning_rate=1e-3, sample_every=0, threads=1,
                        mixed_precision="no", **memory)  # fp32: bf16 rounds differently per batch shape
        return train_ppo(cfg, reward_fn=count_a)

    whole = run("whole")
    assert min(r["response/length"] for r in whole) < 12  # ragged: some replies stop at EOS
    # 8 micro-batches of 1; then the other memory settings: sampling 3 episodes at a time, and
    # recomputing activations in the backward. Each must leave the numbers as they are.
    for name, memory in (("micro", {"micro_batch_size": 1}),
                         ("bounded", {"generation_batch_size": 3, "gradient_checkpointing": True})):
        parts = run(name, **memory)
        for key in KEYS:
            assert [r[key] for r in parts] == pytest.approx([r[key] for r in whole], rel=1e-5, abs=1e-5), (name, key)
        same_weights(tmp_path / "whole", tmp_path / name, atol=1e-5)


def test_reward_model_one_pass_of_8_equals_8_micro_batches_of_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ranked.jsonl", known_rule_rankings(30, seed=5))

    def run(micro: int) -> dict:
        cfg = RewardConfig(model=str(tiny_model_dir), train_data=str(data), eval_fraction=0.2, batch_size=8,
                           output_dir=str(tmp_path / f"rm{micro}"), learning_rate=2e-3, max_length=96,
                           micro_batch_size=micro, normalize="none", threads=1,
                           mixed_precision="no")
        return train_reward(cfg)

    whole, parts = run(0), run(1)
    assert parts["eval/loss"] == pytest.approx(whole["eval/loss"], rel=1e-5)
    assert parts["train/steps"] == whole["train/steps"] >= 8
    same_weights(tmp_path / "rm0", tmp_path / "rm1", atol=1e-5)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_rollout_tensor_is_on_the_models_device(device: str) -> None:
    """A Python reward function scores on the CPU; its scores must still join the rollout's device."""
    tokenizer = load_tokenizer("embedded", padding_side="left")
    policy = load_causal_lm("embedded", tokenizer).to(device)
    reference = load_causal_lm("embedded", tokenizer).to(device)
    actor = ActorCritic(policy)
    texts = synthetic.prompts(4, seed=2, split="train")
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def ref(p: torch.Tensor, m: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return token_logprobs(reference, p, m, r).logp

    rollout, _ = collect_rollout(actor, ref, FunctionScorer(count_a), tokenizer, ids, mask, texts,
                                 SamplingSettings(max_new_tokens=6), seeds=[0, 1, 2, 3],
                                 forward_chunks=[torch.arange(4)], missing_eos_penalty=0.5)
    devices = {name: t.device.type for name, t in rollout.tensors().items()}
    assert set(devices.values()) == {device}, devices
    assert {"scores", "old_logp", "ref_logp", "old_values", "mask"} <= set(devices)
