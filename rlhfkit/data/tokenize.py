"""Turn prompts and responses into token ids the same way for every stage.

A sequence is `prompt_ids + response_ids + [EOS]`: prompt and response are encoded separately,
exactly as a policy rollout produces them (prompt ids, then sampled ids ending in EOS), so a
reward model sees the same ids in training and when it scores rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.algos.reward import ranking_to_pairs
from rlhfkit.data.preferences import PreferenceGroup, PreferencePair
from rlhfkit.data.stop_tokens import response_end_id, stop_token_ids
from rlhfkit.errors import DataError

TRUNCATION_MODES = ("truncate_prompt", "drop")


def encode_prompt(tokenizer: Any, text: str, templated: bool = False) -> list[int]:
    """Prompt ids with the tokenizer's own leading special tokens (e.g. BOS), unless a chat
    template already wrote them into the text."""
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode_response(tokenizer: Any, text: str, add_eos: bool = True) -> list[int]:
    """Response ids, ending in EOS or the end-of-turn token (the reward is read at that token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return _with_eos(tokenizer, ids) if add_eos and ids else ids


def _with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    """`ids` ending in a stop token: EOS, or the chat template's end-of-turn token (rlhfkit.data.stop_tokens)."""
    end = response_end_id(tokenizer)
    return ids + [end] if end is not None and ids[-1] not in stop_token_ids(tokenizer) else ids


@dataclass
class TokenizedPairs:
    """Token ids of chosen and rejected sequences (prompt + response + EOS), one entry per pair."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    weights: list[float]
    margins: list[float]
    truncated: int = 0  # pairs whose prompt lost tokens on the left
    dropped: int = 0  # pairs that could not fit max_length (even with the prompt truncated), left out
    kept_index: list[int] = field(default_factory=list)  # source index of each kept pair
    dropped_index: list[int] = field(default_factory=list)  # source index of each pair left out
    dropped_rows: list[int] = field(default_factory=list)  # their source rows, when the rows were given (sorted)
    criteria: list[str | None] = field(default_factory=list)  # each kept pair's criterion (None: none named)

    def __len__(self) -> int:
        return len(self.chosen)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer: Any, max_length: int, truncation: str = "truncate_prompt",
    rows: list[int] | None = None,
) -> TokenizedPairs:
    """Encode pairs; longer ones lose prompt tokens on the left or are dropped (never the response).

    A pair whose longer response (with its EOS) leaves no room for a prompt token is dropped in either
    mode. Dropped pairs are counted (`dropped`) and named (`dropped_index`, and `dropped_rows` from
    `rows`, the source row of each pair, when given).
    """
    if rows is not None and len(rows) != len(pairs):
        raise ValueError(f"rows: {len(rows)} given for {len(pairs)} pairs")
    if truncation not in TRUNCATION_MODES:
        raise DataError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
    out = TokenizedPairs([], [], [], [])
    for i, pair in enumerate(pairs):
        p = encode_prompt(tokenizer, pair.prompt, pair.templated)
        c = encode_response(tokenizer, pair.chosen, add_eos=False)
        r = encode_response(tokenizer, pair.rejected, add_eos=False)
        if not c or not r:
            raise DataError(f"comparison {i + 1}: a response encodes to no tokens; check the tokenizer "
                            f"({type(tokenizer).__name__} with {len(tokenizer)} tokens)")
        c, r = _with_eos(tokenizer, c), _with_eos(tokenizer, r)
        longest = max(len(c), len(r))
        if len(p) + longest > max_length:
            keep = max_length - longest
            if truncation == "drop" or keep <= 0:
                out.dropped += 1
                out.dropped_index.append(i)
                continue
            p = p[-keep:]
            out.truncated += 1
        out.chosen.append(p + c)
        out.rejected.append(p + r)
        out.weights.append(pair.weight)
        out.margins.append(pair.margin)
        out.criteria.append(pair.criterion)
        out.kept_index.append(i)
    if rows is not None:
        out.dropped_rows = sorted({rows[i] for i in out.dropped_index})
    return out


@dataclass
class TokenizedGroups:
    """Token ids of ranked groups: K_g sequences (prompt + response + EOS) per group, with their ranks."""

    sequences: list[list[list[int]]]  # group -> completion (best first; ties in row order) -> ids
    ranks: list[list[int]]  # group -> rank of each completion (0 = best, equal = tie)
    margins: list[float]
    truncated: int = 0  # groups whose prompt lost tokens on the left
    dropped: int = 0  # groups left out: fewer than two distinct ranks fit max_length
    trimmed: int = 0  # groups kept without the completions that do not fit max_length
    kept_index: list[int] = field(default_factory=list)  # source index of each kept group
    dropped_index: list[int] = field(default_factory=list)  # source index of each group left out
    dropped_rows: list[int] = field(default_factory=list)  # their source rows, when the rows were given (sorted)
    criteria: list[str | None] = field(default_factory=list)  # each kept group's criterion (None: none named)

    def __len__(self) -> int:
        return len(self.sequences)

    def num_pairs(self, index: int) -> int:
        """Comparisons of group `index`: its pairs of completions ranked apart (ties give none)."""
        return len(ranking_to_pairs(self.ranks[index]))


def tokenize_groups(
    groups: list[PreferenceGroup], tokenizer: Any, max_length: int, truncation: str = "truncate_prompt",
    rows: list[int] | None = None,
) -> TokenizedGroups:
    """Encode ranked groups with the pair path's rules, per completion: a completion that does not fit
    max_length (even with the prompt truncated, in truncate_prompt mode) is left out of its group, and
    the prompt loses tokens on the left to fit the longest completion kept. A group left with fewer
    than two distinct ranks is dropped. For K = 2 this keeps, truncates and drops exactly the pairs
    `tokenize_pairs` does; for K > 2 the group keeps the sub-ranking of the completions that fit (the
    Plackett-Luce probability of a sub-ranking is the model's marginal on that subset).
    """
    if rows is not None and len(rows) != len(groups):
        raise ValueError(f"rows: {len(rows)} given for {len(groups)} groups")
    if truncation not in TRUNCATION_MODES:
        raise DataError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
    out = TokenizedGroups([], [], [])
    for i, group in enumerate(groups):
        p = encode_prompt(tokenizer, group.prompt, group.templated)
        responses = [encode_response(tokenizer, c, add_eos=False) for c in group.completions]
        if not all(responses):
            raise DataError(f"ranked list {i + 1}: a response encodes to no tokens; check the tokenizer "
                            f"({type(tokenizer).__name__} with {len(tokenizer)} tokens)")
        responses = [_with_eos(tokenizer, r) for r in responses]
        # a completion fits with the whole prompt, or (truncate_prompt) with at least one prompt token
        kept = [j for j, r in enumerate(responses)
                if len(p) + len(r) <= max_length or (truncation == "truncate_prompt" and len(r) < max_length)]
        kept.sort(key=lambda j: group.ranks[j])  # best first (stable): a pair lays out as chosen, rejected
        if len({group.ranks[j] for j in kept}) < 2:
            out.dropped += 1
            out.dropped_index.append(i)
            continue
        longest = max(len(responses[j]) for j in kept)
        if len(p) + longest > max_length:
            p = p[-(max_length - longest):]
            out.truncated += 1
        out.trimmed += len(kept) < len(responses)
        out.sequences.append([p + responses[j] for j in kept])
        out.ranks.append([group.ranks[j] for j in kept])
        out.margins.append(group.margin)
        out.criteria.append(group.criterion)
        out.kept_index.append(i)
    if rows is not None:
        out.dropped_rows = sorted({rows[i] for i in out.dropped_index})
    return out


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest: (input_ids, attention_mask), both (N, L) int64."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to the longest (for generation): (input_ids, attention_mask)."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, longest - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, longest - len(s):] = 1
    return ids, mask


def collate_pairs(batch: list[tuple[list[int], list[int], float, float]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen and rejected of a batch in one right-padded tensor: rows [0, B) chosen, [B, 2B) rejected."""
    chosen, rejected, weights, margins = zip(*batch)
    ids, mask = pad_right(list(chosen) + list(rejected), pad_id)
    return {
        "input_ids": ids,  # (2B, L)
        "attention_mask": mask,  # (2B, L)
        "weights": torch.tensor(weights, dtype=torch.float32),  # (B,)
        "margins": torch.tensor(margins, dtype=torch.float32),  # (B,)
    }


def collate_groups(batch: list[tuple[list[list[int]], list[int], float]], pad_id: int) -> dict[str, torch.Tensor]:
    """The completions of B ranked groups (sequences, ranks, margin) in one right-padded tensor.

    Rows are laid out by position, then group: every group's completion 0, then every group's
    completion 1, ... (for pairs: rows [0, B) chosen, [B, 2B) rejected, as `collate_pairs`). Row n's
    score belongs in slot `slots[n]` = g * K + j of the (B, K) reward grid, K the largest group;
    `better` and `worse` are the slots of every pair ranked apart (`ranking_to_pairs` of each group).
    """
    k = max(len(seqs) for seqs, _, _ in batch)
    order = [(g, j) for j in range(k) for g, (seqs, _, _) in enumerate(batch) if j < len(seqs)]
    ids, mask = pad_right([batch[g][0][j] for g, j in order], pad_id)
    ranks = torch.zeros((len(batch), k), dtype=torch.long)
    group_mask = torch.zeros((len(batch), k), dtype=torch.bool)
    better, worse = [], []
    for g, (seqs, group_ranks, _) in enumerate(batch):
        ranks[g, : len(seqs)] = torch.tensor(group_ranks, dtype=torch.long)
        group_mask[g, : len(seqs)] = True
        for b, w in ranking_to_pairs(list(group_ranks)):
            better.append(g * k + b)
            worse.append(g * k + w)
    return {
        "input_ids": ids,  # (N, L), N = sum_g K_g
        "attention_mask": mask,  # (N, L)
        "slots": torch.tensor([g * k + j for g, j in order], dtype=torch.long),  # (N,)
        "ranks": ranks,  # (B, K)
        "mask": group_mask,  # (B, K) True on real completions
        "better": torch.tensor(better, dtype=torch.long),  # (P,) slot of each pair's better completion
        "worse": torch.tensor(worse, dtype=torch.long),  # (P,)
        "margins": torch.tensor([m for _, _, m in batch], dtype=torch.float32),  # (B,)
    }
