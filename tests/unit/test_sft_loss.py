"""SFT: the masked token-mean cross-entropy (algos.sft) and the targets, truncation and packing of
demonstrations (data.demonstrations), on hand-built examples."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from rlhfkit.algos.sft import sft_loss
from rlhfkit.data.demonstrations import (
    Demonstration,
    DemoRow,
    Segment,
    TokenizedDemos,
    collate,
    encode_demonstration,
    pack,
    parse_row,
    render_row,
    tokenize_demonstrations,
    unpacked,
)
from rlhfkit.errors import DataError

F64 = torch.float64
INF = math.inf


class WordTokenizer:
    """Whitespace words with fixed ids, so every expected id list can be written down by hand:
    <pad> = 0, <eos> = 1, <bos> = 2 (prepended with add_special_tokens when `bos`), words from 3 on."""

    chat_template = None
    eos_token, eos_token_id, pad_token_id, bos_token_id = "<eos>", 1, 0, 2

    def __init__(self, bos: bool = False) -> None:
        self.bos = bos
        self.vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": ([2] if self.bos and add_special_tokens else []) + self.ids(text)}

    def __len__(self) -> int:
        return len(self.vocab)


def encode(row: dict, tok: WordTokenizer, loss_on: str = "completion") -> tuple[list[int], list[bool]]:
    return encode_demonstration(render_row(parse_row(row, "d.jsonl", 1), tok), tok, loss_on)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------
def test_sft_loss_hand_computed_in_float64() -> None:
    """Three target tokens among six positions; prompt and padding positions hold garbage (inf logits,
    out-of-vocabulary pad ids) that must not change the result:

      row 0, t 0: z = (0, 0, 0),  y = 1  ->  -log(1/3)                    = log 3
      row 0, t 1: z = (1, 2, 3),  y = 2  ->  -log(e^3 / (e + e^2 + e^3))  = log(1 + e^-1 + e^-2)
      row 1, t 1: z = (log 1, log 2, log 5), y = 2  ->  -log(5/8)          = log(8/5)
      L = (log 3 + log(1 + e^-1 + e^-2) + log(8/5)) / 3
    """
    logits = torch.tensor([[[0, 0, 0], [1, 2, 3], [INF, 0, 0]],
                           [[INF, -INF, 0], [0, math.log(2), math.log(5)], [7, 7, 7]]], dtype=F64)
    targets = torch.tensor([[1, 2, 99], [-100, 2, 0]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    want = (math.log(3) + math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(8 / 5)) / 3
    loss = sft_loss(logits, targets, mask)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(want, abs=1e-12)
    assert math.exp(loss.item()) == pytest.approx(math.exp(want), rel=1e-12)  # the perplexity


def test_sft_loss_equals_a_naive_loop_and_its_parts_add_up() -> None:
    """Random logits and masks: the loss is the mean of -log_softmax over the True positions (a Python loop),
    and the rows' losses, each divided by the whole batch's target count, add up to the batch loss."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 11, generator=gen, dtype=F64) * 3
    targets = torch.randint(0, 11, (5, 7), generator=gen)
    mask = torch.rand(5, 7, generator=gen) < 0.6
    naive = [-(logits[i, t].exp() / logits[i, t].exp().sum())[targets[i, t]].log().item()
             for i in range(5) for t in range(7) if mask[i, t]]
    whole = sft_loss(logits, targets, mask)
    assert whole.item() == pytest.approx(sum(naive) / len(naive), abs=1e-12)
    count = mask.sum()
    parts = sum(sft_loss(logits[i:i + 1], targets[i:i + 1], mask[i:i + 1], denominator=count) for i in range(5))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-12)


def test_sft_loss_gradient_is_zero_off_the_mask() -> None:
    logits = torch.randn(2, 4, 5, dtype=F64, requires_grad=True)
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    sft_loss(logits, torch.zeros(2, 4, dtype=torch.long), mask).backward()
    assert torch.all(logits.grad[~mask] == 0) and torch.all(logits.grad[mask].abs().sum(-1) > 0)


def test_sft_loss_refuses_wrong_input() -> None:
    logits, targets = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="torch.bool"):
        sft_loss(logits, targets, torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must have the shape"):
        sft_loss(logits, targets, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets must have shape"):
        sft_loss(logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\)"):
        sft_loss(torch.zeros(2, 3), targets, torch.ones(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Targets of each row format
# ---------------------------------------------------------------------------------------------
def test_prompt_completion_targets_are_the_completion_and_its_eos() -> None:
    tok = WordTokenizer(bos=True)
    ids, targets = encode({"prompt": "tell me a joke", "completion": " no thanks"}, tok)
    assert ids == [2] + tok.ids("tell me a joke no thanks") + [1]
    assert targets == [False] * 5 + [True, True, True]
    ids_all, targets_all = encode({"prompt": "tell me a joke", "response": " no thanks"}, tok, loss_on="all")
    assert ids_all == ids and targets_all == [False] + [True] * 7  # every token but the first


def test_conversation_targets_are_every_assistant_turn() -> None:
    """Plain fallback (no chat template): system and user turns are context, each assistant turn and its EOS
    targets; the user turn after the last reply teaches nothing and is left out."""
    tok = WordTokenizer()
    row = {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "more"},
                        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "bye"}]}
    ids, targets = encode(row, tok)
    words = "system: be kind user: hi assistant: hello there <eos> user: more assistant: ok <eos>".split()
    assert ids == [tok.vocab[w] for w in words]
    assert [w for w, t in zip(words, targets) if t] == ["hello", "there", "<eos>", "ok", "<eos>"]


def test_text_rows_train_on_every_token_after_the_first() -> None:
    tok = WordTokenizer()
    ids, targets = encode({"text": "once upon a time"}, tok)
    assert ids == tok.ids("once upon a time") + [1] and targets == [False, True, True, True, True]


def test_templated_conversation_masks_each_turn_up_to_its_end_of_turn_token() -> None:
    """A chat template whose end of turn is the EOS: the middle reply's targets end at its <eos> (the newline
    after it is context), the last reply ends with exactly one <eos> and nothing after it."""
    from rlhfkit.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer(["user assistant system hello there how are you fine thanks bye"] * 20, vocab_size=120)
    tok.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
                         "{% if add_generation_prompt %}<bos>assistant\n{% endif %}")
    row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "how are you"},
                        {"role": "user", "content": "fine"}, {"role": "assistant", "content": "thanks bye"}]}
    demo = render_row(parse_row(row, "d.jsonl", 1), tok)
    assert demo.templated
    ids, targets = encode_demonstration(demo, tok)
    spans, current = [], []
    for i, t in zip(ids, targets):
        if t:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [tok.decode(s) for s in spans] == ["how are you<eos>", "thanks bye<eos>"]
    assert ids[-1] == tok.eos_token_id and targets[-1]
    assert tok.decode(ids) == ("<bos>user\nhello<eos>\n<bos>assistant\nhow are you<eos>\n<bos>user\nfine<eos>\n"
                               "<bos>assistant\nthanks bye<eos>")


def test_a_template_that_rewrites_earlier_turns_is_refused_in_one_line() -> None:
    tok = WordTokenizer()
    tok.chat_template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    tok.apply_chat_template = lambda msgs, tokenize, add_generation_prompt: "".join(
        ("LAST " if i == len(msgs) - 1 else "") + m["content"] + "\n" for i, m in enumerate(msgs))
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    with pytest.raises(DataError, match=r"d.jsonl, row 1, field 'messages': the tokenizer's chat template rewrites"):
        render_row(parse_row(row, "d.jsonl", 1), tok, "d.jsonl")


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "x", "answer": "y"}, r"row 3: missing column\(s\): expected prompt and completion .*found: answer"),
    ({"prompt": "x"}, r"row 3: missing column 'completion' \(or 'response'\)"),
    ({"completion": "y"}, r"row 3: missing column 'prompt'"),
    ({"prompt": "x", "completion": "   "}, r"row 3, field 'completion': empty text"),
    ({"prompt": "x", "completion": None}, r"row 3, field 'completion': empty \(null\)"),
    ({"prompt": "x", "completion": 7}, r"row 3, field 'completion': expected text or a list of chat messages, got int"),
    ({"prompt": ["x"], "completion": "y"}, r"row 3, field 'prompt': message 0 needs string 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"row 3, field 'messages': no message has role 'assistant'"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, r"row 3, field 'messages': message 0 is an assistant"),
    ({"messages": "hi"}, r"row 3, field 'messages': expected a list of chat messages"),
    ({"text": ["a"]}, r"row 3, field 'text': expected a string, got list"),
])
def test_bad_rows_name_file_row_and_field(row: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        parse_row(row, "d.jsonl", 3)
    assert str(err.value).startswith("d.jsonl, row 3") and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Truncation, collation, packing
# ---------------------------------------------------------------------------------------------
def demo(prompt: str, completion: str, row: int = 1) -> Demonstration:
    return Demonstration((Segment(prompt, False), Segment(completion, True, eos=True)), False, row)


def test_truncation_keeps_the_end_or_the_start_or_drops() -> None:
    tok = WordTokenizer()
    demos = [demo("p1 p2 p3 p4", "c1 c2", row=1), demo("q1", "d1", row=2)]  # 7 and 3 tokens
    left = tokenize_demonstrations(demos, tok, max_length=5, truncation="truncate_left")
    assert left.ids[0] == tok.ids("p3 p4 c1 c2") + [1] and left.targets[0] == [False, False, True, True, True]
    assert (left.truncated, left.dropped, len(left)) == (1, 0, 2)
    right = tokenize_demonstrations(demos, tok, max_length=5, truncation="truncate_right")
    assert right.ids[0] == tok.ids("p1 p2 p3 p4 c1") and right.targets[0] == [False] * 4 + [True]
    drop = tokenize_demonstrations(demos, tok, max_length=5, truncation="drop")
    assert (len(drop), drop.dropped, drop.dropped_rows, drop.rows) == (1, 1, [1], [2])
    # cut on the right before the completion: no target left, so the example is left out too
    none_left = tokenize_demonstrations(demos, tok, max_length=3, truncation="truncate_right")
    assert (len(none_left), none_left.dropped, none_left.dropped_rows) == (1, 1, [1])


def test_collate_puts_no_target_on_padding() -> None:
    data = TokenizedDemos([[5, 6, 7, 1], [8, 1]], [[False, True, True, True], [False, True]], [1, 2])
    batch = collate(unpacked(data), [0, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["targets"].tolist() == [[False, True, True, True], [False, True, False, False]]
    assert batch["position_ids"] is None
    stand_in = collate(unpacked(data), [0], pad_id=0, real=False)
    assert not stand_in["targets"].any()


def random_examples(n: int, max_length: int, seed: int) -> TokenizedDemos:
    rng = random.Random(seed)
    ids, targets = [], []
    for _ in range(n):
        length = rng.randint(2, max_length)
        prompt = rng.randint(1, length - 1)
        ids.append([rng.randint(3, 50) for _ in range(length)])
        targets.append([False] * prompt + [True] * (length - prompt))
    return TokenizedDemos(ids, targets, list(range(1, n + 1)))


def test_packing_keeps_every_example_and_its_targets_whole() -> None:
    """Cut each packed row at its position restarts: the pieces are the examples, each exactly once, with their
    own target flags, so the multiset of (context, target token) pairs is the unpacked one."""
    data = random_examples(200, max_length=24, seed=0)
    packed = pack(data, max_length=24)
    assert packed.packed and len(packed) < len(data)
    assert all(len(ids) <= 24 for ids in packed.ids)
    pieces = []
    for ids, targets, positions in zip(packed.ids, packed.targets, packed.positions):
        starts = [t for t, p in enumerate(positions) if p == 0] + [len(ids)]
        assert all(positions[a:b] == list(range(b - a)) for a, b in zip(starts, starts[1:]))
        pieces += [(tuple(ids[a:b]), tuple(targets[a:b])) for a, b in zip(starts, starts[1:])]
    assert Counter(pieces) == Counter(zip(map(tuple, data.ids), map(tuple, data.targets)))

    def contexts(rows_ids, rows_targets, rows_positions):
        out = Counter()
        for ids, targets, positions in zip(rows_ids, rows_targets, rows_positions):
            for t, is_target in enumerate(targets):
                if is_target:
                    out[(tuple(ids[t - positions[t]:t]), ids[t])] += 1
        return out

    flat = unpacked(data)
    assert contexts(packed.ids, packed.targets, packed.positions) == contexts(flat.ids, flat.targets, flat.positions)
    assert packed.target_count(list(range(len(packed)))) == flat.target_count(list(range(len(flat))))


def test_packing_is_best_fit_decreasing() -> None:
    """Lengths 6, 5, 4, 3, 2 in rows of 10: 6 opens a row, 5 a second, 4 fills the first (room 0 is the
    fullest fit), 3 and 2 go to the second: two full rows."""
    data = TokenizedDemos([[3] * n for n in (2, 6, 3, 5, 4)], [[False] + [True] * (n - 1) for n in (2, 6, 3, 5, 4)],
                          [1, 2, 3, 4, 5])
    packed = pack(data, max_length=10)
    assert packed.examples == [[1, 4], [3, 2, 0]]
    batch = collate(packed, [0, 1], pad_id=0)
    assert batch["attention_mask"] is None
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    data = TokenizedDemos([[3] * 4, [3] * 3], [[False, True, True, True], [False, True, True]], [1, 2])
    padded = collate(pack(data, max_length=5), [0, 1], pad_id=0)  # one example per row, padding its own block
    assert padded["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert padded["targets"].tolist() == [[False, True, True, True], [False, True, True, False]]


def test_parsed_rows_keep_their_fields() -> None:
    assert parse_row({"prompt": "", "response": "y"}, "d.jsonl", 2) == DemoRow(2, prompt="", completion="y")
