"""--bf16-weights: bf16 parameters for the forward and backward, fp32 copies for AdamW, checkpoints and saves.

The updates are checked against float64 arithmetic on the same bf16 weights; the RL run against its own
uninterrupted twin (resume) and its reference (KL 0 before the first update).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_rewards import count_a
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.errors import ConfigError
from rlhfkit.trainers.master_weights import MasterWeights, check_bf16_weights
from rlhfkit.trainers.optim_step import optimizer_step
from rlhfkit.trainers.reinforce import train as train_reinforce
from rlhfkit.trainers.rl_config import ReinforceConfig


class _NoSchedule:
    def step(self) -> None:
        pass


def _mlp() -> torch.nn.Module:
    """Weights that bf16 holds exactly (+-1/64 .. +-1 in steps of 1/64), so bf16(w) = w to start with, and
    half a bf16 step of each is at least 2^-14 (6.1e-5)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    with torch.no_grad():
        for p in net.parameters():
            sign = torch.randint(0, 2, p.shape) * 2 - 1
            p.copy_(sign * torch.randint(1, 65, p.shape) / 64)
    return net


def _grad64(net: torch.nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Float64 gradient of sum_i mean(net(x_i)^2) at the net's current (bf16) weight values."""
    twin = _mlp().double()
    with torch.no_grad():
        for a, b in zip(twin.parameters(), net.parameters(), strict=True):
            a.copy_(b.double())
    sum(twin(x.double()).pow(2).mean() for x in xs).backward()
    return [p.grad for p in twin.parameters()]


def test_construction_keeps_the_fp32_values_and_stores_bf16() -> None:
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    master = MasterWeights(net)
    for p, w, b in zip(net.parameters(), master.parameters(), before, strict=True):
        assert p.dtype == torch.bfloat16 and w.dtype == torch.float32
        assert torch.equal(w, b) and torch.equal(p.float(), b)


def test_small_updates_add_up_in_the_fp32_copies(cpu_accelerator) -> None:
    # Five SGD steps of lr 1e-5 move no weight by half a bf16 step (|g| < 1 here), so bf16 weights trained
    # alone would not move at all; the fp32 copies move by 5 * lr * g, g the float64 gradient at the
    # (unchanged) bf16 weights, up to bf16's error in g (3%) and fp32's rounding of each step (2^-24 each).
    net = _mlp()
    master = MasterWeights(net)
    start = [w.detach().double().clone() for w in master.parameters()]
    start16 = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(master.parameters(), lr=1e-5)
    x = torch.randn(8, 6).bfloat16()
    g = _grad64(net, [x])
    assert max(float(gi.abs().max()) for gi in g) < 1.0
    k = 5
    acc = cpu_accelerator()
    for _ in range(k):
        optimizer_step(acc, net, opt, _NoSchedule(), [x], lambda part: net(part).float().pow(2).mean(), 0.0, master)
    for w, w0, gi, p, p0 in zip(master.parameters(), start, g, net.parameters(), start16, strict=True):
        moved = w.detach().double() - w0
        assert torch.allclose(moved, -k * 1e-5 * gi, rtol=3e-2, atol=k * 2.0**-23), (moved, -k * 1e-5 * gi)
        assert torch.equal(p, p0) and torch.equal(p, w.detach().bfloat16())  # the model reads bf16(w32)
    moved_entries = sum(int((w.detach().double() != w0).sum()) for w, w0 in zip(master.parameters(), start))
    assert moved_entries > 0.8 * sum(w.numel() for w in start)


def test_micro_batches_sum_in_fp32_and_clipping_acts_on_the_copies(cpu_accelerator) -> None:
    net = _mlp()
    master = MasterWeights(net)
    start = [w.detach().double().clone() for w in master.parameters()]
    opt = torch.optim.SGD(master.parameters(), lr=1.0)
    parts = [torch.randn(4, 6).bfloat16(), torch.randn(3, 6).bfloat16()]
    g = _grad64(net, parts)  # the sum of the two micro-batches' gradients
    norm64 = torch.sqrt(sum((gi**2).sum() for gi in g))
    max_norm = 0.1 * float(norm64)
    norm = optimizer_step(cpu_accelerator(), net, opt, _NoSchedule(), parts,
                          lambda part: net(part).float().pow(2).mean(), max_norm, master)
    assert abs(float(norm) - float(norm64)) < 2e-2 * float(norm64)
    for w, w0, gi in zip(master.parameters(), start, g, strict=True):
        expected = -gi * max_norm / norm64  # lr 1, the summed gradient scaled to max_norm
        assert torch.allclose(w.double() - w0, expected, rtol=3e-2, atol=1e-3 * max_norm)
    assert all(p.grad is None for p in net.parameters())  # the bf16 gradients were moved to the copies


def test_fp32_weights_is_what_a_checkpoint_saves_and_loads() -> None:
    net = _mlp()
    master = MasterWeights(net)
    with torch.no_grad():
        master.parameters()[0].add_(1e-5)  # a change that bf16 cannot hold
    with master.fp32_weights():
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        assert all(v.dtype == torch.float32 for v in saved.values())
        assert torch.equal(saved["0.weight"], master.parameters()[0].detach())
        net.load_state_dict({k: v + 0.25 for k, v in saved.items()})  # loading writes the fp32 copies
    for (name, v), p, w in zip(saved.items(), net.parameters(), master.parameters(), strict=True):
        assert torch.equal(w.detach(), v + 0.25), name
        assert p.dtype == torch.bfloat16 and torch.equal(p, (v + 0.25).bfloat16())


def test_settings_it_cannot_work_with_are_one_line_errors(tiny_model_dir: Path, rule_pairs_file: Path,
                                                           tmp_path: Path) -> None:
    base = dict(policy="x", prompts="p.jsonl", bf16_weights=True)
    with pytest.raises(ConfigError, match="needs bf16 mixed precision.*--mixed-precision bf16"):
        check_bf16_weights(ReinforceConfig(**base, mixed_precision="no"), "no", 1)
    with pytest.raises(ConfigError, match="full fine-tuning only"):
        check_bf16_weights(ReinforceConfig(**base, mixed_precision="bf16", lora_r=4), "bf16", 1)
    with pytest.raises(ConfigError, match="--dtype bfloat16"):
        check_bf16_weights(ReinforceConfig(**base, mixed_precision="bf16", dtype="bfloat16"), "bf16", 1)
    with pytest.raises(ConfigError, match="one process only"):
        check_bf16_weights(ReinforceConfig(**base, mixed_precision="bf16"), "bf16", 2)
    result = CliRunner().invoke(app, ["reward", "--model", str(tiny_model_dir), "--train-data", str(rule_pairs_file),
                                      "--bf16-weights", "--mixed-precision", "no", "--output-dir",
                                      str(tmp_path / "out")])
    said = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert "setting 'bf16_weights': needs bf16 mixed precision" in said, result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def prompts_file(toy_prompts_file: Path) -> Path:
    return toy_prompts_file


def _grpo(tiny_model_dir: Path, prompts_file: Path, out: Path, iterations: int, **kw) -> ReinforceConfig:
    return ReinforceConfig(policy=str(tiny_model_dir), prompts=str(prompts_file), output_dir=str(out),
                           rollout_batch_size=16, samples_per_prompt=4, baseline="grpo", kl_in="loss",
                           max_new_tokens=8, learning_rate=3e-3, sample_every=0, seed=0, iterations=iterations,
                           num_minibatches=2, update_epochs=2, lr_schedule="constant", mixed_precision="bf16",
                           bf16_weights=True, old_logprobs="forward", **kw)


def test_grpo_with_bf16_weights_resumes_exactly_and_saves_the_fp32_copies(tiny_model_dir, prompts_file,
                                                                          tmp_path: Path) -> None:
    whole = train_reinforce(_grpo(tiny_model_dir, prompts_file, tmp_path / "whole", 4), reward_fn=count_a)
    # policy and reference hold the same bf16 weights before the first update: KL 0 exactly; the first
    # minibatch's ratio is 1 up to bf16 rounding between the no-grad and the training forward (as with autocast)
    assert whole[0]["kl/ref"] == 0.0
    assert abs(whole[0]["policy/approx_kl_first"]) < 1e-5 and whole[0]["policy/clipfrac_first"] == 0.0
    assert whole[-1]["kl/ref"] > whole[0]["kl/ref"]  # and the updates moved the policy
    train_reinforce(_grpo(tiny_model_dir, prompts_file, tmp_path / "split", 2), reward_fn=count_a)
    resumed = train_reinforce(_grpo(tiny_model_dir, prompts_file, tmp_path / "split", 4, resume=True),
                              reward_fn=count_a)
    keys = ("reward/mean", "kl/ref", "loss/policy", "policy/grad_norm")
    for a, b in zip(whole[2:], resumed, strict=True):
        assert all(a[k] == b[k] for k in keys if k in a), {k: (a.get(k), b.get(k)) for k in keys}
    weights = load_file(tmp_path / "whole" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    off_bf16 = sum(int((w != w.bfloat16().float()).sum()) for w in weights.values())
    assert off_bf16 > 0.5 * sum(w.numel() for w in weights.values())  # the fp32 copies, not bf16 widened
