"""The HTML report and its plots, built from small run folders written by hand."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.errors import DataError
from rlhfkit.tracking.report import build_report, fmt, fmt_percent

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


def write_rl_run(folder: Path, n: int = 12, guard: bool = True) -> None:
    write_jsonl(folder / "metrics.jsonl", rl_rows(n, guard))
    samples = [{"step": step, "prompt": f"prompt {step}-{i}", "response": f"response at {step} #{i}", "score": 0.25 * i}
               for step in (0, 5, n - 1) for i in range(2)]
    samples[-1]["response"] = XSS
    write_jsonl(folder / "samples.jsonl", samples)
    (folder / "config.yaml").write_text(f"kl_coef: {0.05 if guard else 0.0}\nlam: 0.95\nmarker_setting: 12345\n")


def write_rm_run(folder: Path) -> None:
    write_jsonl(folder / "metrics.jsonl", rm_rows(16))
    (folder / "eval.json").write_text(json.dumps({"eval/accuracy": 0.8125, "eval/loss": 0.4123, "eval/pairs": 64}))


DEMO = {
    "reward_model": "reward_model",
    "runs": {"with_guard": "ppo", "without_guard": "ppo_no_guard"},
    "reward_model_accuracy": 0.8125,
    "win_rate": {"with_guard": 0.7234, "without_guard": 0.1875},
    "gold": {"start": 0.1, "with_guard": 0.55, "without_guard": -1.05},
    "proxy": {"start": 0.0, "with_guard": 1.02, "without_guard": 3.1},
    "kl_final": {"with_guard": 2.1, "without_guard": 15.3},
    "distinct_2": {"start": 0.85, "with_guard": 0.8, "without_guard": 0.15},
    "samples": [{"prompt": "Say something kind.", "start": "hello there", "with_guard": "you are kind",
                 "without_guard": XSS + " great great", "gold_start": 0.1, "gold_with_guard": 0.6,
                 "gold_without_guard": -1.2}],
    "seconds": 98.76,
    "settings": {"iterations": 12, "seed": 7},
}


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
    (root / "demo.json").write_text(json.dumps(DEMO))
    html_path = build_report(root)
    return root, html_path.read_text()


def test_demo_report_is_self_contained_with_headline_numbers(demo: tuple[Path, str]) -> None:
    root, html = demo
    assert (root / "report.html").is_file()
    assert_self_contained(html)
    assert html.count("<img ") == 5
    for text in ("81.2%", "72.3%", "18.8%", "15.3", "-1.05", "0.15", "98.76 s", "reward hacking"):
        assert text in html, text
    assert "<details>" in html and "seed: 7" in html and "marker_setting: 12345" in html


def test_demo_report_escapes_model_output(demo: tuple[Path, str]) -> None:
    _, html = demo
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; great great" in html


def test_demo_plots_are_real_pngs(demo: tuple[Path, str]) -> None:
    root, _ = demo
    for name in (*RL_PLOTS, "reward_model.png"):
        path = root / "plots" / name
        width, height = png_size(path)
        assert width >= 500 and height >= 300 and path.stat().st_size > 10_000, name


def test_single_rl_run_shows_first_and_last_samples(tmp_path: Path) -> None:
    write_rl_run(tmp_path, n=12)
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


def test_missing_optional_keys_and_files_are_left_out(tmp_path: Path) -> None:
    rows = [{"step": i, "time": 0.0, "reward/mean": float(i), "policy/entropy": None} for i in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "rew')
    html = build_report(tmp_path).read_text()
    assert_self_contained(html)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["reward.png"]  # entropy is all null
    assert "Gold" not in html and "Sample responses" not in html and "Settings" not in html


def test_demo_with_only_demo_json(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text(json.dumps({"reward_model_accuracy": 0.9, "gold": {"start": None}}))
    html = build_report(tmp_path).read_text()
    assert "90.0%" in html and "<img" not in html


@pytest.mark.parametrize("content", [None, {"metrics.jsonl": '{"step": 0, "other/key": 1}\n'}])
def test_folder_without_run_files_raises_data_error(tmp_path: Path, content: dict[str, str] | None) -> None:
    folder = tmp_path / "not_a_run_xyz"
    folder.mkdir()
    for name, text in (content or {}).items():
        (folder / name).write_text(text)
    with pytest.raises(DataError, match="not_a_run_xyz") as info:
        build_report(folder)
    assert "metrics.jsonl" in str(info.value) and "demo.json" in str(info.value)


def test_broken_demo_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text("{not json")
    with pytest.raises(DataError, match="demo.json"):
        build_report(tmp_path)


def test_number_formats() -> None:
    assert fmt(0.812345) == "0.8123"
    assert fmt(12.3456) == "12.35"
    assert fmt(123456.7) == "123,457"
    assert fmt(3e-05) == "3e-05"
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt(64) == "64"
    assert fmt_percent(0.7234) == "72.3%"
