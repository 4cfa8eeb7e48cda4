"""The reward-hacking detectors on metric histories built by hand, and the guarded scorer's transforms."""

import math
import statistics

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.rollout.ensemble import GuardedScorer
from rlhfkit.rollout.scoring import FunctionScorer
from rlhfkit.tracking import alarms
from rlhfkit.tracking.alarms import check, read_alarms, replay, write_alarm

BASE = 5


def calm(i: int) -> dict[str, float]:
    """An iteration of a run that stays near the reference: nothing may fire."""
    wobble = 0.01 * math.sin(i)  # a little noise, so baseline standard deviations are not 0
    return {"step": i, "reward/raw": 0.05 * i, "reward/ensemble_spread": 0.5 + wobble, "kl/ref": 0.1 * i,
            "response/length": 15.0 + wobble, "response/repetition": 0.1, "policy/entropy": 0.6 + wobble}


def history(n: int, **late):
    """n calm iterations; from iteration 10 on, the keys in `late` follow the given functions of i."""
    return [{**calm(i), **({k.replace("__", "/"): f(i) for k, f in late.items()} if i >= 10 else {})}
            for i in range(n)]


def detectors(rows):
    return [a.detector for a in replay(rows, BASE)]


def test_a_calm_run_raises_no_alarm():
    assert detectors(history(30)) == []


def test_ensemble_alarm_fires_when_spread_and_reward_rise_together():
    rows = history(20, reward__ensemble_spread=lambda i: 1.5, reward__raw=lambda i: 0.5 * i)
    (alarm,) = replay(rows, BASE)
    # trailing mean of 3: iteration 10 gives (0.5 + 0.5 + 1.5) / 3 = 0.83 (ratio 1.67 > 1.5) already
    assert (alarm.detector, alarm.step) == ("ensemble", 10)
    assert alarm.evidence["spread_ratio"] > alarms.SPREAD_RATIO and alarm.evidence["spread_z"] > alarms.SPREAD_Z
    assert "disagree" in alarm.message


def test_ensemble_alarm_needs_the_reward_to_rise():
    rows = [{**r, "reward/raw": -0.1 * r["step"]} for r in history(20, reward__ensemble_spread=lambda i: 1.5)]
    assert "ensemble" not in detectors(rows)


def test_ensemble_alarm_reads_the_standardized_spread_when_logged():
    """reward/ensemble_spread_standardized is what the alarm watches; the raw spread only for runs logged without it."""
    raw_rises = [{**r, "reward/ensemble_spread_standardized": 0.2 + 0.01 * math.sin(r["step"])}
                 for r in history(20, reward__ensemble_spread=lambda i: 1.5, reward__raw=lambda i: 0.5 * i)]
    assert "ensemble" not in detectors(raw_rises)
    z_rises = [{**r, "reward/ensemble_spread_standardized": 0.6 if r["step"] >= 10 else 0.2 + 0.01 * math.sin(i)}
               for i, r in enumerate(history(20, reward__raw=lambda i: 0.5 * i))]
    (alarm,) = replay(z_rises, BASE)
    assert (alarm.detector, alarm.step) == ("ensemble", 10)  # (0.2 + 0.2 + 0.6) / 3 = 0.33: ratio 1.67


def test_length_alarm():
    rows = history(20, response__length=lambda i: 30.0)
    (alarm,) = replay(rows, BASE)
    # recent mean of 3 reaches 30 at iteration 12; at 11 it is (15 + 30 + 30) / 3 = 25: drift 0.67 > 0.5 already
    assert (alarm.detector, alarm.step) == ("length", 11)
    assert "longer" in alarm.message and alarm.evidence["length_drift"] > 0.5


def test_repetition_alarm():
    (alarm,) = replay(history(20, response__repetition=lambda i: 0.4), BASE)
    assert alarm.detector == "repetition" and "repeat" in alarm.message


def test_entropy_collapse_and_explosion_alarms():
    (low,) = replay(history(20, policy__entropy=lambda i: 0.1), BASE)
    (high,) = replay(history(20, policy__entropy=lambda i: 1.5), BASE)
    assert low.detector == high.detector == "entropy"
    assert "fell" in low.message and "rose" in high.message


def test_kl_alarm_when_reward_stalls_and_kl_climbs():
    rows = history(25, kl__ref=lambda i: 1.0 * i, reward__raw=lambda i: 0.5)
    assert "kl" in detectors(rows)
    alarm = next(a for a in replay(rows, BASE) if a.detector == "kl")
    assert alarm.evidence["kl_per_reward"] > alarms.KL_PER_REWARD and alarm.evidence["kl"] > alarms.KL_MIN


def test_each_detector_fires_once_and_fired_ones_are_skipped():
    rows = history(25, response__length=lambda i: 30.0)
    assert detectors(rows) == ["length"]
    assert check(rows, BASE, fired={"length"}) == []


def test_alarms_round_trip_through_the_file(tmp_path):
    (alarm,) = replay(history(20, response__length=lambda i: 30.0), BASE)
    write_alarm(tmp_path, alarm)
    assert read_alarms(tmp_path) == [alarm]
    assert read_alarms(tmp_path / "missing") == []


def _call(scorer, n_tokens):
    b = len(n_tokens)
    mask = torch.tensor([[t < n for t in range(max(n_tokens))] for n in n_tokens])
    return scorer(torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.bool),
                  torch.zeros(mask.shape, dtype=torch.long), mask, torch.ones(b, dtype=torch.bool),
                  ["p"] * b, [f"r{i}" for i in range(b)])


def fixed(values):
    return FunctionScorer(lambda prompts, responses: values[:len(responses)])


def test_guarded_scorer_conservative_reward_and_stats():
    """Members [1, 2], [3, 2], [2, 5]: means [2, 3], population stds [sqrt(2/3), sqrt(6)]; k = 0.5."""
    scorer = GuardedScorer(fixed([1.0, 2.0]), [fixed([3.0, 2.0]), fixed([2.0, 5.0])], conservative_k=0.5)
    got = _call(scorer, [4, 4])
    spreads = [statistics.pstdev([1, 3, 2]), statistics.pstdev([2, 2, 5])]
    assert got.tolist() == pytest.approx([2 - 0.5 * spreads[0], 3 - 0.5 * spreads[1]], abs=1e-6)
    sums, count = scorer.take_stats()
    assert count == 2 and sums["reward/raw"] == pytest.approx(3.0)
    assert sums["reward/ensemble_spread"] == pytest.approx(sum(spreads), abs=1e-6)
    assert scorer.take_stats() == ({}, 0)


def sequence(*batches):
    """A scorer that returns the next of `batches` on each call."""
    calls = iter(batches)
    return FunctionScorer(lambda prompts, responses: next(calls))


def test_guarded_scorer_standardizes_members_on_the_first_batch():
    """First batch: primary [1, 3] (mean 2, std 1), member [10, 30] (mean 20, std 10): z = (-1, 1) for both,
    spread 0, while the raw spreads are 4.5 and 13.5. Second batch: primary [1, 3], member [30, 10]: z = (-1, 1)
    and (1, -1), spread 1 per episode. A scorer resumed from the state keeps the first batch's reference."""
    scorer = GuardedScorer(sequence([1.0, 3.0], [1.0, 3.0]), [sequence([10.0, 30.0], [30.0, 10.0])])
    _call(scorer, [2, 2])
    sums, _ = scorer.take_stats()
    assert sums["reward/ensemble_spread_standardized"] == pytest.approx(0.0, abs=1e-6)
    assert sums["reward/ensemble_spread"] == pytest.approx(4.5 + 13.5, abs=1e-5)
    state = scorer.state_dict()
    assert state["member_reference"]["mean"] == pytest.approx([2.0, 20.0])
    assert state["member_reference"]["std"] == pytest.approx([1.0, 10.0])
    _call(scorer, [2, 2])
    assert scorer.take_stats()[0]["reward/ensemble_spread_standardized"] == pytest.approx(2.0, abs=1e-6)
    resumed = GuardedScorer(sequence([1.0, 3.0]), [sequence([30.0, 10.0])])
    resumed.load_state_dict(state)
    _call(resumed, [2, 2])
    assert resumed.take_stats()[0]["reward/ensemble_spread_standardized"] == pytest.approx(2.0, abs=1e-6)


def test_guarded_scorer_length_penalty_uses_the_first_batch_as_reference():
    scorer = GuardedScorer(fixed([1.0, 1.0]), length_coef=1.0)
    assert _call(scorer, [2, 4]).tolist() == pytest.approx([1.0, 1 - (4 - 3) / 3])  # L_ref = 3
    assert _call(scorer, [6, 3]).tolist() == pytest.approx([0.0, 1.0])  # (6 - 3) / 3 = 1
    assert scorer.first_batch == {"scores": [1.0, 1.0], "lengths": [2.0, 4.0]}


def test_guarded_scorer_clips_after_the_transforms():
    scorer = GuardedScorer(fixed([5.0, -0.5]), clip=2.0)
    assert _call(scorer, [1, 1]).tolist() == pytest.approx([2.0, -0.5])


def test_conservative_reward_without_an_ensemble_is_a_config_error():
    with pytest.raises(ConfigError, match="--reward-ensemble"):
        GuardedScorer(fixed([1.0]), conservative_k=1.0)


def test_guarded_scorer_raw_scores_and_counts_nothing():
    scorer = GuardedScorer(fixed([5.0, -0.5]), [fixed([1.0, 1.0])], conservative_k=1.0, clip=2.0)
    with scorer.raw():
        assert _call(scorer, [3, 1]).tolist() == pytest.approx([5.0, -0.5])
    assert scorer.take_stats() == ({}, 0) and scorer.first_batch is None
    assert _call(scorer, [3, 1]).tolist() == pytest.approx([1.0, -0.5])  # mean - spread: 3 - 2, 0.25 - 0.75
