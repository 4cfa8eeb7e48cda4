"""`rlhfkit reward --ranking-loss listwise` on tiny models: ranked lists stay groups, the Plackett-Luce
loss trains, and on pairs it is the pairwise run exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file
from toy_data import known_rule_pairs, known_rule_rankings, write_jsonl

from rlhfkit.data.preferences import PreferenceGroup, PreferencePair, expand_groups, load_examples
from rlhfkit.data.tokenize import collate_groups, tokenize_groups, tokenize_pairs
from rlhfkit.feedback.export import LabeledPrompt, build_rows
from rlhfkit.trainers.reward import kendall_tau, spearman_rho, train
from rlhfkit.trainers.reward_config import RewardConfig


class CharTokenizer:
    """One id per character (a=1, b=2, ...), EOS = 0: lengths are easy to count by hand."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) - 96 for c in text]}

    def __len__(self) -> int:
        return 27


def config(model: Path, data: Path, out: Path, **kw) -> RewardConfig:
    base = dict(model=str(model), train_data=str(data), output_dir=str(out), learning_rate=2e-3, batch_size=8,
                max_length=96, normalize="none", threads=1, mixed_precision="no", seed=0)
    return RewardConfig(**{**base, **kw})


def max_weight_difference(a: Path, b: Path) -> float:
    one, two = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert one.keys() == two.keys()
    return max((one[k] - two[k]).abs().max().item() for k in one)


# ---------------------------------------------------------------------------------------------
# Data: groups tokenise like pairs, keep their ties, and lay out like pairs
# ---------------------------------------------------------------------------------------------
def test_pairs_tokenise_as_groups_of_two_exactly_like_the_pair_path() -> None:
    pairs = [PreferencePair("abcdef", "xy", "z"), PreferencePair("a", "b", "c"), PreferencePair("a", "bcdefgh", "c"),
             PreferencePair("abc", "dd", "e")]
    groups = [PreferenceGroup(p.prompt, (p.chosen, p.rejected), (0, 1)) for p in pairs]
    for mode in ("truncate_prompt", "drop"):
        want = tokenize_pairs(pairs, CharTokenizer(), max_length=6, truncation=mode)
        got = tokenize_groups(groups, CharTokenizer(), max_length=6, truncation=mode)
        assert got.sequences == [[c, r] for c, r in zip(want.chosen, want.rejected)], mode
        assert (got.truncated, got.dropped, got.kept_index) == (want.truncated, want.dropped, want.kept_index), mode


def test_a_completion_that_does_not_fit_leaves_its_group_the_rest() -> None:
    # "bcdefgh"+EOS is 8 tokens > max_length 6: it goes; the other two keep their order, the prompt its last 3
    groups = [PreferenceGroup("abcdef", ("xy", "bcdefgh", "z"), (1, 0, 2)),
              PreferenceGroup("a", ("bcdefgh", "c", "d"), (0, 1, 1))]  # only tied completions fit: dropped
    out = tokenize_groups(groups, CharTokenizer(), max_length=6, rows=[4, 9])
    assert out.sequences == [[[4, 5, 6, 24, 25, 0], [4, 5, 6, 26, 0]]]
    assert out.ranks == [[1, 2]]
    assert (out.truncated, out.trimmed, out.dropped, out.dropped_rows) == (1, 1, 1, [9])


def test_ranked_export_feeds_the_groups_unchanged(tmp_path: Path) -> None:
    """The feedback store's ranked export (ties as equal ranks) reads back as one group per prompt."""
    prompts = [LabeledPrompt("p one", ["a", "b", "c", "d"], {"ann": [2, 0, 1, 1]}, flagged=False),
               LabeledPrompt("p two", ["x", "y"], {"ann": [1, 0]}, flagged=False)]
    rows = build_rows(prompts, format="ranked")
    groups = expand_groups(load_examples(write_jsonl(tmp_path / "ranked.jsonl", rows)))
    assert [(g.prompt, g.completions, g.ranks) for g in groups] == [
        ("p one", ("b", "c", "d", "a"), (0, 1, 1, 2)), ("p two", ("y", "x"), (0, 1))]


def test_collate_lays_out_pairs_as_chosen_then_rejected_and_slots_ragged_groups() -> None:
    batch = collate_groups([([[1, 2], [3]], [0, 1], 0.0), ([[4], [5, 6, 7], [8]], [1, 0, 1], 0.0)], pad_id=0)
    # rows by position, then group: g0c0, g1c0, g0c1, g1c1, g1c2
    assert batch["input_ids"].tolist() == [[1, 2, 0], [4, 0, 0], [3, 0, 0], [5, 6, 7], [8, 0, 0]]
    assert batch["slots"].tolist() == [0, 3, 1, 4, 5]  # g * K + j with K = 3
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    # pairs ranked apart: (0, 1) in g0; (1, 0) and (1, 2) in g1, as slots
    assert list(zip(batch["better"].tolist(), batch["worse"].tolist())) == [(0, 1), (4, 3), (4, 5)]


def test_rank_correlations_hand() -> None:
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # C = 5, D = 1
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(5 * 6))  # tau-b: one tie in x
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # ranks 1, 2.5, 2.5, 4
    assert kendall_tau([0.5, 0.5], [1, 2]) == spearman_rho([0.5, 0.5, 0.5], [1, 2, 3]) == 0.0  # constant scores


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def test_on_pairs_listwise_trains_exactly_like_pairwise(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A pair is a ranked list of two, where the two losses are the same: same batches, same forward
    rows, same loss and gradient, so the same weights (to float32 rounding; here in fact bitwise)."""
    rows = known_rule_pairs(64, seed=1)
    # half the rows as ranked lists with the better completion second
    rows[::2] = [{"prompt": r["prompt"], "completions": [r["rejected"], r["chosen"]], "ranks": [1, 0]}
                 for r in rows[::2]]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    runs = {loss: train(config(tiny_model_dir, data, tmp_path / loss, ranking_loss=loss, eval_fraction=0.25,
                               center_rewards_coef=0.01, normalize="mean"))
            for loss in ("pairwise", "listwise")}
    assert max_weight_difference(tmp_path / "pairwise", tmp_path / "listwise") <= 1e-6
    pairwise, listwise = runs["pairwise"], runs["listwise"]
    assert listwise["train/steps"] == pairwise["train/steps"] == 6
    for key in ("eval/accuracy", "eval/margin", "eval/reward_mean", "normalize/bias"):
        assert listwise[key] == pytest.approx(pairwise[key], abs=1e-6), key
    # listwise reports its own (Plackett-Luce) loss and the pairwise one: on pairs both are the Bradley-Terry loss
    assert listwise["eval/loss"] == pytest.approx(pairwise["eval/loss"], abs=1e-6)
    assert listwise["eval/pairwise_loss"] == pytest.approx(pairwise["eval/loss"], abs=1e-6)
    assert listwise["eval/groups"] == listwise["eval/pairs"] == pairwise["eval/pairs"] == 16
    assert "eval/kendall_tau" not in listwise  # no list of 3+ to correlate with
    train_losses = [[json.loads(line)["loss/train"] for line in (tmp_path / loss / "metrics.jsonl").open()
                     if "loss/train" in line] for loss in ("pairwise", "listwise")]
    assert train_losses[0] == pytest.approx(train_losses[1], abs=1e-6)


def test_listwise_one_pass_of_8_equals_8_micro_batches_of_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ragged lists of 2-4 completions: each micro-batch divides by the global batch's number of lists."""
    data = write_jsonl(tmp_path / "ranked.jsonl", known_rule_rankings(30, seed=5))
    whole, parts = (train(config(tiny_model_dir, data, tmp_path / f"rm{micro}", ranking_loss="listwise",
                                 eval_fraction=0.2, micro_batch_size=micro)) for micro in (0, 1))
    assert parts["train/steps"] == whole["train/steps"] == 3
    assert parts["eval/loss"] == pytest.approx(whole["eval/loss"], rel=1e-5)
    assert max_weight_difference(tmp_path / "rm0", tmp_path / "rm1") <= 1e-5


def test_listwise_learns_ranked_lists_and_reports_rank_correlations(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ranked lists of 2-4 (more positive words rank higher), some with ties, through the ranked export."""
    rows = known_rule_rankings(120, seed=3)
    for r in rows[::3]:
        if len(r["completions"]) > 2:  # a tie: the two worst are marked as equally bad
            r["ranks"] = list(range(len(r["completions"]) - 1)) + [len(r["completions"]) - 2]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", known_rule_rankings(40, seed=4))
    metrics = train(config(tiny_model_dir, data, tmp_path / "rm", ranking_loss="listwise", eval_data=str(evals),
                           batch_size=4, epochs=2, eval_every=30))
    assert metrics["eval/groups"] == 40 and metrics["eval/pairs"] > 40
    # the Plackett-Luce loss falls well below that of equal rewards, mean log K! (every order equally likely)
    chance = sum(math.log(math.factorial(len(json.loads(line)["completions"]))) for line in evals.open()) / 40
    assert metrics["eval/loss"] < chance - 0.5
    assert metrics["eval/accuracy"] >= 0.8  # pairwise accuracy, as a pairwise run reports it
    assert metrics["eval/kendall_tau"] >= 0.6 and metrics["eval/spearman"] >= 0.6
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").open()]
    assert sum("eval/kendall_tau" in r for r in logged) >= 2  # every 30 steps and at the end
