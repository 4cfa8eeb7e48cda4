"""The demo's summary (`demo.json`): one typed record, written by `rlhfkit demo`, read by the report.

    DemoSummary
      reward_model: RewardModelRecord      folder, held-out accuracy (its eval.json)
      start:        PolicyRecord           the pretrained policy on the held-out prompts
      with_guard:   RunRecord              PPO with the KL penalty (and entropy bonus, if set)
      without_guard: RunRecord             the same PPO with both coefficients 0
      dpo:          DPORecord              DPO of the start policy on the same rankings (no reward model)
      samples:      [SampleRecord]         the first held-out prompts, each policy's reply + gold score
      criteria:     CriteriaRecord         the reward model with a head per criterion, and every policy's
                                           held-out gold and proxy score per criterion (PPO on helpful
                                           alone and on helpful + concise among them)
      evaluation:   str                    the per-prompt file every mean above is computed from
      eval_prompts, seconds, settings

A PolicyRecord holds a policy's held-out numbers: gold, proxy, diversity and `kl`, the mean over the
held-out prompts of log pi(y|x) - log pi_start(y|x) on its own reply y (0 for the start policy), the
one KL that PPO and DPO runs share. A RunRecord (PPO) adds its run folder, its coefficients, its gold
win rate over the start policy and its last logged training KL; a DPORecord adds its folder, beta,
learning rate, epochs, win rate and held-out implicit-reward accuracy.

`DemoSummary.load(path)` checks every field and type and stops with a one-line DataError naming
the file and the field (`demo.json: field 'with_guard.win_rate': expected a number, got "high"`).
This module imports nothing from pipelines/ or trainers/, so both the demo and the report use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError

SUMMARY_FILE = "demo.json"
EVALUATION_FILE = "evaluation.jsonl"
"""One row per held-out prompt: {"prompt", "seed", "<policy>": {"response", "ended", "gold", "proxy"}, ...}."""
KL_KEY = "kl/ref"  # the metrics.jsonl key whose last value is a run's final KL
RM_ACCURACY_KEY = "eval/accuracy"  # the reward model's eval.json key of its held-out accuracy
DPO_ACCURACY_KEY = "eval/rewards/accuracy"  # the DPO run's eval.json key of its implicit-reward accuracy
POLICIES = ("start", "with_guard", "without_guard", "dpo")
RUNS = ("with_guard", "without_guard")  # the PPO runs (metrics.jsonl with kl/ref, reward/mean, ...)
TRAINED = ("with_guard", "without_guard", "dpo")  # every final policy (each has a win rate over the start)


@dataclass(frozen=True)
class PolicyRecord:
    """One policy's replies to the held-out prompts (one sampled reply each, same seeds for all)."""

    gold: float  # mean gold-judge score
    proxy: float  # mean reward-model score
    distinct_1: float
    distinct_2: float
    repetition: float
    kl: float  # mean over prompts of sum_t log pi - log pi_start on its own held-out reply (start: 0)


@dataclass(frozen=True)
class RunRecord(PolicyRecord):
    """A PPO run of the demo: its final policy's evaluation and where it came from."""

    folder: str  # the run folder, relative to the demo folder
    kl_coef: float
    ent_coef: float
    win_rate: float  # share of held-out prompts where its reply beats the start policy's (ties half)
    kl_final: float | None  # the last `kl/ref` of its metrics.jsonl (None if never logged)


@dataclass(frozen=True)
class DPORecord(PolicyRecord):
    """The DPO run of the demo: its final policy's evaluation and its settings (beta instead of kl_coef)."""

    folder: str  # the run folder, relative to the demo folder
    beta: float
    learning_rate: float
    epochs: int
    win_rate: float  # as for RunRecord
    accuracy: float  # held-out implicit-reward accuracy (its eval.json's eval/rewards/accuracy)


@dataclass(frozen=True)
class RewardModelRecord:
    folder: str
    accuracy: float  # held-out preference accuracy


@dataclass(frozen=True)
class Reply:
    text: str
    gold: float


@dataclass(frozen=True)
class SampleRecord:
    prompt: str
    start: Reply
    with_guard: Reply
    without_guard: Reply
    dpo: Reply

    def replies(self) -> Iterator[tuple[str, Reply]]:
        return ((name, getattr(self, name)) for name in POLICIES)


@dataclass(frozen=True)
class CriteriaPolicy:
    """One policy's held-out means per criterion (the same replies as its PolicyRecord)."""

    policy: str  # its key in evaluation.jsonl: start, with_guard, ..., helpful_alone, helpful_concise
    folder: str  # its run folder ("" for the start policy)
    weights: dict[str, float]  # the --reward-weights it was trained with (empty: not trained on the criteria)
    gold: dict[str, float]  # criterion -> mean hidden-judge score
    proxy: dict[str, float]  # criterion -> mean score of that criterion's head
    kl: float


@dataclass(frozen=True)
class CriteriaRecord:
    criteria: list[str]
    reward_model: str  # folder of the model with one head per criterion
    accuracy: dict[str, float]  # criterion -> held-out accuracy of its head
    policies: list[CriteriaPolicy]

    def policy(self, name: str) -> CriteriaPolicy:
        for p in self.policies:
            if p.policy == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class DemoSummary:
    reward_model: RewardModelRecord
    start: PolicyRecord
    with_guard: RunRecord
    without_guard: RunRecord
    dpo: DPORecord
    eval_prompts: int
    seconds: float
    evaluation: str = EVALUATION_FILE
    samples: list[SampleRecord] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    criteria: CriteriaRecord | None = None  # None in summaries written before the demo had two criteria

    def policy(self, name: str) -> PolicyRecord:
        """'start', 'with_guard', 'without_guard' or 'dpo'."""
        if name not in POLICIES:
            raise KeyError(name)
        return getattr(self, name)

    def runs(self) -> Iterator[tuple[str, RunRecord]]:
        """The PPO runs."""
        return ((name, getattr(self, name)) for name in RUNS)

    def trained(self) -> Iterator[tuple[str, RunRecord | DPORecord]]:
        """Every final policy: both PPO runs, then DPO."""
        return ((name, getattr(self, name)) for name in TRAINED)

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write atomically (a reader never sees half a file); returns the path."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = SUMMARY_FILE) -> DemoSummary:
        return _parse(cls, data, source, "")

    @classmethod
    def from_json(cls, text: str, source: str = SUMMARY_FILE) -> DemoSummary:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: not valid JSON ({e}); rerun `rlhfkit demo` to write it again") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> DemoSummary:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: not found; `rlhfkit demo` writes it when every stage has run") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the file ({e})") from None
        return cls.from_json(text, str(path))


# ---------------------------------------------------------------------------------------------
# Checked parsing: every field present, of its declared type; unknown keys refused
# ---------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Non-finite floats -> None, so that the file is strict JSON (they load back as missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _bad(source: str, where: str, expected: str, value: Any) -> DataError:
    shown = json.dumps(value)[:60] if isinstance(value, (str, int, float, bool)) else _json_type(value)
    return DataError(f"{source}: field '{where}': expected {expected}, got {shown}; rerun `rlhfkit demo` "
                     "to write it again")


@typing.no_type_check
def _parse(tp: Any, value: Any, source: str, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, value, source, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(source, where or "(top level)", "an object", value)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            name = f"{where}.{unknown[0]}" if where else unknown[0]
            raise DataError(f"{source}: unknown field '{name}' (a {tp.__name__} has "
                            f"{', '.join(fields)}); was it written by another rlhfkit version?")
        kwargs = {}
        for name, f in fields.items():
            path = f"{where}.{name}" if where else name
            if name not in value:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise DataError(f"{source}: field '{path}' is missing; rerun `rlhfkit demo` to write it again")
            kwargs[name] = _parse(hints[name], value[name], source, path)
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise _bad(source, where, "a list", value)
        return [_parse(args[0], v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(source, where, "an object", value)
        if args and args[1] is not Any:
            return {k: _parse(args[1], v, source, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(source, where, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(source, where, "a whole number", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(source, where, "text", value)
        return value
    raise TypeError(f"no parser for {tp!r}")  # a field type this module does not handle: a bug here
