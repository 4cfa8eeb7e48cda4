"""Prompt sets: text, chat, token ids and .txt files; seeded passes that resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.data.prompts import PromptSet
from rlhfkit.errors import DataError


class WordTokenizer:
    """ids = word lengths (a toy tokenizer whose output is easy to write down by hand)."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [len(w) for w in text.split()]}

    def __len__(self) -> int:
        return 100

    def decode(self, ids: list[int]) -> str:
        return " ".join("x" * i for i in ids)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_text_chat_and_txt_prompts(tmp_path: Path) -> None:
    tok = WordTokenizer()
    ps = PromptSet.from_source(write(tmp_path / "p.jsonl", [{"prompt": "aa bbb"},
                                                            {"prompt": [{"role": "user", "content": "hi"}]}]), tok, 8)
    assert ps.texts == ["aa bbb", "user: hi\nassistant: "]
    assert ps.ids == [[2, 3], [5, 2, 10]]
    (tmp_path / "p.txt").write_text("one\n\nthree words here\n")
    ps = PromptSet.from_source(tmp_path / "p.txt", tok, 2)
    assert ps.texts == ["one", "three words here"] and ps.ids == [[3], [5, 4]]  # the last 2 tokens are kept


def test_token_id_prompts_are_used_as_they_are(tmp_path: Path) -> None:
    ps = PromptSet.from_source(write(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 7], "prompt": "p"},
                                                              {"input_ids": [1]}]), WordTokenizer(), 2)
    assert ps.ids == [[6, 7], [1]] and ps.texts == ["p", "x"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [([{"text": "a"}], "row 1: missing column 'prompt'"),
     ([{"prompt": "a"}, {"prompt": "  "}], "row 2, field 'prompt': expected non-empty text"),
     ([{"input_ids": [1, 200]}], "row 1, field 'input_ids': id 200 is outside"),
     ([{"input_ids": []}], "field 'input_ids': expected a non-empty list"),
     ([], "no prompts")],
)
def test_bad_prompt_files(tmp_path: Path, rows: list[dict], message: str) -> None:
    with pytest.raises(DataError) as err:
        PromptSet.from_source(write(tmp_path / "bad.jsonl", rows), WordTokenizer(), 8)
    assert message in str(err.value) and "bad.jsonl" in str(err.value)


def test_passes_are_permutations_and_resume_exactly() -> None:
    ps = PromptSet([str(i) for i in range(5)], [[i] for i in range(5)], seed=3)
    first = ps.next_indices(7)  # one full pass, then 2 of the next
    assert sorted(first[:5]) == list(range(5))
    rest = ps.next_indices(3)
    state = ps.state_dict()
    again = PromptSet([str(i) for i in range(5)], [[i] for i in range(5)], seed=0)
    again.load_state_dict(state)
    assert again.next_indices(4) == ps.next_indices(4)
    assert sorted(first[5:] + rest) == list(range(5))  # the second pass, served across two calls
