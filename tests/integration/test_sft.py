"""`rlhfkit sft` on real (tiny) models: the loss is the cross-entropy of exactly the completion tokens,
micro-batches and packing leave it unchanged, the CLI run lowers the held-out loss and its output
folder is a policy `rlhfkit ppo` takes as is, and bad data stops the run with one line."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from toy_data import write_jsonl
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from rlhfkit.assets import embedded_model_path
from rlhfkit.cli import app
from rlhfkit.config import build_config
from rlhfkit.data import synthetic
from rlhfkit.data.demonstrations import (
    Demonstration,
    Segment,
    collate,
    pack,
    tokenize_demonstrations,
    unpacked,
)
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
from rlhfkit.trainers.sft import TargetLogits, batch_loss
from rlhfkit.trainers.sft import train as train_sft
from rlhfkit.trainers.sft_config import SFTConfig

runner = CliRunner()
NO_AUTOCAST = SimpleNamespace(autocast=contextlib.nullcontext, mixed_precision="no")  # all batch_loss reads of it
FAST = ["--threads", "1", "--mixed-precision", "no"]  # fp32 arithmetic; one thread beats two busy ones here


def reply(prompt: str) -> str:
    """The demonstrated behaviour: one fixed reply per kind of request, which the embedded model has never seen."""
    if "refund" in prompt:
        return " your refund is on its way . thank you for your patience ."
    if any(word in prompt for word in ("password", "account", "log")):
        return " your account is unlocked now . have a lovely day ."
    return " we are so sorry . a new one ships by express today . thank you ."


def demonstrations(n: int, split: str, seed: int) -> list[dict]:
    return [{"prompt": p, "completion": reply(p)} for p in synthetic.prompts(n, seed, split)]


def completion_nll(model: torch.nn.Module, tokenizer, pairs: list[tuple[str, str]]) -> tuple[float, int]:
    """Summed float64 cross-entropy of the completion tokens and their EOS, and their count: one example at a
    time through the model's own forward (full logits), token t read at position t - 1."""
    nll, n = 0.0, 0
    for p, c in pairs:
        prompt = tokenizer(p)["input_ids"]
        completion = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0].double()  # (L, V)
        nll += F.cross_entropy(logits[len(prompt) - 1:-1], torch.tensor(completion), reduction="sum").item()
        n += len(completion)
    return nll, n


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sft_data")
    return (write_jsonl(folder / "train.jsonl", demonstrations(96, "train", 1)),
            write_jsonl(folder / "eval.jsonl", demonstrations(24, "eval", 2)))


def test_the_loss_is_the_cross_entropy_of_exactly_the_completion_tokens() -> None:
    """Through the trainer's forward (LM head on target positions only) and a right-padded batch: the loss equals
    F.cross_entropy in float64 on the full logits at the positions of the completion ids and their EOS, found
    from the lengths of the separately encoded prompt and completion (no prompt, no padding)."""
    tokenizer = load_tokenizer("embedded", padding_side="right")
    model = load_causal_lm("embedded", tokenizer).eval()
    pairs = [("customer : my lamp is broken . agent :", " we will send you a new lamp today ."),
             ("customer : i forgot my password . agent :", " you can log in again now ."),
             ("customer : this is the worst shop ever . agent :", " a manager will call you today .")]
    demos = [Demonstration((Segment(p, False), Segment(c, True, eos=True)), False, i) for i, (p, c) in enumerate(pairs)]
    rows = unpacked(tokenize_demonstrations(demos, tokenizer, max_length=64))
    batch = collate(rows, [0, 1, 2], tokenizer.pad_token_id)
    count = rows.target_count([0, 1, 2])
    with torch.no_grad():
        loss = batch_loss(TargetLogits(model), batch, NO_AUTOCAST, count).item()
    for b, (p, c) in enumerate(pairs):  # the targets sit where the separately encoded completion sits
        start = len(tokenizer(p)["input_ids"])
        completion = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert batch["input_ids"][b, start:start + len(completion)].tolist() == completion
        assert batch["targets"][b].nonzero().flatten().tolist() == list(range(start, start + len(completion)))
    nll, n = completion_nll(model, tokenizer, pairs)
    assert count == n
    assert loss == pytest.approx(nll / n, rel=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_packed_batch_gives_the_unpacked_loss(arch: str) -> None:
    """Position ids that restart per example keep attention inside each example: the packed rows' loss equals the
    unpacked one; the same rows with positions running on across examples (attention crossing) do not."""
    texts = [" ".join(random.Random(i).choices("the a cat sat on mat dog ran far".split(), k=12)) for i in range(40)]
    tokenizer = tiny_tokenizer(texts, vocab_size=300)
    model = TargetLogits(tiny_causal_lm(tokenizer, arch=arch, n_positions=64).eval())
    rng = random.Random(0)

    def words(i: int) -> str:
        return " ".join(rng.choices(texts[i].split(), k=rng.randint(1, 8)))

    demos = [Demonstration((Segment(words(i), False), Segment(" " + words(i), True, eos=True)), False, i)
             for i in range(24)]
    data = tokenize_demonstrations(demos, tokenizer, max_length=48)
    flat, packed = unpacked(data), pack(data, max_length=48)
    assert len(packed) < len(flat) and max(map(len, packed.examples)) >= 3
    count = flat.target_count(list(range(len(flat))))
    with torch.no_grad():
        want = batch_loss(model, collate(flat, list(range(len(flat))), 0), NO_AUTOCAST, count).item()
        batch = collate(packed, list(range(len(packed))), 0)
        got = batch_loss(model, batch, NO_AUTOCAST, count).item()
        crossing = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
        leaked = batch_loss(model, crossing, NO_AUTOCAST, count).item()
    assert packed.target_count(list(range(len(packed)))) == count
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(leaked - want) > 1e-3  # the check can fail


def test_micro_batches_of_one_and_checkpointing_give_the_whole_batch_steps(tmp_path: Path) -> None:
    """8 ragged examples per step as 8 micro-batches of 1 (or with activations recomputed): the same loss and
    gradient norm each step and the same weights after 3 steps, since every micro-batch divides by the
    target count of the whole batch (dividing by its own count changes the loss by percents)."""
    data = write_jsonl(tmp_path / "d.jsonl", demonstrations(26, "train", 3))

    def run(name: str, **memory: int | bool) -> list[dict]:
        cfg = SFTConfig(train_data=str(data), eval_fraction=0.1, output_dir=str(tmp_path / name), batch_size=8,
                        learning_rate=1e-3, eval_on_start=False, threads=1, mixed_precision="no", **memory)
        train_sft(cfg)
        return [r for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
                if "loss/train" in r]

    whole = run("whole")
    assert len(whole) == 3 and len({r["train/target_tokens"] for r in whole}) > 1
    for name, memory in (("micro", {"micro_batch_size": 1}), ("checkpointed", {"gradient_checkpointing": True})):
        parts = run(name, **memory)
        for key in ("loss/train", "train/grad_norm", "train/target_tokens"):
            assert [r[key] for r in parts] == pytest.approx([r[key] for r in whole], rel=1e-5), (name, key)
        one, two = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
        for key in one:
            torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5, msg=key)


def test_sft_cli_lowers_the_held_out_loss_and_ppo_takes_the_output(demo_files, tmp_path: Path) -> None:
    train_file, eval_file = demo_files
    out = tmp_path / "sft"
    result = runner.invoke(app, ["sft", "--train-data", str(train_file), "--eval-data", str(eval_file),
                                 "--output-dir", str(out), "--batch-size", "16", "--learning-rate", "1e-3", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval.json").read_text())
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["step"] == 0 and start["eval/loss"] == metrics["eval/start_loss"]
    print(f"held-out loss per completion token: {metrics['eval/start_loss']:.4f} -> {metrics['eval/loss']:.4f}")
    assert metrics["eval/loss"] < 0.5 * metrics["eval/start_loss"]
    assert metrics["train/steps"] == 6 and metrics["data/eval_examples"] == 24
    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()}
    assert (out / "config.yaml").read_text().startswith("stage: sft")
    assert build_config(SFTConfig, out / "config.yaml").max_length == 64  # reloads, with the resolved context
    # a plain transformers causal LM, and eval.json's loss is its cross-entropy on the held-out completions
    tokenizer = load_tokenizer(out)
    nll, n = completion_nll(AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer,
                            [(r["prompt"], r["completion"]) for r in demonstrations(24, "eval", 2)])
    assert (n, nll / n) == (metrics["eval/target_tokens"], pytest.approx(metrics["eval/loss"], rel=1e-5))

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(synthetic.prompts(4, 5, "eval")) + "\n")
    ppo = tmp_path / "ppo"
    result = runner.invoke(app, ["ppo", "--policy", str(out), "--prompts", str(prompts), "--reward-fn",
                                 "toy_rewards:count_a", "--output-dir", str(ppo), "--iterations", "1",
                                 "--rollout-batch-size", "4", "--num-minibatches", "1", "--update-epochs", "1",
                                 "--max-new-tokens", "8", "--sample-every", "0", *FAST])
    assert result.exit_code == 0, result.output
    first = json.loads((ppo / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kl/ref"] == pytest.approx(0.0, abs=1e-6)  # its reference is the SFT model itself
    assert (ppo / "model.safetensors").is_file()


def test_lora_and_packing_save_the_adapter_and_a_merged_policy(demo_files, tmp_path: Path) -> None:
    train_file, eval_file = demo_files
    out = tmp_path / "lora"
    metrics = train_sft(SFTConfig(train_data=str(train_file), eval_data=str(eval_file), output_dir=str(out),
                                  packing=True, batch_size=2, learning_rate=3e-3, lora_r=8, lora_alpha=16,
                                  threads=1, mixed_precision="no"))
    assert metrics["data/train_rows"] <= metrics["data/train_examples"] / 2  # 25-33-token examples, rows of 64
    assert metrics["eval/loss"] < 0.7 * metrics["eval/start_loss"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8
    merged = load_file(out / "model.safetensors")
    base = load_file(embedded_model_path() / "model.safetensors")
    assert merged.keys() == base.keys() and any(not torch.equal(merged[k], base[k]) for k in base)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.jsonl", [{"question": "hi", "answer": "hello"}],
     "missing.jsonl, row 1: missing column(s): expected prompt and completion (or response), messages, or text"),
    ("empty.csv", "prompt,completion\nhello,there\nhi,\n", "empty.csv, row 3, field 'completion': empty text"),
    ("type.jsonl", [{"prompt": "hi", "completion": "ok"}, {"prompt": "hi", "completion": 5}],
     "type.jsonl, row 2, field 'completion': expected text or a list of chat messages, got int"),
    ("chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}],
     "chat.jsonl, row 1, field 'messages': message 1 needs string 'role' and 'content' fields"),
    ("nowhere.jsonl", None, "nowhere.jsonl: file not found"),
    ("rows.txt", "hello\n", "rows.txt: unknown file type '.txt'; use .jsonl, .json, .csv or .parquet"),
])
def test_bad_data_is_one_line_naming_file_row_and_field(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, list):
        write_jsonl(path, content)
    elif content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["sft", "--train-data", str(path), "--output-dir", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_max_length_beyond_the_context_is_one_line(demo_files, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sft", "--train-data", str(demo_files[0]), "--max-length", "65",
                                 "--output-dir", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: setting 'max_length': 65 is longer than the model's context (64 tokens, "
                                     "config.json n_positions); use at most 64")


def test_help_lists_the_stage_settings() -> None:
    result = runner.invoke(app, ["sft", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--train-data", "--loss-on", "--packing", "--truncation", "--eval-every", "--lora-r", "--save-merged"):
        assert flag in result.output, flag


@pytest.mark.slow
def test_two_processes_match_one(demo_files, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) vs 1: 11 ragged examples in batches of 5, so the processes get shares
    of different sizes and the last batch (1 example) gives one process a stand-in row with no target. Every
    micro-loss divides by the global batch's target count, and the learning-rate schedule steps once per
    optimizer step whatever the process count: losses, gradient norms, learning rates and weights agree to float
    rounding (1e-6 here; dividing by a per-process count, or stepping the schedule per process, changes them by
    percents)."""
    import os
    import signal
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "d.jsonl", demonstrations(11, "train", 4))
    settings = dict(train_data=str(data), eval_data=str(demo_files[1]), batch_size=5, learning_rate=1e-3)
    train_sft(SFTConfig(**settings, output_dir=str(tmp_path / "one"), threads=1, mixed_precision="no"))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "rlhfkit.cli", "sft", *flags, *FAST, "--output-dir", str(tmp_path / "two")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a hang takes the workers down too
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, output[-3000:]
    one, two = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                for name in ("one", "two"))
    assert len(one) == len(two) == 5  # start eval, 3 steps, final
    for a, b in zip(one, two):
        for key in ("loss/train", "train/grad_norm", "train/lr", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    weights_one, weights_two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    for key in weights_one:
        torch.testing.assert_close(weights_one[key], weights_two[key], rtol=0, atol=1e-6, msg=key)
