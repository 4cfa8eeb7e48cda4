"""The optional 'criterion' field of preference rows: parsed, carried through expansion and tokenisation
(past the pairs that max_length drops), and one clear error for a bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_preferences import CharTokenizer

from rlhfkit.data.preferences import expand_groups, expand_pairs, load_examples
from rlhfkit.data.tokenize import tokenize_groups, tokenize_pairs
from rlhfkit.errors import DataError


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_criterion_is_read_and_carried_to_every_comparison(tmp_path: Path) -> None:
    f = write(tmp_path / "p.jsonl", [
        {"prompt": "a", "chosen": "b", "rejected": "c", "criterion": "helpful"},
        {"prompt": "a", "completions": ["b", "c", "d"], "criterion": " concise "},  # 3 pairs, one list
        {"prompt": "abcdefgh", "chosen": "bcdefgh", "rejected": "c", "criterion": "harmless"},  # too long below
        {"prompt": "a", "chosen": "d", "rejected": "e"},  # no criterion
    ])
    examples = load_examples(f)
    assert [ex.criterion for ex in examples] == ["helpful", "concise", "harmless", None]
    pairs = expand_pairs(examples)
    assert [p.criterion for p in pairs] == ["helpful", "concise", "concise", "concise", "harmless", None]
    # max_length 6 drops the harmless pair (7 + EOS response tokens): the criteria stay aligned with the kept pairs
    tokens = tokenize_pairs(pairs, CharTokenizer(), max_length=6)
    assert tokens.criteria == ["helpful", "concise", "concise", "concise", None] and tokens.dropped == 1
    groups = tokenize_groups(expand_groups(examples), CharTokenizer(), max_length=6)
    assert groups.criteria == ["helpful", "concise", None] and groups.dropped == 1


@pytest.mark.parametrize("value", [7, "", "   ", ["helpful"], True])
def test_a_bad_criterion_names_the_file_row_and_field(tmp_path: Path, value: object) -> None:
    f = write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                     {"prompt": "a", "chosen": "b", "rejected": "c", "criterion": value}])
    with pytest.raises(DataError, match=r"p.jsonl, row 2, field 'criterion': expected the name of a criterion"):
        load_examples(f)


def test_null_criterion_is_no_criterion(tmp_path: Path) -> None:
    f = write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c", "criterion": None}])
    assert load_examples(f)[0].criterion is None
