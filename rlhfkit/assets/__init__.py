"""Files shipped inside the package: the embedded tiny model and its tokenizer.

`rlhfkit/assets/tiny` holds a 4-layer GPT-2 pretrained on the synthetic customer-support task
(`rlhfkit.data.synthetic`), in the `save_pretrained` layout, so the demo and the tests run
offline. `scripts/build_embedded_model.py` rebuilds it; its README.md is the model card.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.errors import ModelError

EMBEDDED_MODEL_DIR: Path = Path(__file__).resolve().parent / "tiny"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def embedded_model_path() -> Path:
    """The directory of the embedded model, checked to hold its weights and tokenizer.

    Load it with `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)`.
    """
    missing = [name for name in _REQUIRED if not (EMBEDDED_MODEL_DIR / name).is_file()]
    if missing:
        raise ModelError(
            f"the embedded model in {EMBEDDED_MODEL_DIR} is incomplete (missing {', '.join(missing)}); "
            "rebuild it with `python scripts/build_embedded_model.py` from a source checkout")
    return EMBEDDED_MODEL_DIR
