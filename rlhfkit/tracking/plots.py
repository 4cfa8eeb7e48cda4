"""PNG plots of run metrics (rows as read by `read_metrics`), one function per figure.

Each RL function takes the runs to draw as `{label: rows}` (one run, or the demo's two PPO runs
on shared axes); the reward-model and DPO functions take one run's rows. Each returns the PNG
path, or None when none of its keys holds a number, so a report never shows an empty plot.
Figures are built on `matplotlib.figure.Figure` with the Agg canvas: no pyplot global state, no
display needed, safe to call from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
from matplotlib.figure import Figure

Rows = Sequence[Mapping[str, Any]]
Runs = Mapping[str, Rows]

# Colour and line style per run, in the order runs are given: the two demo runs stay apart in
# greyscale print and for colour-blind readers (blue solid vs vermilion dashed).
STYLES = [("#0072B2", "-"), ("#D55E00", "--"), ("#009E73", "-."), ("#CC79A7", ":")]
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 110
SHARE = (-0.02, 1.02)  # y range of metrics that are fractions
SMOOTH_FROM = 30  # runs with at least this many points get a moving average over the faint raw line


class Panel(NamedTuple):
    key: str  # metric key in metrics.jsonl
    title: str
    ylabel: str  # with the unit
    ylim: tuple[float, float] | None = None  # fixed range for shares, so a flat line looks flat


class Series(NamedTuple):
    x: np.ndarray  # step of each row that has the key
    y: np.ndarray  # its value; NaN where the row stored null


def series(rows: Rows, key: str) -> Series | None:
    """(step, value) of the rows holding `key`; None when no value is a finite number."""
    xs, ys = [], []
    for row in rows:
        if key not in row or not isinstance(row.get("step"), (int, float)):
            continue
        value = row[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        xs.append(float(row["step"]))
        ys.append(float(value) if number else math.nan)
    y = np.asarray(ys, dtype=float)
    if not np.isfinite(y).any():
        return None
    return Series(np.asarray(xs, dtype=float), y)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points that skips NaN (shorter windows at the ends)."""
    valid = np.isfinite(y)
    kernel = np.ones(window)
    total = np.convolve(np.where(valid, y, 0.0), kernel, mode="same")
    count = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _draw(ax: Any, s: Series, label: str, style: tuple[str, str]) -> int:
    """One run's line; returns the smoothing window used (1 = raw values only)."""
    colour, linestyle = style
    ok = np.isfinite(s.y)
    x, y = s.x[ok], s.y[ok]  # NaN points dropped so the line stays joined
    if len(s.y) >= SMOOTH_FROM:
        window = max(3, len(s.y) // 20)  # from all rows, so runs of one length share a window
        ax.plot(x, y, color=colour, linestyle="-", linewidth=0.8, alpha=0.3)
        ax.plot(x, moving_average(s.y, window)[ok], color=colour, linestyle=linestyle, linewidth=2.0, label=label)
        return window
    ax.plot(x, y, color=colour, linestyle=linestyle, linewidth=2.0, marker="o", markersize=3.5, label=label)
    return 1


def alarm_steps(rows: Rows) -> list[tuple[float, str]]:
    """(step, detector) of every reward-hacking alarm a run logged (`alarm/<detector>` keys)."""
    return [(float(row["step"]), key.split("/", 1)[1]) for row in rows for key in row
            if key.startswith("alarm/") and isinstance(row.get("step"), (int, float))]


def _draw_alarms(ax: Any, rows: Rows, colour: str) -> None:
    """A dotted vertical line at each alarm of the run, named at the top of the panel."""
    for step, detector in alarm_steps(rows):
        ax.axvline(step, color=colour, linestyle=":", linewidth=1.2)
        ax.annotate(f"alarm: {detector}", (step, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=8, color=colour, va="top", ha="right")


def _finish(fig: Figure, title: str, windows: set[int], path: Path) -> Path:
    """Title (with a note on smoothing when any line was smoothed), then write the PNG."""
    smoothed = sorted(w for w in windows if w > 1)
    if smoothed:
        title += f"\nbold: moving average over {'/'.join(map(str, smoothed))} points; faint: raw values"
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Lay out once and freeze it: savefig would otherwise draw the whole figure twice.
    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine(None)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def panel_figure(runs: Runs, panels: Sequence[Panel], title: str, path: Path, xlabel: str = "iteration") -> Path | None:
    """Side-by-side panels, one per metric that any run holds, every run drawn on each."""
    data = [(p, [(label, series(rows, p.key)) for label, rows in runs.items()]) for p in panels]
    data = [(p, [(label, s) for label, s in per_run if s is not None]) for p, per_run in data]
    data = [(p, per_run) for p, per_run in data if per_run]
    if not data:
        return None
    styles = {label: STYLES[i % len(STYLES)] for i, label in enumerate(runs)}
    if len(data) == 1:  # a lone panel is named by the figure title
        title = data[0][0].title
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.2 * len(data) + 0.6, 4.2), layout="constrained", dpi=DPI)
        axes = fig.subplots(1, len(data), squeeze=False)[0]
        windows = set()
        for ax, (panel, per_run) in zip(axes, data):
            for label, s in per_run:
                windows.add(_draw(ax, s, label, styles[label]))
                _draw_alarms(ax, runs[label], styles[label][0])
            if len(data) > 1:
                ax.set_title(panel.title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(panel.ylabel)
            if panel.ylim is not None:
                ax.set_ylim(*panel.ylim)
            if len(runs) > 1:
                ax.legend(loc="best", frameon=False)
        return _finish(fig, title, windows, path)


def reward_plot(runs: Runs, out_dir: Path) -> Path | None:
    """Proxy reward (reward-model score) and gold-judge score per iteration: reward hacking is the
    proxy climbing while the gold score stalls or falls."""
    panels = [
        Panel("reward/mean", "Proxy reward (reward model)", "mean reward-model score per response"),
        Panel("gold/mean", "Gold judge score (held out)", "mean gold score per response"),
    ]
    return panel_figure(runs, panels, "Proxy vs gold reward", out_dir / "reward.png")


# Keys of the per-criterion metrics (rollout/criteria.py, trainers/rl_metrics.py) and the ones that
# share their prefixes without being criteria.
PROXY_PREFIX, PROXY_SUFFIX, GOLD_PREFIX = "reward/", "_z", "gold/"
NOT_CRITERIA = frozenset(("mean",))


def criteria_in(rows: Rows) -> list[str]:
    """The criteria a run logged, in first-seen order: `reward/<c>_z` (the normalised proxy) and
    `gold/<c>` (a judge per criterion) keys, `gold/mean` excepted."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith(PROXY_PREFIX) and key.endswith(PROXY_SUFFIX):
                names[key[len(PROXY_PREFIX):-len(PROXY_SUFFIX)]] = None
            elif key.startswith(GOLD_PREFIX) and key[len(GOLD_PREFIX):] not in NOT_CRITERIA:
                names[key[len(GOLD_PREFIX):]] = None
    return list(names)


def criteria_runs(rows: Rows) -> dict[str, list[dict[str, Any]]]:
    """{criterion: rows of (step, proxy, gold)}: each criterion as one line of the criteria plot."""
    return {c: [{"step": r.get("step"), "proxy": r.get(f"{PROXY_PREFIX}{c}{PROXY_SUFFIX}"),
                 "gold": r.get(f"{GOLD_PREFIX}{c}")} for r in rows
                if f"{PROXY_PREFIX}{c}{PROXY_SUFFIX}" in r or f"{GOLD_PREFIX}{c}" in r]
            for c in criteria_in(rows)}


def criteria_plot(rows: Rows, out_dir: Path) -> Path | None:
    """Each criterion's score per iteration, one line per criterion: the reward models' normalised
    scores (proxy) and the gold judges', so a gain on one bought by a loss on another shows."""
    panels = [
        Panel("proxy", "Proxy per criterion (reward models)", "mean normalised score z (reference sd)"),
        Panel("gold", "Gold per criterion (held out)", "mean gold score per response"),
    ]
    runs = criteria_runs(rows)
    return panel_figure(runs, panels, "Criteria", out_dir / "criteria.png") if runs else None


def criteria_runs_plot(runs: Runs, out_dir: Path) -> Path | None:
    """Several runs' criteria in one figure: a line per (run, criterion), proxy and gold panels
    (the demo's PPO on one criterion against PPO on their sum)."""
    lines = {f"{label}: {c}": rows for label, run in runs.items() for c, rows in criteria_runs(run).items()}
    panels = [
        Panel("proxy", "Proxy per criterion (reward models)", "mean normalised score z (reference sd)"),
        Panel("gold", "Gold per criterion (held out)", "mean gold score per response"),
    ]
    return panel_figure(lines, panels, "Criteria", out_dir / "criteria.png") if lines else None


def kl_plot(runs: Runs, out_dir: Path) -> Path | None:
    """KL divergence of the policy from the frozen reference per iteration."""
    panels = [Panel("kl/ref", "KL to the reference policy", "KL (nats per response)")]
    return panel_figure(runs, panels, "KL to the reference policy", out_dir / "kl.png")


def entropy_plot(runs: Runs, out_dir: Path) -> Path | None:
    """Mean per-token entropy of the policy per iteration (collapse shows as a fall towards 0)."""
    panels = [Panel("policy/entropy", "Policy entropy", "entropy (nats per token)")]
    return panel_figure(runs, panels, "Policy entropy", out_dir / "entropy.png")


def diversity_plot(runs: Runs, out_dir: Path) -> Path | None:
    """distinct-1, distinct-2 and repetition of each iteration's responses."""
    panels = [
        Panel("response/distinct_1", "distinct-1", "unique words / all words", SHARE),
        Panel("response/distinct_2", "distinct-2", "unique word pairs / all word pairs", SHARE),
        Panel("response/repetition", "Repetition", "share of words repeated in a response", SHARE),
    ]
    return panel_figure(runs, panels, "Response diversity", out_dir / "diversity.png")


def reward_model_plot(rows: Rows, out_dir: Path) -> Path | None:
    """Reward-model training: train loss and accuracy per logged step, held-out evaluations as points."""
    panels = [
        (("loss/train", "eval/loss"), "Loss", "Bradley-Terry loss (nats per pair)"),
        (("train/accuracy", "eval/accuracy"), "Preference accuracy", "share of pairs ranked right"),
    ]
    return train_eval_figure(rows, panels, "Reward-model training", out_dir / "reward_model.png")


def dpo_plot(rows: Rows, out_dir: Path) -> Path | None:
    """DPO training: loss, implicit-reward accuracy and margin per step (train batches), held-out
    evaluations as points (rlhfkit dpo's metrics.jsonl)."""
    panels = [
        (("loss/train", "eval/loss"), "Loss", "DPO loss (nats per pair)"),
        (("rewards/accuracy", "eval/rewards/accuracy"), "Implicit-reward accuracy",
         "share of pairs with r_chosen > r_rejected"),
        (("rewards/margin", "eval/rewards/margin"), "Implicit-reward margin", "beta (h_chosen - h_rejected)"),
    ]
    return train_eval_figure(rows, panels, "DPO training", out_dir / "dpo.png")


def sft_plot(rows: Rows, out_dir: Path) -> Path | None:
    """SFT training: loss and perplexity per step (train batches), held-out evaluations as points
    (rlhfkit sft's metrics.jsonl; its step-0 evaluation is the start model's)."""
    panels = [
        (("loss/train", "eval/loss"), "Loss", "cross-entropy (nats per target token)"),
        (("train/perplexity", "eval/perplexity"), "Perplexity", "exp(loss)"),
    ]
    return train_eval_figure(rows, panels, "SFT training", out_dir / "sft.png")


def train_eval_figure(rows: Rows, panels: Sequence[tuple[tuple[str, str], str, str]], title: str,
                      path: Path) -> Path | None:
    """One panel per (train key, eval key): the train batches as a line, the held-out evaluations as
    squares, chance (50%) on accuracy panels; None when no panel has a number."""
    data = [(keys, name, ylabel, series(rows, keys[0]), series(rows, keys[1])) for keys, name, ylabel in panels]
    data = [d for d in data if d[3] is not None or d[4] is not None]
    if not data:
        return None
    train_colour, eval_colour = STYLES[0][0], STYLES[1][0]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.2 * len(data) + 0.6, 4.2), layout="constrained", dpi=DPI)
        axes = fig.subplots(1, len(data), squeeze=False)[0]
        windows = set()
        for ax, (_keys, name, ylabel, train, held_out) in zip(axes, data):
            if train is not None:
                windows.add(_draw(ax, train, "train (batch)", (train_colour, "-")))
            if held_out is not None:
                ok = np.isfinite(held_out.y)
                ax.plot(held_out.x[ok], held_out.y[ok], color=eval_colour, linestyle="--", linewidth=1.2,
                        marker="s", markersize=6, label="held-out eval")
            if "accuracy" in name.lower():
                ax.axhline(0.5, color="grey", linewidth=1, linestyle=":", label="chance")
            ax.set_title(name)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(ylabel)
            ax.legend(loc="best", frameon=False)
        return _finish(fig, title, windows, path)
