"""--dtype (transformers' torch_dtype) and --trust-remote-code reach every model a run loads."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlhfkit.errors import ModelError
from rlhfkit.models.loading import LoadOptions, configure_loading, load_causal_lm, load_tokenizer
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig

CUSTOM_CONFIG = '''
from transformers import GPT2Config


class TinyCustomConfig(GPT2Config):
    model_type = "tiny-custom"
'''

CUSTOM_MODEL = '''
from transformers import GPT2LMHeadModel

from .configuration_tiny_custom import TinyCustomConfig


class TinyCustomForCausalLM(GPT2LMHeadModel):
    config_class = TinyCustomConfig
'''


@pytest.fixture(autouse=True)
def default_load_options():
    yield
    configure_loading(LoadOptions())  # the options are per run: leave the defaults for the next test


def test_bfloat16_weights_train_and_are_saved_in_bfloat16(tiny_model_dir, rule_pairs_file, rule_eval_file,
                                                          tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(rule_pairs_file.read_text().splitlines(keepends=True)[:64]))
    metrics = train_reward(RewardConfig(model=str(tiny_model_dir), train_data=str(pairs),
                                        eval_data=str(rule_eval_file), output_dir=str(tmp_path / "rm"), batch_size=16,
                                        max_length=96, mixed_precision="no", dtype="bfloat16", learning_rate=1e-3))
    assert math.isfinite(metrics["eval/loss"])
    with safe_open(str(tmp_path / "rm" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {torch.bfloat16}


def custom_code_folder(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny GPT-2 re-declared as an architecture transformers does not know, its code in the folder."""
    shutil.copytree(tiny_model_dir, out)
    (out / "configuration_tiny_custom.py").write_text(CUSTOM_CONFIG)
    (out / "modeling_tiny_custom.py").write_text(CUSTOM_MODEL)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="tiny-custom", architectures=["TinyCustomForCausalLM"], auto_map={
        "AutoConfig": "configuration_tiny_custom.TinyCustomConfig",
        "AutoModelForCausalLM": "modeling_tiny_custom.TinyCustomForCausalLM"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_folder_with_its_own_code_needs_trust_remote_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = custom_code_folder(tiny_model_dir, tmp_path / "custom")
    tokenizer = load_tokenizer(tiny_model_dir)
    with pytest.raises(ModelError, match="pass --trust-remote-code"):
        load_causal_lm(folder, tokenizer)
    configure_loading(LoadOptions(trust_remote_code=True))
    model = load_causal_lm(folder, tokenizer)
    assert type(model).__name__ == "TinyCustomForCausalLM"
    plain = load_causal_lm(tiny_model_dir, tokenizer)  # the same weights under transformers' own GPT-2
    ids = torch.tensor([[5, 9, 17, 30]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)


def test_the_setting_reaches_a_stage(tiny_model_dir, rule_pairs_file, rule_eval_file, tmp_path: Path) -> None:
    folder = custom_code_folder(tiny_model_dir, tmp_path / "custom")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(rule_pairs_file.read_text().splitlines(keepends=True)[:16]))
    common = dict(model=str(folder), train_data=str(pairs), eval_data=str(pairs), batch_size=8, max_length=96,
                  mixed_precision="no")
    with pytest.raises(ModelError, match="pass --trust-remote-code"):
        train_reward(RewardConfig(**common, output_dir=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()
    # trusted, the code loads; it declares no sequence-classification class, which is said in one line too
    with pytest.raises(ModelError, match="no AutoModelForSequenceClassification for this architecture"):
        train_reward(RewardConfig(**common, output_dir=str(tmp_path / "rm"), trust_remote_code=True))
