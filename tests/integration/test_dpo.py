"""`rlhfkit dpo` on the embedded model: it learns the synthetic task's preference, starts at exactly the
reference (implicit rewards 0), and its numbers match an independent computation from plain transformers
logits; precomputed reference log-probs, micro-batches of 1 and LoRA (reference = adapters off) leave the
numbers as they are; bad input is one line.

Data: replies of the synthetic customer-support task (rlhfkit.data.synthetic) in a warm tone (chosen)
against a rude one (rejected), on train-split prompts for training and eval-split prompts held out.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from rlhfkit.assets import embedded_model_path
from rlhfkit.cli import app
from rlhfkit.data import synthetic
from rlhfkit.data.tokenize import encode_prompt, encode_response
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.trainers.dpo import train
from rlhfkit.trainers.dpo_config import DPOConfig

runner = CliRunner()
BETA = 0.1
TONES = ("warm", "neutral", "curt", "rude")  # best first: the order the gold judge prefers


def tone_pairs(n: int, seed: int, split: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for prompt in synthetic.prompts(n, seed=seed, split=split):
        chosen, rejected = (synthetic.sample_response(prompt, rng, tone=t) for t in ("warm", "rude"))
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def tone_rankings(n: int, seed: int) -> list[dict]:
    """Ranked lists of 2 to 4 tones, best first: pairs of weight 1, 1/3 and 1/6 (ragged global sums)."""
    rng = random.Random(seed)
    rows = []
    for prompt in synthetic.prompts(n, seed=seed, split="train"):
        tones = sorted(rng.sample(range(4), rng.randint(2, 4)))
        rows.append({"prompt": prompt,
                     "completions": [" " + synthetic.sample_response(prompt, rng, tone=TONES[t]) for t in tones]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def sequence_logps(model: torch.nn.Module, tok, rows: list[dict], key: str) -> torch.Tensor:
    """log pi(completion | prompt) in float64 from the model's own forward, one unpadded sequence at a time."""
    out = []
    for row in rows:
        prompt, completion = encode_prompt(tok, row["prompt"]), encode_response(tok, row[key])
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)  # row t predicts token t + 1
        targets = ids[0, 1:]
        per_token = logp.gather(-1, targets[:, None]).squeeze(-1)
        out.append(per_token[len(prompt) - 1:].sum())  # completion tokens only (EOS included)
    return torch.stack(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dpo_data")
    return {"train": write_jsonl(folder / "train.jsonl", tone_pairs(64, seed=1, split="train")),
            "eval": write_jsonl(folder / "eval.jsonl", tone_pairs(24, seed=2, split="eval")),
            "ranked": write_jsonl(folder / "ranked.jsonl", tone_rankings(12, seed=3))}


@pytest.fixture(scope="module")
def cli_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dpo") / "policy"
    result = runner.invoke(app, ["dpo", "--train-data", str(data["train"]), "--eval-data", str(data["eval"]),
                                 "--output-dir", str(out), "--batch-size", "16", "--epochs", "2", "--eval-every", "4",
                                 "--learning-rate", "1e-3", "--beta", str(BETA), "--mixed-precision", "no",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    return out


def test_dpo_run_lowers_held_out_loss_and_raises_accuracy(cli_run: Path) -> None:
    final = json.loads((cli_run / "eval.json").read_text())
    # the start policy is the reference: h = 0, loss log 2, accuracy 0 (strict >)
    assert final["start/eval/loss"] == pytest.approx(math.log(2), abs=1e-12)
    assert final["start/eval/rewards/accuracy"] == 0.0
    losses = [r["eval/loss"] for r in records(cli_run) if "eval/loss" in r]  # steps 0, 4, 8
    assert losses[0] > losses[1] > losses[2] == final["eval/loss"]
    assert final["eval/loss"] < 0.6 * math.log(2)  # 0.36 in this run
    assert final["eval/rewards/accuracy"] >= 0.8  # 22 of 24 in this run
    assert final["eval/rewards/margin"] > 0 and final["eval/rewards/chosen"] > final["eval/rewards/rejected"]
    assert final["eval/pairs"] == 24 and final["train/steps"] == 8 and final["data/eval_dropped"] == 0


def test_implicit_rewards_are_exactly_zero_at_step_0(cli_run: Path) -> None:
    rows = records(cli_run)
    start, first_step = rows[0], rows[1]
    assert start["step"] == 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
        assert start[f"eval/{key}"] == 0.0
        assert first_step[key] == 0.0  # the first batch's forward, before the first update
    assert first_step["loss/train"] == pytest.approx(math.log(2), abs=1e-7)
    assert [r["step"] for r in rows if "eval/loss" in r] == [0, 4, 8]  # start, every 4 steps, end
    for key in ("loss/train", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
                "logps/chosen", "logps/rejected"):
        assert all(key in r for r in rows[1:-1] if "eval/loss" not in r), key


def test_output_is_a_policy_and_its_numbers_match_plain_transformers(cli_run: Path, data: dict[str, Path]) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "metrics.jsonl", "eval.json"):
        assert (cli_run / name).is_file(), name
    assert not list(cli_run.parent.glob(".policy.tmp-*"))
    tok = load_tokenizer(cli_run)
    load_causal_lm(cli_run, tok)  # what ppo / reinforce do with --policy
    final = json.loads((cli_run / "eval.json").read_text())
    rows = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    policy = AutoModelForCausalLM.from_pretrained(cli_run).eval()
    reference = AutoModelForCausalLM.from_pretrained(embedded_model_path()).eval()
    logp_c, logp_r = (sequence_logps(policy, tok, rows, k) for k in ("chosen", "rejected"))
    ref_c, ref_r = (sequence_logps(reference, tok, rows, k) for k in ("chosen", "rejected"))
    h = (logp_c - ref_c) - (logp_r - ref_r)
    loss = torch.nn.functional.softplus(-BETA * h).mean().item()  # -log sigmoid(beta h)
    assert final["eval/loss"] == pytest.approx(loss, abs=1e-5)
    assert final["eval/logps/chosen"] == pytest.approx(logp_c.mean().item(), abs=1e-4)
    assert final["eval/rewards/rejected"] == pytest.approx(BETA * (logp_r - ref_r).mean().item(), abs=1e-5)
    assert final["eval/rewards/accuracy"] == pytest.approx((h > 0).double().mean().item())
    assert final["start/eval/logps/rejected"] == pytest.approx(ref_r.mean().item(), abs=1e-4)


KEYS = ("loss/train", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "logps/chosen", "logps/rejected")


def _small(data: dict[str, Path], out: Path, **extra) -> DPOConfig:
    """Ranked lists (ragged pair weights), 4 steps of 8 comparisons, conservative DPO, fp32."""
    return DPOConfig(train_data=str(data["ranked"]), eval_data=str(data["eval"]), output_dir=str(out),
                     batch_size=8, learning_rate=1e-3, label_smoothing=0.1, mixed_precision="no", threads=1,
                     **extra)


def test_precomputed_reference_and_micro_batches_of_1_give_the_live_whole_batch_numbers(
        data: dict[str, Path], tmp_path: Path) -> None:
    whole = train(_small(data, tmp_path / "whole"))
    assert whole["train/steps"] >= 3
    # micro-batches of 1, with activations recomputed in the backward too: neither may change a number
    variants = {"precomputed": {"precompute_ref_logprobs": True},
                "micro": {"micro_batch_size": 1, "gradient_checkpointing": True}}
    for name, extra in variants.items():
        other = train(_small(data, tmp_path / name, **extra))
        for key in ("eval/loss", "eval/rewards/chosen", "eval/rewards/accuracy", "start/eval/loss"):
            assert other[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), (name, key)
        steps, want = records(tmp_path / name), records(tmp_path / "whole")
        assert [r["step"] for r in steps] == [r["step"] for r in want]
        for key in KEYS:
            got, expected = ([r[key] for r in rs if key in r] for rs in (steps, want))
            assert len(got) == len(expected) == whole["train/steps"], (name, key)
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, key)
        one, two = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
        for param in one:
            torch.testing.assert_close(two[param], one[param], rtol=0, atol=1e-5, msg=(name, param))


def test_lora_reference_is_the_base_with_adapters_off(data: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    out = tmp_path / "lora"
    final = train(DPOConfig(train_data=str(data["train"]), eval_data=str(data["eval"]), output_dir=str(out),
                            batch_size=16, learning_rate=1e-2, loss="ipo", beta=BETA, lora_r=4, lora_alpha=8,
                            mixed_precision="no", threads=1))
    # B = 0 at the start: policy == base == reference, so h = 0 and the IPO loss is (1 / (2 beta))^2 = 25
    assert final["start/eval/loss"] == 25.0
    assert records(out)[1]["rewards/chosen"] == 0.0
    assert final["eval/loss"] < 25.0
    rows = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    tok = load_tokenizer(out)
    base = AutoModelForCausalLM.from_pretrained(embedded_model_path()).eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers folder: usable as --policy
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_path()),
                                        out / "adapter").eval()
    with adapted.disable_adapter():
        off = sequence_logps(adapted.get_base_model(), tok, rows[:4], "chosen")
    assert torch.equal(off, sequence_logps(base, tok, rows[:4], "chosen"))  # adapters off = the base exactly
    # the run's implicit rewards are those of the trained policy against the base
    logp_c, ref_c = sequence_logps(merged, tok, rows, "chosen"), sequence_logps(base, tok, rows, "chosen")
    assert final["eval/rewards/chosen"] == pytest.approx(BETA * (logp_c - ref_c).mean().item(), abs=1e-4)
    assert final["eval/rewards/chosen"] != 0.0


@pytest.mark.parametrize("truncation", ["truncate_prompt", "drop"])
def test_same_sequences_truncation_and_counts_as_the_reward_stage(data: dict[str, Path], tmp_path: Path,
                                                                  truncation: str) -> None:
    """At max_length 36 some pairs lose prompt tokens and some do not fit: the DPO stage keeps, cuts and counts
    exactly the pairs rlhfkit reward does, and prompt + completion is the reward model's sequence."""
    from rlhfkit.trainers import dpo, reward
    from rlhfkit.trainers.reward_config import RewardConfig

    tok = load_tokenizer("embedded")
    common = {"train_data": str(data["ranked"]), "eval_data": str(data["eval"]), "max_length": 36,
              "truncation": truncation, "output_dir": str(tmp_path / "o")}
    ours = dpo.load_comparisons(DPOConfig(**common), tok)
    theirs = reward.load_comparisons(RewardConfig(**common), tok)
    for mine, rm in zip(ours, theirs):
        assert (mine.truncated, mine.dropped, mine.dropped_rows) == (rm.truncated, rm.dropped, rm.dropped_rows)
        assert [p + c for p, c in zip(mine.prompts, mine.chosen)] == rm.chosen
        assert [p + r for p, r in zip(mine.prompts, mine.rejected)] == rm.rejected
        assert mine.weights == rm.weights
        assert all(c[-1] == r[-1] == tok.eos_token_id for c, r in zip(mine.chosen, mine.rejected))
    assert sum(d.dropped for d in ours) > 0 and (truncation == "drop" or ours[0].truncated > 0)
    assert {w for w in ours[0].weights} == {1.0, 1 / 3, 1 / 6}  # ranked lists of 2, 3 and 4 completions
    # a pair without a prompt is scored from the tokenizer's BOS (its first completion token counts too)
    no_prompt = write_jsonl(tmp_path / "no_prompt.jsonl", [{"chosen": " thank you .", "rejected": " no ."}] * 2)
    alone, _ = dpo.load_comparisons(DPOConfig(train_data=str(no_prompt), eval_data=str(no_prompt), max_length=36), tok)
    assert alone.prompts == [[tok.bos_token_id]] * 2 and alone.chosen[0] == encode_response(tok, " thank you .")


def test_bad_input_is_one_line(data: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    base = ["dpo", "--eval-data", str(data["eval"]), "--output-dir", out]
    train_data = ["--train-data", str(data["train"])]
    cases = [
        (base, "setting 'train_data': is required: pass --train-data FILE"),
        (base + train_data + ["--loss", "ipo", "--label-smoothing", "0.1"],
         "setting 'label_smoothing': applies to --loss dpo only"),
        (base + train_data + ["--label-smoothing", "0.5"], "setting 'label_smoothing': must be >= 0 and < 0.5"),
        (base + train_data + ["--lora-r", "4", "--ref-model", str(tiny_model_dir)],
         "setting 'ref_model': must be empty with LoRA"),
        (base + train_data + ["--max-length", "100"], "setting 'max_length': 100 is longer than the policy's context"),
        (base + train_data + ["--ref-model", str(tmp_path / "missing")], "model path does not exist"),
        (base + train_data + ["--ref-model", str(tiny_model_dir)],
         "the reference's tokenizer differs from the policy's"),
        (base + ["--train-data", str(tmp_path / "none.jsonl")], "none.jsonl"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.output)
    assert not Path(out).exists()


def test_help_lists_every_setting() -> None:
    import dataclasses

    result = runner.invoke(app, ["dpo", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(DPOConfig):
        assert "--" + f.name.replace("_", "-") in result.output, f.name


def test_prompt_shared_packing_gives_the_padded_numbers(data: dict[str, Path], tmp_path: Path) -> None:
    """--share-prefix packs each comparison's prompt once; on the same batches (no length grouping, which
    orders batches by packed length) every logged number and the trained weights are the padded run's."""
    runs = {share: train(_small(data, tmp_path / f"share_{share}", share_prefix=share, group_by_length=False))
            for share in (True, False)}
    for key in ("eval/loss", "eval/rewards/chosen", "eval/rewards/accuracy", "start/eval/loss"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-5, abs=1e-6), key
    steps, want = records(tmp_path / "share_True"), records(tmp_path / "share_False")
    for key in KEYS:
        assert [r[key] for r in steps if key in r] == pytest.approx([r[key] for r in want if key in r],
                                                                     rel=1e-5, abs=1e-6), key
    one, two = (load_file(tmp_path / f"share_{share}" / "model.safetensors") for share in (False, True))
    for param in one:
        torch.testing.assert_close(two[param], one[param], rtol=0, atol=1e-5, msg=param)
