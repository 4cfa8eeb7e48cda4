"""Every health-check rule: a metric pattern built by hand -> the rule's finding (and silence on a healthy run)."""

import json

import pytest

from rlhfkit.tracking import health
from rlhfkit.tracking.health import check_reward_model, health_checks, reward_model_accuracy

N = 20  # iterations of the synthetic runs: the first and last tenth are 3 iterations each (RECENT)


def healthy(i: int) -> dict[str, float]:
    """An iteration of a run that learns calmly: reward up 0.1 per iteration, KL small and positive."""
    return {"step": i, "reward/mean": 0.1 * i, "reward/std": 1.0, "kl/ref": 0.05 * i, "policy/entropy": 1.0,
            "loss/value": 0.5, "value/explained_variance": 0.4, "policy/clipfrac": 0.05, "policy/approx_kl": 0.005,
            "response/eos_share": 0.95}


def run_with(**series):
    """N healthy iterations with the given keys replaced by per-iteration functions of i."""
    return [{**healthy(i), **{k.replace("__", "/"): f(i) for k, f in series.items()}} for i in range(N)]


def rules_fired(rows):
    return [f.rule for f in health_checks(rows)]


def test_a_healthy_run_has_no_findings():
    assert rules_fired(run_with()) == []


def test_evaluation_rows_are_skipped():
    rows = run_with() + [{"step": N, "eval/reward": 5.0}]
    assert rules_fired(rows) == []


def test_negative_kl():
    (f,) = health_checks(run_with(kl__ref=lambda i: -0.5))
    assert f.rule == "negative KL"
    assert "-0.500 nats" in f.explanation and "--temperature" in f.fix and "k3" in f.fix
    assert f.evidence["kl_mean"] == pytest.approx(-0.5)


def test_entropy_collapse():
    # 1.0 for the first 10 iterations, 0.2 after: start 1.0, end 0.2 (ratio 0.2 < 0.5)
    (f,) = health_checks(run_with(policy__entropy=lambda i: 1.0 if i < 10 else 0.2))
    assert f.rule == "entropy collapse"
    assert "from 1.000 to 0.200" in f.explanation and "--ent-coef" in f.fix


def test_entropy_explosion():
    (f,) = health_checks(run_with(policy__entropy=lambda i: 1.0 if i < 10 else 3.0))
    assert f.rule == "entropy explosion"
    assert "from 1.000 to 3.000" in f.explanation and "--learning-rate" in f.fix


def test_flat_reward():
    # moves 0.05 in all, against a batch spread of 1: below 0.1 of it
    (f,) = health_checks(run_with(reward__mean=lambda i: 0.0025 * i))
    assert f.rule == "flat reward"
    assert "--learning-rate" in f.fix and "--whiten-rewards" in f.fix and "separates" in f.fix
    # start = mean of 0.0025 * (0, 1, 2) = 0.0025; end = 0.0025 * (17, 18, 19) / 3 = 0.045
    assert f.evidence["reward_start"] == pytest.approx(0.0025) and f.evidence["reward_end"] == pytest.approx(0.045)


def test_value_loss_exploding():
    (f,) = health_checks(run_with(loss__value=lambda i: 0.5 if i < 10 else 50.0))
    assert f.rule == "value function failing"
    assert "grew from 0.5 to 50" in f.explanation and "--vf-coef" in f.fix


def test_negative_explained_variance():
    (f,) = health_checks(run_with(value__explained_variance=lambda i: 0.4 if i < 10 else -0.3))
    assert f.rule == "value function failing"
    assert "explained variance is -0.30" in f.explanation


def test_clip_fraction_too_high():
    (f,) = health_checks(run_with(policy__clipfrac=lambda i: 0.4))
    assert f.rule == "updates too large"
    assert "40%" in f.explanation and "--target-kl" in f.fix


def test_approx_kl_too_high():
    (f,) = health_checks(run_with(policy__approx_kl=lambda i: 0.2))
    assert f.rule == "updates too large"
    assert "0.200 nats per token" in f.explanation


def test_responses_never_ending():
    (f,) = health_checks(run_with(response__eos_share=lambda i: 0.9 if i < 10 else 0.1))
    assert f.rule == "responses never end"
    assert "only 10%" in f.explanation and "--missing-eos-penalty" in f.fix


def test_too_short_runs_say_nothing():
    assert rules_fired(run_with(kl__ref=lambda i: -1.0)[:health.MIN_ITERATIONS - 1]) == []


def test_reward_model_check_length_gaming():
    """Scores equal to the lengths: correlation 1 > 0.3; spread = population std of 1..4 = sqrt(1.25)."""
    numbers, findings = check_reward_model([1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4], accuracy=0.9)
    assert numbers["length_correlation"] == pytest.approx(1.0)
    assert numbers["score_std"] == pytest.approx(1.25 ** 0.5)
    assert [f.rule for f in findings] == ["length gaming likely"]
    assert "--length-penalty" in findings[0].fix


def test_reward_model_check_no_spread_and_weak_accuracy():
    numbers, findings = check_reward_model([0.5, 0.5, 0.52, 0.5], [1, 5, 2, 9], accuracy=0.55)
    assert [f.rule for f in findings] == ["reward model cannot separate the policy's samples", "weak reward model"]
    assert "55.0%" in findings[1].explanation


def test_reward_model_accuracy_reads_eval_json(tmp_path):
    assert reward_model_accuracy(tmp_path) is None
    (tmp_path / "eval.json").write_text(json.dumps({"eval/accuracy": 0.875}))
    assert reward_model_accuracy(tmp_path) == 0.875


def test_diagnose_command_prints_findings_and_replayed_alarms(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    rows = run_with(policy__entropy=lambda i: 1.0 if i < 10 else 3.0)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text("stage: ppo\nalarm_baseline: 5\n")
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "entropy explosion: the policy's entropy rose from 1.000 to 3.000" in result.output
    # no alarms.jsonl: the alarms are replayed from the metrics; entropy triples at iteration 10
    assert "alarm at iteration 10 (entropy, replayed from metrics.jsonl)" in result.output


def test_diagnose_a_folder_without_metrics_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    result = CliRunner().invoke(app, ["diagnose", str(tmp_path)])
    assert result.exit_code == 2
    assert "metrics.jsonl: not found" in result.output and "Traceback" not in result.output
