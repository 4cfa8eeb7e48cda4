"""Preference data: formats, expansion of ranked lists, and one clear error per kind of bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlhfkit.data.io import read_rows
from rlhfkit.data.preferences import PreferencePair, expand_pairs, load_examples, load_preferences, render
from rlhfkit.data.tokenize import pad_left, pad_right, tokenize_pairs
from rlhfkit.errors import DataError


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------
def test_plain_pairs(tmp_path: Path) -> None:
    f = write(tmp_path / "p.jsonl", [{"prompt": "Q:", "chosen": " yes", "rejected": " no"}])
    assert load_preferences(f) == [PreferencePair("Q:", " yes", " no", 1.0, 0.0, False)]


def test_ranked_list_expands_to_all_pairs_weighted_per_prompt(tmp_path: Path) -> None:
    # K = 4 completions best first -> C(4, 2) = 6 pairs, each weighing 1/6 so the prompt counts once.
    f = write(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["a", "b", "c", "d"]},
                                     {"prompt": "q", "chosen": "x", "rejected": "y"}])
    pairs = load_preferences(f)
    ranked = [(p.chosen, p.rejected) for p in pairs if p.prompt == "p"]
    assert sorted(ranked) == sorted([("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")])
    assert [p.weight for p in pairs if p.prompt == "p"] == pytest.approx([1 / 6] * 6)
    assert sum(p.weight for p in pairs if p.prompt == "p") == pytest.approx(1.0)
    assert [p.weight for p in pairs if p.prompt == "q"] == [1.0]


def test_ranks_with_ties_give_no_pair_for_the_tie(tmp_path: Path) -> None:
    # ranks [0, 1, 1]: a beats b and c; b and c are tied -> 2 pairs, weight 1/2 each.
    f = write(tmp_path / "t.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1, 1]}])
    pairs = load_preferences(f)
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("a", "b"), ("a", "c")]
    assert [p.weight for p in pairs] == pytest.approx([0.5, 0.5])


def test_ranks_order_need_not_be_best_first(tmp_path: Path) -> None:
    f = write(tmp_path / "t.jsonl", [{"prompt": "p", "completions": ["worst", "best"], "ranks": [1, 0]}])
    (pair,) = load_preferences(f)
    assert (pair.chosen, pair.rejected) == ("best", "worst")


def test_margin_column(tmp_path: Path) -> None:
    f = write(tmp_path / "m.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}])
    assert load_preferences(f)[0].margin == 2.0


def test_chat_messages_plain_fallback(tmp_path: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello!"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    (pair,) = load_preferences(write(tmp_path / "c.jsonl", rows))
    assert pair.prompt == "user: hi\nassistant: "
    assert (pair.chosen, pair.rejected) == ("hello!", "go away")


def test_chat_without_prompt_column_uses_common_prefix(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "hello!"}],
             "rejected": [user, {"role": "assistant", "content": "no"}]}]
    (pair,) = load_preferences(write(tmp_path / "c.jsonl", rows))
    assert pair.prompt == "user: hi\nassistant: "
    assert (pair.chosen, pair.rejected) == ("hello!", "no")


def test_chat_template_is_used_when_the_tokenizer_has_one() -> None:
    class Templated:
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
            text = "".join(f"<{m['role']}>{m['content']}</>" for m in msgs)
            return text + ("<assistant>" if add_generation_prompt else "")

    prompt, response, templated = render([{"role": "user", "content": "q"}], "a", Templated())
    # full conversation "<user>q</><assistant>a</>" minus the generation prompt "<user>q</><assistant>"
    assert (prompt, response, templated) == ("<user>q</><assistant>", "a</>", True)


def test_csv_parquet_json_and_datasets_read_the_same_rows(tmp_path: Path) -> None:
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
    with (tmp_path / "d.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    for source in (tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "d.json", tmp_path / "ds", ds, rows):
        assert read_rows(source) == rows, source


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming file, row and field
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "chosen": "a"}, "row 1: missing column(s) rejected"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "row 1, field 'chosen': empty text"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "row 1, field 'chosen': expected text"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
        ({"prompt": "p", "completions": ["only one"]}, "field 'completions': a ranked list needs at least 2"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [0]}, "field 'ranks'"),
        ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}, "all completions are tied"),
        ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "b"}, "needs string 'role' and 'content'"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "field 'margin'"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, row: dict, expected: str) -> None:
    f = write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as err:
        load_examples(f)
    assert str(f) in str(err.value)
    assert expected in str(err.value)


def test_malformed_json_line_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2: malformed JSON"):
        load_examples(f)


def test_second_row_is_reported_as_row_2(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p"}])
    with pytest.raises(DataError, match="row 2: missing column"):
        load_examples(f)


def test_missing_unreadable_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        load_examples(tmp_path / "x.txt")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read the file"):
        load_examples(tmp_path / "b.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_examples(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------------------------------------
# Tokenisation and truncation
# ---------------------------------------------------------------------------------------------
class CharTokenizer:
    """One id per character (a=1, b=2, ...), EOS = 0: lengths are easy to count by hand."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) - 96 for c in text]}


def test_truncation_cuts_the_prompt_from_the_left_never_the_response() -> None:
    pairs = [PreferencePair("abcdef", "xy", "z")]
    out = tokenize_pairs(pairs, CharTokenizer(), max_length=6, truncation="truncate_prompt")
    # responses: "xy"+EOS = 3 tokens, "z"+EOS = 2; the prompt keeps its last 6 - 3 = 3 tokens "def".
    assert out.chosen == [[4, 5, 6, 24, 25, 0]]
    assert out.rejected == [[4, 5, 6, 26, 0]]
    assert (out.truncated, out.dropped) == (1, 0)


def test_truncation_drop_mode_and_too_long_responses_are_counted() -> None:
    pairs = [PreferencePair("abcdef", "xy", "z"), PreferencePair("a", "b", "c"), PreferencePair("a", "bcdefgh", "c")]
    out = tokenize_pairs(pairs, CharTokenizer(), max_length=6, truncation="drop")
    assert (len(out), out.truncated, out.dropped, out.kept_index) == (1, 0, 2, [1])
    out = tokenize_pairs(pairs, CharTokenizer(), max_length=6, truncation="truncate_prompt")
    # the third pair's response "bcdefgh"+EOS (8 tokens) cannot fit in 6 even without a prompt
    assert (len(out), out.truncated, out.dropped) == (2, 1, 1)


def test_padding_helpers() -> None:
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_expand_pairs_keeps_row_weights_summing_to_rows(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "completions": ["a", "b", "c"]}, {"prompt": "q", "completions": ["d", "e"]}]
    pairs = expand_pairs(load_examples(write(tmp_path / "w.jsonl", rows)))
    assert len(pairs) == 3 + 1
    assert sum(p.weight for p in pairs) == pytest.approx(2.0)
