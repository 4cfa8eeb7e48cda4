"""Reward models: a causal LM's trunk plus a linear head that outputs one number.

The model is a plain `AutoModelForSequenceClassification(num_labels=1)` of a decoder-only
family (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX, ...), so a saved reward model loads back with
transformers alone and scores the same there as with `rlhfkit score`, given the same ids:

- The text is the prompt's ids (the tokenizer's own leading special tokens included, e.g. BOS)
  followed by the response's ids and ONE EOS token appended: `tok(prompt)["input_ids"] +
  tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]`, exactly what
  rlhfkit.data.tokenize builds for training and what a policy rollout that stopped produces.
  Encoding the concatenated string instead can merge tokens across the boundary.
- Batches are padded on the RIGHT with the tokenizer's pad token (the saved tokenizer pads on
  the right, and the saved config's `pad_token_id` is that pad). transformers does not derive
  position ids from the attention mask, so with left padding absolute-position families (GPT-2)
  score differently there; rlhfkit skips left padding and gives the right-padded scores either way.
- Where the score is read: like transformers, at the rightmost token that is not the config's
  `pad_token_id` (and, in rlhfkit, inside the attention mask). With a tokenizer that has a pad
  token of its own, that is the appended EOS. A tokenizer without one (most Llama, Mistral and
  GPT-NeoX tokenizers) pads with its EOS (models/loading.py): the appended EOS then counts as
  padding in transformers, so the score is read at the last response token, and rlhfkit reads
  it at that same token in training, scoring and PPO. To read at the EOS itself, give the
  tokenizer a pad token distinct from EOS before training the reward model.
- `rlhfkit score` also applies the normalisation r' = gain * r + bias stored in the config
  (`rlhfkit_reward_gain`, `rlhfkit_reward_bias`); transformers' logits are the raw r.

Several criteria (helpful, harmless, ...): one model may hold one head per criterion over the
shared trunk, `num_labels = C`, the names in the config's `rlhfkit_criteria` (in head order) and
the gain and bias as lists of C numbers. `criterion_scores` reads all C scores from ONE forward
pass: the trunk runs once and the (C, H) head maps the readout hidden state to C numbers, exactly
what C separate one-head models with the same trunk would give. transformers loads it as a
`num_labels = C` classifier whose logits are the C raw scores. A one-head model's criterion is
named by its `rlhfkit_criteria` when it has one, else `overall`.

Encoder trunks (BERT-style: a `classifier` over a pooled first token) and encoder-decoders read
their score elsewhere, so they are refused with a ModelError rather than trained with a readout
that transformers would not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.errors import ModelError
from rlhfkit.models.kernels import use_fused_kernels
from rlhfkit.models.loading import OPTIONS, check_vocab, disable_dropout, load_pretrained
from rlhfkit.models.packing import PackedGroups
from rlhfkit.models.readout import hidden_at, packed_hidden_at
from rlhfkit.models.trunk_and_heads import score_head

# Normalisation r' = gain * r + bias lives in the config (docs/implementation-details.md, "Reward
# normalisation: gain and bias"), so the head stays the
# stock bias-free layer that plain transformers knows how to load.
GAIN_KEY, BIAS_KEY = "rlhfkit_reward_gain", "rlhfkit_reward_bias"
CRITERIA_KEY = "rlhfkit_criteria"
DEFAULT_CRITERION = "overall"  # the one criterion of a model (or a feedback project) that names none


def build_reward_model(
    name_or_path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype | str | None = None,
    init_head: bool = True,
    criteria: Sequence[str] = (),
) -> PreTrainedModel:
    """Load a reward model from a causal LM (new head) or from a saved reward model (its head).

    A new head is initialised N(0, 1/sqrt(d_model + 1)) with zero bias (docs/implementation-details.md,
    "Reward model head initialisation"), which
    gives rewards of about unit scale at the start. `init_head=False` keeps a loaded head.
    `criteria` names the heads of a new model (one head per name; empty = one head); a saved reward
    model keeps its own heads and names, and a different `criteria` is refused.
    """
    saved = saved_criteria(name_or_path)
    if saved is not None and criteria and tuple(criteria) != saved:
        raise ModelError(f"{name_or_path}: the reward model scores {', '.join(saved)}, not {', '.join(criteria)}; "
                         "start from a causal LM to train other criteria")
    heads = len(saved) if saved is not None else max(1, len(criteria))
    model = load_pretrained(AutoModelForSequenceClassification, name_or_path, "reward model",
                             num_labels=heads, dtype=OPTIONS.torch_dtype if dtype is None else dtype)
    check_last_token_head(model, str(name_or_path))
    check_vocab(model, tokenizer, str(name_or_path))
    # transformers reads the score at the rightmost token that is not pad_token_id: it must be
    # the id the saved tokenizer pads with.
    model.config.pad_token_id = tokenizer.pad_token_id
    if saved is None and criteria:
        setattr(model.config, CRITERIA_KEY, list(criteria))
    head = score_head(model)
    if init_head and saved is None:
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()
    model.config.problem_type = "regression"
    return use_fused_kernels(disable_dropout(model))


def check_last_token_head(model: PreTrainedModel, name: str) -> None:
    """Refuse a sequence-classification model whose head does not read the last token's hidden state.

    Decoder-only families put a linear `score` layer over the trunk output at the last non-pad
    token (transformers' convention, which rlhfkit follows); encoders (BERT: a `classifier` over
    the pooled [CLS] token) and encoder-decoders (BART, T5) read elsewhere.
    """
    cls = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False) or not isinstance(getattr(model, "score", None),
                                                                             torch.nn.Linear):
        raise ModelError(f"{name}: {cls} is not a decoder-only model (its score is not read at the last token); "
                         "a reward model needs a causal LM base such as GPT-2, Llama, Qwen2, Mistral or GPT-NeoX")


def is_reward_model(name_or_path: str | Path) -> bool:
    """True when the checkpoint already is a reward model: a sequence-classification model with one
    output, or with one output per criterion named in its config."""
    return saved_criteria(name_or_path) is not None


def saved_criteria(name_or_path: str | Path) -> tuple[str, ...] | None:
    """The criteria a saved reward model scores (head order), or None when it is not a reward model."""
    from transformers import AutoConfig

    from rlhfkit.models.loading import resolve_model_path

    try:
        cfg = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError):
        return None
    archs = getattr(cfg, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return None
    named = getattr(cfg, CRITERIA_KEY, None)
    heads = getattr(cfg, "num_labels", 0)
    if heads == 1 and not named:
        return (DEFAULT_CRITERION,)
    if isinstance(named, list) and len(named) == heads and all(isinstance(n, str) for n in named):
        return tuple(named)
    return None


def criteria_of(model: PreTrainedModel) -> tuple[str, ...]:
    """The criteria a loaded reward model scores, in head order (`overall` for an unnamed one-head model)."""
    named = getattr(model.config, CRITERIA_KEY, None)
    return tuple(named) if named else (DEFAULT_CRITERION,)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token in each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)  # (B,)


def score_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Where the score is read: the rightmost real token that is not `pad_token_id` (B,).

    transformers' *ForSequenceClassification reads at the rightmost id != pad_token_id; with pad
    ids in the padding this is the same token, so both give the same score. When pad is EOS,
    trailing EOS tokens are skipped. A row with nothing but pad ids falls back to its last real token.
    """
    real = attention_mask.bool()
    if pad_token_id is not None:
        counted = real & (input_ids != pad_token_id)
        real = torch.where(counted.any(-1, keepdim=True), counted, real)
    return last_token_index(real)


def criterion_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalized: bool = True,
    packed: PackedGroups | None = None,
) -> torch.Tensor:
    """Rewards (B, C), one column per criterion (`criteria_of` order), read at the last real token
    of each sequence that is not pad (`score_index`), from one forward pass of the trunk.

    Only the readout hidden states go through the (C, H) head. With `normalized`, each criterion's
    gain and bias saved by reward normalisation are applied: r'_c = gain_c * r_c + bias_c.
    With `packed` (the same B sequences packed after their shared prefixes, models/packing.py), the
    trunk runs over the packed rows instead; `input_ids`/`attention_mask` then only locate the readout.
    """
    # The last block runs on the readout token only where the architecture allows (models/readout.py).
    index = score_index(input_ids, attention_mask, model.config.pad_token_id)
    if packed is not None:
        last = packed_hidden_at(model, packed, index)  # (B, H)
    else:
        last = hidden_at(model, input_ids, attention_mask, index)  # (B, H)
    head = score_head(model)
    scores = head(last.to(head.weight.dtype)).float()  # (B, C)
    if normalized:
        gain, bias = normalization(model)
        scores = scores * gain.to(scores.device) + bias.to(scores.device)
    return scores


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalized: bool = True
) -> torch.Tensor:
    """Scalar rewards (B,) of a one-head reward model (`criterion_scores`' only column)."""
    heads = score_head(model).out_features
    if heads != 1:
        raise ModelError(f"the reward model scores {heads} criteria ({', '.join(criteria_of(model))}); "
                         "say how to combine them (--reward-weights) or score one of them")
    return criterion_scores(model, input_ids, attention_mask, normalized)[:, 0]


def normalization(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's saved (gain, bias), as (C,) float tensors: ones and zeros when none was saved."""
    heads = score_head(model).out_features

    def per_head(key: str, default: float) -> torch.Tensor:
        value = getattr(model.config, key, default)
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * heads
        if len(values) != heads:
            raise ModelError(f"the reward model's config has {len(values)} values of {key} for {heads} heads; "
                             "train or normalise it again")
        return torch.tensor(values)

    return per_head(GAIN_KEY, 1.0), per_head(BIAS_KEY, 0.0)


def set_normalization(model: PreTrainedModel, gain: float | Sequence[float], bias: float | Sequence[float]) -> None:
    """Store r'_c = gain_c * r_c + bias_c in the model config (saved with save_pretrained): numbers
    for a one-head model, lists of C numbers for C heads."""
    if isinstance(gain, (int, float)) and isinstance(bias, (int, float)):
        setattr(model.config, GAIN_KEY, float(gain))
        setattr(model.config, BIAS_KEY, float(bias))
        return
    gains, biases = [float(g) for g in gain], [float(b) for b in bias]  # type: ignore[union-attr]
    heads = score_head(model).out_features
    if len(gains) != heads or len(biases) != heads:
        raise ValueError(f"set_normalization: {heads} heads need {heads} gains and biases")
    setattr(model.config, GAIN_KEY, gains[0] if heads == 1 else gains)
    setattr(model.config, BIAS_KEY, biases[0] if heads == 1 else biases)


class RewardScorer(torch.nn.Module):
    """`reward_scores` as a module, so accelerate/DDP can wrap the whole scoring forward."""

    def __init__(self, model: PreTrainedModel, normalized: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalized = normalized

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_scores(self.model, input_ids, attention_mask, normalized=self.normalized)


class CriterionScorer(torch.nn.Module):
    """`criterion_scores` as a module (B, C), so accelerate/DDP can wrap the whole scoring forward of a
    reward model with one head per criterion (a one-head model gives (B, 1))."""

    def __init__(self, model: PreTrainedModel, normalized: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalized = normalized

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                packed: PackedGroups | None = None) -> torch.Tensor:
        return criterion_scores(self.model, input_ids, attention_mask, normalized=self.normalized, packed=packed)
