"""Reward model training on tiny models: it learns a known rule, saves in plain HF format, and
reads its score at the last real token whatever the padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_left, pad_right
from rlhfkit.errors import DataError, ModelError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward_model import build_reward_model, reward_scores
from rlhfkit.pipelines.score import score_rows
from rlhfkit.trainers.reward import train
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, rule_pairs_file: Path, rule_eval_file: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm") / "reward"
    cfg = RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file), eval_data=str(rule_eval_file),
                       output_dir=str(out), learning_rate=2e-3, batch_size=16, max_length=96, eval_every=20,
                       normalize="mean", seed=0)
    return out, train(cfg)


def test_learns_the_known_rule(trained: tuple[Path, dict]) -> None:
    _, metrics = trained
    assert metrics["eval/accuracy"] >= 0.95
    assert metrics["eval/loss"] < 0.3  # well below log 2 = 0.693, the loss of a head that knows nothing


def test_output_folder_and_metrics(trained: tuple[Path, dict]) -> None:
    out, metrics = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "metrics.jsonl", "eval.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert len(evals) >= 2  # every 20 steps and at the end
    assert json.loads((out / "eval.json").read_text())["eval/accuracy"] == metrics["eval/accuracy"]
    assert not list(out.parent.glob(".reward.tmp-*"))


def _sequences(tok, rows: list[dict]) -> list[list[int]]:
    return [encode_prompt(tok, r["prompt"]) + encode_response(tok, r["chosen"]) for r in rows]


def test_saved_model_loads_with_plain_transformers_and_gives_the_same_scores(trained, rule_eval_file: Path) -> None:
    out, _ = trained
    rows = [json.loads(line) for line in rule_eval_file.read_text().splitlines()[:8]]
    tok = load_tokenizer(out, padding_side="right")
    ids, mask = pad_right(_sequences(tok, rows), tok.pad_token_id)
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert AutoTokenizer.from_pretrained(out).pad_token_id == tok.pad_token_id
    with torch.no_grad():
        plain = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        ours = reward_scores(build_reward_model(out, tok, init_head=False).eval(), ids, mask, normalized=False)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


def test_padding_side_and_batch_composition_do_not_change_a_score(trained, rule_eval_file: Path) -> None:
    out, _ = trained
    rows = [json.loads(line) for line in rule_eval_file.read_text().splitlines()[:6]]
    tok = load_tokenizer(out)
    model = build_reward_model(out, tok, init_head=False).eval()
    seqs = _sequences(tok, rows)
    with torch.no_grad():
        right = reward_scores(model, *pad_right(seqs, tok.pad_token_id))
        left = reward_scores(model, *pad_left(seqs, tok.pad_token_id))
        alone = torch.cat([reward_scores(model, *pad_right([s], tok.pad_token_id)) for s in seqs])
        reordered = reward_scores(model, *pad_right(seqs[::-1], tok.pad_token_id)).flip(0)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered, right, atol=1e-5, rtol=0)


def _training_scores(out: Path, pairs_file: Path) -> torch.Tensor:
    """The saved model's fp32 scores of every training response (chosen and rejected), in batches of 100."""
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    tok = load_tokenizer(out)
    model = build_reward_model(out, tok, init_head=False).eval()
    seqs = [encode_prompt(tok, r["prompt"]) + encode_response(tok, r[k]) for r in rows for k in ("chosen", "rejected")]
    with torch.no_grad():
        return torch.cat([reward_scores(model, *pad_right(seqs[i:i + 100], tok.pad_token_id))
                          for i in range(0, len(seqs), 100)])


def test_normalisation_centres_the_training_responses(trained, rule_pairs_file: Path) -> None:
    out, metrics = trained
    # normalize="mean" shifts by minus the mean raw reward of all training responses (chosen and rejected)
    assert abs(_training_scores(out, rule_pairs_file).double().mean().item()) < 1e-4
    assert metrics["normalize/bias"] == pytest.approx(-metrics["normalize/raw_mean"])


@pytest.mark.parametrize("bf16_weights", [False, True], ids=["autocast", "bf16-weights"])
def test_bf16_run_learns_and_its_saved_model_is_centred_in_fp32(tiny_model_dir, rule_pairs_file: Path,
                                                                  rule_eval_file: Path, tmp_path: Path,
                                                                  bf16_weights: bool) -> None:
    # bf16 autocast trains; the saved model is fp32, so its normalisation must be fitted to fp32 scores.
    # With --bf16-weights the saved model is the fp32 copies AdamW updated, not the bf16 weights.
    out = tmp_path / "rm_bf16"
    metrics = train(RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file),
                                 eval_data=str(rule_eval_file), output_dir=str(out), learning_rate=2e-3, batch_size=16,
                                 max_length=96, normalize="mean", seed=0, mixed_precision="bf16",
                                 bf16_weights=bf16_weights))
    assert metrics["eval/accuracy"] >= 0.95
    assert abs(_training_scores(out, rule_pairs_file).double().mean().item()) < 1e-4
    weights = load_file(out / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    off_bf16 = sum(int((w != w.bfloat16().float()).sum()) for w in weights.values())
    assert off_bf16 > 0.5 * sum(w.numel() for w in weights.values())  # fp32 values, not bf16 ones widened


def test_score_command_scores_rows(trained, tmp_path: Path) -> None:
    out, _ = trained
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "describe the", "completion": " road great light"}) + "\n"
                    + json.dumps({"prompt": "describe the", "completion": " road awful light"}) + "\n")
    good, bad = score_rows(ScoreConfig(model=str(out), data=str(data)))
    assert good["score"] > bad["score"]  # the rule: a positive word beats a negative one


def test_failed_run_leaves_nothing_behind(tiny_model_dir, rule_pairs_file, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "rm"

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    cfg = RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file), output_dir=str(out), max_length=96)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_model_paths_and_vocab_mismatch(tiny_model_dir: Path, rule_pairs_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model path does not exist"):
        train(RewardConfig(model=str(tmp_path / "missing"), train_data=str(rule_pairs_file),
                           output_dir=str(tmp_path / "o")))
    # a model whose tokenizer can emit ids beyond the embedding table
    from rlhfkit.models.tiny import tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = tiny_causal_lm(tok)
    model.resize_token_embeddings(len(tok) - 10)
    broken = tmp_path / "broken"
    model.save_pretrained(broken)
    tok.save_pretrained(broken)
    with pytest.raises(ModelError, match="tokenizer has .* tokens but the model's embedding has"):
        train(RewardConfig(model=str(broken), train_data=str(rule_pairs_file), output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_model_folder_without_a_tokenizer_is_refused(tiny_model_dir, rule_pairs_file, tmp_path: Path) -> None:
    # transformers would quietly build an empty tokenizer here, turning every text into no tokens
    bare = tmp_path / "bare"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(bare)
    with pytest.raises(ModelError, match="no tokenizer files in this folder; pass the tokenizer's folder"):
        train(RewardConfig(model=str(bare), train_data=str(rule_pairs_file), output_dir=str(tmp_path / "o")))
    cfg = RewardConfig(model=str(bare), tokenizer=str(tiny_model_dir), train_data=str(rule_pairs_file),
                       output_dir=str(tmp_path / "o"), max_length=96, epochs=1)
    assert train(cfg)["eval/pairs"] > 0  # with --tokenizer it trains


def test_too_long_pairs_are_reported(tiny_model_dir: Path, rule_pairs_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="every comparison is longer than max_length=3"):
        train(RewardConfig(model=str(tiny_model_dir), train_data=str(rule_pairs_file), output_dir=str(tmp_path / "o"),
                           max_length=3))


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def test_score_command_scores_chat_rows_as_training_rendered_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    # a chat model: its tokenizer has a template; the reward model trains on chat comparisons
    chat_model = tmp_path / "chat_model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(chat_model)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(chat_model)
    good, bad = ("a great light", "a good door", "a fine road"), ("an awful day", "a bad road")
    things = ("river", "city")
    rows = [{"prompt": [{"role": "user", "content": f"describe the {things[i % 2]}"}],
             "chosen": [{"role": "assistant", "content": good[i % 3]}],
             "rejected": [{"role": "assistant", "content": bad[i % 2]}]} for i in range(12)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    train(RewardConfig(model=str(chat_model), train_data=str(data), output_dir=str(out), batch_size=4,
                       learning_rate=1e-3, max_length=64, normalize="none", seed=0))
    to_score = tmp_path / "to_score.jsonl"
    to_score.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                                + json.dumps({"prompt": r["prompt"][0]["content"], "completion": "a great light"})
                                + "\n" for r in rows[:3]))
    scored = score_rows(ScoreConfig(model=str(out), data=str(to_score), normalized=False))
    saved_tok = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    for row, got in zip(rows[:3], scored[0::2]):
        # the text training scores: the template's prompt with the generation prompt, then the reply
        # closed by the template's end of turn (EOS here), with no EOS appended after it
        prompt = saved_tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = saved_tok(prompt, add_special_tokens=False)["input_ids"]
        ids += saved_tok(row["chosen"][0]["content"], add_special_tokens=False)["input_ids"] + [saved_tok.eos_token_id]
        with torch.no_grad():
            want = plain(torch.tensor([ids])).logits[0, 0].item()
        assert got["score"] == pytest.approx(want, abs=1e-5)
    # a plain-text row still scores as plain text (no template)
    ids = saved_tok(rows[0]["prompt"][0]["content"])["input_ids"] + saved_tok("a great light")["input_ids"]
    with torch.no_grad():
        want = plain(torch.tensor([ids + [saved_tok.eos_token_id]])).logits[0, 0].item()
    assert scored[1]["score"] == pytest.approx(want, abs=1e-5)


def test_score_command_names_the_row_and_field_of_a_bad_value(trained, tmp_path: Path) -> None:
    out, _ = trained
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "describe", "completion": " a road"}) + "\n"
                    + json.dumps({"prompt": 7, "completion": " a road"}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl, row 2, field 'prompt': expected text or a list of chat "
                                        r"messages, got int"):
        score_rows(ScoreConfig(model=str(out), data=str(data)))
