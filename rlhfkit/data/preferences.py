"""Preference data: pairs and ranked lists, as plain text or chat messages, checked row by row.

Accepted row formats (the column names most datasets use):

- pairs:   {"prompt": ..., "chosen": ..., "rejected": ...}  (optional "margin": float)
- ranked:  {"prompt": ..., "completions": [best, ..., worst]}  or with "ranks": [0, 1, 1, 2]
           (0 = best, equal ranks = a tie, which gives no pair)

Either may name the criterion it was ranked by, `"criterion": "helpful"` (a non-empty string; rows
without it belong to no named criterion): `rlhfkit reward --criterion` trains one head per criterion.

Text is a string, or a list of chat messages `{"role": ..., "content": ...}`. Chat messages are
rendered with the tokenizer's chat template when it has one; otherwise with the plain fallback
`"{role}: {content}\\n"` per message and `"assistant: "` as the generation prompt. A pair without
a "prompt" column whose chosen and rejected are conversations takes their common leading
messages as the prompt.

A ranked list of K completions becomes all K-choose-2 pairs (InstructGPT), each weighted
1 / (number of pairs) so that every prompt counts once in the loss (`expand_pairs`), or stays one
group of K ranked responses for the listwise loss (`expand_groups`; a pair is a group of two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhfkit.algos.reward import ranking_to_pairs
from rlhfkit.data.io import Source, read_rows, row_numbers, source_name
from rlhfkit.data.stop_tokens import end_of_turn_token
from rlhfkit.errors import DataError

Messages = list[dict[str, str]]
Text = str | Messages

PAIR_COLUMNS = ("chosen", "rejected")
RANKED_COLUMNS = ("prompt", "completions")


@dataclass(frozen=True)
class PreferenceExample:
    """One row: a prompt and K >= 2 completions with a rank each (0 = best)."""

    prompt: Text
    completions: tuple[Text, ...]
    ranks: tuple[int, ...]
    margin: float | None
    row: int  # 1-based row number in the source, for messages
    criterion: str | None = None  # what the row was ranked by ("helpful", ...); None: no named criterion


@dataclass(frozen=True)
class PreferencePair:
    """A rendered comparison: the prompt and two responses as text, chosen better than rejected."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    margin: float = 0.0
    templated: bool = False  # prompt came from a chat template (already holds special tokens)
    criterion: str | None = None  # the row's criterion (None: no named criterion)


@dataclass(frozen=True)
class PreferenceGroup:
    """A rendered ranked list: the prompt and K >= 2 responses as text, with their ranks (0 = best)."""

    prompt: str
    completions: tuple[str, ...]
    ranks: tuple[int, ...]  # equal ranks are ties
    margin: float = 0.0  # a pair row's margin (read by the pairwise loss only)
    templated: bool = False  # prompt came from a chat template (already holds special tokens)
    criterion: str | None = None  # the row's criterion (None: no named criterion)


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value) and len(value) > 0


def check_text(value: Any, where: str, allow_empty: bool = False) -> Text:
    """`value` if it is text or a list of chat messages ({"role", "content"} strings), else a DataError
    that names `where`."""
    if _is_messages(value):
        for i, m in enumerate(value):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} needs string 'role' and 'content' fields")
            if not m["content"].strip():
                raise DataError(f"{where}: message {i} has empty content")
        return value
    if not isinstance(value, str):
        raise DataError(f"{where}: expected text or a list of chat messages, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: empty text")
    return value


def parse_example(row: dict[str, Any], name: str, row_no: int) -> PreferenceExample:
    """Validate one row and bring it to the ranked form (a pair is a ranked list of two)."""
    loc = f"{name}, row {row_no}"
    if "completions" in row:
        missing = [c for c in RANKED_COLUMNS if c not in row]
        if missing:
            raise DataError(f"{loc}: missing column(s) {', '.join(missing)} for a ranked list")
        prompt = check_text(row["prompt"], f"{loc}, field 'prompt'")
        comps = row["completions"]
        if not isinstance(comps, list) or len(comps) < 2:
            n = len(comps) if isinstance(comps, list) else "no"
            raise DataError(f"{loc}, field 'completions': a ranked list needs at least 2 completions, got {n}")
        completions = tuple(check_text(c, f"{loc}, field 'completions[{i}]'") for i, c in enumerate(comps))
        ranks = row.get("ranks")
        if ranks is None:
            ranks = list(range(len(completions)))
        elif (
            not isinstance(ranks, list)
            or len(ranks) != len(completions)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks)
        ):
            raise DataError(f"{loc}, field 'ranks': expected {len(completions)} non-negative integers "
                            "(0 = best), one per completion")
        if len(set(ranks)) < 2:
            raise DataError(f"{loc}, field 'ranks': all completions are tied, so the row holds no comparison")
        margin = None
    else:
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            found = ", ".join(sorted(row)) or "none"
            raise DataError(f"{loc}: missing column(s) {', '.join(missing)} (found: {found}); expected "
                            "prompt/chosen/rejected or prompt/completions")
        chosen = check_text(row["chosen"], f"{loc}, field 'chosen'")
        rejected = check_text(row["rejected"], f"{loc}, field 'rejected'")
        if "prompt" in row and row["prompt"] is not None:
            prompt = check_text(row["prompt"], f"{loc}, field 'prompt'", allow_empty=True)
        elif _is_messages(chosen) and _is_messages(rejected):
            prompt, chosen, rejected = _split_common_prefix(chosen, rejected, loc)
        else:
            prompt = ""
        completions, ranks = (chosen, rejected), [0, 1]
        margin = row.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise DataError(f"{loc}, field 'margin': expected a number, got {margin!r}")
    for i in range(len(completions)):
        for j in range(i + 1, len(completions)):
            if ranks[i] != ranks[j] and completions[i] == completions[j]:
                what = "chosen and rejected are" if "completions" not in row else f"completions {i} and {j} are"
                raise DataError(f"{loc}: {what} identical but ranked differently; remove the row or fix it")
    return PreferenceExample(prompt, completions, tuple(ranks), None if margin is None else float(margin), row_no,
                             _check_criterion(row.get("criterion"), loc))


def _check_criterion(value: Any, loc: str) -> str | None:
    """The row's criterion name: absent (or null) is None, else a non-empty string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{loc}, field 'criterion': expected the name of a criterion (non-empty text such as "
                        f"\"helpful\"), got {value!r}; fix it or drop the field")
    return value.strip()


def _split_common_prefix(chosen: Messages, rejected: Messages, loc: str) -> tuple[Messages, Messages, Messages]:
    """Conversations without a prompt column: shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0 or n == len(chosen) or n == len(rejected):
        raise DataError(f"{loc}: chosen and rejected conversations must share a prompt and then differ")
    return chosen[:n], chosen[n:], rejected[n:]


def load_examples(source: Source) -> list[PreferenceExample]:
    """Read and validate every row of a preference source (errors name file and row)."""
    name = source_name(source)
    rows = read_rows(source)
    if not rows:
        raise DataError(f"{name}: no rows")
    return [parse_example(row, name, i) for i, row in zip(row_numbers(rows), rows)]


# ---------------------------------------------------------------------------------------------
# Rendering chat messages and expanding ranked lists
# ---------------------------------------------------------------------------------------------
def render_plain(messages: Messages) -> str:
    """The fallback chat format for tokenizers without a chat template."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _end_at_last_turn(response: str, tokenizer: Any) -> str:
    """The templated response without its closing end-of-turn token (and what a template puts after it).

    Sampling stops at EOS or at the template's end-of-turn token, and the tokenizer step appends
    exactly one of them: so a trained reward model sees `reply<end>` both in training and when it
    scores rollouts, not `reply<end>\n<end>`.
    """
    stripped = response.rstrip()
    for end in (getattr(tokenizer, "eos_token", None), end_of_turn_token(tokenizer)):
        if end and stripped.endswith(end):
            return stripped[: -len(end)]
    return response


def render(prompt: Text, completion: Text, tokenizer: Any = None) -> tuple[str, str, bool]:
    """(prompt_text, response_text, templated) for one prompt/completion."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion, False
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    response_msgs = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        p = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt_msgs + response_msgs, tokenize=False)
        if not full.startswith(p):
            # Templates that rewrite earlier turns: fall back to the prompt without a generation prompt.
            p = tokenizer.apply_chat_template(prompt_msgs, tokenize=False)
        return p, _end_at_last_turn(full[len(p):], tokenizer), True
    p = render_plain(prompt_msgs) + "assistant: "
    response = "".join(
        m["content"] if m["role"] == "assistant" else f"\n{m['role']}: {m['content']}\n" for m in response_msgs
    )
    return p, response, False


def expand_pairs(examples: list[PreferenceExample], tokenizer: Any = None) -> list[PreferencePair]:
    """All comparisons of every example; each example's pairs share weight 1 in total."""
    pairs = []
    for ex in examples:
        idx_pairs = ranking_to_pairs(list(ex.ranks))
        weight = 1.0 / len(idx_pairs)
        for better, worse in idx_pairs:
            p, c, templated = render(ex.prompt, ex.completions[better], tokenizer)
            _, r, _ = render(ex.prompt, ex.completions[worse], tokenizer)
            pairs.append(PreferencePair(p, c, r, weight, ex.margin or 0.0, templated, ex.criterion))
    return pairs


def expand_groups(examples: list[PreferenceExample], tokenizer: Any = None) -> list[PreferenceGroup]:
    """Every example as one rendered group, its completions in their row order (a pair: chosen, rejected).

    The prompt text is rendered beside the best-ranked completion, as `expand_pairs` renders it beside
    the chosen one (the two differ only for chat templates that rewrite earlier turns).
    """
    groups = []
    for ex in examples:
        best = min(range(len(ex.ranks)), key=lambda i: (ex.ranks[i], i))
        prompt, _, templated = render(ex.prompt, ex.completions[best], tokenizer)
        responses = tuple(render(ex.prompt, c, tokenizer)[1] for c in ex.completions)
        groups.append(PreferenceGroup(prompt, responses, ex.ranks, ex.margin or 0.0, templated, ex.criterion))
    return groups


def load_preferences(source: Source, tokenizer: Any = None) -> list[PreferencePair]:
    """Read, validate, render and expand a preference source into weighted pairs."""
    return expand_pairs(load_examples(source), tokenizer)
