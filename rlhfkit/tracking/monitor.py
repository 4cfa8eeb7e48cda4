"""The reward-hacking monitor of an RL run, called once per iteration by trainers/rl_run.py.

After the first iteration it runs the reward model's quality check on the start policy's own
samples, and the reward probes on them (rollout/probes.py: shuffled, repeated and swapped replies)
(tracking/health.py; written to reward_check.json and printed). Every iteration it adds
the scorer's ensemble statistics to the metrics (means over every process's episodes), tests the
detectors of tracking/alarms.py on the history, logs each new alarm and returns what the run's
--on-alarm asks for: None, "stop" or "checkpoint".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlhfkit.rollout.probes import probe_reward
from rlhfkit.tracking.alarms import Alarm, check, read_alarms, write_alarm
from rlhfkit.tracking.console import console
from rlhfkit.tracking.health import (
    REWARD_CHECK_FILE,
    check_reward_model,
    format_finding,
    probe_findings,
    probe_line,
    reward_model_accuracy,
    training_rows,
)
from rlhfkit.tracking.metrics import read_metrics


class Monitor:
    """Alarms and the reward-model check of one run (only the main process writes and prints).

    `scorer` is the run's rollout.ensemble.GuardedScorer (its `take_stats()`, `first_batch` and
    `first_episodes`); `tokenizer` the policy's, which the probes decode their edited replies with.
    """

    def __init__(self, cfg: Any, scorer: Any, out_dir: Path, accelerator: Any, resuming: bool,
                 tokenizer: Any = None) -> None:
        self.cfg, self.scorer, self.out_dir, self.accelerator = cfg, scorer, Path(out_dir), accelerator
        self.tokenizer = tokenizer
        self.main = accelerator.is_main_process
        self.history: list[dict[str, Any]] = []
        self.fired: set[str] = set()
        self.checked = resuming  # the reward-model check belongs to the start policy's samples
        if resuming and (self.out_dir / "metrics.jsonl").exists():
            self.history = [dict(r) for r in training_rows(read_metrics(self.out_dir / "metrics.jsonl"))]
            self.fired = {a.detector for a in read_alarms(self.out_dir)}

    def _ensemble_stats(self) -> dict[str, float]:
        sums, count = self.scorer.take_stats()
        keys = sorted(sums)  # the same on every process: each scores the same kind of batch
        values = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64,
                              device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        total = max(values[-1].item(), 1.0)
        return {k: values[i].item() / total for i, k in enumerate(keys)}

    def reward_model_check(self) -> None:
        first = self.scorer.first_batch
        if first is None:
            return
        accuracy = reward_model_accuracy(self.cfg.reward_model) if self.cfg.reward_model else None
        numbers, findings = check_reward_model(first["scores"], first["lengths"], accuracy)
        probes: dict[str, dict[str, float]] = {}
        episodes, self.scorer.first_episodes = self.scorer.first_episodes, None
        if self.tokenizer is not None and episodes is not None:
            try:
                with self.scorer.raw():  # the reward as scored, no transform, nothing counted
                    probes = probe_reward(self.scorer, episodes, self.tokenizer, seed=self.cfg.seed)
            except Exception as error:  # a check must not end the run it checks
                console.print(f"[yellow]reward probes skipped: the reward failed on an edited reply ({error})")
            findings += probe_findings(probes, numbers["score_std"])
        (self.out_dir / REWARD_CHECK_FILE).write_text(json.dumps(
            {**numbers, "probes": probes, "findings": [f.__dict__ for f in findings]}, indent=2) + "\n",
            encoding="utf-8")
        acc = f", held-out accuracy {accuracy:.1%}" if accuracy is not None else ""
        console.print(f"reward check on the start policy's samples: score spread {numbers['score_std']:.3f}, "
                      f"correlation with length {numbers['length_correlation']:.2f}{acc}{probe_line(probes)}")
        for f in findings:
            console.print(f"[yellow]{format_finding(f)}")

    def after_iteration(self, iteration: int, metrics: dict[str, float]) -> str | None:
        """Add the ensemble statistics to `metrics`, test the detectors; the --on-alarm action or None."""
        metrics.update(self._ensemble_stats())
        if not self.checked and self.main:
            self.reward_model_check()
        self.checked = True
        self.scorer.first_episodes = None  # every process: the probes' batch is not needed after iteration 0
        self.history.append({"step": iteration, **metrics})
        # Every process sees the same gathered metrics, so they all reach the same verdict.
        alarms: list[Alarm] = check(self.history, self.cfg.alarm_baseline, self.fired)
        for alarm in alarms:
            self.fired.add(alarm.detector)
            metrics[f"alarm/{alarm.detector}"] = 1.0
            if self.main:
                write_alarm(self.out_dir, alarm)
                console.print(f"[bold red]alarm at iteration {iteration} ({alarm.detector}): {alarm.message}")
        if not alarms or self.cfg.on_alarm == "warn":
            return None
        if self.main:
            console.print(f"[bold red]--on-alarm {self.cfg.on_alarm}: "
                          + ("ending the run here" if self.cfg.on_alarm == "stop" else "writing a checkpoint"))
        return str(self.cfg.on_alarm)
