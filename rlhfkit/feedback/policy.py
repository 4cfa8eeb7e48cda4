"""One job: load the policy that `feedback sample` samples from, whatever folder a stage wrote.

A trained PPO, DPO or SFT output is a `save_pretrained` folder (rlhfkit.trainers.common.
save_causal_lm): plain weights, merged weights beside a LoRA `adapter/` folder, or only a LoRA
adapter (peft's layout: adapter_config.json naming its base model). The last is loaded on its
base model and merged, so sampling runs at the plain model's speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError
from rlhfkit.models.loading import load_causal_lm

ADAPTER_CONFIG = "adapter_config.json"


def adapter_folder(model: str) -> Path | None:
    """The LoRA adapter folder of a policy folder that has no full weights, else None."""
    path = Path(model).expanduser()
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    return None


def load_policy(model: str, tokenizer: Any) -> Any:
    """The causal LM at `model` (an HF id, a folder, or a LoRA adapter folder), in eval mode."""
    adapter = adapter_folder(model)
    if adapter is None:
        return load_causal_lm(model, tokenizer).eval()
    from peft import PeftModel

    try:
        base_name = json.loads((adapter / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{adapter / ADAPTER_CONFIG}: cannot read the adapter's base model ({e}); "
                        "pass the merged policy folder instead") from None
    base = load_causal_lm(base_name, tokenizer)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
