"""The reserved-room KV cache layer holds exactly what DynamicLayer's concatenation would."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from rlhfkit.models.kv_cache import ReservedLayer, reserve_room


def _filled_cache(prefill: torch.Tensor) -> DynamicCache:
    cache = DynamicCache()
    cache.update(prefill, -prefill, layer_idx=0)
    cache.update(2 * prefill, prefill + 1, layer_idx=1)
    return cache


def test_decode_steps_give_the_concatenated_keys_and_values() -> None:
    torch.manual_seed(0)
    prefill = torch.randn(3, 2, 5, 4)
    cache = _filled_cache(prefill)
    assert reserve_room(cache, 4) == 2 and all(type(layer) is ReservedLayer for layer in cache.layers)
    steps = [torch.randn(3, 2, 1, 4) for _ in range(4)]
    expected_k, expected_v = prefill, -prefill
    for step in steps:
        keys, values = cache.update(step, step * 3, layer_idx=0)
        expected_k, expected_v = torch.cat([expected_k, step], -2), torch.cat([expected_v, step * 3], -2)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
        assert keys.data_ptr() == cache.layers[0]._buffers[0].data_ptr()  # a view of the buffer: no copy
    assert cache.get_seq_length(0) == 9
    # a fifth step overflows the room of 4: the layer concatenates as DynamicLayer does
    extra = torch.randn(3, 2, 1, 4)
    keys, _ = cache.update(extra, extra, layer_idx=0)
    assert torch.equal(keys, torch.cat([expected_k, extra], -2)) and cache.get_seq_length(0) == 10


def test_a_cache_cropped_from_outside_falls_back_to_concatenation() -> None:
    prefill = torch.arange(2 * 1 * 6 * 3, dtype=torch.float32).view(2, 1, 6, 3)
    cache = _filled_cache(prefill)
    reserve_room(cache, 8)
    cache.crop(-2)  # DynamicLayer.crop replaces the tensors with shorter views
    step = torch.full((2, 1, 1, 3), -7.0)
    keys, values = cache.update(step, step, layer_idx=0)
    assert torch.equal(keys, torch.cat([prefill[..., :4, :], step], -2))
    assert torch.equal(values, torch.cat([-prefill[..., :4, :], step], -2))


def test_only_plain_dynamic_layers_get_room() -> None:
    assert reserve_room(DynamicCache(), 4) == 0  # nothing filled yet
    assert reserve_room(_filled_cache(torch.ones(1, 1, 2, 2)), 0) == 0  # no room asked for
    assert reserve_room(object(), 4) == 0  # not a layered cache at all
    cache = _filled_cache(torch.ones(1, 1, 2, 2))
    cache.layers[1].__class__ = type("OtherLayer", (DynamicLayer,), {})
    assert reserve_room(cache, 4) == 1 and type(cache.layers[1]) is not ReservedLayer


def test_a_reset_cache_starts_over_by_concatenation() -> None:
    cache = _filled_cache(torch.ones(1, 1, 3, 2))
    reserve_room(cache, 4)
    cache.reset()  # DynamicLayer.reset drops the tensors
    step = torch.full((1, 1, 1, 2), 5.0)
    keys, values = cache.update(step, -step, layer_idx=0)
    assert torch.equal(keys, step) and torch.equal(values, -step) and cache.get_seq_length(0) == 1
