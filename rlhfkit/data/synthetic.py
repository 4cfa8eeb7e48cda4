"""The synthetic demo task: a customer-support agent replies to a customer in one or two lines.

Everything here is plain Python and deterministic given a seed (a local `random.Random`, never
the global one), so the demo runs offline and the same seed gives the same data everywhere.

- `prompts(n, seed, split)`: customer messages formatted as `customer : <message> . agent :`.
  A prompt belongs to the train or eval split by a hash of its text, so the splits never
  overlap, whatever the seed.
- `pretraining_corpus(n, seed)`: (prompt, response) pairs on the train prompts, whose replies
  range from warm and helpful to curt or rude, sometimes rambling or repetitive, so that a
  model trained on them samples replies of every quality.
- `gold_score(prompt, response)`: the held-out judge with a known preference (positive,
  polite, non-repetitive, well-formed replies). It is the "true" human preference that the
  simulated labeler (`rlhfkit.data.labeler`) ranks by and that evaluation reports; the reward
  model only ever sees rankings. Its criterion is `helpful`.
- `concise_score(prompt, response)`: a second hidden judge, `concise`, that trades off against
  it: credit for a helpful action on the prompt's topic, a cost per word beyond a short budget,
  so the polite openers and closers the first judge rewards cost here. `gold_scores` returns
  both, by criterion.

Text convention: lowercase words and the punctuation marks `.` `,` `?` separated by single
spaces; a reply ends with ` .` and then the tokenizer's EOS.
"""

from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

# ---------------------------------------------------------------------------
# The domain: products, customer messages (by topic) and the parts agent replies are made of
# ---------------------------------------------------------------------------
ITEMS = ("phone", "laptop", "jacket", "lamp", "chair", "kettle", "blender", "watch", "backpack",
         "camera", "printer", "speaker", "headphones", "sofa", "bike", "tablet", "mattress", "desk",
         "toaster", "heater")
DAYS = ("two", "three", "five")
OTHERS = ("cable", "mug", "toy")
POS_ADJ = ("great", "wonderful", "nice", "lovely", "fantastic")  # fills {pos}
GLAD = ("happy", "glad", "pleased", "delighted")  # fills {glad}

# topic -> customer message templates; {item}, {n} and {other} are filled from the lists above.
MESSAGES: dict[str, tuple[str, ...]] = {
    "late": ("my {item} arrived {n} days late", "my {item} has not arrived yet",
             "the tracking for my {item} has not changed in {n} days",
             "the courier left my {item} at the wrong door", "where is my {item} ? it is {n} days late"),
    "damaged": ("my {item} arrived broken", "my {item} stopped working after {n} days",
                "the box was crushed and my {item} is scratched", "my new {item} makes a strange noise"),
    "wrong": ("i ordered a {item} but got a {other}", "you sent me the wrong {item}",
              "my {item} is the wrong colour"),
    "refund": ("i want a refund for my {item}", "i sent back my {item} {n} days ago and got no refund",
               "how do i return my {item} ?"),
    "billing": ("i was charged twice for my {item}", "my card was charged but my {item} order failed",
                "the price of the {item} changed at checkout"),
    "account": ("i cannot log in to my account", "i forgot my password", "my account was locked",
                "i never got the email to reset my password", "the app logs me out every day"),
    "plan": ("i want to cancel my subscription", "my subscription renewed without asking me",
             "how do i change my plan ?", "i was charged for a plan i cancelled"),
    "praise": ("my {item} arrived early , thank you", "i love my new {item}"),
    "angry": ("this is the worst shop ever", "your service is terrible and i want my money back",
              "i am tired of waiting for my {item}"),
}

# Helpful, topic-specific actions; {item} is the prompt's product (a generic word otherwise).
HELPFUL: dict[str, tuple[str, ...]] = {
    "late": ("your {item} will arrive tomorrow .", "the courier will deliver it today .",
             "a new {item} ships by express today .", "i have asked the courier to call you ."),
    "damaged": ("we will send you a new {item} today .", "i have booked a free repair for you .",
                "you will get a full refund for the {item} ."),
    "wrong": ("we will send the right {item} today .", "i have booked a free pickup ."),
    "refund": ("your refund is on its way .", "your refund will arrive in {n} days .",
               "here is a free return label ."),
    "billing": ("i have refunded the second charge .", "the extra charge will be removed today .",
                "we will match the old price for you ."),
    "account": ("i have sent you a new reset link .", "your account is unlocked now .",
                "you can log in again now ."),
    "plan": ("your subscription is cancelled now .", "i have refunded the last payment .",
             "you can change your plan in settings ."),
    "praise": ("we hope you enjoy your {item} .", "we will tell the team ."),
    "angry": ("i will check your order right away .", "a manager will call you today ."),
}
NEUTRAL_ACTIONS = ("please check the tracking page .", "please send us your order number .",
                   "we will look into it .", "our team will reply in {n} days .",
                   "the details are in your account .", "please read our return policy .")
UNHELPFUL_ACTIONS = ("unfortunately we cannot refund that .", "there is nothing we can do .",
                     "you will have to wait .", "we never replace used items .",
                     "that is impossible to fix .", "we are too busy to check .",
                     "we refuse to refund used items .")
OPENERS = {
    "polite": ("thank you for reaching out .", "thanks for letting us know .", "sorry to hear that .",
               "sorry about the trouble .", "we apologize for the delay .", "thank you for your patience .",
               "we appreciate your message ."),
    "warm": ("{pos} to hear from you .", "thank you , {glad} to help .", "i am {glad} you wrote to us .",
             "hello , {pos} question ."),
    "neutral": ("hello .", "hi .", "ok .", "noted .", "i see ."),
    "curt": ("what is it .", "ok , fine .", "right ."),
    "rude": ("ugh , not again .", "whatever .", "stop complaining .", "obviously you did it wrong .",
             "this is a stupid question ."),
}
CLOSERS = {
    "positive": ("have a {pos} day .", "we are {glad} to help .", "{glad} we could help .",
                 "have a {pos} weekend ."),
    "polite": ("thank you for waiting .", "thanks again .", "we appreciate your patience .",
               "please write again any time ."),
    "neutral": ("bye .", "regards .", "that is all ."),
    "rude": ("do not bother us again .", "deal with it .", "we are done here ."),
}
FILLER = ("as i said , ", "and also , ", "so yes , ")  # rambling replies chain clauses with these

PROMPT_TEMPLATE = "customer : {message} . agent :"

# ---------------------------------------------------------------------------
# The gold judge's lexicons and constants (see docs/embedded-model.md for the formula)
# ---------------------------------------------------------------------------
# Every lexicon word is a domain word, so a credited word is never also penalised as malformed.
POSITIVE = frozenset(("great", "wonderful", "nice", "lovely", "fantastic", "happy", "glad", "pleased",
                      "delighted", "enjoy"))
POLITE = frozenset(("thank", "thanks", "please", "sorry", "apologize", "appreciate"))
NEGATIVE = frozenset(("unfortunately", "cannot", "nothing", "impossible", "never", "wait", "busy",
                      "refuse"))
RUDE = frozenset(("whatever", "ugh", "stupid", "complaining", "obviously", "bother", "deal"))
PUNCT = frozenset(".,?")
# Grammatical words may repeat in fluent text ("i am sorry , i am glad ..."); content words may not.
FUNCTION_WORDS = frozenset((
    "i", "you", "your", "we", "us", "our", "it", "its", "the", "a", "an", "to", "for", "and", "of",
    "is", "are", "am", "was", "will", "be", "this", "that", "in", "on", "at", "with", "my", "me", "by",
    "can", "have", "has", "if", "so", "not", "do", "no", "all", "any", "as",
)) | PUNCT

MIN_WORDS = 4  # shorter replies ("ok .") are curt, not answers
MAX_WORDS = 20  # longer ones ramble; 97% of the corpus's clean (non-rambling) replies are within it
SATURATION = 2  # only the first two distinct words of a lexicon count
W_POSITIVE, W_POLITE, W_NEGATIVE, W_RUDE = 0.5, 0.5, -0.5, -1.0
W_REPEAT = -0.5  # per repeated content word, repeated content bigram and stutter
W_MALFORMED = -0.5  # per out-of-vocabulary word and per bigram no clean reply contains (word salad)
P_UNFINISHED = -1.0  # no EOS, or the last word is not "."
P_SHORT = -1.0
W_LONG = -0.1  # per word beyond MAX_WORDS
SCORE_RANGE = (-2.0, 2.0)


def _all_words() -> frozenset[str]:
    """Every word a prompt or corpus reply can contain: the judge's vocabulary."""
    texts: list[str] = [PROMPT_TEMPLATE, *FILLER, *NEUTRAL_ACTIONS, *UNHELPFUL_ACTIONS]
    for group in (MESSAGES, HELPFUL, OPENERS, CLOSERS):
        for parts in group.values():
            texts.extend(parts)
    texts.extend((*ITEMS, *DAYS, *OTHERS, *POS_ADJ, *GLAD, "thank you"))
    words = {w for t in texts for w in t.replace("{", " {").split() if not w.startswith("{")}
    return frozenset(words)


DOMAIN_VOCAB: frozenset[str] = _all_words()
"""Words (and punctuation marks) of the domain; anything else counts as malformed output."""


def _expansions(template: str) -> list[str]:
    """Every filling of a reply part's slots (the values `_fill` can put there)."""
    out = [template]
    for slot, values in (("{item}", (*ITEMS, "order")), ("{n}", DAYS), ("{pos}", POS_ADJ), ("{glad}", GLAD)):
        if slot in template:
            out = [t.replace(slot, v) for t in out for v in values]
    return out


def _reply_bigrams() -> frozenset[tuple[str, str]]:
    """Bigrams of clean replies: inside every reply part, and from a part's final "." to the next part."""
    parts = [*NEUTRAL_ACTIONS, *UNHELPFUL_ACTIONS]
    for group in (HELPFUL, OPENERS, CLOSERS):
        for templates in group.values():
            parts.extend(templates)
    texts = [t for part in parts for t in _expansions(part)]
    texts += [f + t for f in FILLER for t in texts]  # a rambling clause: "as i said , <part>"
    pairs = {b for t in texts for b in zip(t.split(), t.split()[1:])}
    pairs |= {(".", t.split()[0]) for t in texts}  # the next part starts after a "."
    return frozenset(pairs)


DOMAIN_BIGRAMS: frozenset[tuple[str, str]] = _reply_bigrams()
"""Adjacent word pairs that clean replies contain; any other pair is word salad to the judge."""


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------
class _PromptSpec(NamedTuple):
    topic: str
    item: str | None  # the product the customer mentions, if any


def _fill(template: str, rng: random.Random, item: str | None) -> str:
    """Fill the slots of a reply part; `item` falls back to a generic word."""
    return template.format(item=item or "order", n=rng.choice(DAYS), pos=rng.choice(POS_ADJ),
                           glad=rng.choice(GLAD))


def _enumerate_prompts() -> dict[str, _PromptSpec]:
    """All distinct prompts, in a fixed order, with the topic and product each is about."""
    out: dict[str, _PromptSpec] = {}
    for topic, templates in MESSAGES.items():
        for template in templates:
            items = ITEMS if "{item}" in template else (None,)
            days = DAYS if "{n}" in template else (None,)
            others = OTHERS if "{other}" in template else (None,)
            for item in items:
                for n in days:
                    for other in others:
                        message = template.format(item=item, n=n, other=other)
                        out[PROMPT_TEMPLATE.format(message=message)] = _PromptSpec(topic, item)
    return out


_PROMPTS = _enumerate_prompts()
EVAL_SHARE_PERCENT = 20


def prompt_split(prompt: str) -> str:
    """'eval' for about 20% of prompts, chosen by a hash of the text (stable across seeds and runs)."""
    bucket = hashlib.sha256(prompt.encode()).digest()[0] * 100 // 256
    return "eval" if bucket < EVAL_SHARE_PERCENT else "train"


def all_prompts(split: str) -> list[str]:
    """Every prompt of `split` ('train' or 'eval'), in the fixed enumeration order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [p for p in _PROMPTS if prompt_split(p) == split]


def prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """`n` distinct prompts of `split`, in an order drawn from `seed`."""
    pool = all_prompts(split)
    if not 0 <= n <= len(pool):
        raise ValueError(f"the {split} split has {len(pool)} distinct prompts; asked for n={n}")
    return random.Random(seed).sample(pool, n)


# ---------------------------------------------------------------------------
# Replies and the pretraining corpus
# ---------------------------------------------------------------------------
# tone -> (opener kinds with weights, action kinds with weights, closer kinds with weights).
# "none" means the part is left out. The mix makes gold scores of base-model samples spread widely.
TONES: dict[str, tuple[dict[str, float], dict[str, float], dict[str, float]]] = {
    "warm": ({"polite": 0.6, "warm": 0.3, "none": 0.1}, {"helpful": 0.8, "neutral": 0.15, "unhelpful": 0.05},
             {"positive": 0.45, "polite": 0.3, "none": 0.25}),
    "neutral": ({"neutral": 0.5, "polite": 0.2, "none": 0.3}, {"helpful": 0.4, "neutral": 0.5, "unhelpful": 0.1},
                {"neutral": 0.4, "polite": 0.1, "none": 0.5}),
    "curt": ({"curt": 0.6, "none": 0.4}, {"helpful": 0.2, "neutral": 0.4, "unhelpful": 0.4}, {"none": 1.0}),
    "rude": ({"rude": 0.7, "curt": 0.2, "none": 0.1}, {"helpful": 0.1, "neutral": 0.3, "unhelpful": 0.6},
             {"rude": 0.5, "none": 0.5}),
}
TONE_WEIGHTS = {"warm": 0.4, "neutral": 0.3, "curt": 0.1, "rude": 0.2}
P_RAMBLE, P_REPEAT = 0.05, 0.06


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _part(rng: random.Random, kind: str, spec: _PromptSpec, table: dict[str, tuple[str, ...]]) -> str:
    return "" if kind == "none" else _fill(rng.choice(table[kind]), rng, spec.item)


def _action(rng: random.Random, kind: str, spec: _PromptSpec) -> str:
    pool = {"helpful": HELPFUL[spec.topic], "neutral": NEUTRAL_ACTIONS, "unhelpful": UNHELPFUL_ACTIONS}[kind]
    return _fill(rng.choice(pool), rng, spec.item)


def _content(text: str) -> set[str]:
    return {w for w in text.split() if w not in FUNCTION_WORDS}


def _repeat(rng: random.Random, reply: str) -> str:
    """Degenerate variants: a stuttered sentiment word, or a whole sentence said twice."""
    words = reply.split()
    hot = [i for i, w in enumerate(words) if w in POSITIVE or w in POLITE]
    if hot and rng.random() < 0.6:
        i = rng.choice(hot)
        extra = [words[i]] * rng.randint(1, 3)
        if words[i] == "thank":  # "thank you thank you"
            extra = ["thank", "you"] * len(extra)
            i += 1
        return " ".join(words[: i + 1] + extra + words[i + 1:])
    sentences = [s.strip() + " ." for s in reply.split(" .") if s.strip()]
    k = rng.randrange(len(sentences))
    return " ".join(sentences[: k + 1] + [sentences[k]] + sentences[k + 1:])


def sample_response(prompt: str, rng: random.Random, tone: str | None = None) -> str:
    """One agent reply to a known prompt; `tone` ('warm', 'neutral', 'curt', 'rude') or drawn at random."""
    spec = _PROMPTS.get(prompt)
    if spec is None:
        raise ValueError(f"not a prompt of the synthetic task: {prompt!r} (use prompts() to get some)")
    tone = tone or _pick(rng, TONE_WEIGHTS)
    if tone not in TONES:
        raise ValueError(f"tone must be one of {sorted(TONES)}, got {tone!r}")
    openers, actions, closers = TONES[tone]
    parts = [_part(rng, _pick(rng, openers), spec, OPENERS), _action(rng, _pick(rng, actions), spec)]
    for _ in range(10):  # a closer that repeats no content word of the reply so far
        closer = _part(rng, _pick(rng, closers), spec, CLOSERS)
        if not _content(closer) & _content(" ".join(parts)):
            break
    parts.append(closer)
    if rng.random() < P_RAMBLE:  # one more clause after the closer: long replies the judge penalises
        parts.append(rng.choice(FILLER) + _action(rng, _pick(rng, actions), spec))
    reply = " ".join(p for p in parts if p)
    if rng.random() < P_REPEAT:
        reply = _repeat(rng, reply)
    return reply


def pretraining_corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (prompt, reply) pairs on train-split prompts; eval prompts stay unseen."""
    rng = random.Random(seed)
    pool = all_prompts("train")
    out = []
    for _ in range(n):
        prompt = rng.choice(pool)
        out.append((prompt, sample_response(prompt, rng)))
    return out


# ---------------------------------------------------------------------------
# The gold judge
# ---------------------------------------------------------------------------
class GoldBreakdown(NamedTuple):
    """The terms of the gold score; `total` is their sum clipped to SCORE_RANGE."""

    sentiment: float  # saturated lexicon credit: positive + polite - negative - rude
    repetition: float  # W_REPEAT * (repeated content words + repeated content bigrams + stutters)
    form: float  # unfinished / too short / too long / malformed words
    total: float


def _distinct_capped(words: list[str], lexicon: frozenset[str]) -> int:
    return min(len(set(words) & lexicon), SATURATION)


def gold_breakdown(prompt: str, response: str, *, finished: bool = True) -> GoldBreakdown:
    """The gold score's terms for `response` (see `gold_score`)."""
    del prompt  # the preference is about the reply's manner; the prompt is kept for the judge's signature
    words = response.split()
    sentiment = (W_POSITIVE * _distinct_capped(words, POSITIVE) + W_POLITE * _distinct_capped(words, POLITE)
                 + W_NEGATIVE * _distinct_capped(words, NEGATIVE) + W_RUDE * _distinct_capped(words, RUDE))

    content = [w for w in words if w not in FUNCTION_WORDS]
    repeated_words = len(content) - len(set(content))
    bigrams = [b for b in zip(words, words[1:]) if b[0] not in FUNCTION_WORDS or b[1] not in FUNCTION_WORDS]
    repeated_bigrams = len(bigrams) - len(set(bigrams))
    stutters = sum(a == b and a not in PUNCT for a, b in zip(words, words[1:]))
    repetition = W_REPEAT * (repeated_words + repeated_bigrams + stutters)

    oov = sum(w not in DOMAIN_VOCAB for w in words)
    # fluency: "great wonderful day", "you thank" or ". ." occur in no clean reply of the domain
    salad = sum(b not in DOMAIN_BIGRAMS for b in zip(words, words[1:]))
    form = W_MALFORMED * (oov + salad)
    if not finished or not words or words[-1] != ".":
        form += P_UNFINISHED
    if len(words) < MIN_WORDS:
        form += P_SHORT
    form += W_LONG * max(0, len(words) - MAX_WORDS)

    low, high = SCORE_RANGE
    total = min(high, max(low, sentiment + repetition + form))
    return GoldBreakdown(sentiment, repetition, form, round(total, 6))


def gold_score(prompt: str, response: str, *, finished: bool = True) -> float:
    """The held-out gold judge: higher for positive, polite, non-repetitive, well-formed replies.

    score = clip(sentiment + repetition + form, -2, 2), on the reply's whitespace-separated words:
      sentiment  = 0.5 min(#distinct positive, 2) + 0.5 min(#distinct polite, 2)
                   - 0.5 min(#distinct negative, 2) - 1.0 min(#distinct rude, 2)
      repetition = -0.5 (repeated content words + repeated bigrams with a content word + stutters)
      form       = -0.5 (out-of-vocabulary words + bigrams that no clean reply contains)
                   - 1 if unfinished (finished=False or the last word is not ".")
                   - 1 if fewer than 4 words, - 0.1 per word beyond 20
    `finished` says whether the model emitted EOS; text-only callers leave it True and rely on the
    final-period check. The saturation is what makes stacked praise ("great great great") worthless.
    """
    return gold_breakdown(prompt, response, finished=finished).total


# ---------------------------------------------------------------------------
# The second criterion: concise (see docs/embedded-model.md for the formula)
# ---------------------------------------------------------------------------
CRITERIA = ("helpful", "concise")  # the task's hidden judges; `helpful` is gold_score
CONCISE_BUDGET = 10  # words (punctuation counts): the longest helpful action fits in it
W_ACTION = 1.0  # a helpful action on the prompt's topic
W_EXTRA_WORD = -0.1  # per word beyond CONCISE_BUDGET
W_CONCISE_OOV = -0.5  # per word outside the domain vocabulary


def _helpful_phrases() -> dict[str, frozenset[tuple[str, ...]]]:
    """topic -> every filling of its helpful actions, as word tuples (any product: the judge does not
    check it, like gold_score)."""
    return {topic: frozenset(tuple(t.split()) for template in templates for t in _expansions(template))
            for topic, templates in HELPFUL.items()}


HELPFUL_PHRASES = _helpful_phrases()
_ANY_TOPIC = frozenset().union(*HELPFUL_PHRASES.values())


def has_helpful_action(prompt: str, response: str) -> bool:
    """True when the reply contains, word for word, a helpful action for the prompt's topic (any topic's
    for a prompt outside the task)."""
    spec = _PROMPTS.get(prompt.strip())
    phrases = HELPFUL_PHRASES[spec.topic] if spec is not None else _ANY_TOPIC
    words = tuple(response.split())
    lengths = {len(p) for p in phrases}
    return any(words[i:i + n] in phrases for n in lengths for i in range(len(words) - n + 1))


def concise_score(prompt: str, response: str, *, finished: bool = True) -> float:
    """The `concise` judge: a short reply that still answers.

    score = clip(action + length + form, -2, 2), on the reply's whitespace-separated words:
      action = 1 if the reply contains a helpful action for the prompt's topic, else 0
      length = -0.1 per word beyond 10
      form   = -0.5 per out-of-vocabulary word, - 1 if unfinished (finished=False or the last word is not ".")
    So "your refund is on its way ." scores 1, and every polite opener or closer around it costs
    0.1 per word, which `gold_score` (the `helpful` criterion) rewards instead.
    """
    words = response.split()
    action = W_ACTION if has_helpful_action(prompt, response) else 0.0
    length = W_EXTRA_WORD * max(0, len(words) - CONCISE_BUDGET)
    form = W_CONCISE_OOV * sum(w not in DOMAIN_VOCAB for w in words)
    if not finished or not words or words[-1] != ".":
        form += P_UNFINISHED
    low, high = SCORE_RANGE
    return round(min(high, max(low, action + length + form)), 6)


GOLD_JUDGES = {"helpful": gold_score, "concise": concise_score}


def gold_scores(prompt: str, response: str, *, finished: bool = True) -> dict[str, float]:
    """Every hidden judge's score of one reply, by criterion: {"helpful": ..., "concise": ...}."""
    return {name: judge(prompt, response, finished=finished) for name, judge in GOLD_JUDGES.items()}
