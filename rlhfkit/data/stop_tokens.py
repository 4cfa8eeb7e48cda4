"""The tokens that end a response: EOS, and the chat template's end-of-turn token when it is another one.

Chat models often close an assistant turn with a token that is not the tokenizer's EOS (Llama 3's
`<|eot_id|>` while EOS is `<|end_of_text|>`, Gemma's `<end_of_turn>`). Sampling stops at either,
the response mask ends at the first of them, and a response that ends with neither gets exactly
one appended: the end-of-turn token when the template has one, else EOS. A reward model is then
trained on `reply<end>` and scores rollouts that end the same way.
"""

from __future__ import annotations

from typing import Any

_MARKER = "RLHFKIT_REPLY_MARKER"


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant reply (None without a template, or
    when what follows the reply is not a special token)."""
    cached = getattr(tokenizer, "_rlhfkit_end_of_turn", False)
    if cached is not False:
        return cached
    found = None
    if getattr(tokenizer, "chat_template", None):
        try:
            found = _token_after_reply(tokenizer)
        except Exception:  # a template that refuses this conversation, a tokenizer without special tokens
            found = None
    try:
        tokenizer._rlhfkit_end_of_turn = found  # computed once per tokenizer object
    except AttributeError:
        pass
    return found


def _token_after_reply(tokenizer: Any) -> str | None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARKER}], tokenize=False)
    if _MARKER not in text:
        return None
    after = text[text.rfind(_MARKER) + len(_MARKER):].lstrip(" ")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids and ids[0] in special else None


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end a response: EOS first, then the end-of-turn token when it differs (may be empty)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if eot_id not in ids:
            ids.append(eot_id)
    return ids


def response_end_id(tokenizer: Any) -> int | None:
    """The token appended to a response that ends with no stop token: end-of-turn if the template has one, else EOS."""
    eot = end_of_turn_token(tokenizer)
    return tokenizer.convert_tokens_to_ids(eot) if eot is not None else tokenizer.eos_token_id
