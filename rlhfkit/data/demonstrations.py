"""Demonstrations for supervised fine-tuning: rows checked, rendered, tokenised, masked and packed.

Accepted row formats (one row each, in any file `read_rows` reads):

- prompt/completion: {"prompt": ..., "completion": ...} ("response" is accepted for "completion");
  each a string, or chat messages (rendered as `rlhfkit.data.preferences.render` renders them for
  the reward stage). The prompt may be empty, the completion may not.
- chat:  {"messages": [{"role": ..., "content": ...}, ...]}: every assistant turn is a completion
  (all of them in a multi-turn conversation); system, user and tool turns are context.
- text:  {"text": ...}: the whole text is the completion (plain language modelling).

Chat messages are rendered with the tokenizer's chat template when it has one, else with the
plain fallback of preferences.py (`"{role}: {content}\\n"` per message, `"assistant: "` before a
reply). A rendered row is a list of text segments, each trained on (a completion) or not.

Targets. A row becomes token ids and one flag per token: True at token t when it is in the loss,
predicted from the tokens before it in the same example. With loss_on="completion" the targets
are the completion tokens, with "all" every token; the first token of an example is never one
(nothing before it predicts it). The completion ends with a stop token (EOS, or the chat
template's end-of-turn token), a target too, so the model learns to stop: the last assistant turn
of a templated conversation loses the template's closing text and gets exactly one stop token
appended by the rule the reward stage and the rollouts use (`rlhfkit.data.tokenize`), which is
where sampling stops in the RL stages; earlier turns keep the template's end-of-turn token as
their last target, and the whitespace a template writes after it goes with the next context.

Packing (`pack`) puts whole examples into rows of at most max_length tokens (best-fit
decreasing) with position ids that restart at 0 for every example. Given position ids and no
attention mask, transformers builds a block-diagonal causal mask from the restarts (its packed-
sequence detection), so no token attends across an example's boundary and every target keeps
exactly the context it has unpacked.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.io import Source, read_rows, row_numbers, source_name
from rlhfkit.data.preferences import _end_at_last_turn, render, render_plain
from rlhfkit.data.tokenize import _with_eos, pad_right
from rlhfkit.errors import DataError, first_line

Messages = list[dict[str, str]]
Text = str | Messages

COMPLETION_COLUMNS = ("completion", "response")
TRUNCATION_MODES = ("truncate_left", "truncate_right", "drop")
LOSS_ON = ("completion", "all")
FORMATS = "prompt and completion (or response), messages, or text"


@dataclass(frozen=True)
class DemoRow:
    """One checked row: a prompt and a completion, a conversation, or a text (exactly one of the three)."""

    row: int  # 1-based row number in the source, for messages
    prompt: Text | None = None
    completion: Text | None = None
    messages: Messages | None = None
    text: str | None = None


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered row: its text, whether its tokens are completion tokens, and whether its ids
    end with EOS (appended when the text does not end with it)."""

    text: str
    trained: bool
    eos: bool = False


@dataclass(frozen=True)
class Demonstration:
    """A rendered row: its segments in order. `templated`: rendered by a chat template, so the text already
    holds the special tokens (encoded without adding any)."""

    segments: tuple[Segment, ...]
    templated: bool
    row: int


@dataclass
class TokenizedDemos:
    """Token ids and target flags of every kept example, with what max_length did to the rows."""

    ids: list[list[int]]
    targets: list[list[bool]]  # True on the tokens in the loss; never on an example's first token
    rows: list[int]  # source row of each example
    truncated: int = 0  # examples that lost tokens to max_length
    dropped: int = 0  # examples left out: too long (truncation="drop") or no target left after truncation
    dropped_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TokenRows:
    """What the model reads: one entry per row (an example, or several packed ones)."""

    ids: list[list[int]]
    targets: list[list[bool]]
    positions: list[list[int]]  # position ids, restarting at 0 for every example of a packed row
    examples: list[list[int]]  # indices (into TokenizedDemos) of the examples each row holds
    packed: bool

    def __len__(self) -> int:
        return len(self.ids)

    def target_count(self, indices: list[int]) -> int:
        """Targets in these rows: the denominator of the token-mean loss over them."""
        return sum(sum(self.targets[i]) for i in indices)


# ---------------------------------------------------------------------------------------------
# Parsing and validation (no tokenizer needed)
# ---------------------------------------------------------------------------------------------
def _check_messages(value: Any, where: str) -> Messages:
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: expected a list of chat messages {{\"role\": ..., \"content\": ...}}, got {got}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} needs string 'role' and 'content' fields, got {m!r:.80}")
        if not m["content"].strip():
            raise DataError(f"{where}: message {i} ({m['role']}) has empty content; fill it in or remove the message")
    return value


def _check_text(value: Any, where: str, allow_empty: bool = False) -> Text:
    if value is None:
        raise DataError(f"{where}: empty (null); give the text or remove the row")
    if isinstance(value, list):
        return _check_messages(value, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: expected text or a list of chat messages, got {type(value).__name__} "
                        f"({value!r:.40}); write it as a string")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: empty text; the loss is on it, so fill it in or remove the row")
    return value


def parse_row(row: dict[str, Any], name: str, row_no: int) -> DemoRow:
    """Validate one row of any of the three formats; errors name the file, the row and the field."""
    loc = f"{name}, row {row_no}"
    if "messages" in row:
        where = f"{loc}, field 'messages'"
        messages = _check_messages(row["messages"], where)
        roles = [m["role"] for m in messages]
        if "assistant" not in roles:
            raise DataError(f"{where}: no message has role 'assistant', so there is no completion to learn; add "
                            "the assistant's reply")
        if roles[0] == "assistant":
            raise DataError(f"{where}: message 0 is an assistant turn with nothing before it to answer; start with "
                            "a user (or system) message")
        return DemoRow(row_no, messages=messages)
    completion_cols = [c for c in COMPLETION_COLUMNS if c in row]
    found = ", ".join(sorted(map(str, row))) or "none"
    if "prompt" in row or completion_cols:
        if "prompt" not in row:
            raise DataError(f"{loc}: missing column 'prompt' (found: {found}); add it (it may be empty) or use "
                            "'text' for plain text")
        if not completion_cols:
            raise DataError(f"{loc}: missing column 'completion' (or 'response') beside 'prompt' (found: {found})")
        col = completion_cols[0]
        prompt = _check_text(row["prompt"], f"{loc}, field 'prompt'", allow_empty=True)
        completion = _check_text(row[col], f"{loc}, field '{col}'")
        return DemoRow(row_no, prompt=prompt, completion=completion)
    if "text" in row:
        text = row["text"]
        if not isinstance(text, str):
            raise DataError(f"{loc}, field 'text': expected a string, got {type(text).__name__} ({text!r:.40})")
        if not text.strip():
            raise DataError(f"{loc}, field 'text': empty text; fill it in or remove the row")
        return DemoRow(row_no, text=text)
    raise DataError(f"{loc}: missing column(s): expected {FORMATS} (found: {found})")


def load_rows(source: Source) -> list[DemoRow]:
    """Read and validate every row of a demonstration source (errors name file and row)."""
    name = source_name(source)
    rows = read_rows(source)
    if not rows:
        raise DataError(f"{name}: no rows")
    return [parse_row(row, name, i) for i, row in zip(row_numbers(rows), rows)]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def render_row(row: DemoRow, tokenizer: Any, name: str = "") -> Demonstration:
    """Segments of one row: prompt/completion as the reward stage renders them, conversations turn by turn."""
    loc = f"{name}, row {row.row}" if name else f"row {row.row}"
    if row.text is not None:
        return Demonstration((Segment(row.text, True, eos=True),), False, row.row)
    try:
        if row.messages is not None:
            return _render_conversation(row.messages, tokenizer, loc, row.row)
        prompt, completion, templated = render(row.prompt, row.completion, tokenizer)
    except DataError:
        raise
    except Exception as e:  # jinja errors of a template that refuses the conversation (e.g. roles must alternate)
        raise DataError(f"{loc}: the tokenizer's chat template cannot render this row ({first_line(e)}); fix the "
                        "messages' roles or order") from None
    return Demonstration((Segment(prompt, False), Segment(completion, True, eos=True)), templated, row.row)


def _render_conversation(messages: Messages, tokenizer: Any, loc: str, row_no: int) -> Demonstration:
    """Every assistant turn a completion segment; what comes between them (and before the first) context."""
    trained = [m["role"] == "assistant" for m in messages]
    last = max(i for i, t in enumerate(trained) if t)  # turns after the last reply teach nothing
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    segments: list[Segment] = []
    if not template:
        context = ""
        for k in range(last + 1):
            if trained[k]:
                segments += [Segment(context + "assistant: ", False), Segment(messages[k]["content"], True, eos=True)]
                context = "\n"  # render_plain's newline after the reply starts the next context
            else:
                context += render_plain([messages[k]])
        return Demonstration(tuple(segments), False, row_no)

    def apply(msgs: Messages, prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    done = ""  # the rendered text the segments so far hold
    for k in range(last + 1):
        if not trained[k]:
            continue
        before, after = apply(messages[:k], prompt=True), apply(messages[: k + 1])
        if not after.startswith(before):  # as preferences.render: the prompt without a generation prompt
            before = apply(messages[:k])
        if not (after.startswith(before) and before.startswith(done)):
            raise DataError(f"{loc}, field 'messages': the tokenizer's chat template rewrites earlier turns of this "
                            f"conversation (at message {k}), so its assistant turns cannot be cut out of it; give "
                            "each turn its own row (prompt = the messages before it, completion = the reply)")
        reply = after[len(before):]
        if k == last:  # ends at its EOS, where sampling stops: reply<EOS>, as the reward stage trains it
            segments += [Segment(before[len(done):], False), Segment(_end_at_last_turn(reply, tokenizer), True,
                                                                        eos=True)]
        else:  # keeps the template's end-of-turn token; the whitespace after it opens the next context
            body = reply.rstrip()
            segments += [Segment(before[len(done):], False), Segment(body, True)]
            done = before + body
    return Demonstration(tuple(segments), True, row_no)


def load_demonstrations(source: Source, tokenizer: Any) -> list[Demonstration]:
    """Read, validate and render every row of a source (all errors before any model is loaded)."""
    name = source_name(source)
    return [render_row(row, tokenizer, name) for row in load_rows(source)]


# ---------------------------------------------------------------------------------------------
# Tokenising, truncating and packing
# ---------------------------------------------------------------------------------------------
def encode_demonstration(demo: Demonstration, tokenizer: Any, loss_on: str = "completion",
                         name: str = "") -> tuple[list[int], list[bool]]:
    """(ids, targets) of one demonstration: segments encoded one by one (as the RL stages encode a prompt and
    then sample its response), the tokenizer's own special tokens (e.g. BOS) only before an untemplated row."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    ids: list[int] = []
    targets: list[bool] = []
    for j, seg in enumerate(demo.segments):
        special = j == 0 and not demo.templated
        piece = tokenizer(seg.text, add_special_tokens=special)["input_ids"] if (seg.text or special) else []
        if seg.trained and not piece:
            where = f"{name}, row {demo.row}" if name else f"row {demo.row}"
            raise DataError(f"{where}: the completion encodes to no tokens; check the tokenizer "
                            f"({type(tokenizer).__name__} with {len(tokenizer)} tokens)")
        if seg.eos:  # one stop token at the end, by the rule every stage uses for a response
            piece = _with_eos(tokenizer, piece)
        ids += piece
        targets += [seg.trained or loss_on == "all"] * len(piece)
    targets[0] = False  # nothing before the first token to predict it from
    return ids, targets


def tokenize_demonstrations(demos: list[Demonstration], tokenizer: Any, max_length: int,
                            truncation: str = "truncate_left", loss_on: str = "completion",
                            name: str = "") -> TokenizedDemos:
    """Encode every demonstration; longer ones lose tokens on the left (the prompt's start: the completion's
    end and its EOS stay) or on the right, or are dropped. An example left without a target is dropped too.
    Both are counted (`truncated`, `dropped`) and the dropped ones named by row."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
    out = TokenizedDemos([], [], [])
    for demo in demos:
        ids, targets = encode_demonstration(demo, tokenizer, loss_on, name)
        if len(ids) > max_length:
            if truncation == "drop":
                out.dropped += 1
                out.dropped_rows.append(demo.row)
                continue
            keep = slice(-max_length, None) if truncation == "truncate_left" else slice(0, max_length)
            ids, targets = ids[keep], targets[keep]
            targets[0] = False
            out.truncated += 1
        if not any(targets):
            out.dropped += 1
            out.dropped_rows.append(demo.row)
            continue
        out.ids.append(ids)
        out.targets.append(targets)
        out.rows.append(demo.row)
    return out


def unpacked(data: TokenizedDemos) -> TokenRows:
    """One row per example."""
    return TokenRows(data.ids, data.targets, [list(range(len(ids))) for ids in data.ids],
                     [[i] for i in range(len(data))], packed=False)


def pack(data: TokenizedDemos, max_length: int) -> TokenRows:
    """Whole examples in rows of at most max_length tokens, by best-fit decreasing: longest first, each into
    the fullest row that still has room (a new row when none has). Examples are never split, so every target
    keeps its context; position ids restart at 0 for each example."""
    order = sorted(range(len(data)), key=lambda i: (-len(data.ids[i]), i))
    members: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row index) of the rows with room, sorted
    for i in order:
        n = len(data.ids[i])
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length={max_length}; tokenise with it first")
        k = bisect.bisect_left(room, (n, -1))  # the first row whose room is >= n: the fullest that fits
        if k == len(room):
            members.append([i])
            left, r = max_length - n, len(members) - 1
        else:
            left, r = room.pop(k)
            members[r].append(i)
            left -= n
        if left > 0:
            bisect.insort(room, (left, r))
    ids, targets, positions = [], [], []
    for row in members:
        ids.append([t for i in row for t in data.ids[i]])
        targets.append([m for i in row for m in data.targets[i]])
        positions.append([p for i in row for p in range(len(data.ids[i]))])
    return TokenRows(ids, targets, positions, members, packed=True)


def collate(rows: TokenRows, indices: list[int], pad_id: int, real: bool = True) -> dict[str, Any]:
    """A right-padded batch of rows: input_ids, targets (bool) and either an attention mask (unpacked rows) or
    position ids (packed rows; the padding at a row's end is a block of its own, positions 0, 1, ...).
    `real=False` (a process's stand-in row, see `process_share`) gives no targets."""
    ids, attention = pad_right([rows.ids[i] for i in indices], pad_id)  # (B, L), (B, L)
    targets = torch.zeros(ids.shape, dtype=torch.bool)  # (B, L)
    for b, i in enumerate(indices):
        if real:
            targets[b, : len(rows.targets[i])] = torch.tensor(rows.targets[i], dtype=torch.bool)
    batch: dict[str, Any] = {"input_ids": ids, "targets": targets, "attention_mask": None, "position_ids": None}
    if rows.packed:
        length = ids.shape[1]
        batch["position_ids"] = torch.tensor([rows.positions[i] + list(range(length - len(rows.positions[i])))
                                              for i in indices], dtype=torch.long)  # (B, L)
    else:
        batch["attention_mask"] = attention
    return batch
