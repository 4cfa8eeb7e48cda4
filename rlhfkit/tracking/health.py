"""Health checks in plain words: metric patterns of an RL run -> what is wrong and what to try.

`RULES` is a table of (name, check); each check reads the training rows of metrics.jsonl (one
per iteration, the keys of trainers/rl_metrics.py) and returns a `Finding` with an explanation
and a suggested fix, or None. "Start" and "end" are the means over the first and the last tenth
of the iterations (at least RECENT each), as in the report. `check_reward_model` is the reward
model's quality check on the start policy's own samples (its first scored batch, before any update),
`probe_findings` the warnings of its probes (rollout/probes.py) on the same samples.
`rlhfkit diagnose RUN_DIR` prints both and the run's alarms (tracking/alarms.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algos.hacking import pearson_correlation

Rows = Sequence[Mapping[str, Any]]
RECENT = 3
MIN_ITERATIONS = 6  # fewer iterations say nothing about a trend
NEGATIVE_KL = -0.1  # nats per response: a mean k1 below this is more than noise
ENTROPY_COLLAPSE = 0.5  # end / start entropy below this
ENTROPY_EXPLOSION = 2.0  # end / start entropy above this
FLAT_REWARD = 0.1  # |end - start| of reward/mean below this many start reward/std
VALUE_LOSS_GROWTH = 10.0  # end / start value loss above this
CLIPFRAC_HIGH = 0.3
APPROX_KL_HIGH = 0.05  # policy/approx_kl, nats per token: PPO setups target 0.01-0.02
EOS_SHARE_LOW = 0.5
LENGTH_CORRELATION = 0.3  # reward-model score vs length on the start policy's samples
SPREAD_LOW = 0.1  # std of the reward-model scores on the start policy's samples
# reward probes (rollout/probes.py): the mean change of the reward for an edit that makes replies worse,
# in units of the reward's spread over the start policy's replies (algos.hacking.perturbation_effect)
SHUFFLED_SHIFT = -0.25  # shuffled replies should lose more than this
REPEATED_SHIFT = 0.25  # repeated replies should gain less than this
SWAPPED_SHIFT = -0.25  # replies to another prompt should lose more than this
REWARD_CHECK_FILE = "reward_check.json"


@dataclass(frozen=True)
class Finding:
    """One rule's verdict: the pattern seen, what it usually means, and what to try."""

    rule: str
    explanation: str
    fix: str
    evidence: dict[str, float] = field(default_factory=dict)


def training_rows(rows: Rows) -> list[Mapping[str, Any]]:
    """The per-iteration training rows of metrics.jsonl (evaluation rows share its steps)."""
    return [r for r in rows if "reward/mean" in r]


def _values(rows: Rows, key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def _ends(rows: Rows, key: str) -> tuple[float, float] | None:
    """(start, end): means over the first and last tenth (at least RECENT iterations each)."""
    v = _values(rows, key)
    if len(v) < MIN_ITERATIONS:
        return None
    k = max(RECENT, len(v) // 10)
    return sum(v[:k]) / k, sum(v[-k:]) / k


def negative_kl(rows: Rows) -> Finding | None:
    v = _values(rows, "kl/ref")
    if len(v) < MIN_ITERATIONS or (mean := sum(v) / len(v)) >= NEGATIVE_KL:
        return None
    return Finding("negative KL",
                   f"the KL to the reference averages {mean:.3f} nats per response. KL(pi || pi_ref) >= 0, and the "
                   "k1 estimate is unbiased only on samples drawn from pi itself: a mean below 0 says the samples "
                   "do not come from the distribution the log-probs describe",
                   "sample with the settings the trainer computes log-probs with: the same --temperature, and no "
                   "--top-k / --top-p truncation (they change the sampling distribution); or use --kl-estimator k3, "
                   "which is never negative",
                   {"kl_mean": mean})


def entropy_collapse(rows: Rows) -> Finding | None:
    ends = _ends(rows, "policy/entropy")
    if ends is None or ends[0] <= 0 or ends[1] / ends[0] >= ENTROPY_COLLAPSE:
        return None
    return Finding("entropy collapse",
                   f"the policy's entropy fell from {ends[0]:.3f} to {ends[1]:.3f} nats per token: it samples almost "
                   "the same response every time, so it stops exploring and often has found one the reward model "
                   "over-rates",
                   "raise --kl-coef (the pull back to the reference), add an entropy bonus (--ent-coef 0.01), or "
                   "lower --learning-rate",
                   {"entropy_start": ends[0], "entropy_end": ends[1]})


def entropy_explosion(rows: Rows) -> Finding | None:
    ends = _ends(rows, "policy/entropy")
    if ends is None or ends[0] <= 0 or ends[1] / ends[0] <= ENTROPY_EXPLOSION:
        return None
    return Finding("entropy explosion",
                   f"the policy's entropy rose from {ends[0]:.3f} to {ends[1]:.3f} nats per token: its replies are "
                   "turning into random tokens",
                   "raise --kl-coef (without the KL penalty nothing holds the policy near the reference), lower "
                   "--ent-coef or --learning-rate, check that --temperature is the one the model was trained for, "
                   "and keep --max-grad-norm on",
                   {"entropy_start": ends[0], "entropy_end": ends[1]})


def flat_reward(rows: Rows) -> Finding | None:
    ends, spread = _ends(rows, "reward/mean"), _ends(rows, "reward/std")
    if ends is None or spread is None or abs(ends[1] - ends[0]) >= FLAT_REWARD * max(spread[0], 1e-8):
        return None
    return Finding("flat reward",
                   f"the reward moved from {ends[0]:.3f} to {ends[1]:.3f}, less than {FLAT_REWARD:g} of its spread "
                   f"across a batch ({spread[0]:.3f}): the policy is not learning from it",
                   "raise --learning-rate (1e-6 to 1e-5 for real models, about 1e-4 with LoRA), check that advantages "
                   "are not whitened away (--whiten-rewards off), lower --kl-coef, and check the reward model "
                   "separates the policy's own samples (rlhfkit diagnose prints its score spread on them)",
                   {"reward_start": ends[0], "reward_end": ends[1], "reward_std": spread[0]})


def value_loss_explodes(rows: Rows) -> Finding | None:
    ends = _ends(rows, "loss/value")
    ev = _values(rows, "value/explained_variance")
    k = max(RECENT, len(ev) // 10)
    late_ev = sum(ev[-k:]) / k if len(ev) >= MIN_ITERATIONS else None
    grows = ends is not None and ends[0] > 0 and ends[1] / ends[0] > VALUE_LOSS_GROWTH
    if not grows and (late_ev is None or late_ev >= 0):
        return None
    evidence = {"explained_variance_end": late_ev} if late_ev is not None else {}
    if ends is not None:
        evidence.update(value_loss_start=ends[0], value_loss_end=ends[1])
    what = (f"the value loss grew from {ends[0]:.4g} to {ends[1]:.4g}" if grows
            else f"the value function's explained variance is {late_ev:.2f} at the end")
    return Finding("value function failing",
                   f"{what}: the critic predicts the returns worse than their mean does, so the advantages are "
                   "noise and the policy updates follow them",
                   "lower --learning-rate or --vf-coef, keep --clip-eps-value on, whiten rewards (--whiten-rewards) "
                   "when the reward's scale is large, or use a critic-free baseline (rlhfkit reinforce --baseline "
                   "rloo)",
                   evidence)


def clipfrac_high(rows: Rows) -> Finding | None:
    clip, kl = _values(rows, "policy/clipfrac"), _values(rows, "policy/approx_kl")
    clip_mean = sum(clip) / len(clip) if len(clip) >= MIN_ITERATIONS else 0.0
    kl_mean = sum(kl) / len(kl) if len(kl) >= MIN_ITERATIONS else 0.0
    if clip_mean <= CLIPFRAC_HIGH and kl_mean <= APPROX_KL_HIGH:
        return None
    return Finding("updates too large",
                   f"on average {clip_mean:.0%} of the tokens hit the ratio clip and the approximate KL between "
                   f"consecutive policies is {kl_mean:.3f} nats per token: each iteration moves the policy further "
                   "than PPO's trust region allows, and the clipped updates waste the rest",
                   "lower --learning-rate, use fewer --update-epochs or more --num-minibatches, or stop an "
                   "iteration early with --target-kl 0.02",
                   {"clipfrac_mean": clip_mean, "approx_kl_mean": kl_mean})


def responses_never_end(rows: Rows) -> Finding | None:
    ends = _ends(rows, "response/eos_share")
    if ends is None or ends[1] >= EOS_SHARE_LOW:
        return None
    return Finding("responses never end",
                   f"only {ends[1]:.0%} of the responses emit EOS at the end (at the start {ends[0]:.0%}): they run "
                   "into --max-new-tokens, and the reward model scores cut-off text",
                   "raise --max-new-tokens if the answers need the room, or penalise unfinished ones with "
                   "--missing-eos-penalty 1.0; a reward model that prefers long replies drives this too "
                   "(--length-penalty)",
                   {"eos_share_start": ends[0], "eos_share_end": ends[1]})


RULES: list[tuple[str, Callable[[Rows], Finding | None]]] = [
    ("negative_kl", negative_kl), ("entropy_collapse", entropy_collapse), ("entropy_explosion", entropy_explosion),
    ("flat_reward", flat_reward), ("value_loss", value_loss_explodes), ("clipfrac", clipfrac_high),
    ("never_ending", responses_never_end),
]


def health_checks(rows: Rows) -> list[Finding]:
    """Every rule's finding on the metrics.jsonl rows of an RL run (evaluation rows are skipped)."""
    train = training_rows(rows)
    return [f for _, rule in RULES if (f := rule(train)) is not None]


def check_reward_model(scores: Sequence[float], lengths: Sequence[float], accuracy: float | None = None
                       ) -> tuple[dict[str, float], list[Finding]]:
    """The reward model on the start policy's own samples: score spread, correlation with length, held-out
    accuracy (when its eval.json has one). Returns the numbers and the warnings."""
    s, n = torch.tensor(list(scores), dtype=torch.float64), torch.tensor(list(lengths), dtype=torch.float64)
    spread = s.std(unbiased=False).item() if s.numel() else 0.0
    rho = pearson_correlation(s, n).item() if s.numel() >= 2 else 0.0
    numbers = {"score_std": spread, "length_correlation": rho, "samples": float(s.numel())}
    if accuracy is not None:
        numbers["heldout_accuracy"] = accuracy
    findings = []
    if rho > LENGTH_CORRELATION:
        findings.append(Finding(
            "length gaming likely",
            f"the reward model's score rises with response length on the policy's own samples (correlation "
            f"{rho:.2f}): the easiest way to raise the reward is to write longer replies",
            "train the reward model on pairs that differ in quality at equal length, or guard the run with "
            "--length-penalty 1.0 (and --missing-eos-penalty)", {"length_correlation": rho}))
    if spread < SPREAD_LOW:
        findings.append(Finding(
            "reward model cannot separate the policy's samples",
            f"its scores on the start policy's samples spread by only {spread:.3f}: the policy gets almost the "
            "same reward whatever it writes, so the reward will stay flat",
            "train the reward model on comparisons of this policy's own samples (rlhfkit feedback), or for more "
            "epochs", {"score_std": spread}))
    if accuracy is not None and accuracy < 0.6:
        findings.append(Finding(
            "weak reward model",
            f"its held-out preference accuracy is {accuracy:.1%}, near chance (50%): the policy will optimise "
            "mostly noise", "collect more or cleaner comparisons, or train for more epochs",
            {"heldout_accuracy": accuracy}))
    return numbers, findings


def probe_findings(effects: Mapping[str, Mapping[str, float]], score_std: float | None = None) -> list[Finding]:
    """Warnings from the reward probes of rollout/probes.py: {edit: {"shift": d, "raised": p}} -> findings.

    None when the reward hardly separates the samples (score_std < SPREAD_LOW): the shifts are then ratios of
    near-zero numbers, and check_reward_model's spread warning already says what is wrong."""
    findings: list[Finding] = []
    if score_std is not None and score_std < SPREAD_LOW:
        return findings
    shuffled, repeated, swapped = effects.get("shuffled"), effects.get("repeated"), effects.get("swapped")
    if shuffled is not None and shuffled["shift"] > SHUFFLED_SHIFT:
        findings.append(Finding(
            "reward ignores word order",
            f"the start policy's replies with their tokens shuffled score {_change(shuffled['shift'])} "
            f"(higher for {shuffled['raised']:.0%} of them): word salad of the words it likes can earn the reward",
            "add comparisons in which a scrambled or incoherent reply loses to a plain one (rlhfkit feedback), and "
            "guard the run with --reward-clip and the KL penalty; the entropy alarm watches for word salad",
            {"shift": shuffled["shift"], "raised": shuffled["raised"]}))
    if repeated is not None and repeated["shift"] > REPEATED_SHIFT:
        findings.append(Finding(
            "reward pays for repetition",
            f"the start policy's replies written twice score {_change(repeated['shift'])} (higher for "
            f"{repeated['raised']:.0%} of them): the policy can raise the reward by repeating itself",
            "add comparisons in which a repetitive reply loses, and guard the run with --length-penalty 1.0; the "
            "repetition and length alarms watch for it", {"shift": repeated["shift"], "raised": repeated["raised"]}))
    if swapped is not None and swapped["shift"] > SWAPPED_SHIFT:
        findings.append(Finding(
            "reward ignores the prompt",
            f"the start policy's replies given to another prompt score {_change(swapped['shift'])} (higher for "
            f"{swapped['raised']:.0%} of them): one generic reply to every prompt can earn the reward",
            "add comparisons in which an off-topic reply loses to an answer (rlhfkit feedback)",
            {"shift": swapped["shift"], "raised": swapped["raised"]}))
    return findings


def _change(shift: float) -> str:
    """'0.12 standard deviations lower' / 'higher', in units of the reward's spread on the samples."""
    return f"{abs(shift):.2f} standard deviations {'higher' if shift > 0 else 'lower'} on average"


def probe_line(probes: Mapping[str, Mapping[str, float]]) -> str:
    """', reward change for shuffled -0.91, repeated +0.10, swapped -0.52 (standard deviations)' or ''."""
    if not probes:
        return ""
    return ("; reward change for " + ", ".join(f"{name} {e['shift']:+.2f}" for name, e in probes.items())
            + " standard deviations")


def reward_model_accuracy(folder: str | Path) -> float | None:
    """The held-out accuracy a reward-model folder records in its eval.json (None if it has none)."""
    path = Path(folder) / "eval.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eval/accuracy")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def format_finding(f: Finding) -> str:
    return f"{f.rule}: {f.explanation}.\n  try: {f.fix}."
