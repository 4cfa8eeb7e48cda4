"""The trunk's final hidden state at ONE position per row, without the last block's other positions.

A reward model reads its score at a single token (the last real one), so the last transformer
block only has to produce that token: its keys and values still come from every position, but
the attention output, the MLP and the final norm run on one row per sequence instead of L. On a
4-layer model that removes about a fifth of the matrix products of a reward-model step, forward
and backward, with the same result (tests compare against the full forward in float64).

The fast path knows GPT-2's block (ln_1 -> self-attention -> ln_2 -> MLP, pre-norm, then ln_f).
Any other architecture, and any sharded wrapper that gathers weights in a block's own forward
(FSDP, DeepSpeed ZeRO-3), takes the plain full forward: `readout_supported` says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from rlhfkit.models.loading import position_ids_from_mask
from rlhfkit.models.packing import PackedGroups
from rlhfkit.models.trunk_and_heads import trunk


def readout_supported(model: PreTrainedModel) -> bool:
    """True for an unwrapped GPT-2 trunk whose last block can run on one query row."""
    try:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block, GPT2Model
    except ImportError:  # pragma: no cover - transformers always ships GPT-2
        return False
    body = trunk(model)
    if type(body) is not GPT2Model or len(body.h) < 2:
        return False
    last = body.h[-1]
    cfg = model.config
    return (type(last) is GPT2Block and not cfg.add_cross_attention and not cfg.reorder_and_upcast_attn
            and not any(hasattr(p, "ds_id") for p in last.parameters()))  # ZeRO-3 partitions params


@contextmanager
def _without_last_block(body: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the trunk's own forward over all blocks but the last, with no final norm."""
    blocks, norm = body.h, body.ln_f
    body.h, body.ln_f = torch.nn.ModuleList(list(blocks)[:-1]), torch.nn.Identity()
    try:
        yield blocks[-1]
    finally:
        body.h, body.ln_f = blocks, norm


def last_block_at(block: torch.nn.Module, hidden: torch.Tensor, allowed: torch.Tensor, rows: torch.Tensor,
                  index: torch.Tensor) -> torch.Tensor:
    """GPT-2's block for chosen query tokens only: (R, L, H) block input -> (N, T, H) block output.

    Query (n, t) is token index[n, t] of row rows[n]; allowed (N, T, L) says which tokens of that row it
    attends to. One readout token per sequence is T = 1; a policy's response states are T positions.
    q = W_q ln_1(h_i); K, V = W_k, W_v ln_1(h_j) for the allowed tokens j;
    a = softmax(q K^T * scale) V; h' = h_i + W_o a; out = h' + MLP(ln_2(h')).
    """
    attn = block.attn
    (count, queries), (batch, length, width) = index.shape, hidden.shape
    x = block.ln_1(hidden)  # (R, L, H): every position feeds the keys and values
    # c_attn gives q, k, v for every position in one product; the q of the other positions is the only waste.
    q, k, v = attn.c_attn(x).split(width, dim=2)
    heads = (batch, length, attn.num_heads, attn.head_dim)
    k, v = k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)  # (R, nh, L, hd)
    if count != batch:  # several sequences per row (packed groups): each gets its row's keys
        k, v = k[rows], v[rows]  # (N, nh, L, hd)
    at = (rows[:, None], index)
    q = q[at].view(count, queries, attn.num_heads, attn.head_dim).transpose(1, 2)  # (N, nh, T, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=attn.scaling)  # (N, nh, T, hd)
    out = attn.resid_dropout(attn.c_proj(out.transpose(1, 2).reshape(count, queries, width)))  # (N, T, H)
    h = hidden[at] + out
    return h + block.mlp(block.ln_2(h))


def hidden_from(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Final hidden states (after the last norm) of positions start..L-1: (B, L - start, H).

    GPT-2 runs its last block on those positions only (the others still give keys and values);
    any other model runs the full trunk and is sliced.
    """
    body = trunk(model)
    if not readout_supported(model):
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return hidden.last_hidden_state[:, start:]
    with _without_last_block(body) as last:
        before_last = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state  # (B, L, H)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    query = torch.arange(start, input_ids.shape[1], device=input_ids.device)  # (T,)
    key = torch.arange(input_ids.shape[1], device=input_ids.device)
    allowed = attention_mask.bool()[:, None, :] & (key[None, None, :] <= query[None, :, None])  # (B, T, L)
    allowed = allowed | (key[None, None, :] == query[None, :, None])  # a padded query still sees itself
    index = query.expand(input_ids.shape[0], -1)  # (B, T)
    return body.ln_f(last_block_at(last, before_last, allowed, rows, index))


def hidden_at(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              index: torch.Tensor) -> torch.Tensor:
    """Final hidden state (after the last norm) at position index[b] of each row b: (B, H).

    Position ids skip left padding. Uses the one-row last block where supported, else the full trunk.
    """
    body = trunk(model)
    positions = position_ids_from_mask(attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if not readout_supported(model):
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                      use_cache=False).last_hidden_state
        return hidden[rows, index]
    with _without_last_block(body) as last:
        before_last = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                           use_cache=False).last_hidden_state  # (B, L, H)
    position = torch.arange(input_ids.shape[1], device=input_ids.device)
    allowed = attention_mask.bool() & (position[None, :] <= index[:, None])  # (B, L)
    allowed[rows, index] = True  # a row of padding only still attends to itself (no NaN)
    return body.ln_f(last_block_at(last, before_last, allowed[:, None], rows, index[:, None]))[:, 0]


def packed_hidden_at(model: PreTrainedModel, packed: PackedGroups, index: torch.Tensor) -> torch.Tensor:
    """Final hidden state of each packed sequence at its own position index[n] (its own layout): (N, H).

    The trunk runs once over the packed rows (models/packing.py) with their positions and 4D mask.
    GPT-2 runs its last block on the N readout tokens only, as `hidden_at` does.
    """
    body = trunk(model)
    at = packed.index(index)  # (N,) positions in the packed rows
    inputs = packed.trunk_inputs(model)
    if not readout_supported(model):
        return body(**inputs).last_hidden_state[packed.row, at]
    with _without_last_block(body) as last:
        before_last = body(**inputs).last_hidden_state  # (R, L, H)
    allowed = packed.allowed[packed.row, at]  # (N, L): what each readout token attends to
    return body.ln_f(last_block_at(last, before_last, allowed[:, None], packed.row, at[:, None]))[:, 0]
