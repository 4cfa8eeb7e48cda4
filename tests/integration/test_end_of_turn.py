"""A chat template whose end-of-turn token is not EOS (Llama 3's <|eot_id|>, Gemma's <end_of_turn>): it ends a
response like EOS when sampling, in the masks, and in the reward model's data."""

from __future__ import annotations

import pytest
import torch
from toy_data import corpus

from rlhfkit.data.preferences import load_preferences
from rlhfkit.data.stop_tokens import end_of_turn_token, response_end_id, stop_token_ids
from rlhfkit.data.tokenize import encode_response, tokenize_pairs
from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
from rlhfkit.rollout.sampling import SamplingSettings, response_mask, sample

LLAMA3_LIKE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
               "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
SAME_AS_EOS = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizers():
    def make(template: str | None):
        tok = tiny_tokenizer(corpus(), vocab_size=200)
        tok.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|eot|>", "<|im_start|>"]})
        tok.chat_template = template
        return tok

    return {"llama3": make(LLAMA3_LIKE), "same": make(SAME_AS_EOS), "none": make(None)}


def test_the_end_of_turn_token_is_found_from_the_template(tokenizers) -> None:
    llama3, same, none = tokenizers["llama3"], tokenizers["same"], tokenizers["none"]
    eot = llama3.convert_tokens_to_ids("<|eot|>")
    assert eot != llama3.eos_token_id
    assert end_of_turn_token(llama3) == "<|eot|>"
    assert stop_token_ids(llama3) == [llama3.eos_token_id, eot] and response_end_id(llama3) == eot
    assert end_of_turn_token(same) == same.eos_token  # the template closes a turn with EOS itself
    assert stop_token_ids(same) == [same.eos_token_id] and response_end_id(same) == same.eos_token_id
    assert end_of_turn_token(none) is None and stop_token_ids(none) == [none.eos_token_id]


def test_a_chat_reply_ends_with_one_end_of_turn_token_and_plain_text_with_eos(tokenizers, tmp_path) -> None:
    tok = tokenizers["llama3"]
    eot = tok.convert_tokens_to_ids("<|eot|>")
    rows = tmp_path / "chat.jsonl"
    rows.write_text('{"prompt": [{"role": "user", "content": "the road"}], '
                    '"chosen": [{"role": "assistant", "content": "a good light"}], '
                    '"rejected": [{"role": "assistant", "content": "a bad light"}]}\n')
    (pair,) = load_preferences(rows, tok)
    data = tokenize_pairs([pair], tok, max_length=64)
    chosen = data.chosen[0]
    assert chosen[-1] == eot and chosen.count(eot) == 2  # the user's turn and the reply; no EOS appended after it
    assert tok.eos_token_id not in chosen
    assert tok.decode(chosen).endswith("a good light<|eot|>")
    plain = encode_response(tok, " a good light")
    assert plain[-1] == eot  # a chat model's responses end at the end of its turn, whatever the data's format
    assert encode_response(tokenizers["none"], " a good light")[-1] == tokenizers["none"].eos_token_id
    assert encode_response(tok, " light<|eot|>")[-1] == eot and encode_response(tok, " light<|eot|>").count(eot) == 1


def test_the_mask_ends_at_the_first_stop_token() -> None:
    eos, eot, pad = 1, 7, 0
    response = torch.tensor([[5, 7, 9, 9], [5, 6, 1, 9], [5, 6, 8, 9]])
    mask, ended = response_mask(response, [eos, eot])
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False], [True] * 4]
    assert ended.tolist() == [True, True, False]
    assert response_mask(response, eos)[1].tolist() == [False, True, False]  # one id: as before
    assert pad not in (eos, eot)


def test_sampling_stops_at_the_end_of_turn_token(tokenizers) -> None:
    tok = tokenizers["llama3"]
    torch.manual_seed(0)
    model = tiny_causal_lm(tok, n_layer=1, n_embd=32).eval()
    prompt = torch.tensor([tok("the road", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(prompt, dtype=torch.bool)
    greedy = SamplingSettings(max_new_tokens=6, greedy=True)
    free = sample(model, prompt, mask, greedy, tok.eos_token_id, tok.pad_token_id, seeds=[0])
    second = int(free.response_ids[0, 1])  # what the model emits at step 2 when nothing stops it
    stopped = sample(model, prompt, mask, greedy, [tok.eos_token_id, second], tok.pad_token_id, seeds=[0])
    first_stop = next(t for t, x in enumerate(free.response_ids[0].tolist()) if x in (tok.eos_token_id, second))
    assert stopped.ended.tolist() == [True]
    assert stopped.response_mask[0].sum().item() == first_stop + 1
    assert stopped.response_ids[0, : first_stop + 1].tolist() == free.response_ids[0, : first_stop + 1].tolist()
