"""The HTML report and its plots, built from small run folders written by hand, and the demo
summary (`DemoSummary`) that the demo writes and the report reads."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.errors import DataError
from rlhfkit.tracking.report import algorithm, build_report, detect, fmt, fmt_percent
from rlhfkit.tracking.summary import (
    DemoSummary,
    DPORecord,
    PolicyRecord,
    Reply,
    RewardModelRecord,
    RunRecord,
    SampleRecord,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RL_PLOTS = ("reward.png", "kl.png", "entropy.png", "diversity.png")
XSS = "<script>alert(1)</script>"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rl_rows(n: int, guard: bool) -> list[dict[str, Any]]:
    """Iterations where the unguarded run hacks: proxy up fast, gold down, KL up, diversity down."""
    rows = []
    for it in range(n):
        t = it / max(n - 1, 1)
        rows.append({
            "step": it, "time": 1.7e9 + it,
            "reward/mean": t if guard else 3 * t, "reward/std": 0.5, "gold/mean": 0.5 * t if guard else -t,
            "kl/ref": 2 * t if guard else 15 * t, "kl/coef": 0.05 if guard else 0.0,
            "policy/entropy": 2.5 - 0.5 * t if guard else 2.5 - 2.3 * t,
            "response/distinct_1": 0.6, "response/distinct_2": 0.85 - (0.05 if guard else 0.7) * t,
            "response/repetition": 0.1 + (0.02 if guard else 0.6) * t, "response/length": 20.0,
            "time/iteration": 0.5,
        })
    rows[3]["gold/mean"] = None  # metrics.jsonl stores NaN as null
    return rows


def rm_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for step in range(1, n + 1):
        rows.append({"step": step, "time": 0.0, "loss/train": 0.7 - 0.4 * step / n,
                     "train/accuracy": 0.5 + 0.4 * step / n, "train/lr": 1e-4, "perf/pairs_per_s": 300.0})
        if step % 4 == 0:
            rows.append({"step": step, "time": 0.0, "eval/loss": 0.6, "eval/accuracy": 0.7, "eval/margin": 0.9,
                         "eval/reward_mean": 0.0, "eval/reward_std": 1.0})
    return rows


def write_rl_run(folder: Path, n: int = 12, guard: bool = True, stage: str = "ppo", extra: str = "") -> None:
    write_jsonl(folder / "metrics.jsonl", rl_rows(n, guard))
    samples = [{"step": step, "prompt": f"prompt {step}-{i}", "response": f"response at {step} #{i}", "score": 0.25 * i}
               for step in (0, 5, n - 1) for i in range(2)]
    samples[-1]["response"] = XSS
    write_jsonl(folder / "samples.jsonl", samples)
    (folder / "config.yaml").write_text(f"stage: {stage}\nkl_coef: {0.05 if guard else 0.0}\n{extra}"
                                        "marker_setting: 12345\n")


def dpo_rows(n: int) -> list[dict[str, Any]]:
    """rlhfkit dpo's metrics.jsonl: a start evaluation at step 0, train steps, a final evaluation."""
    held_out = {"eval/loss": 0.69, "eval/rewards/accuracy": 0.0, "eval/rewards/margin": 0.0, "eval/pairs": 30}
    rows = [{"step": 0, "time": 0.0, **held_out}]
    for step in range(1, n + 1):
        rows.append({"step": step, "time": 0.0, "loss/train": 0.69 - 0.3 * step / n, "rewards/accuracy": 0.5 + 0.3 *
                     step / n, "rewards/margin": 0.1 * step, "train/lr": 1e-4})
    rows.append({"step": n, "time": 0.0, **held_out, "eval/loss": 0.45, "eval/rewards/accuracy": 0.7654})
    return rows


def write_dpo_run(folder: Path) -> None:
    write_jsonl(folder / "metrics.jsonl", dpo_rows(10))
    (folder / "eval.json").write_text(json.dumps({"eval/loss": 0.45, "eval/rewards/accuracy": 0.7654,
                                                  "start/eval/loss": 0.6931, "eval/pairs": 30}))
    (folder / "config.yaml").write_text("stage: dpo\nbeta: 0.25\ndpo_marker: 777\n")


def write_rm_run(folder: Path) -> None:
    write_jsonl(folder / "metrics.jsonl", rm_rows(16))
    (folder / "eval.json").write_text(json.dumps({"eval/accuracy": 0.8125, "eval/loss": 0.4123, "eval/pairs": 64}))
    (folder / "config.yaml").write_text("stage: reward\nepochs: 3\n")


DEMO = DemoSummary(
    reward_model=RewardModelRecord(folder="reward_model", accuracy=0.8125),
    start=PolicyRecord(gold=0.1, proxy=0.0, distinct_1=0.61, distinct_2=0.85, repetition=0.05, kl=0.0),
    with_guard=RunRecord(gold=0.55, proxy=1.02, distinct_1=0.6, distinct_2=0.8, repetition=0.07, kl=2.345,
                         folder="ppo", kl_coef=0.05, ent_coef=0.0, win_rate=0.7234, kl_final=2.1),
    without_guard=RunRecord(gold=-1.05, proxy=3.1, distinct_1=0.2, distinct_2=0.15, repetition=0.6, kl=16.78,
                            folder="ppo_no_guard", kl_coef=0.0, ent_coef=0.0, win_rate=0.1875, kl_final=15.3),
    dpo=DPORecord(gold=0.4321, proxy=0.5, distinct_1=0.55, distinct_2=0.77, repetition=0.08, kl=4.567,
                  folder="dpo", beta=0.25, learning_rate=1e-4, epochs=2, win_rate=0.6543, accuracy=0.7654),
    eval_prompts=16,
    seconds=98.76,
    samples=[SampleRecord(prompt="Say something kind.", start=Reply("hello there", 0.1),
                          with_guard=Reply("you are kind", 0.6), without_guard=Reply(XSS + " great great", -1.2),
                          dpo=Reply("a dpo reply", 0.4))],
    settings={"iterations": 12, "seed": 7},
)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file starts like a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()  # no JavaScript, and no unescaped model output
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    for link in links:
        assert base64.b64decode(link.split(",", 1)[1])[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    write_rm_run(root / "reward_model")
    write_rl_run(root / "ppo", guard=True)
    write_rl_run(root / "ppo_no_guard", guard=False)
    write_dpo_run(root / "dpo")
    (root / "config.yaml").write_text("stage: demo\nseed: 7\n")
    DEMO.save(root / "demo.json")
    html_path = build_report(root)
    return root, html_path.read_text()


def test_demo_report_is_self_contained_with_headline_numbers(demo: tuple[Path, str]) -> None:
    root, html = demo
    assert (root / "report.html").is_file()
    assert_self_contained(html)
    assert html.count("<img ") == 6
    for text in ("81.2%", "72.3%", "18.8%", "15.3", "-1.05", "0.15", "98.76 s", "reward hacking"):
        assert text in html, text
    assert "<details>" in html and "seed: 7" in html and "marker_setting: 12345" in html


def test_demo_report_shows_the_dpo_run_beside_ppo(demo: tuple[Path, str]) -> None:
    _, html = demo
    # Its column in the headline and the samples, its win rate and accuracy, and the held-out KL of all four.
    assert html.count("<th>final, DPO</th>") == 2
    for text in ("65.4%", "76.5%", "0.4321", "2.345", "16.78", "4.567", "beta 0.25", "a dpo reply", "dpo_marker: 777",
                 "DPO: final held-out evaluation", "DPO training"):
        assert text in html, text
    facts = dict(re.findall(r'<span class="label">(.*?)</span><span class="value">(.*?)</span>', html))
    assert facts["Gold win rate, DPO"] == "65.4%" and facts["DPO held-out implicit-reward accuracy"] == "76.5%"
    kl_row = re.search(r"<td>Held-out KL to the start policy.*?</tr>", html).group(0)
    assert re.findall(r'class="num">([^<]*)<', kl_row) == ["0", "2.345", "16.78", "4.567"]
    training_kl = re.search(r"<td>Final training KL.*?</tr>", html).group(0)
    assert re.findall(r'class="num">([^<]*)<', training_kl) == ["\u2014", "2.1", "15.3", "\u2014"]


def test_demo_report_escapes_model_output(demo: tuple[Path, str]) -> None:
    _, html = demo
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; great great" in html


def test_demo_plots_are_real_pngs(demo: tuple[Path, str]) -> None:
    root, _ = demo
    for name in (*RL_PLOTS, "reward_model.png", "dpo.png"):
        path = root / "plots" / name
        width, height = png_size(path)
        assert width >= 500 and height >= 300 and path.stat().st_size > 10_000, name


def test_single_rl_run_shows_first_and_last_samples(tmp_path: Path) -> None:
    write_rl_run(tmp_path, n=12, extra="lam: 0.95\n")
    html = build_report(tmp_path).read_text()
    assert_self_contained(html)
    assert "PPO" in html and "marker_setting: 12345" in html
    assert "prompt 0-0" in html and "prompt 11-1" in html
    assert "prompt 5-0" not in html  # only the first and last logged steps
    assert "&lt;script&gt;" in html and XSS not in html
    for name in RL_PLOTS:
        png_size(tmp_path / "plots" / name)
    assert not (tmp_path / "plots" / "reward_model.png").exists()


def test_reward_model_run(tmp_path: Path) -> None:
    write_rm_run(tmp_path)
    out = build_report(tmp_path, tmp_path / "elsewhere" / "rm.html")
    assert out == tmp_path / "elsewhere" / "rm.html"
    html = out.read_text()
    assert_self_contained(html)
    assert "81.2%" in html and "0.4123" in html
    png_size(tmp_path / "elsewhere" / "plots" / "reward_model.png")


def test_dpo_run(tmp_path: Path) -> None:
    write_dpo_run(tmp_path)
    html = build_report(tmp_path).read_text()
    assert_self_contained(html)
    facts = dict(re.findall(r'<span class="label">(.*?)</span><span class="value">(.*?)</span>', html))
    assert facts["Held-out implicit-reward accuracy"] == "76.5%" and facts["beta"] == "0.25"
    assert "0.6931" in html and "dpo_marker: 777" in html  # the start policy's loss, the config
    assert png_size(tmp_path / "plots" / "dpo.png")[0] > 0


def write_sft_run(folder: Path) -> None:
    rows = [{"step": 0, "time": 0.0, "eval/loss": 2.5, "eval/perplexity": math.exp(2.5)}]
    rows += [{"step": s, "time": 0.0, "loss/train": 2.4 - 0.1 * s, "train/perplexity": math.exp(2.4 - 0.1 * s)}
             for s in range(1, 9)]
    rows.append({"step": 8, "time": 0.0, "eval/loss": 1.75, "eval/perplexity": math.exp(1.75)})
    write_jsonl(folder / "metrics.jsonl", rows)
    (folder / "eval.json").write_text(json.dumps({"eval/loss": 1.75, "eval/perplexity": math.exp(1.75),
                                                  "eval/start_loss": 2.5, "train/steps": 8}))
    (folder / "config.yaml").write_text("stage: sft\nsft_marker: 4242\n")


def test_sft_run(tmp_path: Path) -> None:
    write_sft_run(tmp_path)
    html = build_report(tmp_path).read_text()
    assert_self_contained(html)
    facts = dict(re.findall(r'<span class="label">(.*?)</span><span class="value">(.*?)</span>', html))
    assert facts["Held-out loss per target token"] == "2.5 \u2192 1.75"
    assert "5.755" in html  # exp(1.75) = 5.7546, the held-out perplexity to 4 digits
    assert "sft_marker: 4242" in html
    assert png_size(tmp_path / "plots" / "sft.png")[0] > 0
    assert detect(tmp_path) == "sft"


def test_missing_optional_keys_and_files_are_left_out(tmp_path: Path) -> None:
    rows = [{"step": i, "time": 0.0, "reward/mean": float(i), "policy/entropy": None} for i in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "rew')
    (tmp_path / "config.yaml").write_text("stage: reinforce\n")
    html = build_report(tmp_path).read_text()
    assert_self_contained(html)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["reward.png"]  # entropy is all null
    assert "Gold" not in html and "Samples at iteration" not in html and "REINFORCE" in html


# ---------------------------------------------------------------------------------------------
# The stage comes from config.yaml, not from metric names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "expected"), [
    ({"stage": "ppo", "lam": 0.95}, "PPO"),
    ({"stage": "ppo"}, "PPO"),
    ({"stage": "reinforce", "baseline": "rloo"}, "RLOO"),
    ({"stage": "reinforce", "baseline": "grpo"}, "GRPO"),
    ({"stage": "reinforce", "baseline": "moving_mean"}, "REINFORCE (moving-mean baseline)"),
    ({"stage": "reinforce"}, "REINFORCE"),
    ({"stage": "ppo", "baseline": "rloo"}, "PPO"),  # the stage decides, not which settings are there
])
def test_algorithm_from_the_stage(config: dict[str, Any], expected: str) -> None:
    assert algorithm(config) == expected


def test_stage_decides_over_metric_names(tmp_path: Path) -> None:
    write_rl_run(tmp_path / "rl_named_reward", stage="reward")  # RL metrics, but written by `rlhfkit reward`
    assert detect(tmp_path / "rl_named_reward") == "reward_model"
    write_rm_run(tmp_path / "rm_as_rl")
    (tmp_path / "rm_as_rl" / "config.yaml").write_text("stage: reinforce\nbaseline: grpo\n")
    assert detect(tmp_path / "rm_as_rl") == "rl"
    html = build_report(tmp_path / "rm_as_rl").read_text()
    assert "GRPO" in html and "RL run" in html


def test_demo_folder_from_its_config_or_its_demo_json(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    DEMO.save(tmp_path / "old" / "demo.json")
    assert detect(tmp_path / "old") == "demo"  # no config.yaml of its own: recognised by demo.json
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.yaml").write_text("stage: demo\n")
    with pytest.raises(DataError, match=r"new/demo\.json: not found") as info:
        detect(tmp_path / "new")
    assert "\n" not in str(info.value)
    DEMO.save(tmp_path / "new" / "demo.json")
    assert detect(tmp_path / "new") == "demo"


@pytest.mark.parametrize(("files", "expected"), [
    ({}, r"config\.yaml: not found, so what wrote .*not_a_run_xyz is unknown"),
    ({"metrics.jsonl": '{"step": 0, "reward/mean": 1.0, "kl/ref": 0.1}\n'}, r"config\.yaml: not found"),
    ({"config.yaml": "kl_coef: 0.1\n", "metrics.jsonl": '{"step": 0, "reward/mean": 1.0}\n'},
     r"config\.yaml: no 'stage:' line, so what wrote .*not_a_run_xyz is unknown"),
    ({"config.yaml": "stage: score\n"}, r"'stage: score' has no report"),
    ({"config.yaml": "stage: [ppo\n"}, r"config\.yaml, line \d+: not valid YAML"),
    ({"config.yaml": "- ppo\n"}, r"config\.yaml: expected a mapping"),
])
def test_folder_without_a_known_stage_raises_one_line_data_error(tmp_path: Path, files: dict[str, str],
                                                                 expected: str) -> None:
    folder = tmp_path / "not_a_run_xyz"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(DataError, match=expected) as info:
        build_report(folder)
    assert "\n" not in str(info.value)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        build_report(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# DemoSummary: the one record of demo.json
# ---------------------------------------------------------------------------------------------
def test_demo_summary_round_trip(tmp_path: Path) -> None:
    assert DemoSummary.from_json(DEMO.to_json()) == DEMO
    path = DEMO.save(tmp_path / "demo.json")
    assert DemoSummary.load(path) == DEMO
    data = json.loads(path.read_text())
    assert data["with_guard"]["win_rate"] == 0.7234 and data["reward_model"]["accuracy"] == 0.8125
    assert not list(tmp_path.glob("*.tmp"))


def test_demo_summary_writes_nan_as_null(tmp_path: Path) -> None:
    run = dataclasses.replace(DEMO.without_guard, kl_final=float("nan"))
    loaded = DemoSummary.load(dataclasses.replace(DEMO, without_guard=run).save(tmp_path / "demo.json"))
    assert loaded.without_guard.kl_final is None
    assert "NaN" not in (tmp_path / "demo.json").read_text()
    html = build_report(tmp_path).read_text()
    assert "n/a" in html


def _broken(path: list[str | int], value: Any = ...) -> dict[str, Any]:
    """DEMO as JSON with the field at `path` deleted (value ...) or replaced."""
    data = DEMO.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(("data", "expected"), [
    (_broken(["with_guard", "win_rate"]), r"field 'with_guard\.win_rate' is missing"),
    (_broken(["start"]), r"field 'start' is missing"),
    (_broken(["without_guard", "gold"], "high"), r"field 'without_guard\.gold': expected a number, got \"high\""),
    (_broken(["reward_model", "accuracy"], None), r"field 'reward_model\.accuracy': expected a number, got null"),
    (_broken(["eval_prompts"], 16.5), r"field 'eval_prompts': expected a whole number"),
    (_broken(["samples", 0, "with_guard", "text"], 3), r"field 'samples\[0\]\.with_guard\.text': expected text"),
    (_broken(["samples"], {}), r"field 'samples': expected a list"),
    (_broken(["gold"], {"start": 0.1}), r"unknown field 'gold'"),  # the old, untyped layout
    (_broken(["dpo"]), r"field 'dpo' is missing; rerun `rlhfkit demo`"),  # a demo.json from before DPO
    (_broken(["dpo", "beta"], "0.1"), r"field 'dpo\.beta': expected a number"),
    (_broken(["samples", 0, "dpo"]), r"field 'samples\[0\]\.dpo' is missing"),
    ([1, 2], r"expected an object, got a list"),
])
def test_malformed_demo_json_names_the_file_and_the_field(tmp_path: Path, data: Any, expected: str) -> None:
    (tmp_path / "demo.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=expected) as info:
        build_report(tmp_path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "demo.json") + ": ") and "\n" not in message


def test_broken_demo_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text("{not json")
    with pytest.raises(DataError, match=r"demo\.json: not valid JSON"):
        build_report(tmp_path)


def test_number_formats() -> None:
    assert fmt(0.812345) == "0.8123"
    assert fmt(12.3456) == "12.35"
    assert fmt(123456.7) == "123,457"
    assert fmt(3e-05) == "3e-05"
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt(64) == "64"
    assert fmt_percent(0.7234) == "72.3%"


def test_rl_report_lists_alarms_and_draws_them_on_the_curves(tmp_path: Path) -> None:
    from rlhfkit.tracking import plots

    rows = rl_rows(12, guard=False)
    rows[7]["alarm/entropy"] = 1.0
    assert plots.alarm_steps(rows) == [(7.0, "entropy")]
    write_jsonl(tmp_path / "with" / "metrics.jsonl", rows)
    write_jsonl(tmp_path / "without" / "metrics.jsonl", rl_rows(12, guard=False))
    for name in ("with", "without"):
        (tmp_path / name / "config.yaml").write_text("stage: ppo\n")
    (tmp_path / "with" / "reward_check.json").write_text(json.dumps(
        {"score_std": 1.0, "findings": [{"rule": "reward ignores word order", "explanation": "x", "fix": "y"},
                                        {"rule": "reward ignores the prompt", "explanation": "x", "fix": "y"}]}))
    html = build_report(tmp_path / "with").read_text()
    assert "entropy at iteration 7" in html
    assert "Reward check before the first update (reward_check.json)" in html
    assert "reward ignores word order, reward ignores the prompt" in html
    without = build_report(tmp_path / "without").read_text()
    assert "entropy at iteration" not in without and "Reward check before" not in without  # no file, no line
    # the alarm's dotted line changes the pixels of every RL curve (the same run drawn twice is byte-identical)
    before = {name: (tmp_path / "without" / "plots" / name).read_bytes() for name in RL_PLOTS}
    build_report(tmp_path / "without")
    assert before == {name: (tmp_path / "without" / "plots" / name).read_bytes() for name in RL_PLOTS}
    for name in RL_PLOTS:
        a = (tmp_path / "with" / "plots" / name).read_bytes()
        assert a != (tmp_path / "without" / "plots" / name).read_bytes(), name


def test_ensemble_metrics_are_not_taken_for_criteria(tmp_path: Path) -> None:
    """A run with --reward-ensemble logs reward/ensemble_* keys; none of them is a criterion (no criteria plot)."""
    from rlhfkit.tracking import plots

    rows = [{**r, "reward/ensemble_mean": 0.1, "reward/ensemble_spread": 0.5,
             "reward/ensemble_spread_standardized": 0.2} for r in rl_rows(12, guard=False)]
    assert plots.criteria_in(rows) == []
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    (tmp_path / "config.yaml").write_text("stage: ppo\n")
    build_report(tmp_path)
    assert not (tmp_path / "plots" / "criteria.png").exists()
    assert (tmp_path / "plots" / "reward.png").exists()
