"""A KV cache that grows into room reserved once, instead of being copied at every decode step.

transformers' DynamicLayer appends each step's keys and values with `torch.cat`, which copies the
whole cache: a sampling loop of T new tokens copies it T times, O(T^2) bytes (on the benchmark's
GPT-2, 64 rows x 32 new tokens, the concatenations were about a seventh of sampling's time under
torch.profiler). `reserve_room` gives each such layer of a filled cache one buffer with room for the
new tokens: a step writes its keys and values into the next free slots, and attention reads a view
of the filled part. The tensors attention sees hold the same numbers as the concatenated ones, so
the tokens sampled do not change (tests/unit/test_kv_cache.py; tests/integration/test_architectures.py
samples through it for every architecture family).

Only plain DynamicLayer layers are given room (sliding-window and static layers manage their own
storage); a step that would overflow the room, or a layer whose tensors something else has replaced
(cropping, beam reordering), falls back to the concatenation.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room for `room` more tokens."""

    def reserve(self, room: int) -> None:
        """Move the cached keys and values into buffers `room` tokens longer (once, after the prefill)."""
        length = self.keys.shape[-2]
        self._buffers = []
        for cached in (self.keys, self.values):
            buffer = cached.new_empty((*cached.shape[:-2], length + room, cached.shape[-1]))
            buffer[..., :length, :] = cached
            self._buffers.append(buffer)
        self._set_length(length)

    def _set_length(self, length: int) -> None:
        keys, values = self._buffers
        self.keys, self.values = keys[..., :length, :], values[..., :length, :]
        self._views = (self.keys, self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens into the reserved room (or concatenate, as DynamicLayer, when there is none)."""
        keys, values = self._buffers
        # the buffers hold the cache only while its tensors are still our views (crop, reorder and reset
        # replace them); then the new tokens must fit
        ours = self._views is not None and self._views[0] is self.keys and self._views[1] is self.values
        start, new = (self.keys.shape[-2] if ours else 0), key_states.shape[-2]
        if not ours or start + new > keys.shape[-2]:
            self._views = None
            return super().update(key_states, value_states, *args, **kwargs)
        keys[..., start:start + new, :] = key_states
        values[..., start:start + new, :] = value_states
        self._set_length(start + new)
        return self.keys, self.values


def reserve_room(cache: Any, room: int) -> int:
    """Give every plain DynamicLayer of a filled `cache` room for `room` more tokens; returns how many
    layers got it (0 for a cache of another kind: it is left as it is)."""
    layers = getattr(cache, "layers", None)
    if room <= 0 or not layers:
        return 0
    reserved = 0
    for layer in layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4 and layer.keys.numel():
            layer.__class__ = ReservedLayer
            layer.reserve(room)
            reserved += 1
    return reserved
