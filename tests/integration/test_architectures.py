"""Every stage on tiny GPT-2, Llama, Qwen2, Mistral and GPT-NeoX models, each checked against an
independent reference: plain transformers for reward-model scores, a full forward for KV-cache
sampling, the unpadded sequence for left-padded log-probs.

The tiny models share the BPE tokenizer of `tiny_model_dir`. Llama, Mistral and GPT-NeoX get it
without a pad token, as their real tokenizers come, so rlhfkit pads with EOS there; GPT-2 and
Qwen2 keep the pad token of their own. Mistral has a sliding window shorter than the sequences.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from toy_data import NEUTRAL, PROMPTS, known_rule_pairs, write_jsonl
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
)
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data.tokenize import encode_prompt, encode_response, pad_left, pad_right
from rlhfkit.errors import ModelError
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, position_ids_from_mask
from rlhfkit.models.policy import ActorCritic, token_logprobs
from rlhfkit.models.reward_model import build_reward_model, reward_scores, score_index
from rlhfkit.models.tiny import tiny_causal_lm
from rlhfkit.pipelines.score import score_rows
from rlhfkit.rollout.completions import sample_completions
from rlhfkit.rollout.sampling import SamplingSettings, sample
from rlhfkit.rollout.scoring import RewardModelScorer
from rlhfkit.trainers.ppo import train as train_ppo
from rlhfkit.trainers.reinforce import train as train_reinforce
from rlhfkit.trainers.reward import train as train_reward
from rlhfkit.trainers.reward_config import RewardConfig, ScoreConfig
from rlhfkit.trainers.rl_config import PPOConfig, ReinforceConfig

# family -> (tokenizer has its own pad token, config overrides)
FAMILIES = {
    "gpt2": (True, {}),
    "llama": (False, {}),
    "qwen2": (True, {}),
    "mistral": (False, {"sliding_window": 8}),
    "gpt_neox": (False, {}),
}
ARCHS = list(FAMILIES)
SIZE = dict(n_layer=2, n_embd=32, n_head=4, n_positions=128, initializer_range=0.1)
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (several threads only wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny causal LM (and its tokenizer) per family."""
    root = tmp_path_factory.mktemp("archs")
    dirs = {}
    for arch, (own_pad, overrides) in FAMILIES.items():
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        if not own_pad:
            tok.pad_token = None
        model = tiny_causal_lm(tok, arch=arch, **SIZE, **overrides)  # no pad token: pad_token_id None
        dirs[arch] = root / arch
        model.save_pretrained(dirs[arch])
        tok.save_pretrained(dirs[arch])
    return dirs


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch_data")
    rng = random.Random(0)
    prompts = [{"prompt": f"{rng.choice(PROMPTS)} {rng.choice(NEUTRAL)}"} for _ in range(16)]
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in known_rule_pairs(6, seed=5)]
    return {
        "train": write_jsonl(root / "train.jsonl", known_rule_pairs(48, seed=3)),
        "eval": write_jsonl(root / "eval.jsonl", known_rule_pairs(16, seed=4)),
        "prompts": write_jsonl(root / "prompts.jsonl", prompts),
        "prompts_txt": _write(root / "prompts.txt", "".join(r["prompt"] + "\n" for r in prompts[:3])),
        "rows": write_jsonl(root / "rows.jsonl", rows),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _finite(history: list[dict]) -> bool:
    return all(math.isfinite(v) for row in history for v in row.values() if isinstance(v, float))


def plain_transformers_scores(rm_dir: Path, rows: list[dict]) -> torch.Tensor:
    """Raw scores of prompt/completion rows with transformers alone, the text formed as the reward
    model's docstring says: prompt ids + completion ids + one EOS, padded by the saved tokenizer."""
    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    seqs = [tok(r["prompt"])["input_ids"] + tok(r["completion"], add_special_tokens=False)["input_ids"]
            + [tok.eos_token_id] for r in rows]
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1)


# ---------------------------------------------------------------- every stage, end to end


@pytest.mark.parametrize("arch", ARCHS)
def test_every_stage_runs_and_the_reward_model_scores_the_same_in_transformers(
        arch: str, model_dirs, data_files, tmp_path: Path) -> None:
    base = model_dirs[arch]

    # reward: trains and saves a folder that plain transformers loads
    rm_dir = tmp_path / "rm"
    metrics = train_reward(RewardConfig(model=str(base), train_data=str(data_files["train"]),
                                        eval_data=str(data_files["eval"]), output_dir=str(rm_dir), batch_size=16,
                                        max_length=64, learning_rate=3e-3, normalize="mean", seed=0))
    assert math.isfinite(metrics["eval/loss"]) and metrics["eval/pairs"] == 16
    saved = json.loads((rm_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(rm_dir)
    assert saved["architectures"][0].endswith("ForSequenceClassification") and len(saved["id2label"]) == 1
    assert saved["pad_token_id"] == tok.pad_token_id is not None and tok.padding_side == "right"
    own_pad = FAMILIES[arch][0]
    assert (tok.pad_token_id == tok.eos_token_id) == (not own_pad)

    # score: `rlhfkit score` gives transformers' logits (raw), and gain * logits + bias (normalised)
    rows = _rows(data_files["rows"])
    plain = plain_transformers_scores(rm_dir, rows)
    raw = torch.tensor([r["score"] for r in score_rows(ScoreConfig(model=str(rm_dir), data=str(data_files["rows"]),
                                                                   normalized=False))])
    normalised = torch.tensor([r["score"] for r in score_rows(ScoreConfig(model=str(rm_dir),
                                                                          data=str(data_files["rows"])))])
    torch.testing.assert_close(raw, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised, plain * saved["rlhfkit_reward_gain"] + saved["rlhfkit_reward_bias"],
                               atol=1e-5, rtol=0)
    assert plain.std() > 0  # not a constant head

    # the PPO scorer's layout (left-padded prompt | response | right pad) scores as transformers does
    rm_tok = load_tokenizer(rm_dir, padding_side="right")
    rm = build_reward_model(rm_dir, rm_tok, init_head=False).eval()
    policy_tok = load_tokenizer(base)
    prompt_ids, prompt_mask = pad_left([encode_prompt(policy_tok, r["prompt"]) for r in rows], policy_tok.pad_token_id)
    response_ids, response_mask = pad_right([encode_response(policy_tok, r["completion"]) for r in rows],
                                            policy_tok.pad_token_id)
    scorer = RewardModelScorer(rm, rm_tok, policy_tok)
    assert scorer.shares_tokenizer
    ended = torch.ones(len(rows), dtype=torch.bool)
    from_ids = scorer(prompt_ids, prompt_mask, response_ids, response_mask.bool(), ended, [], [])
    torch.testing.assert_close(from_ids, plain * saved["rlhfkit_reward_gain"] + saved["rlhfkit_reward_bias"],
                               atol=1e-5, rtol=0)

    # ppo against the trained reward model (a value head on the policy trunk)
    common = dict(policy=str(base), reward_model=str(rm_dir), prompts=str(data_files["prompts"]),
                  rollout_batch_size=8, max_new_tokens=8, sample_every=0, seed=0, learning_rate=1e-3)
    history = train_ppo(PPOConfig(**common, output_dir=str(tmp_path / "ppo"), iterations=2, num_minibatches=2,
                                  update_epochs=1))
    assert len(history) == 2 and _finite(history)
    assert abs(history[0]["kl/ref"]) < 1e-4  # the reference is the start policy
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo")
    assert type(trained).__name__ == type(AutoModelForCausalLM.from_pretrained(base)).__name__

    # reinforce with the leave-one-out baseline
    history = train_reinforce(ReinforceConfig(**common, output_dir=str(tmp_path / "rloo"), iterations=1,
                                              baseline="rloo", samples_per_prompt=2))
    assert len(history) == 1 and _finite(history)

    # feedback sampling through the CLI, and the library call it makes
    db = str(tmp_path / "feedback.db")
    result = runner.invoke(app, ["feedback", "sample", str(data_files["prompts_txt"]), "--db", db, "--project", "p",
                                 "--model", str(base), "--k", "2", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    with FeedbackStore.open(db) as store:
        store.add_annotator("ann")
        view = store.next_prompt("p", "ann")
        assert view is not None and len(view.completions) == 2
    policy = load_causal_lm(base, policy_tok).eval()
    completions = sample_completions(policy, policy_tok, ["tell me about", "describe the road"], 2,
                                     SamplingSettings(max_new_tokens=6), seed=1)
    assert [len(c) for c in completions] == [2, 2] and all(isinstance(t, str) for c in completions for t in c)


def test_ppo_with_a_separate_critic_from_the_reward_model(model_dirs, data_files, tmp_path: Path) -> None:
    base = model_dirs["llama"]
    rm_dir = tmp_path / "rm"
    train_reward(RewardConfig(model=str(base), train_data=str(data_files["train"]), eval_data=str(data_files["eval"]),
                              output_dir=str(rm_dir), batch_size=16, max_length=64, seed=0))
    history = train_ppo(PPOConfig(policy=str(base), reward_model=str(rm_dir), prompts=str(data_files["prompts"]),
                                  output_dir=str(tmp_path / "ppo"), critic="separate", iterations=2,
                                  rollout_batch_size=8, num_minibatches=2, update_epochs=1, max_new_tokens=8,
                                  sample_every=0, seed=0))
    assert len(history) == 2 and _finite(history)
    critic = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ppo" / "critic")
    assert type(critic).__name__ == "LlamaForSequenceClassification"


# ---------------------------------------------------------------- correctness, per family


def _lm(model_dirs, arch: str):
    tok = load_tokenizer(model_dirs[arch])
    return tok, load_causal_lm(model_dirs[arch], tok).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_prompts_give_the_unpadded_logprobs(arch: str, model_dirs) -> None:
    tok, model = _lm(model_dirs, arch)
    prompts = [tok(t)["input_ids"] for t in ["tell me about the", "describe", "what happened to the old window door"]]
    responses = [tok(t, add_special_tokens=False)["input_ids"] for t in [" the river", " light water", " a road"]]
    response_ids, _ = pad_right(responses, tok.pad_token_id)
    prompt_ids, prompt_mask = pad_left(prompts, tok.pad_token_id)
    with torch.no_grad():
        batch = token_logprobs(model, prompt_ids, prompt_mask, response_ids).logp
        for i, p in enumerate(prompts):  # the reference: each prompt alone, no padding at all
            alone = token_logprobs(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                                   response_ids[i:i + 1]).logp
            torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0)
        if arch == "gpt2":  # absolute positions: the test can fail, left padding without position ids shifts them
            ids = torch.cat([prompt_ids, response_ids], 1)
            mask = torch.cat([prompt_mask, torch.ones_like(response_ids)], 1)
            shifted = model(input_ids=ids, attention_mask=mask).logits
            kept = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            assert (shifted - kept)[1].abs().max() > 1e-3


def _with_logit_transform(family: str, vocab: int) -> torch.nn.Module:
    """Tiny causal LMs whose forward changes the logits after the LM head."""
    from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config, GraniteConfig

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5)
    config = {"gemma2": lambda: Gemma2Config(**common, head_dim=8, final_logit_softcapping=2.0),
              "cohere": lambda: CohereConfig(**common, logit_scale=0.25),
              "granite": lambda: GraniteConfig(**common, logits_scaling=4.0)}[family]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", [*ARCHS, "gemma2", "cohere", "granite"])
def test_logprobs_are_those_of_the_models_own_forward(arch: str, model_dirs) -> None:
    from rlhfkit.models.trunk_and_heads import lm_head, trunk

    tok = load_tokenizer(model_dirs["llama"])
    model = _lm(model_dirs, arch)[1] if arch in FAMILIES else _with_logit_transform(arch, len(tok))
    prompt_ids, prompt_mask = pad_left([tok(t)["input_ids"] for t in ["tell me about", "describe the"]],
                                       tok.pad_token_id)
    response_ids = torch.tensor([tok(" the river light")["input_ids"]] * 2)
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(response_ids)], 1)
    positions = position_ids_from_mask(mask)
    n = response_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -n - 1:-1]
        expected = logits.log_softmax(-1).gather(-1, response_ids[..., None])[..., 0]
        got = token_logprobs(model, prompt_ids, prompt_mask, response_ids).logp
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        if arch not in FAMILIES:  # the LM head alone would be wrong for these families
            hidden = trunk(model)(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            head_only = lm_head(model)(hidden[:, -n - 1:-1]).log_softmax(-1).gather(-1, response_ids[..., None])
            assert (head_only[..., 0] - expected).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_reward_scores_do_not_depend_on_padding(arch: str, model_dirs) -> None:
    tok = load_tokenizer(model_dirs[arch], padding_side="right")
    model = build_reward_model(model_dirs[arch], tok).eval()
    seqs = [encode_prompt(tok, p) + encode_response(tok, r) for p, r in
            [("tell me about", " the river"), ("describe", " a lovely old window door light"), ("say", " dull")]]
    with torch.no_grad():
        right = reward_scores(model, *pad_right(seqs, tok.pad_token_id))
        left = reward_scores(model, *pad_left(seqs, tok.pad_token_id))
        alone = torch.cat([reward_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                           for s in seqs])
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)


class CacheSpy(torch.nn.Module):
    """Passes every call to the model and records the KV cache it hands back."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.caches, self.passed_in = model, [], []

    def forward(self, **kwargs):
        self.passed_in.append(kwargs.get("past_key_values"))
        out = self.model(**kwargs)
        self.caches.append(out.past_key_values)
        return out


def full_forward_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with no cache: the whole sequence through the model for every token."""
    ids = torch.tensor([prompt])
    for _ in range(n):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_sampling_gives_the_full_forward_tokens(arch: str, model_dirs) -> None:
    tok, model = _lm(model_dirs, arch)
    texts = ["tell me about the", "describe", "what happened to the old window door light"]
    prompts = [tok(t)["input_ids"] for t in texts]
    ids, mask = pad_left(prompts, tok.pad_token_id)
    n = 12  # with Mistral's window of 8, the longest sequence runs past the window
    spy = CacheSpy(model)
    with torch.no_grad():
        out = sample(spy, ids, mask, SamplingSettings(max_new_tokens=n, greedy=True, stop_at_eos=False), None,
                     tok.pad_token_id)
        for i, p in enumerate(prompts):
            assert out.response_ids[i].tolist() == full_forward_greedy(model, p, n), i
        # the cache is the model's own, handed back on every step
        assert spy.passed_in[0] is None and all(c is spy.caches[0] for c in spy.passed_in[1:])
        assert spy.caches[0].get_seq_length() == ids.shape[1] + n - 1
        if arch == "mistral":
            assert all("Sliding" in type(layer).__name__ for layer in spy.caches[0].layers)
        else:  # the decode steps wrote into room reserved after the prefill (models/kv_cache.py)
            assert all(type(layer).__name__ == "ReservedLayer" for layer in spy.caches[0].layers)

        # sampled (not greedy): the log-probs, entropies and values kept while sampling are the full forward's
        actor = ActorCritic(model)
        torch.nn.init.normal_(actor.value_head.weight)
        settings = SamplingSettings(max_new_tokens=n, stop_at_eos=False, temperature=0.7)
        drawn = sample(model, ids, mask, settings, None, tok.pad_token_id, seeds=[1, 2, 3], with_logprobs=True,
                       value_head=actor.value_head)
        full = actor(ids, mask, drawn.response_ids, temperature=0.7)
    torch.testing.assert_close(drawn.logp, full.logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(drawn.entropy, full.entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(drawn.values, full.values, atol=1e-5, rtol=0)


def test_sampling_keeps_its_cache_under_gradient_checkpointing_in_train_mode(model_dirs) -> None:
    tok, model = _lm(model_dirs, "llama")
    prompts = [tok(t)["input_ids"] for t in ["tell me about the", "describe"]]
    ids, mask = pad_left(prompts, tok.pad_token_id)
    model.activation_checkpointing_enable()
    model.train()  # transformers turns use_cache off in train mode with checkpointing on
    with torch.no_grad():
        out = sample(model, ids, mask, SamplingSettings(max_new_tokens=6, greedy=True, stop_at_eos=False), None,
                     tok.pad_token_id)
        assert model.training and all(m.training for m in model.modules())  # modes restored
        model.eval()
        for i, p in enumerate(prompts):
            assert out.response_ids[i].tolist() == full_forward_greedy(model, p, 6), i


# ---------------------------------------------------------------- where the score is read; encoders


def test_the_score_is_read_where_transformers_reads_it() -> None:
    ids = torch.tensor([[5, 6, 2, 0, 0], [0, 5, 6, 7, 2], [5, 2, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert score_index(ids, mask, pad_token_id=0).tolist() == [2, 4, 2]  # own pad (0): at the EOS (2)
    assert score_index(ids, mask, pad_token_id=2).tolist() == [1, 3, 0]  # EOS as pad: the token before it
    assert score_index(ids, mask, pad_token_id=None).tolist() == [2, 4, 2]
    assert score_index(torch.full((1, 3), 2), torch.tensor([[1, 1, 0]]), pad_token_id=2).tolist() == [1]


def test_an_encoder_base_is_refused_with_one_line(tiny_model_dir: Path, data_files, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=128,
                                      pad_token_id=tok.pad_token_id))
    folder = tmp_path / "bert"
    bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(ModelError, match="BertForSequenceClassification is not a decoder-only model") as err:
        build_reward_model(folder, load_tokenizer(folder, padding_side="right"))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="decoder-only"):
        train_reward(RewardConfig(model=str(folder), train_data=str(data_files["train"]),
                                  eval_data=str(data_files["eval"]), output_dir=str(tmp_path / "rm"), max_length=64))
    assert not (tmp_path / "rm").exists()
