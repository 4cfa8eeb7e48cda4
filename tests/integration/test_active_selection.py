"""`rlhfkit feedback sample --select uncertain|random --budget N --reward-model DIR` on the embedded model.

The chosen prompts are checked against uncertainties recomputed here: every completion scored by
plain transformers (one unpadded sequence at a time, the logit it reads at the last token), and
u = 1 - |2 sigmoid(r_(1) - r_(2)) - 1| (or the ensemble spread) in Python floats.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data import synthetic
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.feedback.store import FeedbackStore

runner = CliRunner()
POOL, BUDGET, K = 10, 3, 3
SAMPLE = ["--k", str(K), "--max-new-tokens", "10", "--seed", "5"]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two reward models on the embedded trunk with differently seeded heads, saved as `rlhfkit reward` saves."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model

    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp("rm") / f"rm{seed}"
        tokenizer = load_tokenizer(EMBEDDED_MODEL, padding_side="right")
        torch.manual_seed(seed)
        build_reward_model(EMBEDDED_MODEL, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[list[str]]]:
    """The pool file, and every prompt's K completions as `sample` writes them without --select."""
    folder = tmp_path_factory.mktemp("pool")
    texts = synthetic.prompts(POOL, seed=3, split="train")
    file = folder / "pool.txt"
    file.write_text("\n".join(texts) + "\n")
    db = str(folder / "all.db")
    result = runner.invoke(app, ["feedback", "sample", str(file), "--db", db, "--project", "all", *SAMPLE])
    assert result.exit_code == 0, result.output
    return file, texts, stored(db, "all", texts)


def stored(db: str, project: str, texts: list[str]) -> dict[str, list[str]]:
    """prompt -> its stored completions, for the prompts of `texts` in the project."""
    with FeedbackStore.open(db) as store:
        ids = store.find_prompts(project, texts)
        return {text: [c.text for c in store.prompt(ids[text]).completions] for text in texts if text in ids}


def independent_scores(folder: Path, prompt: str, completions: list[str], head: int = 0) -> list[float]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    scores = []
    for text in completions:
        response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([tokenizer(prompt)["input_ids"] + response])
        with torch.no_grad():
            scores.append(model(input_ids=ids).logits[0, head].item())
    return scores


def top_pair(scores: list[float]) -> float:
    best, second = sorted(scores, reverse=True)[:2]
    p = 1 / (1 + math.exp(-(best - second)))
    return 1 - abs(2 * p - 1)


def spread(members: list[list[float]]) -> float:
    centred = [[r - statistics.fmean(m) for r in m] for m in members]
    return statistics.fmean(statistics.pstdev(column) for column in zip(*centred))


def run_select(tmp_path: Path, file: Path, *flags: str) -> tuple[int, str, str]:
    db = str(tmp_path / "sel.db")
    result = runner.invoke(app, ["feedback", "sample", str(file), "--db", db, "--project", "sel", *SAMPLE, *flags])
    return result.exit_code, result.output, db


def test_uncertain_keeps_the_budget_most_uncertain_prompts(tmp_path: Path, pool, reward_models) -> None:
    file, texts, completions = pool
    code, output, db = run_select(tmp_path, file, "--select", "uncertain", "--budget", str(BUDGET),
                                  "--reward-model", str(reward_models[0]))
    assert code == 0, output
    u = {t: top_pair(independent_scores(reward_models[0], t, completions[t])) for t in texts}
    expected = sorted(texts, key=lambda t: -u[t])[:BUDGET]
    assert u[expected[-1]] > sorted(u.values(), reverse=True)[BUDGET]  # no tie at the cut
    chosen = stored(db, "sel", texts)
    assert set(chosen) == set(expected)
    assert all(chosen[t] == completions[t] for t in chosen)  # the pool's completions, unchanged
    assert f"chose {BUDGET} of {POOL} prompts by top-pair uncertainty" in output


def test_an_ensemble_keeps_the_prompts_it_disagrees_on(tmp_path: Path, pool, reward_models) -> None:
    file, texts, completions = pool
    code, output, db = run_select(tmp_path, file, "--select", "uncertain", "--budget", str(BUDGET),
                                  *[a for rm in reward_models for a in ("--reward-model", str(rm))])
    assert code == 0, output
    u = {t: spread([independent_scores(rm, t, completions[t]) for rm in reward_models]) for t in texts}
    expected = sorted(texts, key=lambda t: -u[t])[:BUDGET]
    assert u[expected[-1]] > sorted(u.values(), reverse=True)[BUDGET]
    assert set(stored(db, "sel", texts)) == set(expected)
    assert "ensemble disagreement" in output


def test_a_head_per_criterion_counts_the_most_uncertain_criterion(tmp_path: Path, pool) -> None:
    """A reward model with a head per criterion: a prompt's uncertainty is its most uncertain criterion's."""
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model

    file, texts, completions = pool
    folder = tmp_path / "rm_criteria"
    tokenizer = load_tokenizer(EMBEDDED_MODEL, padding_side="right")
    torch.manual_seed(2)
    build_reward_model(EMBEDDED_MODEL, tokenizer, criteria=("helpful", "concise")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code, output, db = run_select(tmp_path, file, "--select", "uncertain", "--budget", str(BUDGET),
                                  "--reward-model", str(folder))
    assert code == 0, output
    u = {t: max(top_pair(independent_scores(folder, t, completions[t], head)) for head in (0, 1)) for t in texts}
    expected = sorted(texts, key=lambda t: -u[t])[:BUDGET]
    assert u[expected[-1]] > sorted(u.values(), reverse=True)[BUDGET]
    assert set(stored(db, "sel", texts)) == set(expected)
    assert "the most uncertain of 2 criteria" in output


def test_random_is_seeded(tmp_path: Path, pool) -> None:
    file, texts, _ = pool
    picks = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        db = str(tmp_path / f"{name}.db")
        result = runner.invoke(app, ["feedback", "sample", str(file), "--db", db, "--project", "p", *SAMPLE,
                                     "--seed", seed, "--select", "random", "--budget", "4"])
        assert result.exit_code == 0, result.output
        picks.append(set(stored(db, "p", texts)))
    assert len(picks[0]) == 4 and picks[0] == picks[1]
    assert picks[0] != picks[2] and len(picks[2]) == 4


@pytest.mark.parametrize("flags, message", [
    (["--select", "uncertain", "--budget", "2", "--reward-model", "no/such/folder"], "folder not found"),
    (["--select", "uncertain", "--budget", "0", "--reward-model", "RM"], "--budget: must be at least 1"),
    (["--select", "random", "--budget", str(POOL + 1)], f"larger than the pool: the file has {POOL}"),
    (["--select", "uncertain", "--budget", "2"], "needs --reward-model"),
    (["--select", "best", "--budget", "2"], "--select: must be one of uncertain, random"),
    (["--select", "random"], "needs --budget"),
    (["--budget", "2"], "--budget is read only with --select"),
    (["--select", "uncertain", "--budget", "2", "--reward-model", "MODEL"], "not a reward model folder"),
])
def test_bad_flags_give_one_line_and_store_nothing(tmp_path: Path, pool, reward_models, flags, message) -> None:
    file, texts, _ = pool
    flags = [str(reward_models[0]) if f == "RM" else str(tmp_path) if f == "MODEL" else f for f in flags]
    code, output, db = run_select(tmp_path, file, *flags)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], output
    with FeedbackStore.open(db) as store:
        assert "sel" not in [p.name for p in store.projects()]  # nothing was stored


def test_ties_go_to_the_earlier_prompt_and_the_order_is_the_pool_order() -> None:
    from rlhfkit.feedback.selection import most_uncertain

    assert most_uncertain([0.2, 0.9, 0.5, 0.9, 0.5], 3) == [1, 2, 3]  # 0.9, 0.9, then the first 0.5
    assert most_uncertain([0.1, 0.1, 0.1], 2) == [0, 1]
