"""`rlhfkit score`: score prompt + completion rows with a saved reward model.

A row's prompt and completion are text, or chat messages (a list of {"role", "content"}), rendered
with the tokenizer's chat template exactly as `rlhfkit reward` renders its training rows, so the
rows a reward model trained on score here as they scored in training.

A one-head model adds `"score": r` to each row; a model with one head per criterion adds
`"scores": {criterion: r, ...}` (in the model's `rlhfkit_criteria` order), all from one forward pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.io import read_rows, row_numbers, write_jsonl
from rlhfkit.data.preferences import check_text, render
from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_right
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models.context import model_context, resolve_length
from rlhfkit.models.loading import LoadOptions, configure_loading, load_tokenizer
from rlhfkit.models.reward_model import build_reward_model, criteria_of, criterion_scores
from rlhfkit.rollout.scoring import check_trained_reward_model
from rlhfkit.trainers.output_dir import check_writable
from rlhfkit.trainers.reward_config import ScoreConfig


def _encode_rows(rows: list[dict[str, Any]], name: str, tokenizer: Any, max_length: int) -> list[list[int]]:
    seqs = []
    for i, row in zip(row_numbers(rows), rows):
        field = "completion" if "completion" in row else "response"
        if row.get(field) is None:
            raise DataError(f"{name}, row {i}, field 'completion': missing (or name it 'response'); every row needs "
                            "the text to score")
        # text, or chat messages rendered with the chat template exactly as the reward model's training data
        prompt = check_text(row.get("prompt", ""), f"{name}, row {i}, field 'prompt'", allow_empty=True)
        completion = check_text(row[field], f"{name}, row {i}, field '{field}'")
        prompt_text, completion_text, templated = render(prompt, completion, tokenizer)
        response = encode_response(tokenizer, completion_text)
        if len(response) >= max_length:
            raise DataError(f"{name}, row {i}: the completion alone is {len(response)} tokens, longer than "
                            f"max_length={max_length}; shorten it, or raise --max-length (at most the reward "
                            "model's context; 0 = the context)")
        prompt_ids = encode_prompt(tokenizer, prompt_text, templated)
        keep = max_length - len(response)  # prompts lose tokens on the left, never the completion
        seqs.append(prompt_ids[-keep:] + response if len(prompt_ids) > keep else prompt_ids + response)
    return seqs


@torch.no_grad()
def score_rows(cfg: ScoreConfig) -> list[dict[str, Any]]:
    """The input rows, each with a `score` field, or with a `scores` field {criterion: score} for a model of
    several criteria (max_length 0 = the reward model's context)."""
    check_trained_reward_model(cfg.model, "model", cfg.allow_untrained_head, "--allow-untrained-head")
    if cfg.output:
        check_writable(Path(cfg.output).parent, "output")
        if Path(cfg.output).is_dir():
            raise ConfigError(f"setting 'output': {cfg.output} is a folder; name a .jsonl file to write")
    max_length = resolve_length(cfg.max_length, model_context(cfg.model), "max_length", what="reward model")
    rows = read_rows(cfg.data)
    if not rows:
        raise DataError(f"{cfg.data}: no rows")
    configure_loading(LoadOptions())  # fp32 weights, no remote code (whatever an earlier run in this process set)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    seqs = _encode_rows(rows, cfg.data, tokenizer, max_length)
    model = build_reward_model(cfg.model, tokenizer, init_head=False).eval()
    scores: list[list[float]] = []
    for i in range(0, len(seqs), cfg.batch_size):
        ids, mask = pad_right(seqs[i:i + cfg.batch_size], tokenizer.pad_token_id)
        scores += criterion_scores(model, ids, mask, normalized=cfg.normalized).tolist()  # (B, C)
    criteria = criteria_of(model)
    if len(criteria) == 1:
        return [{**row, "score": s[0]} for row, s in zip(rows, scores)]
    return [{**row, "scores": dict(zip(criteria, s))} for row, s in zip(rows, scores)]


def run(cfg: ScoreConfig) -> None:
    """CLI entry: write scored rows to cfg.output, or print them as JSON lines."""
    scored = score_rows(cfg)
    if cfg.output:
        write_jsonl(cfg.output, scored)
        print(f"scored {len(scored)} rows -> {Path(cfg.output)}", file=sys.stderr)
    else:
        for row in scored:
            print(json.dumps(row, ensure_ascii=False))
