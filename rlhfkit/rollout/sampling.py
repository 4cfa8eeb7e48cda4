"""Batched sampling with a KV cache: temperature, top-k, top-p, max new tokens, stop at EOS.

Each episode draws its randomness from its own generator, seeded by the caller (for example
from the run seed, the iteration and the episode's global index). A response then depends
only on its prompt and its seed, not on which other prompts share the batch or the process,
so 1 process and N processes sample the same episodes and a resumed run repeats the same
samples. Sampling inverts the CDF: with u ~ U[0, 1) from the episode's generator, the token is the
first one whose cumulative probability under softmax(z / T) exceeds u, an exact draw (as
`torch.multinomial` does). One uniform number per episode and step: Gumbel-max (argmax(z / T + g),
g ~ Gumbel(0, 1)) needs one per vocabulary entry, and drawing those took a tenth of a sampling loop
on the benchmark's 2,003-token vocabulary.

`sample` can also record, at no extra forward pass, what the trainer needs about each step: the
log-probability and entropy of the sampling policy (logits / T, before top-k/top-p filtering)
and a value head's V(s_t) on the same hidden state (the `old_logprobs: sampling` option).

Any Hugging Face causal LM works: position ids that skip the left padding are passed at every
step (absolute-position families such as GPT-2 need them; rotary ones get them too), and the
model creates its own KV cache on the first call (whatever class its config asks for) and gets
it back on each step, so the tokens equal those of a full forward over the whole sequence
(tests/integration/test_architectures.py checks greedy decoding for each family).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from rlhfkit.algos.logprobs import logprobs_and_entropy
from rlhfkit.models.kernels import cache_frozen_casts, fp32_decode_attention
from rlhfkit.models.kv_cache import reserve_room
from rlhfkit.models.loading import position_ids_from_mask

StopIds = int | Sequence[int] | None  # the token id(s) that end a response


@dataclass
class SamplingSettings:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filtering
    top_p: float = 1.0  # 1 = no nucleus filtering
    stop_at_eos: bool = True
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Samples:
    """Sampled responses, right-padded: tokens after the first EOS are pad and masked out."""

    response_ids: torch.Tensor  # (B, T) int64
    response_mask: torch.Tensor  # (B, T) bool: real tokens up to and including the first EOS
    ended: torch.Tensor  # (B,) bool: the response emitted EOS
    # With `with_logprobs`: per step, log pi(a_t|s_t) and H_t at logits / T, 0 after the mask.
    logp: torch.Tensor | None = None  # (B, T)
    entropy: torch.Tensor | None = None  # (B, T)
    values: torch.Tensor | None = None  # (B, T) value_head(hidden of s_t), when a value head is given


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf; always keeps the best token."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def episode_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per episode."""
    return [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]


def cdf_dtype(device: torch.device) -> torch.dtype:
    """float64 for the CDF and its uniform numbers; float32 on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def episode_uniforms(generators: list[torch.Generator], steps: int, device: torch.device) -> torch.Tensor:
    """(B, steps) U[0, 1) numbers, row b from generator b: the sampling loop's one number per step.

    Drawn in the CDF's own precision: a float64 number just below 1 would round to 1.0 in float32,
    which no token's cumulative probability exceeds."""
    dtype = cdf_dtype(device)
    return torch.stack([torch.rand(steps, generator=g, dtype=dtype) for g in generators]).to(device)


def inverse_cdf_draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """token = min { i : sum_{j <= i} p_j > u sum_j p_j },  p = softmax(logits), u in [0, 1).

    Draws a token from softmax(logits) (B, V) with one uniform number per row (B,); the CDF is summed
    in u's precision (float64 but on MPS). With u < 1, u * total rounds to a number below the total
    (the largest u below 1 is 1 - eps / 2, and total - total eps / 2 rounds down), so some index is
    past it; and the first index past it raises the CDF, so it has probability > 0: a token with a
    -inf logit (top-k / top-p) is never drawn.
    """
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1, dtype=u.dtype)  # (B, V), non-decreasing
    return torch.searchsorted(cdf, cdf[:, -1:] * u.unsqueeze(-1), right=True).squeeze(-1)  # (B,)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
    eos_token_id: StopIds,
    pad_token_id: int,
    seeds: list[int] | None = None,
    with_logprobs: bool = False,
    value_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Samples:
    """Sample one response per left-padded prompt (B, P) with a KV cache.

    `eos_token_id` is the id, or the ids, that end a response (EOS and the chat template's end-of-turn
    token: rlhfkit.data.stop_tokens.stop_token_ids). The loop stops early once every response has
    emitted one (when `stop_at_eos`). With
    `with_logprobs`, each step's log-prob and entropy (and `value_head`'s value) are kept.
    The model runs in eval mode (its modules' modes are restored afterwards): under gradient
    checkpointing, transformers turns the KV cache off in train mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with fp32_decode_attention(), cache_frozen_casts(model):
            return _sample(model, prompt_ids, prompt_mask, settings, eos_token_id, pad_token_id, seeds,
                           with_logprobs, value_head)
    finally:
        for module, training in modes:
            module.training = training


def sample_in_chunks(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
    eos_token_id: StopIds,
    pad_token_id: int,
    seeds: list[int],
    chunk_size: int = 0,
    with_logprobs: bool = False,
    value_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Samples:
    """`sample` over at most `chunk_size` prompts at a time (0 = all at once), right-padded together.

    Each episode draws from its own seed, so the chunking changes memory, not the samples.
    """
    batch = prompt_ids.shape[0]
    if chunk_size <= 0 or chunk_size >= batch:
        return sample(model, prompt_ids, prompt_mask, settings, eos_token_id, pad_token_id, seeds, with_logprobs,
                      value_head)
    parts = [sample(model, prompt_ids[i:i + chunk_size], prompt_mask[i:i + chunk_size], settings, eos_token_id,
                    pad_token_id, seeds[i:i + chunk_size], with_logprobs, value_head)
             for i in range(0, batch, chunk_size)]
    width = max(part.response_ids.shape[1] for part in parts)

    def join(name: str, fill: float | bool | int) -> torch.Tensor | None:
        tensors = [getattr(part, name) for part in parts]
        if tensors[0] is None:
            return None
        return torch.cat([torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], dim=1) for t in tensors])

    return Samples(join("response_ids", pad_token_id), join("response_mask", False),
                   torch.cat([part.ended for part in parts]), join("logp", 0.0), join("entropy", 0.0),
                   join("values", 0.0))


def _sample(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, settings: SamplingSettings,
            eos_token_id: StopIds, pad_token_id: int, seeds: list[int] | None, with_logprobs: bool,
            value_head: Callable[[torch.Tensor], torch.Tensor] | None) -> Samples:
    batch, device = prompt_ids.shape[0], prompt_ids.device
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch,)).tolist()
    if len(seeds) != batch:
        raise ValueError(f"need one seed per prompt: {batch} prompts, {len(seeds)} seeds")
    generators = episode_generators(seeds)
    attention = prompt_mask.long()
    positions = position_ids_from_mask(attention)
    with_hidden = value_head is not None  # the last layer's output (after the final norm) is V's input
    # No cache is passed in: the model builds the one its architecture needs (a DynamicCache with
    # sliding-window layers where the config asks for them, ...) and each step hands it back.
    keep = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
    out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                output_hidden_states=with_hidden, **keep)
    cache = out.past_key_values
    if cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() != prompt_ids.shape[1]):
        raise ValueError(f"{type(model).__name__} did not fill a KV cache with use_cache=True; sampling needs one")
    reserve_room(cache, settings.max_new_tokens - 1)  # the decode steps write into it, not a copy per step
    next_pos = positions[:, -1:] + 1
    uniforms = None if settings.greedy else episode_uniforms(generators, settings.max_new_tokens, device)
    stops = _stop_tensor(eos_token_id, device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logps, entropies, values = [], [], [], []
    for step in range(settings.max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        if settings.greedy:
            token = logits.argmax(-1)
        else:
            filtered = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
            token = inverse_cdf_draw(filtered, uniforms[:, step])  # (B,)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        if with_logprobs:
            logp, entropy = logprobs_and_entropy(logits[:, None], token[:, None], settings.temperature)
            logps.append(logp[:, 0])
            entropies.append(entropy[:, 0])
            if value_head is not None:
                values.append(value_head(out.hidden_states[-1][:, -1]).reshape(batch).float())
        if stops is not None:
            finished |= torch.isin(token, stops)
            if settings.stop_at_eos and bool(finished.all()):
                break
        if step == settings.max_new_tokens - 1:
            break  # the last token is chosen: no forward for a token that will never be sampled
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_pos,
                    past_key_values=out.past_key_values, use_cache=True, output_hidden_states=with_hidden)
        next_pos = next_pos + 1
    response = torch.stack(tokens, dim=1)  # (B, T)
    mask, ended = response_mask(response, eos_token_id)
    samples = Samples(response.masked_fill(~mask, pad_token_id), mask, ended)
    if with_logprobs:
        samples.logp = torch.stack(logps, dim=1).masked_fill(~mask, 0.0)
        samples.entropy = torch.stack(entropies, dim=1).masked_fill(~mask, 0.0)
        if value_head is not None:
            samples.values = torch.stack(values, dim=1).masked_fill(~mask, 0.0)
    return samples


def accepts(model: torch.nn.Module, name: str) -> bool:
    """True when `model.forward` takes the keyword `name` (by name or through **kwargs)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def response_mask(response_ids: torch.Tensor, eos_token_id: StopIds) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is True up to and including the first stop token (all True without one)."""
    stops = _stop_tensor(eos_token_id, response_ids.device)
    if stops is None:
        full = torch.ones_like(response_ids, dtype=torch.bool)
        return full, torch.zeros(response_ids.shape[0], dtype=torch.bool, device=response_ids.device)
    is_eos = torch.isin(response_ids, stops)
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # stop tokens strictly before t
    return eos_before == 0, is_eos.any(-1)


def _stop_tensor(stop_ids: StopIds, device: torch.device) -> torch.Tensor | None:
    ids = [stop_ids] if isinstance(stop_ids, int) else [i for i in (stop_ids or ()) if i is not None]
    return torch.tensor(ids, device=device) if ids else None
