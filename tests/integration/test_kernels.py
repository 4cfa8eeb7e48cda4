"""Fused kernels compute the same function as the modules they replace."""

from __future__ import annotations

import contextlib

import torch
from transformers import AutoModelForCausalLM
from transformers.activations import GELUTanh, NewGELUActivation

from rlhfkit.models.kernels import use_fused_kernels


def test_fused_gelu_gives_the_same_logits(tiny_model_dir) -> None:
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fused = use_fused_kernels(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert any(isinstance(m, GELUTanh) for m in fused.modules())
    ids = torch.randint(4, 200, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    # the formula itself: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in float64
    expected = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    torch.testing.assert_close(GELUTanh()(x), expected, atol=1e-12, rtol=0)


def _attention_kernels(fn) -> set[str]:
    """The names of the SDPA kernels that `fn()` runs (forward and backward)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key.startswith("aten::_")}


def test_short_bf16_training_rows_take_the_math_attention_kernel(cpu_accelerator) -> None:
    from rlhfkit.models.kernels import MATH_ATTENTION_MAX_TOKENS, autocast

    def step(acc, tokens: int) -> None:
        q, k, v = (torch.randn(2, 2, tokens, 8, requires_grad=True) for _ in range(3))
        with autocast(acc, tokens):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().sum().backward()

    short, long = MATH_ATTENTION_MAX_TOKENS, MATH_ATTENTION_MAX_TOKENS + 1
    bf16 = cpu_accelerator("bf16")  # (accelerate keeps one precision per process: one accelerator at a time)
    assert _attention_kernels(lambda: step(bf16, short)) == {"aten::_scaled_dot_product_attention_math"}
    assert any("flash" in k for k in _attention_kernels(lambda: step(bf16, long)))
    fp32 = cpu_accelerator("no")
    assert any("flash" in k for k in _attention_kernels(lambda: step(fp32, short)))  # fp32 keeps the default


def test_bf16_decoding_attends_in_fp32_and_the_table_is_restored(tiny_model_dir) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from rlhfkit.models.kernels import fp32_decode_attention

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    attention = model.transformer.h[0].attn
    q = torch.randn(5, 2, 1, 16).bfloat16()  # one query token (a decode step) against 11 cached ones
    k, v = torch.randn(5, 2, 11, 16).bfloat16(), torch.randn(5, 2, 11, 16).bfloat16()
    # float64 reference from the same bf16 inputs: softmax(q k^T / sqrt(d)) v, rounded once to bf16
    w = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4.0, dim=-1)
    exact = (w @ v.double()).transpose(1, 2)  # (B, 1, H, d), the layout transformers returns
    with fp32_decode_attention(enabled=True), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        table = ALL_ATTENTION_FUNCTIONS["sdpa"]
        assert table is not sdpa_attention_forward
        out, _ = table(attention, q, k, v, None, scaling=0.25)
    assert out.dtype == torch.bfloat16
    # fp32 arithmetic: within one bf16 rounding of the exact value (2^-8 relative)
    assert ((out.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping
    with torch.no_grad():  # the same step through the model: unchanged numbers outside bf16
        ids = torch.randint(4, 200, (3, 9))
        plain = model(input_ids=ids).logits
        with fp32_decode_attention(enabled=True):
            torch.testing.assert_close(model(input_ids=ids).logits, plain, atol=0, rtol=0)


def test_fp32_decoding_is_chosen_by_the_cpus_amx_tiles(monkeypatch) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from rlhfkit.models import kernels

    for amx, patched in ((True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert kernels.decode_attention_in_fp32() is patched
        with kernels.fp32_decode_attention():  # the default asks the CPU
            assert (ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa_attention_forward) is patched
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch cannot tell: fp32, as without AMX
    assert kernels.decode_attention_in_fp32()
    with kernels.fp32_decode_attention(enabled=False):
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward


def test_frozen_weights_are_cast_once_while_sampling_under_autocast() -> None:
    from torch.profiler import ProfilerActivity, profile

    from rlhfkit.models.kernels import cache_frozen_casts

    layer = torch.nn.Linear(32, 32).requires_grad_(False)  # frozen, as LoRA's base
    x = torch.randn(4, 32)

    def casts(cached: bool) -> int:
        cache = cache_frozen_casts(layer) if cached else contextlib.nullcontext()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), profile(
                activities=[ProfilerActivity.CPU]) as prof, cache:
            outs = [layer(x) for _ in range(3)]
        assert all(o.dtype == torch.bfloat16 for o in outs)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    # three forwards: the input is cast each time; weight and bias three times, or once each
    assert casts(cached=False) == 9
    assert casts(cached=True) == 5
    assert not any(p.requires_grad for p in layer.parameters())  # frozen again afterwards
    with cache_frozen_casts(layer):  # with gradients on, nothing is marked (a graph would be built)
        assert not any(p.requires_grad for p in layer.parameters())
