"""Checkpoint files: safetensors weights, weights_only state, a manifest that catches damage, the last N kept,
killed writes cleaned up, RNG states restored, non-finite weights refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.errors import TrainingError
from rlhfkit.trainers.checkpoint import (
    check_resume_settings,
    checkpoints,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from rlhfkit.trainers.common import check_finite, leftover_folders
from rlhfkit.trainers.reward_config import RewardConfig


def weights(value: float = 1.0) -> dict[str, torch.Tensor]:
    shared = torch.full((3, 2), value)
    return {"embed.weight": shared, "head.weight": shared, "bias": torch.arange(4.0)}  # tied, as in GPT-2


def test_a_checkpoint_round_trips_without_pickles(tmp_path: Path) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    state = {"iteration": 3, "optimizer": opt.state_dict(), "prompts": {"served": 12, "seed": 0}}
    path = save_checkpoint(tmp_path, weights(), state, done=4)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors", "trainer_state.pt"]
    torch.load(path / "trainer_state.pt", weights_only=True)  # nothing but tensors, numbers and lists
    loaded, back = load_checkpoint(path)
    assert torch.equal(loaded["head.weight"], weights()["head.weight"]) and back["iteration"] == 3
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_states_are_restored(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, weights(), {}, done=1)
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_checkpoint(path)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_damage_is_caught_and_the_one_before_is_used(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, weights(1.0), {}, done=1, keep=3)
    newest = save_checkpoint(tmp_path, weights(2.0), {}, done=2, keep=3)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    (newest / "model.safetensors").write_bytes(bytes(data))
    assert "model.safetensors" in verify_checkpoint(newest)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint-1"


def test_only_the_newest_n_are_kept(tmp_path: Path) -> None:
    for done in range(1, 6):
        save_checkpoint(tmp_path, weights(), {}, done=done, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-5"]


def test_a_killed_writes_temporary_folder_is_removed_by_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    (tmp_path / f".checkpoint.tmp-{pid}").mkdir()
    (tmp_path / f".checkpoint.tmp-{pid}" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, weights(), {}, done=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    staged = tmp_path / f".run.tmp-{pid}"
    staged.mkdir()
    (tmp_path / f".run.tmp-{os.getpid()}").mkdir()  # this process's own: left alone
    assert leftover_folders(tmp_path / "run") == [staged]


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    bad = weights()
    bad["bias"] = torch.tensor([0.0, float("nan"), 1.0, float("inf")])
    with pytest.raises(TrainingError, match=r"1 of 3 weight tensors hold NaN or inf \(first: 'bias'\)"):
        save_checkpoint(tmp_path, bad, {}, done=1)
    assert not list(tmp_path.iterdir())
    with pytest.raises(TrainingError, match="the trained policy"):
        check_finite(torch.nn.Linear(2, 2).requires_grad_(False).apply(lambda m: m.weight.fill_(float("nan"))),
                     "the trained policy")


def test_resume_refuses_settings_that_change_the_numbers(tmp_path: Path) -> None:
    before = RewardConfig(train_data="p.jsonl", learning_rate=1e-4, epochs=1)
    path = save_checkpoint(tmp_path, weights(), {}, done=1, config=before)
    assert json.loads((path / "config.json").read_text())["learning_rate"] == 1e-4
    more = RewardConfig(train_data="p.jsonl", learning_rate=1e-4, epochs=3, resume=True)
    assert check_resume_settings(path, more) == {"epochs": (1, 3), "resume": (False, True)}
    from rlhfkit.errors import ConfigError

    other = RewardConfig(train_data="p.jsonl", learning_rate=5e-4, batch_size=8)
    with pytest.raises(ConfigError, match=r"cannot change on resume: batch_size \(32 -> 8\), learning_rate"):
        check_resume_settings(path, other)


def test_resume_names_an_old_pickle_checkpoint_instead_of_starting_over(tmp_path: Path) -> None:
    """A checkpoint of an older rlhfkit (weights.pt + trainer_state.pt pickles, no checkpoint.json) is never
    unpickled: --resume says in one line that its format is no longer read and what to do."""
    from rlhfkit.errors import ConfigError
    from rlhfkit.trainers.checkpoint import resume_from

    old = tmp_path / "checkpoint-3"
    old.mkdir()
    torch.save({"w": torch.ones(1)}, old / "weights.pt")
    torch.save({"iteration": 2}, old / "trainer_state.pt")
    with pytest.raises(ConfigError, match=r"checkpoint-3 is a checkpoint in an old format \(weights.pt, a pickle") as e:
        resume_from(tmp_path, resume=True, overwrite=False)
    assert "rerun without --resume" in str(e.value) and "\n" not in str(e.value)


def _tiny_lm(seed: int, vocab: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=1, n_embd=8, n_head=2, n_positions=32))


def _save_dying_at_move(k: int, out: Path, model: torch.nn.Module, tokenizer: object) -> None:
    """save_causal_lm in a forked process that SIGKILLs itself just before its k-th os.replace."""
    import signal

    from rlhfkit.trainers import common

    real, calls = os.replace, []

    def dying_replace(src: object, dst: object) -> None:
        if len(calls) == k:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(dst)
        real(src, dst)

    common.os.replace = dying_replace  # this forked process only
    common.save_causal_lm(out, model, tokenizer)


def test_a_kill_during_the_final_save_leaves_no_model_or_the_new_one_whole(tmp_path: Path) -> None:
    """A folder holding model A is saved over with model B, and the saving process is SIGKILLed just before
    its k-th move into the folder, for every k: afterwards the loader either refuses the folder (no
    config.json) or loads exactly B, never A's config with some of B's files; the whole save loads B."""
    from rlhfkit.errors import UserError
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.trainers import common

    tokenizer = load_tokenizer("embedded")
    old, new = _tiny_lm(0, len(tokenizer)), _tiny_lm(1, len(tokenizer))
    reference = tmp_path / "old"
    reference.mkdir()
    common.save_causal_lm(reference, old, tokenizer)
    moves = len(list(reference.iterdir()))  # one os.replace per entry of the saved folder
    outcomes = []
    for k in range(moves + 1):
        out = tmp_path / f"run-{k}"
        shutil.copytree(reference, out)
        pid = os.fork()
        if pid == 0:  # the saving process: dies at its k-th move (k == moves: it completes)
            try:
                _save_dying_at_move(k, out, new, tokenizer)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) == (k < moves), (k, status)
        try:
            loaded = load_causal_lm(str(out), tokenizer)
        except UserError as e:
            assert "config.json" in str(e), str(e)
            outcomes.append("none")
            continue
        got, want = loaded.state_dict(), new.state_dict()
        assert all(torch.equal(got[name], want[name]) for name in want), f"killed at move {k}: not model B"
        outcomes.append("new")
    assert outcomes == ["none"] * moves + ["new"], outcomes


def test_a_run_killed_after_saving_its_model_is_moved_into_place_on_resume(tmp_path: Path) -> None:
    """reward, sft and dpo write eval.json last into .OUT.partial; a run killed after that (before the folder
    became output_dir) is complete: --resume moves it into place without its checkpoints and says so."""
    from types import SimpleNamespace

    from rlhfkit.trainers.step_resume import completed_run, partial_folder

    out = tmp_path / "run"
    partial = partial_folder(out)
    save_checkpoint(partial, weights(), {"step": 3}, done=3)
    (partial / "model.safetensors").write_bytes(b"the model")
    (partial / "eval.json").write_text(json.dumps({"eval/loss": 0.25}))
    assert completed_run(SimpleNamespace(output_dir=str(out), resume=False)) is None
    assert completed_run(SimpleNamespace(output_dir=str(out), resume=True)) == {"eval/loss": 0.25}
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "model.safetensors"] and not partial.exists()
    assert completed_run(SimpleNamespace(output_dir=str(out), resume=True)) == {"eval/loss": 0.25}  # said again
    (tmp_path / ".other.partial").mkdir()  # a stopped run (no eval.json): resumed, not completed
    assert completed_run(SimpleNamespace(output_dir=str(tmp_path / "other"), resume=True)) is None
