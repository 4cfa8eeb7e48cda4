"""`rlhfkit diagnose RUN_DIR`: the health checks, the alarms and the reward-model check of a finished RL run."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.errors import DataError
from rlhfkit.tracking.alarms import ALARMS_FILE, Alarm, read_alarms, replay
from rlhfkit.tracking.health import (
    REWARD_CHECK_FILE,
    Finding,
    format_finding,
    health_checks,
    probe_line,
    training_rows,
)
from rlhfkit.tracking.metrics import read_metrics
from rlhfkit.tracking.report import read_config

DEFAULT_BASELINE = 5  # rl_config's alarm_baseline default, for runs whose config.yaml has none


def diagnose(run_dir: str | Path) -> list[str]:
    """The lines `rlhfkit diagnose` prints: findings in plain words, alarms, the reward-model check."""
    run = Path(run_dir)
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; pass the output folder of an rlhfkit ppo or reinforce run")
    rows = training_rows(read_metrics(path))
    if not rows:
        raise DataError(f"{path}: no training iterations logged (no 'reward/mean'); is this an RL run's folder?")
    config = read_config(run)
    baseline = int((config[0] if config else {}).get("alarm_baseline", DEFAULT_BASELINE))
    lines = [f"{run}: {len(rows)} iterations logged"]
    findings: list[Finding] = health_checks(rows)
    lines += [format_finding(f) for f in findings] or ["health checks: nothing wrong found"]
    logged = (run / ALARMS_FILE).exists()
    alarms: list[Alarm] = read_alarms(run) if logged else replay(rows, baseline)
    source = ALARMS_FILE if logged else "replayed from metrics.jsonl"
    lines += [f"alarm at iteration {a.step} ({a.detector}, {source}): {a.message}" for a in alarms] or [
        f"alarms: none ({source})"]
    check_path = run / REWARD_CHECK_FILE
    if check_path.is_file():
        check = json.loads(check_path.read_text(encoding="utf-8"))
        acc = f", held-out accuracy {check['heldout_accuracy']:.1%}" if "heldout_accuracy" in check else ""
        lines.append(f"reward model on the start policy's samples: score spread {check['score_std']:.3f}, "
                     f"correlation with length {check['length_correlation']:.2f}{acc}"
                     f"{probe_line(check.get('probes') or {})}")
        lines += [format_finding(Finding(**f)) for f in check.get("findings", [])]
    return lines
