"""The catalogue of bad inputs: one table of (command, input, exit code, what the error line says).

Every row runs the real CLI in-process (typer's CliRunner) on the embedded model or a tiny one and
must end with exit code 2 and ONE `error: ...` line that names the file, row, field or setting
and what to do, never a traceback. Almost every row fails before any model is loaded or trained;
the reward-function rows sample one tiny rollout first (the function is only called then).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from toy_data import corpus, known_rule_pairs, write_jsonl
from typer.testing import CliRunner

from rlhfkit.cli import app

runner = CliRunner()
FAST = "--threads 1 --mixed-precision no"
RL = f"--prompts {{w}}/prompts.jsonl --iterations 1 --rollout-batch-size 4 --num-minibatches 1 --max-new-tokens 4 " \
     f"--sample-every 0 {FAST}"
PPO = f"ppo {RL} --output-dir {{w}}/out"
REINFORCE = f"reinforce {RL} --output-dir {{w}}/out"
REWARD = f"reward --train-data {{w}}/pairs.jsonl --batch-size 8 --max-length 64 {FAST}"
REWARD_OUT = f"{REWARD} --output-dir {{w}}/out"
DPO = f"dpo --train-data {{w}}/pairs.jsonl --batch-size 8 --max-length 64 {FAST} --output-dir {{w}}/out"
SFT = f"sft --train-data {{w}}/demos.jsonl --batch-size 8 --max-length 64 {FAST} --output-dir {{w}}/out"
SCORE = "score --model {w}/rm --data {w}/score.jsonl"


def _data(w: Path) -> None:
    """Good files (each row below breaks one thing) and bad ones."""
    write_jsonl(w / "pairs.jsonl", known_rule_pairs(40, seed=1))
    write_jsonl(w / "pairs2.jsonl", known_rule_pairs(40, seed=1))
    write_jsonl(w / "prompts.jsonl", [{"prompt": "tell me about the road"}] * 8)
    write_jsonl(w / "demos.jsonl", [{"prompt": "tell me", "completion": " the road"}] * 8)
    write_jsonl(w / "score.jsonl", [{"prompt": "tell me", "completion": " the road"}] * 2)
    write_jsonl(w / "long_prompts.jsonl", [{"prompt": "the road and the river " * 200}] * 8)
    (w / "afile").write_text("not a folder\n")
    (w / "foreign").mkdir()
    (w / "foreign" / "notes.txt").write_text("mine\n")
    (w / "full").mkdir()
    (w / "full" / "config.yaml").write_text("stage: reward\n")
    (w / "notmodel").mkdir()
    (w / "notok").mkdir()
    shutil.copy(Path(__file__).parents[2] / "rlhfkit/assets/tiny/config.json", w / "notok" / "config.json")
    good = json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"})
    files = {
        "malformed.jsonl": good + "\n" + '{"prompt": "p", "chosen": \n',
        "notobj.jsonl": good + "\n[1, 2]\n",
        "nochosen.jsonl": good + "\n\n" + json.dumps({"prompt": "p", "rejected": " b"}) + "\n",
        "same.jsonl": good + "\n" + json.dumps({"prompt": "p", "chosen": " a", "rejected": " a"}) + "\n",
        "emptytext.jsonl": json.dumps({"prompt": "p", "chosen": "", "rejected": " b"}) + "\n",
        "numchosen.jsonl": json.dumps({"prompt": "p", "chosen": 3, "rejected": " b"}) + "\n",
        "empty.jsonl": "",
        "extra.csv": "prompt,chosen,rejected\np,a,b\np,a,b,c\n",
        "emptycell.csv": "prompt,chosen,rejected\np,a,b\np,,b\n",
        "list.json": json.dumps({"prompt": ["a", "b"], "chosen": ["c"]}),
        "broken.json": '[{"prompt": "a"',
        "scalar.json": "3",
        "broken.parquet": "PAR1 not really",
        "pairs.txt": "a line\n",
        "noprompt.jsonl": json.dumps({"text": "hello"}) + "\n",
        "emptyprompt.jsonl": json.dumps({"prompt": "hello"}) + "\n" + json.dumps({"prompt": "   "}) + "\n",
        "empty.txt": "\n\n",
        "badids.jsonl": json.dumps({"input_ids": [1, 99999]}) + "\n",
        "nocompletion.jsonl": json.dumps({"prompt": "p"}) + "\n",
        "baddemo.jsonl": json.dumps({"question": "q", "answer": "a"}) + "\n",
        "badchat.jsonl": json.dumps({"messages": [{"role": "user"}]}) + "\n",
        "badrank.jsonl": json.dumps({"prompt": "p", "completions": [" a", " b"], "ranks": [1]}) + "\n",
        "badyaml.yaml": "learning_rate: [1, \n",
        "unknown.yaml": "stage: reward\nlearning_rat: 0.1\n",
        "stage.yaml": "stage: ppo\niterations: 3\n",
    }
    for name, text in files.items():
        (w / name).write_text(text)


def stopped_run(command: str, out: Path) -> str:
    """Run `command` in this process and SIGTERM it once its first metrics line is written: the run saves a
    checkpoint in .OUT.partial and stops (exit 143). Returns its output."""
    import os
    import signal
    import threading
    import time

    metrics = out.parent / f".{out.name}.partial" / "metrics.jsonl"

    def stop() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread: checkpoint after the step

    threading.Thread(target=stop, daemon=True).start()
    result = runner.invoke(app, shlex.split(command))
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert list((out.parent / f".{out.name}.partial").glob("checkpoint-*")), result.output
    return result.output


def _old_checkpoint(w: Path) -> None:
    """A run folder with a checkpoint as older rlhfkit versions wrote it (pickles)."""
    import torch

    old = w / "oldrun" / "checkpoint-2"
    old.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, old / "weights.pt")
    torch.save({"iteration": 1}, old / "trainer_state.pt")
    (w / "oldrun" / "config.yaml").write_text("stage: ppo\n")


def _corrupt(w: Path) -> None:
    """Copies of the trained reward model with one file damaged."""
    for name in ("cut_weights", "cut_config", "cut_tokenizer"):
        shutil.copytree(w / "rm", w / name)
    weights = w / "cut_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (w / "cut_config" / "config.json").write_text('{"model_type": "gpt2", ')
    tok = w / "cut_tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text()[:5000])


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    _data(root)
    # a trained reward model (for score and ppo rows) and a finished PPO run with a checkpoint (for resume rows)
    ok = runner.invoke(app, shlex.split(f"{REWARD} --output-dir {root}/rm".format(w=root)))
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, shlex.split(f"{PPO} --reward-fn bad_rewards:length".format(w=root).replace(
        f"{root}/out", f"{root}/ran")))
    assert ok.exit_code == 0, ok.output
    _corrupt(root)
    _old_checkpoint(root)
    # sft and dpo runs stopped by SIGTERM with a checkpoint (for their resume rows)
    stopped_run(f"{SFT} --epochs 50".format(w=root).replace(f"{root}/out", f"{root}/sft-stopped"),
                root / "sft-stopped")
    stopped_run(f"{DPO} --epochs 20".format(w=root).replace(f"{root}/out", f"{root}/dpo-stopped"),
                root / "dpo-stopped")
    from rlhfkit.models.tiny import save_tiny

    save_tiny(root / "other", corpus(), vocab_size=120, n_layer=1, n_embd=16)  # a model with another tokenizer
    return root


# (id, command line ({w} = the fixture's folder), expected exit code, a distinctive part of the error line)
CATALOGUE = [
    # --- output folders, every stage --------------------------------------------------------------------
    ("reward-out-is-file", REWARD + " --output-dir {w}/afile", 2, "setting 'output_dir': {w}/afile is a file"),
    ("reward-out-under-file", REWARD + " --output-dir {w}/afile/run", 2, "is a file, not a folder"),
    ("reward-out-unwritable", REWARD + " --output-dir /proc/rlhfkit-run", 2, "setting 'output_dir': cannot write in"),
    ("reward-out-exists", REWARD + " --output-dir {w}/full", 2, "already exists and is not empty; pass --overwrite"),
    ("reward-overwrite-foreign", REWARD + " --output-dir {w}/foreign --overwrite", 2,
     "holds files rlhfkit did not write (notes.txt)"),
    ("ppo-out-is-file", f"ppo {RL} --reward-fn bad_rewards:length --output-dir {{w}}/afile", 2, "is a file"),
    ("ppo-out-unwritable", f"ppo {RL} --reward-fn bad_rewards:length --output-dir /proc/rlhfkit-run", 2,
     "cannot write in"),
    ("ppo-overwrite-foreign", f"ppo {RL} --reward-fn bad_rewards:length --output-dir {{w}}/foreign --overwrite", 2,
     "did not write (notes.txt)"),
    ("reinforce-out-is-file", f"reinforce {RL} --reward-fn bad_rewards:length --output-dir {{w}}/afile", 2,
     "is a file"),
    ("dpo-out-is-file", DPO.replace("{w}/out", "{w}/afile"), 2, "is a file"),
    ("dpo-overwrite-foreign", DPO.replace("{w}/out", "{w}/foreign") + " --overwrite", 2, "did not write"),
    ("sft-out-under-file", SFT.replace("{w}/out", "{w}/afile/x"), 2, "is a file, not a folder"),
    ("sft-out-unwritable", SFT.replace("{w}/out", "/proc/rlhfkit-run"), 2, "cannot write in"),
    ("demo-out-foreign", "demo --output-dir {w}/foreign --quick", 2, "did not write (notes.txt)"),
    ("score-output-under-file", SCORE + " --output {w}/afile/scores.jsonl", 2, "setting 'output'"),
    ("score-output-is-folder", SCORE + " --output {w}/notmodel", 2, "is a folder; name a .jsonl file"),
    # --- preference data (reward, dpo): one numbering, the line in the file ----------------------------------
    ("reward-data-missing", REWARD_OUT.replace("pairs.jsonl", "nope.jsonl"), 2, "nope.jsonl: file not found"),
    ("reward-data-malformed", REWARD_OUT.replace("pairs.jsonl", "malformed.jsonl"), 2,
     "malformed.jsonl, row 2: malformed JSON ("),
    ("reward-data-not-object", REWARD_OUT.replace("pairs.jsonl", "notobj.jsonl"), 2,
     "notobj.jsonl, row 2: expected an object"),
    ("reward-data-missing-column-line-3", REWARD_OUT.replace("pairs.jsonl", "nochosen.jsonl"), 2,
     "nochosen.jsonl, row 3"),
    ("reward-data-identical", REWARD_OUT.replace("pairs.jsonl", "same.jsonl"), 2, "same.jsonl, row 2"),
    ("reward-data-empty-text", REWARD_OUT.replace("pairs.jsonl", "emptytext.jsonl"), 2,
     "emptytext.jsonl, row 1, field 'chosen'"),
    ("reward-data-number", REWARD_OUT.replace("pairs.jsonl", "numchosen.jsonl"), 2,
     "numchosen.jsonl, row 1, field 'chosen'"),
    ("reward-data-empty", REWARD_OUT.replace("pairs.jsonl", "empty.jsonl"), 2, "empty.jsonl: no rows"),
    ("reward-csv-extra-values", REWARD_OUT.replace("pairs.jsonl", "extra.csv"), 2,
     "extra.csv, row 3: more values than header columns"),
    ("reward-csv-empty-cell", REWARD_OUT.replace("pairs.jsonl", "emptycell.csv"), 2,
     "emptycell.csv, row 3, field 'chosen'"),
    ("reward-json-columns", REWARD_OUT.replace("pairs.jsonl", "list.json"), 2,
     "expected a list of rows or a mapping of equally long columns"),
    ("reward-json-broken", REWARD_OUT.replace("pairs.jsonl", "broken.json"), 2,
     "broken.json: malformed JSON ("),
    ("reward-json-scalar", REWARD_OUT.replace("pairs.jsonl", "scalar.json"), 2, "expected a list of rows"),
    ("reward-parquet-broken", REWARD_OUT.replace("pairs.jsonl", "broken.parquet"), 2, "cannot read Parquet"),
    ("reward-unknown-suffix", REWARD_OUT.replace("pairs.jsonl", "pairs.txt"), 2, "unknown file type '.txt'"),
    ("reward-not-dataset-folder", REWARD_OUT.replace("pairs.jsonl", "notmodel"), 2,
     "not a dataset folder saved with save_to_disk"),
    ("reward-bad-ranks", REWARD_OUT.replace("pairs.jsonl", "badrank.jsonl"), 2, "badrank.jsonl, row 1"),
    ("reward-eval-missing", REWARD_OUT + " --eval-data {w}/nope.jsonl", 2, "nope.jsonl: file not found"),
    ("reward-normalize-data-bad", REWARD_OUT + " --normalize-data {w}/pairs.jsonl --epochs 1", 2,
     "pairs.jsonl, row 1: needs text fields 'prompt' and 'completion'"),
    ("dpo-data-malformed", DPO.replace("pairs.jsonl", "malformed.jsonl"), 2, "malformed.jsonl, row 2"),
    ("dpo-data-identical", DPO.replace("pairs.jsonl", "same.jsonl"), 2, "same.jsonl, row 2"),
    # --- demonstrations (sft) and prompts (ppo, reinforce) ---------------------------------------------------
    ("sft-data-columns", SFT.replace("demos.jsonl", "baddemo.jsonl"), 2, "baddemo.jsonl, row 1: missing column"),
    ("sft-data-chat", SFT.replace("demos.jsonl", "badchat.jsonl"), 2, "badchat.jsonl, row 1, field 'messages'"),
    ("sft-data-no-completion", SFT.replace("demos.jsonl", "nocompletion.jsonl"), 2, "nocompletion.jsonl, row 1"),
    ("ppo-prompts-missing", PPO.replace("prompts.jsonl", "nope.jsonl") + " --reward-fn bad_rewards:length", 2,
     "nope.jsonl: file not found"),
    ("ppo-prompts-no-column", PPO.replace("prompts.jsonl", "noprompt.jsonl") + " --reward-fn bad_rewards:length", 2,
     "noprompt.jsonl, row 1: missing column 'prompt'"),
    ("ppo-prompts-empty-text", PPO.replace("prompts.jsonl", "emptyprompt.jsonl") + " --reward-fn bad_rewards:length",
     2, "emptyprompt.jsonl, row 2, field 'prompt'"),
    ("ppo-prompts-empty-txt", PPO.replace("prompts.jsonl", "empty.txt") + " --reward-fn bad_rewards:length", 2,
     "empty.txt: no prompts"),
    ("ppo-prompt-ids-out-of-range", PPO.replace("prompts.jsonl", "badids.jsonl") + " --reward-fn bad_rewards:length",
     2, "badids.jsonl, row 1, field 'input_ids': id 99999 is outside"),
    ("ppo-prompts-too-long-for-set-length", PPO.replace("prompts.jsonl", "long_prompts.jsonl")
     + " --reward-fn bad_rewards:length --max-prompt-length 500", 2, "max_prompt_length"),
    # --- reward functions: named, with the iteration, what came back, what was expected -----------------------
    ("rf-wrong-count", PPO + " --reward-fn bad_rewards:wrong_count", 2,
     "reward function bad_rewards:wrong_count, iteration 0: returned 1 score(s) for 4 episodes"),
    ("rf-nan", PPO + " --reward-fn bad_rewards:nan", 2,
     "reward function bad_rewards:nan, iteration 0: returned nan for episodes 0, 1, 2, 3"),
    ("rf-inf", REINFORCE + " --reward-fn bad_rewards:inf", 2, "bad_rewards:inf, iteration 0: returned inf"),
    ("rf-one-nan", PPO + " --reward-fn bad_rewards:one_nan", 2, "returned nan for episode 3 (of 4"),
    ("rf-strings", PPO + " --reward-fn bad_rewards:strings", 2, "returned str 'good' for episodes"),
    ("rf-raises", REINFORCE + " --reward-fn bad_rewards:raises", 2,
     "bad_rewards:raises, iteration 0: raised KeyError: 'label'"),
    ("rf-none", PPO + " --reward-fn bad_rewards:returns_none", 2, "returned NoneType"),
    ("gold-fn-raises", PPO + " --reward-fn bad_rewards:length --gold-fn bad_rewards:raises", 2,
     "gold function bad_rewards:raises: raised KeyError: 'label'"),
    ("gold-fn-nan", REINFORCE + " --reward-fn bad_rewards:length --gold-fn bad_rewards:nan", 2,
     "gold function bad_rewards:nan: returned nan"),
    ("rf-bad-spec", PPO + " --reward-fn bad_rewards", 2, "setting 'reward_fn': expected 'module:function'"),
    ("rf-no-module", PPO + " --reward-fn no_such_module:f", 2, "cannot import module 'no_such_module'"),
    ("rf-no-function", PPO + " --reward-fn bad_rewards:not_callable", 2, "has no function 'not_callable'"),
    ("rl-no-reward", PPO, 2, "setting 'reward_model': pass --reward-model DIR or --reward-fn"),
    ("rl-two-rewards", PPO + " --reward-fn bad_rewards:length --reward-model {w}/rm", 2, "pass only one of"),
    # --- models and tokenizers ------------------------------------------------------------------------------
    ("ppo-rm-is-causal-lm", PPO + " --reward-model embedded", 2,
     "setting 'reward_model': embedded is not a trained reward model"),
    ("score-model-is-causal-lm", "score --model embedded --data {w}/score.jsonl", 2,
     "setting 'model': embedded is not a trained reward model"),
    ("reward-model-missing", REWARD_OUT + " --model {w}/nope", 2, "model path does not exist"),
    ("reward-model-no-config", REWARD_OUT + " --model {w}/notmodel", 2, "not a model directory (no config.json)"),
    ("ppo-policy-offline-hub-id", PPO + " --reward-fn bad_rewards:length --policy nobody-xyz/no-model", 2,
     "nobody-xyz/no-model: not a local folder, and the Hugging Face hub cannot be reached"),
    ("reward-tokenizer-missing-files", REWARD_OUT + " --tokenizer {w}/notok", 2, "no tokenizer files in this folder"),
    ("reward-tokenizer-mismatch", REWARD_OUT + " --tokenizer {w}/other", 2,
     "setting 'tokenizer': {w}/other ("),
    ("ppo-tokenizer-mismatch", PPO + " --reward-fn bad_rewards:length --tokenizer {w}/other", 2,
     "does not match the tokenizer saved with the model"),
    ("score-weights-cut", "score --model {w}/cut_weights --data {w}/score.jsonl", 2,
     "weights file is damaged or cut short"),
    ("score-config-not-json", "score --model {w}/cut_config --data {w}/score.jsonl", 2, "cut_config: cannot load"),
    ("score-tokenizer-cut", "score --model {w}/cut_tokenizer --data {w}/score.jsonl", 2, "is not valid JSON"),
    ("ppo-policy-weights-cut", PPO + " --reward-fn bad_rewards:length --policy {w}/cut_weights", 2,
     "weights file is damaged or cut short"),
    ("reward-max-length-beyond-context", REWARD_OUT.replace("--max-length 64", "--max-length 100000"), 2,
     "max_length"),
    # --- settings ---------------------------------------------------------------------------------------------
    ("reward-lr-negative", REWARD_OUT + " --learning-rate -1", 2, "learning_rate"),
    ("reward-batch-zero", REWARD_OUT + " --batch-size 0", 2, "batch_size"),
    ("reward-eval-fraction", REWARD_OUT + " --eval-fraction 1.5", 2, "eval_fraction"),
    ("reward-bad-choice", REWARD_OUT + " --truncation sideways", 2, "truncation"),
    ("reward-bad-tracker", REWARD_OUT + " --report-to nowhere", 2, "report_to"),
    ("reward-no-train-data", "reward --output-dir {w}/out", 2, "setting 'train_data': is required"),
    ("reward-config-missing", REWARD_OUT + " --config {w}/nope.yaml", 2, "nope.yaml"),
    ("reward-config-bad-yaml", REWARD_OUT + " --config {w}/badyaml.yaml", 2, "badyaml.yaml"),
    ("reward-config-unknown-key", REWARD_OUT + " --config {w}/unknown.yaml", 2, "learning_rat"),
    ("reward-config-other-stage", REWARD_OUT + " --config {w}/stage.yaml", 2, "ppo"),
    ("ppo-rollout-split", PPO.replace("--num-minibatches 1", "--num-minibatches 3") + " --reward-fn bad_rewards:length",
     2, "rollout_batch_size"),
    ("score-no-data", "score --model {w}/rm", 2, "setting 'data': is required"),
    ("score-data-row", "score --model {w}/rm --data {w}/nocompletion.jsonl", 2,
     "nocompletion.jsonl, row 1, field 'completion'"),
    # --- resume -----------------------------------------------------------------------------------------------
    ("ppo-resume-changed-lr", PPO.replace("{w}/out", "{w}/ran") + " --reward-fn bad_rewards:length --resume "
     "--learning-rate 0.5", 2, "cannot change on resume: learning_rate (0.0001 -> 0.5)"),
    ("ppo-resume-changed-batch", PPO.replace("{w}/out", "{w}/ran").replace("--rollout-batch-size 4",
     "--rollout-batch-size 8") + " --reward-fn bad_rewards:length --resume", 2, "rollout_batch_size (4 -> 8)"),
    ("ppo-resume-old-pickle-checkpoint", PPO.replace("{w}/out", "{w}/oldrun") + " --reward-fn bad_rewards:length "
     "--resume", 2, "checkpoint-2 is a checkpoint in an old format (weights.pt, a pickle that could run code"),
    ("sft-resume-changed-lr", SFT.replace("{w}/out", "{w}/sft-stopped") + " --epochs 50 --resume --learning-rate 0.5",
     2, "cannot change on resume: learning_rate (0.0001 -> 0.5)"),
    ("sft-resume-changed-batch", SFT.replace("{w}/out", "{w}/sft-stopped").replace("--batch-size 8", "--batch-size 4")
     + " --epochs 50 --resume", 2, "cannot change on resume: batch_size (8 -> 4)"),
    ("sft-resume-in-foreign-folder", SFT.replace("{w}/out", "{w}/foreign") + " --resume", 2,
     "already exists and is not empty"),
    ("dpo-resume-changed-beta", DPO.replace("{w}/out", "{w}/dpo-stopped") + " --epochs 20 --resume --beta 0.5", 2,
     "cannot change on resume: beta (0.1 -> 0.5)"),
    ("dpo-resume-changed-loss", DPO.replace("{w}/out", "{w}/dpo-stopped") + " --epochs 20 --resume --loss ipo", 2,
     "loss ('dpo' -> 'ipo')"),
    ("dpo-resume-changed-data", DPO.replace("{w}/out", "{w}/dpo-stopped").replace("pairs.jsonl", "pairs2.jsonl")
     + " --epochs 20 --resume", 2, "cannot change on resume: train_data"),
    ("ppo-resume-foreign", PPO.replace("{w}/out", "{w}/foreign") + " --reward-fn bad_rewards:length --resume", 2,
     "setting 'resume': {w}/foreign holds files rlhfkit did not write"),
    # --- report -----------------------------------------------------------------------------------------------
    ("report-missing", "report {w}/nope", 2, "nope"),
]


@pytest.mark.parametrize(("name", "command", "code", "expected"), CATALOGUE, ids=[r[0] for r in CATALOGUE])
def test_bad_input_is_one_line(w: Path, name: str, command: str, code: int, expected: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    if "offline" in name:  # HF_HUB_OFFLINE=1, as set on a machine without network (no retries to wait for)
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    command = command.replace("{w}/out", "{w}/out-" + name)  # a run stopped by a bad input may leave its folder
    result = runner.invoke(app, shlex.split(command.format(w=w)))
    output = result.output
    assert "Traceback" not in output and not isinstance(result.exception, (AssertionError, TypeError, KeyError,
                                                                           AttributeError, IndexError)), output
    assert result.exit_code == code, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert expected.format(w=w) in errors[0], output


def test_the_catalogue_is_large_and_its_ids_unique() -> None:
    ids = [row[0] for row in CATALOGUE]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


def test_resume_says_what_it_resumes_and_applies_more_iterations(w: Path) -> None:
    """--resume without a checkpoint says it starts from the beginning; with one it names it and applies
    a longer run (--iterations 1 -> 2): the new iteration's metrics are logged after the first's."""
    fresh = runner.invoke(app, shlex.split((PPO + " --reward-fn bad_rewards:length --resume").format(w=w)
                                           .replace(f"{w}/out", f"{w}/fresh")))
    assert fresh.exit_code == 0, fresh.output
    assert "no intact checkpoint in" in " ".join(fresh.output.split())
    longer = runner.invoke(app, shlex.split((PPO + " --reward-fn bad_rewards:length --resume").format(w=w)
                                            .replace(f"{w}/out", f"{w}/fresh").replace("--iterations 1",
                                                                                        "--iterations 2")))
    assert longer.exit_code == 0, longer.output
    said = " ".join(longer.output.split())
    assert "resuming ppo from" in said and "1 of 2 iterations done (iterations 1 -> 2" in said, said
    steps = [json.loads(line)["step"] for line in (w / "fresh" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]


@pytest.mark.parametrize(("stage", "epochs", "more"), [("sft", 30, 40), ("dpo", 3, 4)])
def test_sft_and_dpo_resume_say_what_they_resume(w: Path, stage: str, epochs: int, more: int) -> None:
    """--resume without a checkpoint says the run starts from the beginning; SIGTERM stops with one line
    saying how to resume; --resume then names the checkpoint and applies more epochs, logging each step
    once; --resume of the completed run says there is nothing to resume."""
    base = (SFT if stage == "sft" else DPO).format(w=w)
    said = " ".join(runner.invoke(app, shlex.split(base.replace(f"{w}/out", f"{w}/{stage}-fresh") + " --resume"))
                    .output.split())
    assert "no intact checkpoint in" in said and "starts from the beginning" in said, said
    out = w / f"{stage}-again"
    run = base.replace(f"{w}/out", str(out))
    stopped = stopped_run(f"{run} --epochs {epochs}", out)
    assert "stopped by SIGTERM after step" in " ".join(stopped.split())
    assert "run the same command with --resume to continue" in " ".join(stopped.split())
    resumed = runner.invoke(app, shlex.split(f"{run} --epochs {more} --resume"))
    assert resumed.exit_code == 0, resumed.output
    said = " ".join(resumed.output.split())
    assert f"resuming {stage} from" in said and f"(epochs {epochs} -> {more}" in said, said
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss/train" in r]  # one line per step (log_every 1)
    total = json.loads((out / "eval.json").read_text())["train/steps"]
    assert rows[0]["step"] == 0 and train_steps == list(range(1, total + 1)), train_steps
    assert not list(out.glob("checkpoint-*")) and not (w / f".{out.name}.partial").exists()
    again = runner.invoke(app, shlex.split(f"{run} --epochs {more} --resume"))
    assert again.exit_code == 0 and "holds a completed run; nothing to resume" in " ".join(again.output.split())
