"""Same function, faster kernel: fused modules in a loaded model, and the attention kernels of bf16 on a CPU.

GPT-2's "gelu_new" activation is written as nine elementwise tensor operations
(0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))); `torch.nn.functional.gelu(approximate="tanh")`
computes the same function in one kernel. On a CPU the unfused form takes about a quarter of a
small model's training step. The model config is left as it is, so saved models do not change.

Attention: PyTorch's CPU flash kernel for scaled_dot_product_attention works in blocks sized for
long rows; in bf16 its backward on short rows is about 3x slower than the math kernel's (16 rows x
4 heads x 48 tokens: 5.4 ms against 1.7 for forward and backward; fp32 flash: 1.8 ms). The two meet
near 190 tokens and flash is ahead beyond, with memory linear in the length where the math kernel
keeps the (T, T) weights. So a training forward under bf16 on a CPU takes the math kernel for rows of
at most `MATH_ATTENTION_MAX_TOKENS`; everything else keeps the default choice.

Decoding (one query token against the KV cache) depends on the CPU. PyTorch's bf16 CPU attention
runs its products on AMX tiles (oneDNN's brgemm) where the CPU has them, and without AMX it is slow:
on an AMD EPYC with avx512_bf16 but no AMX, both kernels took 400-900 us in bf16 for 64 rows x 4
heads x 17-48 cached tokens, against 150-290 us for casting q, k and v to fp32 and running the fp32
kernel. On an Intel Xeon with AMX it is the other way round: 150-290 us in bf16 against 420-2000 us
for the fp32 copies, and a bf16 GRPO iteration of the benchmark samples in 0.21-0.22 s against
0.23-0.24 s. So `fp32_decode_attention` does that cast while a sampling loop runs (the same
function, in more precision) on CPUs without AMX only (`decode_attention_in_fp32`).

Frozen weights: autocast keeps the bf16 copy of a weight for the rest of its region only when the
weight requires grad, so a frozen one (LoRA's base, all of it) is cast again at every decode step:
a third of a LoRA sampling loop's time on SmolLM2-135M. `cache_frozen_casts` lets the cache keep
them while sampling, which runs without gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

MATH_ATTENTION_MAX_TOKENS = 160

_TANH_GELUS = (NewGELUActivation, FastGELUActivation)


def use_fused_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Replace tanh-approximation GELU modules by the fused kernel (in place); returns the model."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, _TANH_GELUS):
                setattr(parent, name, GELUTanh())
    return model


@contextmanager
def autocast(accelerator: Any, tokens: int) -> Iterator[None]:
    """`accelerator.autocast()` for a forward over rows of `tokens` tokens; under bf16 on a CPU with rows
    of at most MATH_ATTENTION_MAX_TOKENS, also SDPA's math kernel (the module docstring says why)."""
    short_bf16_cpu = (accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu"
                      and tokens <= MATH_ATTENTION_MAX_TOKENS)
    with accelerator.autocast():
        if short_bf16_cpu:
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield


def _sdpa_decoding_in_fp32(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; a bf16 decode step on a CPU runs it on fp32 copies of q, k and v."""
    if query.shape[2] == 1 and query.dtype == torch.bfloat16 and query.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):  # autocast would cast the copies back to bf16
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                  **kwargs)
        return out.to(query.dtype), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def decode_attention_in_fp32() -> bool:
    """True where bf16 decode attention should run on fp32 copies: a CPU without AMX tiles (module docstring)."""
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3
    return not (has_amx is not None and has_amx())


@contextmanager
def fp32_decode_attention(enabled: bool | None = None) -> Iterator[None]:
    """While it is open, models with SDPA attention (through transformers' shared attention table) decode
    bf16 on a CPU in fp32 attention (the module docstring says why); on exit the table is as it was.
    `enabled=None` asks `decode_attention_in_fp32()`; False leaves the table alone."""
    if enabled is None:
        enabled = decode_attention_in_fp32()
    had_local = "sdpa" in ALL_ATTENTION_FUNCTIONS._local_mapping
    previous = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if not enabled or previous is not sdpa_attention_forward:  # off, or someone else's attention: leave it
        yield
        return
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _sdpa_decoding_in_fp32
    try:
        yield
    finally:
        if had_local:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = previous
        else:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]


@contextmanager
def cache_frozen_casts(model: torch.nn.Module) -> Iterator[None]:
    """Under autocast and without gradients, cast each frozen float32 weight of `model` once rather than at
    every forward: they are marked as requiring grad while the block runs (autocast caches only those;
    no graph is built without gradients) and unmarked on exit."""
    frozen = []
    if not torch.is_grad_enabled() and any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")):
        frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
