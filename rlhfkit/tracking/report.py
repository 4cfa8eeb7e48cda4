"""The HTML report of a run folder: one self-contained file (inline CSS, plots as base64 PNG).

`build_report(run_dir)` reads which command wrote the folder from the first line of its
`config.yaml` (`stage: <name>`, see `rlhfkit.config.save_config`) and reports on it:

- `stage: demo` (or, with no config.yaml, a `demo.json`): a demo folder, whose demo.json is a
  `DemoSummary` (rlhfkit.tracking.summary) naming a reward-model run, two PPO runs, with and
  without the KL/entropy guard, and a DPO run on the same rankings: the summary's headline
  numbers, both PPO runs on shared plots, DPO's training curve, samples of the start policy and
  the three final policies side by side;
- `stage: ppo` or `stage: reinforce`: one RL run (`metrics.jsonl`, `samples.jsonl`);
- `stage: reward`: one reward-model run (`metrics.jsonl` with loss/train and eval/* rows, `eval.json`).

Everything is rebuilt from the files alone, so `rlhfkit report RUN_DIR` works on any finished,
running or killed run. Metrics or files a run did not write are left out; sample texts are
model output and go through the template's autoescaping.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from rlhfkit.config import STAGE_KEY
from rlhfkit.errors import DataError
from rlhfkit.tracking import plots
from rlhfkit.tracking.health import REWARD_CHECK_FILE
from rlhfkit.tracking.metrics import read_metrics
from rlhfkit.tracking.summary import POLICIES, SUMMARY_FILE, TRAINED, DemoSummary, RunRecord

RL_STAGES = ("ppo", "reinforce")
RM_STAGES = ("reward",)
DEMO_STAGES = ("demo",)
SFT_STAGES = ("sft",)
DPO_STAGES = ("dpo",)
KNOWN_STAGES = (*RL_STAGES, *RM_STAGES, *DEMO_STAGES, *SFT_STAGES, *DPO_STAGES)
STAGE_NAMES = "rlhfkit reward, sft, dpo, ppo, reinforce or demo"

TEMPLATES = Path(__file__).parent / "templates"
RL_KEYS = ("reward/mean", "kl/ref", "policy/entropy", "loss/policy", "gold/mean", "response/length")
PLOT_NAMES = ("reward.png", "criteria.png", "kl.png", "entropy.png", "diversity.png", "reward_model.png", "dpo.png",
              "sft.png")
MAX_SAMPLE_CHARS = 2000  # a runaway response would otherwise make the table unreadable
RUN_LABELS = {"start": "start policy", "with_guard": "with guard", "without_guard": "without guard", "dpo": "DPO"}
DEMO_RUNS = tuple((key, RUN_LABELS[key]) for key in TRAINED)  # the final policies' columns

# RL metrics shown first -> last in a single run's headline table.
RL_HEADLINE = (
    ("reward/mean", "Proxy reward (mean reward-model score)"),
    ("gold/mean", "Gold judge score (mean)"),
    ("kl/ref", "KL to the reference (nats per response)"),
    ("policy/entropy", "Policy entropy (nats per token)"),
    ("response/distinct_1", "distinct-1"),
    ("response/distinct_2", "distinct-2"),
    ("response/repetition", "Repetition"),
    ("response/length", "Response length (tokens)"),
    ("response/eos_share", "Share of responses ending with EOS"),
)
# Labels of a reward model's eval.json entries; others are shown under their key.
RM_LABELS = {
    "eval/accuracy": "Held-out accuracy",
    "eval/loss": "Held-out loss (nats per pair)",
    "eval/margin": "Mean margin r_chosen - r_rejected",
    "eval/reward_mean": "Mean reward",
    "eval/reward_std": "Reward standard deviation",
    "eval/pairs": "Held-out pairs",
    "perf/pairs_per_s": "Training throughput (pairs/s)",
    "perf/train_s": "Training time (s)",
    "train/steps": "Optimizer steps",
}
# Labels of a DPO run's eval.json entries (rlhfkit dpo); others are shown under their key.
DPO_LABELS = {
    "eval/rewards/accuracy": "Held-out implicit-reward accuracy",
    "start/eval/rewards/accuracy": "... of the start policy",
    "eval/loss": "Held-out loss (nats per pair)",
    "start/eval/loss": "... of the start policy",
    "eval/rewards/margin": "Mean implicit-reward margin r_chosen - r_rejected",
    "eval/rewards/chosen": "Mean implicit reward, chosen",
    "eval/rewards/rejected": "Mean implicit reward, rejected",
    "eval/logps/chosen": "Mean log-prob of the chosen completions",
    "eval/logps/rejected": "Mean log-prob of the rejected completions",
    "eval/pairs": "Held-out pairs",
    "perf/pairs_per_s": "Training throughput (pairs/s)",
    "perf/train_s": "Training time (s)",
    "train/steps": "Optimizer steps",
}
# Labels of an SFT run's eval.json entries (rlhfkit sft); others are shown under their key.
SFT_LABELS = {
    "eval/loss": "Held-out loss (nats per target token)",
    "eval/start_loss": "... of the start model",
    "eval/perplexity": "Held-out perplexity",
    "eval/start_perplexity": "... of the start model",
    "perf/tokens_per_s": "Training throughput (target tokens/s)",
    "perf/train_s": "Training time (s)",
    "train/steps": "Optimizer steps",
}
PERCENT_KEYS = {"eval/accuracy", "eval/rewards/accuracy", "start/eval/rewards/accuracy"}


# ---------------------------------------------------------------------------------------------
# Number formatting: 4 significant digits, n/a for missing or non-finite values
# ---------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 4) -> str:
    """0.81234 -> '0.8123', 12345.6 -> '12,346', 3e-05 -> '3e-05', None/NaN -> 'n/a'."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    x = _number(value)
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_signed(value: Any) -> str:
    x = _number(value)
    return "n/a" if x is None else ("+" if x > 0 else "") + fmt(x)


def fmt_percent(value: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal: 0.8125 -> '81.2%'."""
    x = _number(value)
    return "n/a" if x is None else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------------------
# What the template shows
# ---------------------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    note: str = ""  # a second, smaller line (e.g. a sample's score)
    numeric: bool = False  # right-aligned


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)  # one-line readings of the table, below it
    samples: bool = False  # cells hold model text: wrapped, monospaced


@dataclass
class Plot:
    title: str
    caption: str
    path: Path
    src: str  # data: URI of the PNG


@dataclass
class Report:
    title: str
    folder: str
    kind: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    samples: list[Table] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------
@dataclass
class RunFiles:
    folder: Path
    rows: list[dict[str, Any]]  # metrics.jsonl
    samples: list[dict[str, Any]]  # samples.jsonl
    config: dict[str, Any]  # config.yaml parsed ({} if missing or unreadable)
    config_text: str | None  # config.yaml as written
    eval: dict[str, Any] | None  # eval.json


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(path) if isinstance(r, dict)] if path.is_file() else []


def _json_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); rewrite it or delete it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(folder: Path) -> tuple[dict[str, Any], str] | None:
    """config.yaml parsed and as written; None if the folder has none."""
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f", line {line + 1}" if line is not None else ""
        raise DataError(f"{path}{at}: not valid YAML; restore the config.yaml the run wrote") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise DataError(f"{path}: expected a mapping of settings, got {type(parsed).__name__}")
    return (parsed or {}), text


def load_run(folder: Path) -> RunFiles:
    """The report's inputs in one run folder; every file is optional here."""
    config = read_config(folder)
    return RunFiles(folder, _jsonl(folder / "metrics.jsonl"), _jsonl(folder / "samples.jsonl"),
                    config[0] if config else {}, config[1] if config else None, _json_object(folder / "eval.json"))


def stage(run_dir: Path) -> str:
    """The command that wrote `run_dir`, from its config.yaml's `stage:` line (a DataError if unknown)."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a folder; pass a run folder written by {STAGE_NAMES}")
    path = run_dir / "config.yaml"
    config = read_config(run_dir)
    if config is None:
        if (run_dir / SUMMARY_FILE).is_file():
            return "demo"  # a demo folder from before the demo wrote its own config.yaml
        raise DataError(f"{path}: not found, so what wrote {run_dir} is unknown; pass a folder written by "
                        f"{STAGE_NAMES} (each writes config.yaml with a '{STAGE_KEY}:' line)")
    name = config[0].get(STAGE_KEY)
    if name is None:
        raise DataError(f"{path}: no '{STAGE_KEY}:' line, so what wrote {run_dir} is unknown; add "
                        f"'{STAGE_KEY}: <{'|'.join(KNOWN_STAGES)}>' as its first line")
    if not isinstance(name, str) or name not in KNOWN_STAGES:
        raise DataError(f"{path}: '{STAGE_KEY}: {name}' has no report; reports exist for the folders of "
                        f"{STAGE_NAMES}")
    return name


def detect(run_dir: Path) -> str:
    """'demo', 'rl', 'reward_model', 'sft' or 'dpo', from the stage in config.yaml; a DataError otherwise."""
    name = stage(run_dir)
    if name in DEMO_STAGES:
        if not (run_dir / SUMMARY_FILE).is_file():
            raise DataError(f"{run_dir / SUMMARY_FILE}: not found; the demo writes it after its last stage, "
                            "so this demo did not finish: run `rlhfkit demo` again")
        return "demo"
    if name in SFT_STAGES or name in DPO_STAGES:
        return name
    return "rl" if name in RL_STAGES else "reward_model"


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
PLOT_TEXT = {
    "reward.png": ("Proxy reward and gold score",
                   "The proxy is the reward model being optimised; the gold judge is held out. Reward hacking "
                   "shows as the proxy climbing while the gold score stalls or falls."),
    "criteria.png": ("Criteria",
                     "One line per criterion: the reward models' scores, normalised by the start policy's first "
                     "batch (z, in its standard deviations), and each criterion's gold judge. A criterion that "
                     "rises while another falls is a trade-off the reward weights chose (docs/criteria.md)."),
    "kl.png": ("KL to the reference policy",
               "How far the policy has moved from the frozen start policy, summed over response tokens. "
               "The KL penalty keeps this bounded; without it the policy may drift without limit."),
    "entropy.png": ("Policy entropy",
                    "Mean per-token entropy of the sampling distribution. A fall towards 0 means the policy "
                    "has collapsed onto a few outputs."),
    "diversity.png": ("Response diversity",
                      "distinct-n: unique n-grams over all n-grams of a batch's responses; repetition: share "
                      "of words in a response that repeat an earlier word. Collapse shows as distinct-n "
                      "falling and repetition rising."),
    "reward_model.png": ("Reward-model training",
                         "Bradley-Terry loss and preference accuracy per optimizer step on training batches, "
                         "with held-out evaluations as squares; the dotted line is chance (50%)."),
    "sft.png": ("SFT training",
                "Cross-entropy per target token (completion tokens only) and perplexity per optimizer step on "
                "training batches, with held-out evaluations as squares (the one at step 0 is the start model)."),
    "dpo.png": ("DPO training",
                "DPO loss, implicit-reward accuracy (share of pairs whose chosen completion gains more log-prob "
                "over the reference than the rejected one) and implicit-reward margin per optimizer step on "
                "training batches, with held-out evaluations as squares; the dotted line is chance (50%)."),
}


def _embed(path: Path | None) -> Plot | None:
    if path is None:
        return None
    title, caption = PLOT_TEXT[path.name]
    src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return Plot(title, caption, path, src)


def rl_plots(runs: Mapping[str, Sequence[Mapping[str, Any]]], plot_dir: Path) -> list[Plot]:
    made = [plots.reward_plot(runs, plot_dir), plots.kl_plot(runs, plot_dir), plots.entropy_plot(runs, plot_dir),
            plots.diversity_plot(runs, plot_dir)]
    return [p for p in map(_embed, made) if p is not None]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " \u2026 [cut]"


def _ends(rows: Sequence[Mapping[str, Any]], key: str, k: int) -> tuple[float | None, float | None]:
    """Means of the first and of the last `k` numbers logged under `key` (None if there are none)."""
    values = [x for x in (_number(r.get(key)) for r in rows if key in r) if x is not None]
    if not values:
        return None, None
    head, tail = values[:k], values[-k:]
    return sum(head) / len(head), sum(tail) / len(tail)


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [x for x in (_number(r.get(key)) for r in rows) if x is not None]
    return sum(values) / len(values) if values else None


BASELINE_KEY = "baseline"  # the reinforce setting that names the baseline (ReinforceConfig.baseline)
BASELINE_NAMES = {"rloo": "RLOO", "grpo": "GRPO", "none": "REINFORCE (no baseline)",
                  "moving_mean": "REINFORCE (moving-mean baseline)", "value": "REINFORCE (value baseline)"}


def algorithm(config: Mapping[str, Any]) -> str:
    """The algorithm of an RL run, from its config.yaml: PPO, or the REINFORCE baseline's name (RLOO, GRPO)."""
    name = config.get(STAGE_KEY)
    if name == "ppo":
        return "PPO"
    if name == "reinforce":
        baseline = config.get(BASELINE_KEY)
        if baseline is None:
            return "REINFORCE"
        return BASELINE_NAMES.get(str(baseline), f"REINFORCE (baseline: {baseline})")
    return "policy optimisation"


def rl_headline(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Start vs end of the run, each the mean of a few iterations so one noisy batch does not decide it."""
    logged = [r for r in rows if any(k in r for k in RL_KEYS)]
    k = max(1, min(10, len(logged) // 10))
    out = []
    per_criterion = [row for c in plots.criteria_in(logged) for row in (
        (f"reward/{c}", f"Proxy, {c} (reward-model score)"), (f"reward/{c}_z", f"Proxy, {c} (normalised z)"),
        (f"gold/{c}", f"Gold judge, {c}"))]
    for key, label in (*RL_HEADLINE[:2], *per_criterion, *RL_HEADLINE[2:]):
        first, last = _ends(logged, key, k)
        if first is None or last is None:
            continue
        out.append([Cell(label), Cell(fmt(first), numeric=True), Cell(fmt(last), numeric=True),
                     Cell(fmt_signed(last - first), numeric=True)])
    steps = [r["step"] for r in logged if isinstance(r.get("step"), int)]
    span = f"Iterations {min(steps)} to {max(steps)}." if steps else ""
    which = ("first iteration", "last iteration") if k == 1 else (f"first {k} iterations", f"last {k} iterations")
    if k > 1:
        span += f" Start and end are means over the {k} first and {k} last logged iterations."
    return Table("Headline", ["metric", *which, "change"], out, caption=span.strip())


def rl_samples(samples: Sequence[Mapping[str, Any]]) -> list[Table]:
    """samples.jsonl rows of the first and the last logged step."""
    steps = sorted({s["step"] for s in samples if isinstance(s.get("step"), int)})
    if not steps:
        return []
    chosen = [(steps[0], "first")] + ([(steps[-1], "last")] if len(steps) > 1 else [])
    tables = []
    for step, when in chosen:
        rows = [[Cell(_clip(s.get("prompt"))), Cell(_clip(s.get("response"))), Cell(fmt(s.get("score")), numeric=True)]
                for s in samples if s.get("step") == step]
        tables.append(Table(f"Samples at iteration {step} ({when} logged)", ["prompt", "response", "proxy score"],
                            rows, samples=True))
    return tables


def rm_table(metrics: Mapping[str, Any], labels: Mapping[str, str] = RM_LABELS) -> Table:
    """Every number of an eval.json: the labelled ones first, in the labels' order, then the others."""
    rows = []
    known = [k for k in labels if k in metrics]
    others = sorted(k for k in metrics if k not in labels and _number(metrics[k]) is not None)
    for key in known + others:
        value = fmt_percent(metrics[key]) if key in PERCENT_KEYS else fmt(metrics[key])
        rows.append([Cell(labels.get(key, key)), Cell(value, numeric=True)])
    return Table("Final held-out evaluation", ["metric", "value"], rows)


def _last_eval(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last metrics row with held-out numbers (used when eval.json is missing)."""
    evals = [r for r in rows if "eval/accuracy" in r or "eval/loss" in r]
    return {k: v for k, v in evals[-1].items() if k not in ("step", "time")} if evals else None


def reward_check_warnings(folder: Path) -> str | None:
    """The warnings of a run's reward check before its first update (reward_check.json: spread, length,
    accuracy and the reward probes), "none" without any, None for a run without the file."""
    try:
        check = json.loads((folder / REWARD_CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    findings = check.get("findings") if isinstance(check, dict) else None
    rules = [str(f.get("rule")) for f in findings or [] if isinstance(f, dict) and f.get("rule")]
    return ", ".join(rules) or "none"


# ---------------------------------------------------------------------------------------------
# One report per kind of folder
# ---------------------------------------------------------------------------------------------
def rl_report(run: RunFiles, plot_dir: Path) -> Report:
    report = Report(f"RL run: {run.folder.name}", run.folder.name, "rl")
    report.facts.append(("Algorithm", algorithm(run.config)))
    report.facts.append(("Iterations logged", fmt(sum(any(k in r for k in RL_KEYS) for r in run.rows))))
    for key, label in (("kl_coef", "KL coefficient"), ("ent_coef", "Entropy coefficient")):
        if key in run.config:
            report.facts.append((label, fmt(run.config[key])))
    per_iteration = _mean(run.rows, "time/iteration")
    if per_iteration is not None:
        report.facts.append(("Seconds per iteration (mean)", fmt(per_iteration)))
    alarms = plots.alarm_steps(run.rows)
    report.facts.append(("Reward-hacking alarms (dotted lines on the curves)",
                         ", ".join(f"{d} at iteration {int(s)}" for s, d in alarms) or "none"))
    warnings = reward_check_warnings(run.folder)
    if warnings is not None:
        report.facts.append(("Reward check before the first update (reward_check.json)", warnings))
    report.tables.append(rl_headline(run.rows))
    report.plots = rl_plots({run.folder.name: run.rows}, plot_dir)
    criteria = _embed(plots.criteria_plot(run.rows, plot_dir))
    if criteria is not None:
        report.plots.insert(1, criteria)
    report.samples = rl_samples(run.samples)
    if run.config_text is not None:
        report.settings.append(("config.yaml", run.config_text))
    return report


def training_report(run: RunFiles, plot_dir: Path, title: str, kind: str, labels: Mapping[str, str],
                    plot: Path | None, facts: Callable[[Mapping[str, Any]], list[tuple[str, str]]],
                    table_title: str = "") -> Report:
    """A training run's page (reward, sft, dpo): facts from its final held-out evaluation (eval.json, or
    the last eval row of metrics.jsonl; {} when there is none), that evaluation as a table, its training
    plot, its config."""
    report = Report(f"{title}: {run.folder.name}", run.folder.name, kind)
    final = run.eval if run.eval is not None else _last_eval(run.rows)
    report.facts += facts(final or {})
    if final is not None:
        table = rm_table(final, labels)
        table.title = table_title or table.title
        report.tables.append(table)
    embedded = _embed(plot)
    report.plots = [embedded] if embedded is not None else []
    if run.config_text is not None:
        report.settings.append(("config.yaml", run.config_text))
    return report


def rm_report(run: RunFiles, plot_dir: Path) -> Report:
    def facts(final: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [("Held-out accuracy", fmt_percent(final["eval/accuracy"]))] if "eval/accuracy" in final else []

    return training_report(run, plot_dir, "Reward model", "reward_model", RM_LABELS,
                           plots.reward_model_plot(run.rows, plot_dir), facts)


def dpo_report(run: RunFiles, plot_dir: Path) -> Report:
    def facts(final: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if "eval/rewards/accuracy" in final:
            out.append(("Held-out implicit-reward accuracy", fmt_percent(final["eval/rewards/accuracy"])))
        if "beta" in run.config:
            out.append(("beta", fmt(run.config["beta"])))
        return out

    return training_report(run, plot_dir, "DPO", "dpo", DPO_LABELS, plots.dpo_plot(run.rows, plot_dir), facts,
                           "Final held-out evaluation on the comparisons")


def sft_report(run: RunFiles, plot_dir: Path) -> Report:
    def facts(final: Mapping[str, Any]) -> list[tuple[str, str]]:
        if "eval/loss" not in final:
            return []
        start = f"{fmt(final['eval/start_loss'])} \u2192 " if "eval/start_loss" in final else ""
        return [("Held-out loss per target token", f"{start}{fmt(final['eval/loss'])}")]

    return training_report(run, plot_dir, "SFT", "sft", SFT_LABELS, plots.sft_plot(run.rows, plot_dir), facts,
                           "Final held-out evaluation")


DEMO_ROWS = (  # attribute of each PolicyRecord, label, format
    ("gold", "Gold judge score (mean)", fmt),
    ("proxy", "Proxy reward (mean reward-model score)", fmt),
    ("distinct_1", "distinct-1 (unique words / words, all replies)", fmt),
    ("distinct_2", "distinct-2 (unique word pairs / pairs, all replies)", fmt),
    ("repetition", "Repetition (share of a reply's words that repeat)", fmt),
)
DASH = "\u2014"


def demo_headline(demo: DemoSummary) -> Table:
    """Start / with guard / without guard / DPO side by side, and one line per run on proxy vs gold."""
    policies = [demo.policy(name) for name in POLICIES]
    trained = [run for _, run in demo.trained()]

    def row(label: str, cells: list[str]) -> list[Cell]:
        return [Cell(label)] + [Cell(c, numeric=True) for c in cells]

    rows = [row(label, [show(getattr(p, attr)) for p in policies]) for attr, label, show in DEMO_ROWS[:2]]
    rows.append(row("Gold win rate over the start policy", [DASH] + [fmt_percent(r.win_rate) for r in trained]))
    rows.append(row("Held-out KL to the start policy (nats per reply)", [fmt(p.kl) for p in policies]))
    rows.append(row("Final training KL to the reference (nats per response)",
                    [DASH] + [fmt(r.kl_final) if isinstance(r, RunRecord) else DASH for r in trained]))
    rows += [row(label, [show(getattr(p, attr)) for p in policies]) for attr, label, show in DEMO_ROWS[2:]]
    notes = []
    for key, run in demo.trained():
        proxy, gold = run.proxy - demo.start.proxy, run.gold - demo.start.gold
        line = (f"{RUN_LABELS[key][0].upper()}{RUN_LABELS[key][1:]}: proxy reward {fmt_signed(proxy)}, gold score "
                f"{fmt_signed(gold)} vs the start.")
        if proxy > 0 and gold < 0:
            line += " The proxy rose while the gold score fell: reward hacking."
        notes.append(line)
    header = ["", "start policy"] + [f"final, {label}" for _, label in DEMO_RUNS]
    caption = (f"Mean scores on {demo.eval_prompts} held-out prompts (per prompt in {demo.evaluation}). The proxy "
               "is the reward model both PPO runs optimise (DPO never sees it); the gold judge is never trained "
               "against. Held-out KL: log pi(y|x) - log pi_start(y|x) summed over the tokens of each policy's own "
               "reply y, mean over the prompts, for every policy; the training KL is the last kl/ref of a PPO "
               f"run. DPO: beta {fmt(demo.dpo.beta)}, learning rate {fmt(demo.dpo.learning_rate)}, "
               f"{demo.dpo.epochs} epoch(s).")
    return Table("Headline", header, rows, caption=caption, notes=notes)


CRITERIA_LABELS = {**RUN_LABELS, "helpful_alone": "PPO on helpful alone", "helpful_concise": "PPO on helpful + concise"}


def demo_criteria(demo: DemoSummary) -> Table | None:
    """Every policy's held-out gold and proxy score per criterion: what optimising one criterion
    costs on another, and what their weighted sum buys back."""
    record = demo.criteria
    if record is None:
        return None
    header = ["policy", "reward weights"] + [f"gold, {c}" for c in record.criteria] + \
        [f"proxy, {c}" for c in record.criteria] + ["held-out KL"]
    rows = [[Cell(CRITERIA_LABELS.get(p.policy, p.policy)),
             Cell(", ".join(f"{c}={fmt(w)}" for c, w in p.weights.items()) or DASH)]
            + [Cell(fmt(p.gold.get(c)), numeric=True) for c in record.criteria]
            + [Cell(fmt(p.proxy.get(c)), numeric=True) for c in record.criteria]
            + [Cell(fmt(p.kl), numeric=True)] for p in record.policies]
    notes = []
    try:
        alone, both = record.policy("helpful_alone"), record.policy("helpful_concise")
    except KeyError:
        alone = both = None
    if alone is not None and both is not None:
        notes.append("Adding concise to the reward: " + ", ".join(
            f"gold {c} {fmt_signed(both.gold[c] - alone.gold[c])}" for c in record.criteria if c in both.gold)
            + " against PPO on helpful alone.")
    caption = (f"Mean scores of the same held-out replies as the headline. The proxies are the heads of one reward "
               f"model ({record.reward_model}/) trained on both criteria's rankings (held-out accuracy "
               + ", ".join(f"{c} {fmt_percent(a)}" for c, a in record.accuracy.items())
               + "); the two criteria runs train on it with the guarded run's settings, each criterion's score "
               "normalised on the start policy's first batch (docs/criteria.md).")
    return Table("Several criteria: the trade-off", header, rows, caption=caption, notes=notes)


def demo_samples(demo: DemoSummary) -> list[Table]:
    rows = [[Cell(_clip(s.prompt))] + [Cell(_clip(reply.text), note=f"gold {fmt(reply.gold)}")
                                       for _, reply in s.replies()]
            for s in demo.samples]
    if not rows:
        return []
    header = ["prompt", "start policy"] + [f"final, {label}" for _, label in DEMO_RUNS]
    return [Table("Responses before and after", header, rows, samples=True)]


def demo_report(run_dir: Path, plot_dir: Path) -> Report:
    demo = DemoSummary.load(run_dir / SUMMARY_FILE)
    report = Report(f"RLHF demo: {run_dir.name}", run_dir.name, "demo")
    report.facts.append(("Reward model held-out accuracy", fmt_percent(demo.reward_model.accuracy)))
    report.facts.append(("DPO held-out implicit-reward accuracy", fmt_percent(demo.dpo.accuracy)))
    for key, run in demo.trained():
        report.facts.append((f"Gold win rate, {RUN_LABELS[key]}", fmt_percent(run.win_rate)))
    report.facts.append(("Demo wall time", f"{fmt(demo.seconds)} s"))
    report.tables.append(demo_headline(demo))

    runs: dict[str, list[dict[str, Any]]] = {}
    configs: list[tuple[str, str]] = []
    for key, record in demo.runs():
        label = RUN_LABELS[key]
        if (run_dir / record.folder).is_dir():
            run = load_run(run_dir / record.folder)
            if run.rows:
                runs[label] = run.rows
            if run.config_text is not None:
                configs.append((f"{record.folder}/config.yaml ({label})", run.config_text))
    report.plots = rl_plots(runs, plot_dir) if runs else []
    for label, rows in runs.items():
        report.facts.append((f"Reward-hacking alarms, {label}",
                             ", ".join(f"{d} at iteration {int(s)}" for s, d in plots.alarm_steps(rows)) or "none"))
    first = next((record.folder for _, record in demo.runs()), None)
    warnings = reward_check_warnings(run_dir / first) if first else None
    if warnings is not None:  # both PPO runs start from the same policy and batch: one check says it for both
        report.facts.append(("Reward check before PPO (the reward model on the start policy's replies)", warnings))
    criteria = demo_criteria(demo)
    if criteria is not None and demo.criteria is not None:
        report.tables.append(criteria)
        criteria_rows = {}
        for p in demo.criteria.policies:
            if p.weights and (run_dir / p.folder).is_dir():
                run = load_run(run_dir / p.folder)
                criteria_rows[CRITERIA_LABELS.get(p.policy, p.policy)] = run.rows
                if run.config_text is not None:
                    configs.append((f"{p.folder}/config.yaml ({CRITERIA_LABELS.get(p.policy, p.policy)})",
                                    run.config_text))
        plot = _embed(plots.criteria_runs_plot(criteria_rows, plot_dir))
        if plot is not None:
            report.plots.append(plot)

    rm_name = demo.reward_model.folder
    if (run_dir / rm_name).is_dir():
        rm = load_run(run_dir / rm_name)
        plot = _embed(plots.reward_model_plot(rm.rows, plot_dir))
        if plot is not None:
            report.plots.append(plot)
        final = rm.eval if rm.eval is not None else _last_eval(rm.rows)
        if final:
            table = rm_table(final)
            table.title = "Reward model: final held-out evaluation"
            report.tables.append(table)
        if rm.config_text is not None:
            configs.insert(0, (f"{rm_name}/config.yaml (reward model)", rm.config_text))

    if (run_dir / demo.dpo.folder).is_dir():
        dpo = load_run(run_dir / demo.dpo.folder)
        plot = _embed(plots.dpo_plot(dpo.rows, plot_dir))
        if plot is not None:
            report.plots.append(plot)
        if dpo.eval:
            table = rm_table(dpo.eval, DPO_LABELS)
            table.title = "DPO: final held-out evaluation on the comparisons"
            report.tables.append(table)
        if dpo.config_text is not None:
            configs.append((f"{demo.dpo.folder}/config.yaml (DPO)", dpo.config_text))

    report.samples = demo_samples(demo)
    own = read_config(run_dir)
    if own is not None:
        report.settings.append(("config.yaml (demo)", own[1]))
    elif demo.settings:
        report.settings.append(("demo settings", yaml.safe_dump(demo.settings, sort_keys=False)))
    report.settings += configs
    return report


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # Autoescape on: prompts and responses are untrusted model output.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(report: Report) -> str:
    """The report as one HTML document."""
    return _environment().get_template("report.html").render(report=report)


def build_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of `run_dir` (default `run_dir/report.html`) and its PNG plots (in a
    `plots/` folder beside the HTML); returns the HTML path."""
    run_dir = Path(run_dir)
    kind = detect(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    plot_dir = out.parent / "plots"
    if kind == "demo":
        report = demo_report(run_dir, plot_dir)
    elif kind == "rl":
        report = rl_report(load_run(run_dir), plot_dir)
    elif kind == "sft":
        report = sft_report(load_run(run_dir), plot_dir)
    elif kind == "dpo":
        report = dpo_report(load_run(run_dir), plot_dir)
    else:
        report = rm_report(load_run(run_dir), plot_dir)
    made = {p.path.name for p in report.plots}
    for name in PLOT_NAMES:  # a plot whose data is gone must not linger from an earlier build
        if name not in made and (plot_dir / name).is_file():
            (plot_dir / name).unlink()
    html = render(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then moved: a reader never sees half a report
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out

