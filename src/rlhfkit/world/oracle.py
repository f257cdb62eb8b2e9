"""The gold judge of the embedded world, and simulated human labelers built on it.

`score` grades a (prompt, response) on named dimensions, each in [0, 1], with pure string operations:

  answers    answers instead of continuing the instruction (no requirement text, no new questions, no restating)
  on_topic   talks about the asked city / element / concept / topic, not another one
  correct    travel: the attractions named are in the asked city (≥ 2 for full credit, other-city and made-up
             places cost); naming: the proposed names use characters of the asked element; explain / news:
             keywords of the concept / topic are present, in an answer of some substance
  fluency    punctuated like human writing: no long unpunctuated runs, no run-together lists, no garbage
  no_repeat  no repeated n-grams, sentences or attractions
  ends       the response ended with EOS and with sentence-final punctuation
  length     within family-specific bounds, with a smooth penalty outside

The total is Σ weight · dim with WEIGHTS summing to 10, so the seed's three 重庆 answers score about 10 / 7 / 3.5
(the seed says 10 / 6 / 2). A `Labeler` is this judge with its own perturbed weights and noise; the evaluation
uses a separate `Panel` of labelers so the reward model is never graded by the labelers it was trained on.
"""

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass, field

from rlhfkit.world.facts import (
    ATTRACTION_CITY,
    CITIES,
    CONCEPT_KEYWORDS,
    CONCEPTS,
    ELEMENTS,
    FAKE_ATTRACTIONS,
    NEWS_TOPICS,
    SURNAMES,
    TOPIC_KEYWORDS,
)
from rlhfkit.world.tasks import Task, parse_prompt, prompt_surname

DIMENSIONS = ("answers", "on_topic", "correct", "fluency", "no_repeat", "ends", "length")

# What a labeler cares about most: an answer to the question, about the right subject, with true facts.
WEIGHTS: dict[str, float] = {
    "answers": 1.5,
    "on_topic": 2.5,
    "correct": 4.0,
    "fluency": 1.0,
    "no_repeat": 0.45,
    "ends": 0.45,
    "length": 0.1,
}
assert abs(sum(WEIGHTS.values()) - 10.0) < 1e-9

# Acceptable response length in characters, per family (None: a prompt from outside the world).
LENGTH_BOUNDS: dict[str | None, tuple[int, int]] = {
    "travel": (15, 150),
    "naming": (10, 120),
    "explain": (20, 200),
    "news": (30, 200),
    None: (10, 200),
}
# Characters between two punctuation marks: human text averages under 14 (the seed's good answers ~12) and
# rarely runs past 26 (the seed's 登录月球 answer has one clause of 29); unpunctuated model output does both.
MEAN_CLAUSE, MAX_CLAUSE = 14, 26
MIN_SUBSTANCE = 25  # characters an explanation or a news item needs before its keywords count in full
OUT_OF_WORLD = 0.5  # task dimensions of a prompt the world does not know

_PUNCT = "，。、！？；：,.!?;:…—·“”‘’\"'（）()《》【】"
_FINAL = '。！？!?…”’"）)】'
_SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", "<|endoftext|>", "<|im_end|>", "<|im_start|>", "[UNK]")


@dataclass
class GoldScore:
    total: float
    dims: dict[str, float] = field(default_factory=dict)


def score(prompt: str, response: str, ended: bool = True, weights: dict | None = None) -> GoldScore:
    """Grade one response to one prompt. Deterministic, pure string operations."""
    weights = WEIGHTS if weights is None else weights
    task = parse_prompt(prompt)
    text = "".join(response.split())  # Chinese has no spaces; "800 字" and "800字" are the same text
    if not text:
        return GoldScore(0.0, {d: 0.0 for d in DIMENSIONS})
    sentences = _sentences(text)
    kinds = [_sentence_kind(s) for s in sentences]
    answer = "".join(s for s, k in zip(sentences, kinds) if k == "answer")
    if task is None:
        on_topic = correct = OUT_OF_WORLD
    else:
        on_topic, correct = _TASK_DIMS[task.family](task, answer)
    dims = {
        "answers": _answers(sentences, kinds),
        "on_topic": on_topic,
        "correct": correct,
        "fluency": _fluency(text),
        "no_repeat": _no_repeat(text, sentences),
        "ends": 0.6 * bool(ended) + 0.4 * (text[-1] in _FINAL),
        "length": _length(len(text), LENGTH_BOUNDS[task.family if task else None]),
    }
    return GoldScore(sum(weights[d] * dims[d] for d in DIMENSIONS), dims)


# ----------------------------------------------------------------------------- answers


def _sentences(text: str) -> list[str]:
    return re.findall(r"[^。！？!?；;]+[。！？!?；;]*|[。！？!?；;]+", text)


_INSTRUCTION_STARTS = (
    "请问", "请写", "请给", "请帮", "请用", "请以", "请撰写", "请就", "请介绍", "请推荐", "请向",
    "帮我", "帮宝宝", "给我", "我想", "我家", "我姓", "向一个",
)  # fmt: skip
# Requirements and wishes that follow an instruction on the web (see corpus.REQUIREMENTS).
_REQUIREMENT_RE = re.compile(
    r"要求|字数|不少于|不超过|生僻字|信息充分|\d+字|最好是|预算|求推荐|希望名字|不知道怎么"
)


def _sentence_kind(sentence: str) -> str:
    """'prompt' (a question or instruction), 'requirement' (text that follows an instruction), or 'answer'."""
    s = sentence.lstrip(_PUNCT)
    if not s or s.endswith(("？", "?")) or s.startswith(_INSTRUCTION_STARTS) or parse_prompt(s) is not None:
        return "prompt"
    if _REQUIREMENT_RE.search(s):
        return "requirement"
    return "answer"


def _answers(sentences: list[str], kinds: list[str]) -> float:
    # The share of the response that answers; continuing the instruction right away (文字接龙) costs half again.
    total = sum(map(len, sentences))
    answered = sum(len(s) for s, k in zip(sentences, kinds) if k == "answer")
    return answered / total * (1.0 if kinds[0] == "answer" else 0.5)


# ----------------------------------------------------------------------------- on_topic and correct


def _alternation(words) -> re.Pattern:
    # Longest first, so 瘦西湖 is found as itself and not as 西湖.
    return re.compile("|".join(map(re.escape, sorted(words, key=len, reverse=True))))


_ATTRACTION_RE = _alternation(list(ATTRACTION_CITY) + FAKE_ATTRACTIONS)
_CITY_RE = _alternation(CITIES)
_CONCEPT_RE = _alternation(CONCEPTS)
_TOPIC_RE = _alternation(NEWS_TOPICS)
_ELEMENT_CHAR = {c: e for e, chars in ELEMENTS.items() for c in chars}
_NAME_RE = re.compile(f"([{''.join(SURNAMES)}])([{''.join(_ELEMENT_CHAR)}]{{1,2}})")
_ELEMENT_MENTION_RE = re.compile("(?:属|缺|五行)([金木水火土])")


def find_attractions(text: str) -> list[str]:
    """Attractions (real or made-up) named in a text, in order; 重庆洪崖洞 counts as 洪崖洞."""
    return _ATTRACTION_RE.findall(text)


def _travel(task: Task, text: str) -> tuple[float, float]:
    attractions = find_attractions(text)
    # on_topic: the cities the text talks about (attraction names masked, so 南京路步行街 is not 南京)
    cities = _CITY_RE.findall(_ATTRACTION_RE.sub("□", text))
    if cities:
        on_topic = cities.count(task.subject) / len(cities)
    elif attractions:
        on_topic = sum(ATTRACTION_CITY.get(a) == task.subject for a in attractions) / len(attractions)
    else:
        on_topic = 0.0
    # correct: precision² of the named attractions (one wrong place in two is unacceptable), ≥ 2 needed
    unique = set(attractions)
    good = sum(ATTRACTION_CITY.get(a) == task.subject for a in unique)
    bad = len(unique) - good + 0.5 * _unknown_list_items(text)
    if good == 0:
        return on_topic, 0.0
    return on_topic, (good / (good + bad)) ** 2 * min(1.0, good / 2)


def _unknown_list_items(text: str) -> int:
    # Items of an attraction list "A、B、C" that are no known place: invented or garbled attractions.
    unknown = 0
    for clause in re.split(r"[，。：；！？,.:;!?（）()]", text):
        items = clause.split("、")
        known = [bool(_ATTRACTION_RE.search(item)) for item in items]
        if len(items) > 1 and any(known):
            unknown += sum(not k and 0 < len(item) <= 10 for item, k in zip(items, known))
    return unknown


def _naming(task: Task, text: str) -> tuple[float, float]:
    names = _NAME_RE.findall(text)  # (surname, given name made of element characters)
    chars = [c for _, given in names for c in given]
    mentions = _ELEMENT_MENTION_RE.findall(text)
    if mentions:
        on_topic = mentions.count(task.subject) / len(mentions)
    elif chars:
        on_topic = sum(_ELEMENT_CHAR[c] == task.subject for c in chars) / len(chars)
    else:
        on_topic = 0.0
    if not chars:
        return on_topic, 0.0
    correct = sum(_ELEMENT_CHAR[c] == task.subject for c in chars) / len(chars) * min(1.0, len(chars) / 2)
    surname = prompt_surname(task.prompt)
    if surname and all(s != surname for s, _ in names):
        correct *= 0.6  # the user told us the family name
    return on_topic, correct


def _keyword_dims(subject: str, text: str, keywords: list[str], names: re.Pattern) -> tuple[float, float]:
    # on_topic: mentions of the subject and its keywords against mentions of other subjects' names
    asked = text.count(subject) + sum(text.count(k) for k in keywords)
    other = sum(name != subject for name in names.findall(text))
    on_topic = asked / (asked + other) if asked else 0.0
    # correct: two keywords, inside an answer of some substance (a bare "月球、飞船。" explains nothing)
    correct = min(1.0, sum(k in text for k in keywords) / 2) * min(1.0, len(text) / MIN_SUBSTANCE)
    return on_topic, correct


def _explain(task: Task, text: str) -> tuple[float, float]:
    return _keyword_dims(task.subject, text, CONCEPT_KEYWORDS[task.subject], _CONCEPT_RE)


def _news(task: Task, text: str) -> tuple[float, float]:
    return _keyword_dims(task.subject, text, TOPIC_KEYWORDS[task.subject], _TOPIC_RE)


_TASK_DIMS = {"travel": _travel, "naming": _naming, "explain": _explain, "news": _news}


# ----------------------------------------------------------------------------- fluency, repetition, length

_CLAUSE_RE = re.compile(f"[^{re.escape(_PUNCT)}]+")
_ALLOWED_RE = re.compile(f"[\u4e00-\u9fffA-Za-z0-9%{re.escape(_PUNCT)}]")
_DOUBLE_PUNCT_RE = re.compile(f"[{re.escape('，。、！？；：,;:')}]{{2,}}")


def _fluency(text: str) -> float:
    penalty = 0.0
    clauses = _CLAUSE_RE.findall(text)
    lengths = list(map(len, clauses)) or [0]
    penalty += max(0, sum(lengths) / len(lengths) - MEAN_CLAUSE) / 8 + max(0, max(lengths) - MAX_CLAUSE) / 12
    if len(text) >= 10 and not any(c in _PUNCT for c in text[:-1]):
        penalty += 0.5  # the seed's "北京有故宫颐和园香山世贸天阶": no pause at all
    spans = [m.span() for m in _ATTRACTION_RE.finditer(text)]
    penalty += 0.25 * sum(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # list items run together
    garbage = len(text) - len(_ALLOWED_RE.findall(text))
    penalty += 5 * garbage / len(text) + 0.5 * sum(tok in text for tok in _SPECIAL_TOKENS)
    penalty += 0.2 * len(_DOUBLE_PUNCT_RE.findall(text)) + 0.2 * (
        text[0] in _PUNCT and text[0] not in "“‘（(《【"
    )
    if len(clauses) >= 4 and sum(map(len, clauses)) / len(clauses) < 2:
        penalty += 0.5  # punctuation after every character
    return max(0.0, 1.0 - penalty)


def _no_repeat(text: str, sentences: list[str]) -> float:
    chars = "".join(_CLAUSE_RE.findall(text))
    grams = [chars[i : i + 4] for i in range(len(chars) - 3)]
    repeated = 1 - len(set(grams)) / len(grams) if grams else 0.0
    penalty = 2.5 * max(0.0, repeated - 0.05)
    penalty += 0.4 * (len(sentences) - len(set(sentences)))
    attractions = find_attractions(text)
    penalty += 0.25 * (len(attractions) - len(set(attractions)))
    return max(0.0, 1.0 - penalty)


def _length(n: int, bounds: tuple[int, int]) -> float:
    lo, hi = bounds
    if n < lo:
        return n / lo
    return max(0.0, 1.0 - (n - hi) / hi) if n > hi else 1.0


# ----------------------------------------------------------------------------- simulated labelers


def _stable_seed(*parts) -> int:
    # hashlib, not hash(): Python salts str hashes per process, and labels must reproduce across runs.
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


class Labeler:
    """A simulated labeler: the gold judge with its own taste (perturbed weights) and noise.

    weight_noise: σ of the multiplicative log-normal perturbation of each weight (taste differs between people).
    noise: σ of the Gaussian noise on each perceived utility (a person is not a deterministic function).
    flip_rate: probability that a ranking has one random adjacent pair swapped (the label-noise rate).
    """

    def __init__(self, seed: int, weight_noise: float = 0.2, noise: float = 0.5, flip_rate: float = 0.0):
        self.seed, self.noise, self.flip_rate = seed, noise, flip_rate
        rng = random.Random(seed)
        self.weights = {d: WEIGHTS[d] * math.exp(rng.gauss(0.0, weight_noise)) for d in DIMENSIONS}

    def __repr__(self) -> str:
        return f"Labeler(seed={self.seed}, noise={self.noise}, flip_rate={self.flip_rate})"

    def utility(self, prompt: str, response: str, ended: bool = True) -> float:
        return score(prompt, response, ended, self.weights).total

    def perceived(self, prompt: str, response: str, ended: bool = True) -> float:
        # The same labeler always perceives the same response the same way, whatever it is compared with.
        rng = random.Random(_stable_seed(self.seed, prompt, response, ended))
        return self.utility(prompt, response, ended) + rng.gauss(0.0, self.noise)

    def rank(self, prompt: str, responses: list[str], ended: list[bool] | None = None) -> list[int]:
        """Indices of `responses`, best first."""
        ended = [True] * len(responses) if ended is None else ended
        values = [self.perceived(prompt, r, e) for r, e in zip(responses, ended)]
        order = sorted(range(len(responses)), key=lambda i: -values[i])
        rng = random.Random(_stable_seed(self.seed, prompt, *responses, *ended))
        if len(order) > 1 and rng.random() < self.flip_rate:
            i = rng.randrange(len(order) - 1)
            order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def compare(self, prompt: str, a: str, a_ended: bool, b: str, b_ended: bool) -> float:
        """1.0 if a is preferred, 0.0 if b, 0.5 only if a and b are identical."""
        if a == b and a_ended == b_ended:
            return 0.5
        return 1.0 if self.rank(prompt, [a, b], [a_ended, b_ended])[0] == 0 else 0.0


def labelers(n: int = 5, seed: int = 0, **kw) -> list[Labeler]:
    """The labelers who write the RM training rankings."""
    return [Labeler(seed + i, **kw) for i in range(n)]


@dataclass
class Panel:
    """A held-out panel of labelers; a comparison is their majority vote."""

    labelers: list[Labeler]

    def compare(self, prompt: str, a: str, a_ended: bool, b: str, b_ended: bool) -> float:
        if a == b and a_ended == b_ended:
            return 0.5
        votes = sum(lab.compare(prompt, a, a_ended, b, b_ended) for lab in self.labelers)
        if 2 * votes != len(self.labelers):
            return 1.0 if 2 * votes > len(self.labelers) else 0.0
        # An even split: the panel's summed perception decides, then a fixed coin.
        margin = sum(
            lab.perceived(prompt, a, a_ended) - lab.perceived(prompt, b, b_ended) for lab in self.labelers
        )
        if margin != 0:
            return 1.0 if margin > 0 else 0.0
        return float(_stable_seed(prompt, a, a_ended, b, b_ended) % 2)


PANEL_SEEDS = range(1000, 1005)  # the held-out panel's people; no labeler who writes training rankings is one


def eval_panel(n: int = len(PANEL_SEEDS), seed: int = PANEL_SEEDS.start, **kw) -> Panel:
    """The evaluation panel: different people (seeds) from the labelers the reward model learned from."""
    return Panel(labelers(n, seed, **kw))


def inter_labeler_agreement(labelers: list[Labeler], items: list[tuple[str, list[str], list[bool]]]) -> float:
    """Fraction of response pairs two different labelers order the same way, averaged over labeler pairs."""
    ranks = []
    for lab in labelers:
        positions = []
        for prompt, responses, ended in items:
            order = lab.rank(prompt, responses, ended)
            positions.append({i: p for p, i in enumerate(order)})
        ranks.append(positions)
    rates = []
    for ra, rb in itertools.combinations(ranks, 2):
        agree = total = 0
        for (_, responses, ended), pa, pb in zip(items, ra, rb):
            for i, j in itertools.combinations(range(len(responses)), 2):
                if responses[i] == responses[j] and ended[i] == ended[j]:
                    continue  # identical responses have no order to agree on
                agree += (pa[i] < pa[j]) == (pb[i] < pb[j])
                total += 1
        if total:
            rates.append(agree / total)
    return sum(rates) / len(rates) if rates else float("nan")
