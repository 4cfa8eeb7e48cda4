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
    """GPT-2's block for N query tokens only: (R, L, H) block input -> (N, H) block output.

    Query n is token index[n] of row rows[n]; allowed (N, L) says which tokens of that row it attends to.
    q = W_q ln_1(h_i); K, V = W_k, W_v ln_1(h_j) for the allowed tokens j;
    a = softmax(q K^T * scale) V; h' = h_i + W_o a; out = h' + MLP(ln_2(h')).
    """
    attn = block.attn
    count, (batch, length, width) = rows.shape[0], hidden.shape
    x = block.ln_1(hidden)  # (R, L, H): every position feeds the keys and values
    # c_attn gives q, k, v for every position in one product; the q of the other rows is the only waste.
    q, k, v = attn.c_attn(x).split(width, dim=2)
    heads = (batch, length, attn.num_heads, attn.head_dim)
    k, v = k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)  # (R, nh, L, hd)
    if count != batch:  # several queries per row (packed groups): each query gets its row's keys
        k, v = k[rows], v[rows]  # (N, nh, L, hd)
    q = q[rows, index].view(count, attn.num_heads, 1, attn.head_dim)  # (N, nh, 1, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :], scale=attn.scaling)
    out = attn.resid_dropout(attn.c_proj(out.reshape(count, width)))  # (N, H)
    h = hidden[rows, index] + out
    return h + block.mlp(block.ln_2(h))


def last_block_from(block: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    start: int) -> torch.Tensor:
    """GPT-2's block for the query positions start..L-1 of every row: (B, L, H) input -> (B, L - start, H).

    The same block as `last_block_at`, for a slice of positions: K, V from every position, attention,
    W_o and the MLP on the queries only. A policy needs the states from its prompt's last token on.
    """
    attn = block.attn
    batch, length, width = hidden.shape
    x = block.ln_1(hidden)  # (B, L, H)
    q, k, v = attn.c_attn(x).split(width, dim=2)
    heads = (batch, length, attn.num_heads, attn.head_dim)
    k, v = k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)  # (B, nh, L, hd)
    count = length - start
    q = q[:, start:].reshape(batch, count, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, nh, T, hd)
    query = torch.arange(start, length, device=hidden.device)
    key = torch.arange(length, device=hidden.device)
    allowed = attention_mask.bool()[:, None, :] & (key[None, None, :] <= query[None, :, None])  # (B, T, L)
    allowed = allowed | (key[None, None, :] == query[None, :, None])  # a padded query still sees itself
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=attn.scaling)  # (B, nh, T, hd)
    out = attn.resid_dropout(attn.c_proj(out.transpose(1, 2).reshape(batch, count, width)))  # (B, T, H)
    h = hidden[:, start:] + out
    return h + block.mlp(block.ln_2(h))


def hidden_from(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Final hidden states (after the last norm) of positions start..L-1: (B, L - start, H).

    GPT-2 runs its last block on those positions only (the others still give keys and values);
    any other model runs the full trunk and is sliced.
    """
    body = trunk(model)
    if not readout_supported(model):
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return hidden.last_hidden_state[:, start:]
    with _without_last_block(body) as last:
        before_last = body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids).last_hidden_state  # (B, L, H)
    return body.ln_f(last_block_from(last, before_last, attention_mask, start))


def hidden_at(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              index: torch.Tensor) -> torch.Tensor:
    """Final hidden state (after the last norm) at position index[b] of each row b: (B, H).

    Position ids skip left padding. Uses the one-row last block where supported, else the full trunk.
    """
    body = trunk(model)
    positions = position_ids_from_mask(attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if not readout_supported(model):
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
        return hidden[rows, index]
    with _without_last_block(body) as last:
        before_last = body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=positions).last_hidden_state  # (B, L, H)
    position = torch.arange(input_ids.shape[1], device=input_ids.device)
    allowed = attention_mask.bool() & (position[None, :] <= index[:, None])  # (B, L)
    allowed[rows, index] = True  # a row of padding only still attends to itself (no NaN)
    return body.ln_f(last_block_at(last, before_last, allowed, rows, index))


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
    return body.ln_f(last_block_at(last, before_last, allowed, packed.row, at))
