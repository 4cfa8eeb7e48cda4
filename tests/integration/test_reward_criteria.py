"""Reward models of several criteria: rows name their criterion, `--criterion` picks the heads, each
comparison trains only its own criterion's head of the shared trunk, and the model scores, saves,
normalises and resumes per criterion.

The data has two known, independent rules: `positive` prefers the response with a positive word over
the same response with a negative one (equal lengths), `short` prefers the shorter of two responses
whose sentiment words are drawn at random (so sentiment says nothing about which is chosen).
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch
from toy_data import NEGATIVE, NEUTRAL, POSITIVE, PROMPTS, sentence, write_jsonl
from transformers import AutoConfig, AutoModelForSequenceClassification
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import build_reward_model, criterion_scores
from rlhfkit.pipelines.score import score_rows
from rlhfkit.trainers.reward import train
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.signals import Stopped

CRITERIA = ("positive", "short")


def _response(rng: random.Random, length: int, words: list[str]) -> str:
    """`length` neutral words with one word of `words` at a random place."""
    text = sentence(rng, length).split()
    text.insert(rng.randint(0, len(text)), rng.choice(words))
    return " " + " ".join(text)


def rule_pairs(criterion: str, n: int, seed: int) -> list[dict]:
    """`positive`: chosen holds a positive word where rejected holds a negative one, and one of the two,
    drawn at random, is 1-3 words longer (length says nothing). `short`: chosen has 1-3 words, rejected
    6-9, each with a random sentiment word (sentiment says nothing). Each head's data varies the other
    rule's feature at random, so a head has no reason to follow the other rule."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if criterion == "positive":
            base = sentence(rng, rng.randint(2, 5)).split()
            at = rng.randint(0, len(base))
            pair = [base[:at] + [rng.choice(words)] + base[at:] for words in (POSITIVE, NEGATIVE)]
            pair[rng.randint(0, 1)] += sentence(rng, rng.randint(1, 3)).split()  # one of the two is longer
            chosen, rejected = (" " + " ".join(words) for words in pair)
        else:
            chosen = _response(rng, rng.randint(1, 3), POSITIVE + NEGATIVE)
            rejected = _response(rng, rng.randint(6, 9), POSITIVE + NEGATIVE)
        rows.append({"prompt": f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}", "chosen": chosen,
                     "rejected": rejected, "criterion": criterion})
    return rows


def mixed(n: int, seed: int) -> list[dict]:
    """n rows of each criterion, interleaved at random (batches mix the criteria)."""
    rows = rule_pairs("positive", n, seed) + rule_pairs("short", n, seed + 100)
    random.Random(seed).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("criteria")
    return {"train": write_jsonl(root / "train.jsonl", mixed(300, seed=1)),
            "eval": write_jsonl(root / "eval.jsonl", mixed(100, seed=2)),
            "small": write_jsonl(root / "small.jsonl", mixed(24, seed=3)), "root": root}


def config(tiny_model_dir: Path, files: dict[str, Path], out: Path, **kw) -> RewardConfig:
    settings = {"model": str(tiny_model_dir), "train_data": str(files["train"]), "eval_data": str(files["eval"]),
                "output_dir": str(out), "learning_rate": 3e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                "criterion": list(CRITERIA), **kw}
    return RewardConfig(**settings)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, files: dict[str, Path]) -> tuple[Path, dict]:
    out = files["root"] / "rm"
    return out, train(config(tiny_model_dir, files, out, normalize="mean", epochs=2, batch_size=8))


def _rows(path: Path, criterion: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if criterion is None or r["criterion"] == criterion]


def _scores(model, tok, rows: list[dict], key: str, normalized: bool) -> torch.Tensor:
    """(N, C) scores of prompt + rows[key], in batches of 64."""
    seqs = [encode_prompt(tok, r["prompt"]) + encode_response(tok, r[key]) for r in rows]
    with torch.no_grad():
        return torch.cat([criterion_scores(model, *pad_right(seqs[i:i + 64], tok.pad_token_id), normalized=normalized)
                          for i in range(0, len(seqs), 64)]).double()


def test_each_head_learns_its_own_rule_and_only_that(trained, files) -> None:
    out, metrics = trained
    tok = load_tokenizer(out, padding_side="right")
    model = build_reward_model(out, tok, init_head=False).eval()
    accuracy = {}  # (rows' criterion, head) -> share of pairs whose chosen scores higher on that head
    for name in CRITERIA:
        rows = _rows(files["eval"], name)
        better = _scores(model, tok, rows, "chosen", False) > _scores(model, tok, rows, "rejected", False)  # (N, 2)
        for head, head_name in enumerate(CRITERIA):
            accuracy[name, head_name] = better[:, head].double().mean().item()
        assert metrics[f"eval/pairs/{name}"] == len(rows)
        assert metrics[f"eval/accuracy/{name}"] == pytest.approx(accuracy[name, name], abs=1e-6)
    assert accuracy["positive", "positive"] >= 0.9 and accuracy["short", "short"] >= 0.9, accuracy
    # the other criterion's head knows nothing of a rule it never trained on (the rules are independent)
    assert 0.3 <= accuracy["positive", "short"] <= 0.7, accuracy
    assert 0.3 <= accuracy["short", "positive"] <= 0.7, accuracy
    assert metrics["eval/pairs"] == 200 and metrics["eval/accuracy"] == pytest.approx(
        (accuracy["positive", "positive"] + accuracy["short", "short"]) / 2, abs=1e-6)


def test_saved_model_loads_in_transformers_and_each_head_is_centred(trained, files) -> None:
    out, metrics = trained
    config_json = AutoConfig.from_pretrained(out)
    assert config_json.num_labels == 2 and config_json.rlhfkit_criteria == list(CRITERIA)
    tok = load_tokenizer(out, padding_side="right")
    rows = _rows(files["eval"])[:10]
    ids, mask = pad_right([encode_prompt(tok, r["prompt"]) + encode_response(tok, r["chosen"]) for r in rows],
                          tok.pad_token_id)
    model = build_reward_model(out, tok, init_head=False).eval()
    with torch.no_grad():
        logits = AutoModelForSequenceClassification.from_pretrained(out).eval()(input_ids=ids,
                                                                              attention_mask=mask).logits
        torch.testing.assert_close(logits, criterion_scores(model, ids, mask, normalized=False), atol=1e-5, rtol=0)
    # normalize=mean: every head shifted by minus its mean raw score over the same reference, all training
    # responses (chosen and rejected of both criteria's rows)
    train_rows = _rows(files["train"])
    raw = torch.cat([_scores(model, tok, train_rows, key, False) for key in ("chosen", "rejected")])  # (2N, 2)
    normed = torch.cat([_scores(model, tok, train_rows, key, True) for key in ("chosen", "rejected")])
    for head, name in enumerate(CRITERIA):
        assert metrics[f"normalize/bias/{name}"] == pytest.approx(-raw[:, head].mean().item(), abs=1e-4)
        assert abs(normed[:, head].mean().item()) < 1e-4
    assert config_json.rlhfkit_reward_bias == [metrics[f"normalize/bias/{name}"] for name in CRITERIA]


def test_score_writes_one_column_per_criterion(trained, files, tmp_path: Path) -> None:
    out, _ = trained
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in _rows(files["eval"])[:5]]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    scored = score_rows(ScoreConfig(model=str(out), data=str(data)))
    tok = load_tokenizer(out, padding_side="right")
    expected = _scores(build_reward_model(out, tok, init_head=False).eval(), tok, rows, "completion", True)
    for row, by_hand in zip(scored, expected):
        assert "score" not in row and list(row["scores"]) == list(CRITERIA)
        assert [row["scores"][name] for name in CRITERIA] == pytest.approx(by_hand.tolist(), abs=1e-5)


def test_one_criterion_trains_a_one_head_model_on_its_rows_only(tiny_model_dir, files) -> None:
    out = files["root"] / "short-only"
    metrics = train(config(tiny_model_dir, files, out, train_data=str(files["small"]), eval_data="",
                           eval_fraction=0.25, criterion=["short"], batch_size=4, normalize="none"))
    # 24 `short` rows: 6 held out, 18 trained on in batches of 4; the 24 `positive` rows left out
    assert metrics["data/train_other_criteria"] == 24 and metrics["data/eval_other_criteria"] == 0
    assert metrics["eval/pairs"] == 6 and metrics["train/steps"] == 5
    assert metrics["perf/pairs_per_s"] * metrics["perf/train_s"] == pytest.approx(18)
    saved = json.loads((out / "config.json").read_text())
    assert saved["rlhfkit_criteria"] == ["short"] and len(saved["id2label"]) == 1
    assert "eval/accuracy/short" not in metrics  # one head: the overall metrics are its own


def test_a_single_criterion_file_records_its_name_without_the_flag(tiny_model_dir, files) -> None:
    only = write_jsonl(files["root"] / "only-short.jsonl", rule_pairs("short", 12, seed=5))
    out = files["root"] / "auto"
    train(config(tiny_model_dir, files, out, train_data=str(only), eval_data="", eval_fraction=0.25,
                 criterion=[], batch_size=8, normalize="none"))
    assert json.loads((out / "config.json").read_text())["rlhfkit_criteria"] == ["short"]


def test_criterion_errors_are_one_line(tiny_model_dir, files, tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(DataError, match=r"rows of several criteria \(positive, short\); pass --criterion "
                                        r"positive,short \(one model, one head each\) or --criterion positive"):
        train(config(tiny_model_dir, files, out, criterion=[]))
    with pytest.raises(ConfigError, match=r"setting 'criterion': .*train.jsonl has no rows of criterion harmless; "
                                          r"its rows are of: positive, short"):
        train(config(tiny_model_dir, files, out, criterion=["short", "harmless"]))
    partly = write_jsonl(tmp_path / "partly.jsonl", rule_pairs("short", 3, seed=6) + [
        {"prompt": "say", "chosen": " the road", "rejected": " the river"}])
    with pytest.raises(DataError, match=r"rows of several criteria \(short, rows without a 'criterion' field\); "
                                        r"pass --criterion short to train on its rows only"):
        train(config(tiny_model_dir, files, out, train_data=str(partly), criterion=[]))
    bad = tmp_path / "bad.jsonl"
    rows = _rows(files["small"])[:3]
    rows[1]["criterion"] = 7
    write_jsonl(bad, rows)
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, field 'criterion': expected the name of a criterion"):
        train(config(tiny_model_dir, files, out, train_data=str(bad)))
    assert not out.exists()
    # on the command line: exit code 2 and one line, no traceback
    result = CliRunner().invoke(app, ["reward", "--model", str(tiny_model_dir), "--train-data", str(files["small"]),
                                      "--output-dir", str(out), "--criterion", "short,harmless"])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "its rows are of: positive, short" in errors[0]


def _logged(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k == "time" or k.startswith(("time/", "perf/")))} for r in rows]


def test_a_stopped_two_head_run_resumes_with_the_same_heads(tiny_model_dir, files, monkeypatch) -> None:
    settings = {"train_data": str(files["small"]), "eval_data": "", "eval_fraction": 0.25, "batch_size": 8,
                "checkpoint_every": 2, "normalize": "mean", "eval_every": 2}
    full = files["root"] / "full"
    train(config(tiny_model_dir, files, full, **settings))
    out = files["root"] / "stopped"
    calls = []

    def stop_at_step_3(accelerator=None) -> int | None:  # what SIGTERM during step 3 makes stop_requested say
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else None

    monkeypatch.setattr("rlhfkit.trainers.step_resume.stop_requested", stop_at_step_3)
    with pytest.raises(Stopped, match="after step 3 of 5"):
        train(config(tiny_model_dir, files, out, **settings))
    monkeypatch.undo()
    train(config(tiny_model_dir, files, out, resume=True, **settings))
    assert _logged(out) == _logged(full)  # the resumed run repeats the uninterrupted one, per-criterion metrics too
    assert any("eval/accuracy/short" in r for r in _logged(out))
    assert json.loads((out / "config.json").read_text())["rlhfkit_criteria"] == list(CRITERIA)
    with pytest.raises(ConfigError, match="cannot change on resume: criterion"):
        stopped = files["root"] / "stopped2"
        monkeypatch.setattr("rlhfkit.trainers.step_resume.stop_requested", lambda accelerator=None: signal.SIGTERM)
        with pytest.raises(Stopped):
            train(config(tiny_model_dir, files, stopped, **settings))
        monkeypatch.undo()
        train(config(tiny_model_dir, files, stopped, resume=True, **{**settings, "criterion": ["short"]}))


def test_lora_two_head_model_saves_merged_with_its_heads(tiny_model_dir, files) -> None:
    out = files["root"] / "lora"
    train(config(tiny_model_dir, files, out, train_data=str(files["small"]), eval_data="", eval_fraction=0.25,
                 batch_size=8, lora_r=4, normalize="mean_std"))
    saved = AutoConfig.from_pretrained(out)
    assert saved.rlhfkit_criteria == list(CRITERIA) and len(saved.rlhfkit_reward_gain) == 2
    tok = load_tokenizer(out, padding_side="right")
    rows = _rows(files["small"])
    model = build_reward_model(out, tok, init_head=False).eval()
    ids, mask = pad_right([encode_prompt(tok, r["prompt"]) + encode_response(tok, r["chosen"]) for r in rows[:6]],
                          tok.pad_token_id)
    with torch.no_grad():
        logits = AutoModelForSequenceClassification.from_pretrained(out).eval()(input_ids=ids,
                                                                              attention_mask=mask).logits
    torch.testing.assert_close(logits, criterion_scores(model, ids, mask, normalized=False), atol=1e-5, rtol=0)
    # mean_std: every head's scores on the reference (all training responses) have mean 0 and std 1
    train_rows = [r for r in rows if r not in _held_out(rows)]
    normed = torch.cat([_scores(model, tok, train_rows, key, True) for key in ("chosen", "rejected")])
    torch.testing.assert_close(normed.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(normed.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


def _held_out(rows: list[dict]) -> list[dict]:
    """The rows split_examples holds out with seed 0 and eval_fraction 0.25 (a seeded shuffle of the row order)."""
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    return [rows[i] for i in sorted(order[:round(len(rows) * 0.25)])]
