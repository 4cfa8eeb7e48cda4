"""Prompt sets for rollouts: a 'prompt' column (text or chat messages), an 'input_ids' column of
token ids, or a .txt file with one prompt per line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhfkit import seeds
from rlhfkit.data.io import Source, numbered, read_rows, row_numbers, source_name
from rlhfkit.data.preferences import render
from rlhfkit.data.tokenize import encode_prompt, pad_left
from rlhfkit.errors import DataError


def load_prompt_ids(rows: list[dict[str, Any]], name: str, tokenizer: Any) -> tuple[list[str], list[list[int]]]:
    """Pre-tokenised prompts: an 'input_ids' column of token id lists (the text is decoded for logs)."""
    texts, ids = [], []
    for i, row in zip(row_numbers(rows), rows):
        value = row.get("input_ids")
        if not isinstance(value, list) or not value or not all(isinstance(t, int) and t >= 0 for t in value):
            raise DataError(f"{name}, row {i}, field 'input_ids': expected a non-empty list of token ids")
        if max(value) >= len(tokenizer):
            raise DataError(f"{name}, row {i}, field 'input_ids': id {max(value)} is outside the tokenizer's "
                            f"{len(tokenizer)} tokens")
        ids.append(value)
        texts.append(row["prompt"] if isinstance(row.get("prompt"), str) else tokenizer.decode(value))
    return texts, ids


def read_prompt_rows(source: Source) -> list[dict[str, Any]]:
    """Rows of a prompt source; a .txt file gives one {'prompt': line} row per non-empty line."""
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".txt":
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if line.strip()]
        rows = numbered([{"prompt": line} for _, line in lines], [n for n, _ in lines])
    else:
        rows = read_rows(source)
    if not rows:
        raise DataError(f"{source_name(source)}: no prompts (the file is empty)")
    return rows


def prompt_texts(rows: list[dict[str, Any]], name: str, tokenizer: Any = None) -> tuple[list[str], list[bool]]:
    """(texts, templated) of every row's 'prompt'; chat prompts are rendered with the chat template."""
    texts, templated = [], []
    for i, row in zip(row_numbers(rows), rows):
        if "prompt" not in row:
            raise DataError(f"{name}, row {i}: missing column 'prompt' (found: {', '.join(sorted(row)) or 'none'})")
        value = row["prompt"]
        if isinstance(value, list):
            text, _, is_templated = render(value, "", tokenizer)
        elif isinstance(value, str) and value.strip():
            text, is_templated = value, False
        else:
            raise DataError(f"{name}, row {i}, field 'prompt': expected non-empty text or chat messages")
        texts.append(text)
        templated.append(is_templated)
    return texts, templated


class PromptSet:
    """Tokenised prompts, cut to the last `max_length` tokens, served in seeded shuffled passes.

    The order of pass e is a permutation seeded by (seed, e), so the sampler's whole state is
    the number of prompts served: a resumed run continues with the same prompts.
    """

    def __init__(self, texts: list[str], ids: list[list[int]], seed: int = 0) -> None:
        self.texts, self.ids, self.seed = texts, ids, seed
        self.served = 0

    @classmethod
    def from_source(cls, source: Source, tokenizer: Any, max_length: int, seed: int = 0) -> PromptSet:
        """Prompts from a file or rows; rows with an 'input_ids' column are used as already tokenised."""
        rows, name = read_prompt_rows(source), source_name(source)
        if "input_ids" in rows[0]:
            texts, ids = load_prompt_ids(rows, name, tokenizer)
            return cls(texts, [x[-max_length:] for x in ids], seed)
        texts, templated = prompt_texts(rows, name, tokenizer)
        ids = [encode_prompt(tokenizer, t, tmpl)[-max_length:] for t, tmpl in zip(texts, templated)]
        for i, x in zip(row_numbers(rows), ids):
            if not x:
                raise DataError(f"{source_name(source)}, row {i}, field 'prompt': encodes to no tokens")
        return cls(texts, ids, seed)

    def __len__(self) -> int:
        return len(self.texts)

    def _order(self, epoch: int) -> list[int]:
        gen = seeds.generator(self.seed, seeds.PROMPT_PASS, epoch)
        return torch.randperm(len(self), generator=gen).tolist()

    def next_indices(self, n: int) -> list[int]:
        """The next n prompt indices (passes over the set follow one another)."""
        out = []
        while len(out) < n:
            epoch, pos = divmod(self.served, len(self))
            order = self._order(epoch)
            take = min(n - len(out), len(self) - pos)
            out += order[pos : pos + take]
            self.served += take
        return out

    def batch(self, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Left-padded (ids, mask) and the texts of the given prompts."""
        ids, mask = pad_left([self.ids[i] for i in indices], pad_id)
        return ids, mask, [self.texts[i] for i in indices]

    def state_dict(self) -> dict[str, int]:
        return {"served": self.served, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.served, self.seed = int(state["served"]), int(state["seed"])
