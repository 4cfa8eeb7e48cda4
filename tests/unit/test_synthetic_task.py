"""The synthetic task: gold judge values computed by hand, prompt splits, corpus, simulated labeler.

Gold formula (rlhfkit.data.synthetic.gold_score), on whitespace-separated words:
  sentiment  = 0.5 min(#distinct positive, 2) + 0.5 min(#distinct polite, 2)
               - 0.5 min(#distinct negative, 2) - 1.0 min(#distinct rude, 2)
  repetition = -0.5 (repeated content words + repeated bigrams holding a content word + stutters)
  form       = -0.5 (out-of-vocabulary words + bigrams no clean reply contains) - 1 if unfinished
               - 1 if fewer than 4 words - 0.1 per word beyond 20
  total      = clip(sentiment + repetition + form, -2, 2)
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.data import synthetic
from rlhfkit.data.labeler import SimulatedLabeler, dispersion_for, expected_disagreement, noisy_ranks
from rlhfkit.data.synthetic import gold_breakdown, gold_score

P = "customer : my phone arrived broken . agent :"
FLUENT = "thank you , glad to help . please check the tracking page . have a nice day ."
NEUTRAL = "we will look into it ."
RUDE = "whatever . there is nothing we can do ."


# --- gold judge: hand-computed cases -------------------------------------------------------------
def test_fluent_polite_positive_reply_gets_the_maximum():
    # 18 words, ends with "."; positive {glad, nice} -> 2 x 0.5; polite {thank, please} -> 2 x 0.5;
    # content words thank glad help please check tracking page nice day are all distinct; the three
    # sentences are an opener, an action and a closer of the domain, joined after their ".".
    b = gold_breakdown(P, FLUENT)
    assert (b.sentiment, b.repetition, b.form, b.total) == pytest.approx((2.0, 0.0, 0.0, 2.0))


def test_neutral_and_rude_replies():
    # neutral: no lexicon word, 6 words, well formed -> 0
    assert gold_score(P, NEUTRAL) == pytest.approx(0.0)
    # rude {whatever} -1.0, negative {nothing} -0.5; 9 words, no repeats, well formed
    assert gold_score(P, RUDE) == pytest.approx(-1.5)
    assert gold_score(P, FLUENT) > gold_score(P, NEUTRAL) > gold_score(P, RUDE)


def test_stacked_praise_scores_low():
    # "great great great great": positive {great} +0.5; repeated content words 3, repeated bigrams
    # (great great) x3 -> 2, stutters 3 -> -0.5 x 8 = -4; form: 3 out-of-domain bigrams (great great)
    # -1.5 and no final "." -1; total -6, clipped.
    b = gold_breakdown(P, "great great great great")
    assert (b.sentiment, b.repetition, b.form, b.total) == pytest.approx((0.5, -4.0, -2.5, -2.0))
    # thank you thank you great great great . : sentiment 1.0; content repeats 5-2=3; bigrams 7 with
    # 5 distinct -> 2; stutters 2 -> -3.5; out-of-domain bigrams (you thank) (you great)
    # (great great) x2 (great .) -> -2.5; total -5, clipped to -2
    b = gold_breakdown(P, "thank you thank you great great great .")
    assert (b.sentiment, b.repetition, b.form, b.total) == pytest.approx((1.0, -3.5, -2.5, -2.0))
    # distinct praise stacked without repeats is word salad: sentiment 1.5 (positive saturated at 2,
    # polite {thank}); no word repeats; out-of-domain bigrams (glad ,) (happy ,) (delighted ,)
    # (great wonderful) (wonderful nice) (nice lovely) -> -3.0 ("thank you , <glad> to help" makes
    # (, happy) (, delighted) (, pleased) domain bigrams); 21 words -> -0.1; total 1.5 - 3.1 = -1.6
    b = gold_breakdown(P, "thank you , glad , happy , delighted , pleased to help . "
                          "have a great wonderful nice lovely day .")
    assert (b.sentiment, b.repetition, b.form, b.total) == pytest.approx((1.5, 0.0, -3.1, -1.6))


def test_positive_words_saturate_after_two():
    one = "we are happy to help ."  # {happy}: 0.5
    two = "great to hear from you . we are happy to help ."  # {great, happy}: 1.0
    three = "great to hear from you . we are happy to help . have a nice day ."  # 3 distinct, 17 words
    assert [gold_score(P, t) for t in (one, two, three)] == pytest.approx([0.5, 1.0, 1.0])


def test_repeating_a_sentence_is_penalised():
    once = "have a nice day ."  # {nice}: 0.5
    # twice: content repeats nice, day -> 2; bigrams with a content word: (a nice) (nice day) (day .)
    # twice each -> 3; no stutter -> -2.5; total 0.5 - 2.5 = -2.0
    twice = "have a nice day . have a nice day ."
    assert gold_score(P, once) == pytest.approx(0.5)
    assert gold_breakdown(P, twice).repetition == pytest.approx(-2.5)
    assert gold_score(P, twice) == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("reply", "finished", "expected"),
    [
        ("ok .", True, -1.0),  # 2 words: too short
        ("", True, -2.0),  # unfinished and too short
        ("we will look into it", True, -1.0),  # no final "."
        ("we will look into it .", False, -1.0),  # stopped by the length limit, no EOS
        # one out-of-vocabulary word, and the bigrams (it asap) (asap .) are not the domain's
        ("we will look into it asap .", True, -1.5),
        ("we will look into it . .", True, -0.5),  # (. .) is not a domain bigram
        # 22 words: polite {thank, please} +1.0, 2 words over 20 -> -0.2
        ("thank you for your patience . your refund will arrive in five days . "
         "please check the tracking page . bye .", True, 0.8),
    ],
)
def test_form_penalties(reply, finished, expected):
    assert gold_score(P, reply, finished=finished) == pytest.approx(expected)


def test_lexicon_words_belong_to_the_domain():
    for lexicon in (synthetic.POSITIVE, synthetic.POLITE, synthetic.NEGATIVE, synthetic.RUDE):
        assert lexicon <= synthetic.DOMAIN_VOCAB
    assert not (synthetic.POSITIVE | synthetic.POLITE) & (synthetic.NEGATIVE | synthetic.RUDE)
    assert ("have", "a") in synthetic.DOMAIN_BIGRAMS and (".", "have") in synthetic.DOMAIN_BIGRAMS
    assert ("great", "great") not in synthetic.DOMAIN_BIGRAMS


# --- prompts and corpus ----------------------------------------------------------------------------
def test_prompt_count_and_disjoint_splits():
    # distinct prompts per topic (20 items, 3 day counts, 3 other goods):
    # late 60+20+60+20+60, damaged 20+60+20+20, wrong 60+20+20, refund 20+60+20, billing 3x20,
    # account 5, plan 4, praise 2x20, angry 1+1+20  -> 220+120+100+100+60+5+4+40+22 = 671
    train, evals = synthetic.all_prompts("train"), synthetic.all_prompts("eval")
    assert len(train) + len(evals) == 671
    assert not set(train) & set(evals)
    assert len(set(train)) == len(train) and len(set(evals)) == len(evals)
    assert 0.15 < len(evals) / 671 < 0.25  # a hash bucket of 20%
    assert all(p.startswith("customer : ") and p.endswith(" . agent :") for p in train + evals)


def test_prompts_are_deterministic_and_seeded():
    a = synthetic.prompts(50, seed=3, split="eval")
    assert a == synthetic.prompts(50, seed=3, split="eval")
    assert a != synthetic.prompts(50, seed=4, split="eval")
    assert len(set(a)) == 50 and set(a) <= set(synthetic.all_prompts("eval"))
    assert not set(synthetic.prompts(200, seed=0)) & set(synthetic.prompts(100, seed=0, split="eval"))
    with pytest.raises(ValueError, match="distinct prompts"):
        synthetic.prompts(10_000)
    with pytest.raises(ValueError, match="split"):
        synthetic.prompts(1, split="test")


def test_corpus_is_deterministic_in_domain_and_varied():
    corpus = synthetic.pretraining_corpus(2000, seed=1)
    assert corpus == synthetic.pretraining_corpus(2000, seed=1)
    train = set(synthetic.all_prompts("train"))
    assert all(p in train for p, _ in corpus)
    assert all(r.endswith(" .") and set(r.split()) <= synthetic.DOMAIN_VOCAB for _, r in corpus)
    scores = [gold_score(p, r) for p, r in corpus]
    assert sum(s >= 1.0 for s in scores) > 200 and sum(s <= -1.0 for s in scores) > 200
    with pytest.raises(ValueError, match="not a prompt"):
        synthetic.sample_response("hello", random.Random(0))


# --- simulated labeler -----------------------------------------------------------------------------
def test_noise_zero_gives_the_gold_order():
    # gold: "whatever ." -> rude -1, short -1 = -2; "have a nice day ." 0.5; FLUENT 2.0; NEUTRAL 0.0
    completions = ["whatever .", "have a nice day .", FLUENT, NEUTRAL]
    assert SimulatedLabeler(noise=0.0, seed=7).rank(P, completions) == [3, 1, 0, 2]


def test_ties_keep_index_order_and_ranks_are_deterministic():
    assert SimulatedLabeler(noise=0.0).rank(P, ["bye .", "bye .", "bye ."]) == [0, 1, 2]
    labeler = SimulatedLabeler(noise=0.3, seed=1)
    completions = [FLUENT, NEUTRAL, RUDE, "have a nice day .", "ok ."]
    ranks = labeler.rank(P, completions)
    assert ranks == SimulatedLabeler(noise=0.3, seed=1).rank(P, completions)
    others = {tuple(SimulatedLabeler(noise=0.3, seed=s).rank(P, completions)) for s in range(20)}
    assert len(others) > 1  # the seed matters


def test_dispersion_closed_forms():
    # K=2: rate = q / (1 + q), so q = noise / (1 - noise)
    assert dispersion_for(0.25, 2) == pytest.approx(1 / 3, abs=1e-12)
    # q = 1 is a uniform ranking: half the pairs against gold, for any K
    assert expected_disagreement(1.0, 5) == pytest.approx(0.5)
    # K=3, q=1/2: insertions add 0, (0*1 + 1*.5)/1.5 = 1/3, (0 + .5 + 2*.25)/1.75 = 4/7 inversions;
    # divided by 3 pairs
    assert expected_disagreement(0.5, 3) == pytest.approx((1 / 3 + 4 / 7) / 3)
    with pytest.raises(ValueError, match="noise"):
        SimulatedLabeler(noise=0.6)


@pytest.mark.parametrize(("k", "noise"), [(2, 0.1), (4, 0.2), (4, 0.05), (8, 0.3)])
def test_realised_disagreement_matches_noise(k, noise):
    """Share of pairs ranked against gold over N rankings of K distinct-score completions.

    The per-ranking share X lies in [0, 1] with mean `noise`, so Var(X) <= noise (1 - noise)
    (the Bernoulli bound); the mean of N independent rankings has standard error at most
    sqrt(noise (1 - noise) / N). 4 standard errors: a false failure has probability < 1e-4.
    """
    n = 3000
    # distinct gold scores, best first: 2.0; {thank, glad} 1.0; {nice} 0.5; 0.0; negative {wait}
    # -0.5; too short -1.0; rude + negative -1.5; rude and too short -2.0
    pool = [FLUENT, "thank you , glad to help .", "have a nice day .", NEUTRAL,
            "you will have to wait .", "ok .", RUDE, "whatever ."]
    completions = pool[:k]
    expected = [2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0][:k]
    assert [gold_score(P, c) for c in completions] == pytest.approx(expected)
    labeler = SimulatedLabeler(noise=noise, seed=0)
    against = 0
    for i in range(n):
        ranks = labeler.rank(f"{P} {i}", completions)  # distinct prompts: independent noise
        against += sum(ranks[a] > ranks[b] for a, b in itertools.combinations(range(k), 2))
    rate = against / (n * k * (k - 1) / 2)
    assert abs(rate - noise) < 4 * math.sqrt(noise * (1 - noise) / n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-2, 2), min_size=1, max_size=9), st.floats(0, 0.5), st.integers(0, 2**32))
def test_ranks_are_a_permutation(scores, noise, seed):
    ranks = noisy_ranks(scores, noise, random.Random(seed))
    assert sorted(ranks) == list(range(len(scores)))


def test_rank_input_errors():
    with pytest.raises(TypeError):
        SimulatedLabeler().rank(P, "one string")
    with pytest.raises(ValueError):
        SimulatedLabeler().rank(P, [])


def test_labeler_with_ties_gives_equal_ranks_to_equal_gold_scores():
    from rlhfkit.data.labeler import tied_noisy_ranks

    # scores 1.0, 0.5, 1.0, -1.0: two levels tie at the top; without noise the ranks follow the levels
    assert tied_noisy_ranks([1.0, 0.5, 1.0, -1.0], 0.0, random.Random(0)) == [0, 1, 0, 2]
    labeler = SimulatedLabeler(noise=0.0, ties=True)
    ranks = labeler.rank("customer : i forgot my password . agent :", ["ok .", "ok .", "thank you , happy to help ."])
    assert ranks[0] == ranks[1] and ranks[2] < ranks[0]


# --- the second criterion: concise ---------------------------------------------------------------
REFUND = "customer : i want a refund for my phone . agent :"


@pytest.mark.parametrize(("reply", "finished", "expected"), [
    # a helpful refund action (+1), 7 words, within the 10-word budget
    ("your refund is on its way .", True, 1.0),
    # the same action inside a polite opener and closer: 18 words, 8 beyond the budget -> 1 - 0.8
    ("thank you for reaching out . your refund is on its way . have a great day .", True, 0.2),
    # gold_score's best reply: no refund action (a neutral one), 18 words -> 0 - 0.8
    (FLUENT, True, -0.8),
    # an account action answers a refund prompt with nothing: 0, 6 words
    ("your account is unlocked now .", True, 0.0),
    # cut off before the final ".": the action (which ends with its ".") is not all there, and unfinished -> -1
    ("your refund is on its way", True, -1.0),
    # the model never emitted EOS -> +1 - 1
    ("your refund is on its way .", False, 0.0),
    # one out-of-vocabulary word: +1 - 0.5, 8 words
    ("your refund is on its way . zzz .", True, 0.5),
])
def test_concise_hand_computed(reply, finished, expected):
    assert synthetic.concise_score(REFUND, reply, finished=finished) == pytest.approx(expected, abs=1e-9)


def test_concise_trades_off_against_helpful():
    """Padding the answer with what the helpful judge credits (polite and positive words) costs concisely."""
    short, padded = "your refund is on its way .", "thank you for reaching out . your refund is on its way . " \
                                                  "have a great day ."
    short_scores, padded_scores = synthetic.gold_scores(REFUND, short), synthetic.gold_scores(REFUND, padded)
    # helpful: short 0 (no lexicon word); padded thank (polite) + great (positive) = 0.5 + 0.5
    assert short_scores == pytest.approx({"helpful": 0.0, "concise": 1.0})
    assert padded_scores == pytest.approx({"helpful": 1.0, "concise": 0.2})
    assert set(synthetic.gold_scores(P, NEUTRAL)) == set(synthetic.CRITERIA)


def test_concise_action_is_topic_specific_and_any_product_counts():
    late = "customer : my lamp arrived two days late . agent :"
    assert synthetic.concise_score(late, "your lamp will arrive tomorrow .") == pytest.approx(1.0)
    assert synthetic.concise_score(late, "your chair will arrive tomorrow .") == pytest.approx(1.0)
    assert synthetic.concise_score(late, "your refund is on its way .") == pytest.approx(0.0)
    # a prompt outside the task: any topic's helpful action counts
    assert synthetic.concise_score("customer : hello . agent :", "your refund is on its way .") == pytest.approx(1.0)


def test_labeler_ranks_by_the_chosen_criterion():
    completions = [FLUENT, "your refund is on its way .", "your account is unlocked now ."]
    # helpful: 2.0, 0.0, 0.0 (tie kept in index order); concise: -0.8, 1.0, 0.0
    assert SimulatedLabeler(noise=0.0).rank(REFUND, completions) == [0, 1, 2]
    assert SimulatedLabeler(noise=0.0, criterion="concise").rank(REFUND, completions) == [2, 0, 1]
    assert SimulatedLabeler(noise=0.0, criterion="helpful").rank(REFUND, completions) == [0, 1, 2]
    with pytest.raises(ValueError, match="criterion must be one of helpful, concise"):
        SimulatedLabeler(criterion="harmless")


def test_default_criterion_keeps_the_same_noisy_ranks():
    """criterion='helpful' is the old labeler: the same seed gives the same ranks as before the
    criterion existed (the noise seed string is unchanged), computed here from noisy_ranks directly."""
    completions = [FLUENT, NEUTRAL, RUDE, "have a nice day .", "ok ."]
    for seed in range(5):
        rng = random.Random("\x1f".join([str(seed), P, *completions]))
        want = noisy_ranks([gold_score(P, c) for c in completions], 0.3, rng)
        assert SimulatedLabeler(noise=0.3, seed=seed).rank(P, completions) == want
        assert SimulatedLabeler(noise=0.3, seed=seed, criterion="helpful").rank(P, completions) == want
