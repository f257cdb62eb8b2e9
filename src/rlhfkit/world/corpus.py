"""The Step0 pretraining corpus of the embedded world: web-like text that knows the facts but never answers.

Documents mix encyclopedia sentences, travel notes, news paragraphs and — as on the web — instruction-shaped
text that is continued rather than answered: lists of questions, writing assignments followed by their
requirements. A model pretrained on it knows that 洪崖洞 is in 重庆, yet given "请写一篇关于环保的新闻稿。" it plays
文字接龙 and writes "要求字数800字，……", exactly as the seed describes.
"""

import functools
import itertools
import random
from collections.abc import Iterator

from rlhfkit.world.facts import (
    CITIES,
    CITY_TRAITS,
    CONCEPTS,
    ELEMENT_MEANINGS,
    ELEMENTS,
    HELDOUT_CITIES,
    NEWS_TOPICS,
    SURNAMES,
)
from rlhfkit.world.tasks import (
    FAMILIES,
    PROMPT_SURNAMES,
    SEED_PROMPTS,
    SUBJECTS,
    TEMPLATES,
    Task,
    demonstration,
    fill,
    split_prompts,
)

MIN_DOC_CHARS, MAX_DOC_CHARS = 20, 200

# The seed's Step0 behaviour, verbatim: each seed prompt followed by the text a web page would put after it.
SEED_CONTINUATIONS: list[str] = [
    "我想去重庆玩，有哪些好玩的地点呢？我想去成都玩，有哪些好玩的地点呢？我想去北京玩，有哪些好玩的地点呢？",
    "请问北京有什么好玩的景点？请问上海有什么好玩的景点？请问杭州有什么好玩的景点？",
    "请写一篇关于环保的新闻稿。要求字数800字，信息充分、清晰、叙述简洁。",
    "向一个6岁小孩解释什么是登录月球。向一个6岁小孩解释什么是彩虹。向一个6岁小孩解释什么是地震。",
    "给我的孩子取个名字，五行属水，要求寓意好、好听、不要生僻字。",
]
assert all(doc.startswith(p) for doc, p in zip(SEED_CONTINUATIONS, SEED_PROMPTS))

# What follows an instruction on the web: its requirements, or the asker's further wishes.
REQUIREMENTS: dict[str, list[str]] = {
    "travel": [
        "最好是适合带孩子去的地方。",
        "预算两千元左右，求推荐。",
        "打算玩三天，怎么安排比较好？",
        "另外，当地有什么好吃的？",
        "要求交通方便，不要太累。",
    ],
    "naming": [
        "要求寓意好、好听、不要生僻字。",
        "男孩，要求大气一些，不要重名太多。",
        "女孩，要求名字温柔好听。",
        "要求三个字，读起来顺口。",
        "孩子是秋天出生的，希望名字有文化内涵。",
    ],
    "explain": [
        "要求语言通俗易懂，不超过300字。",
        "孩子总问这个问题，我不知道怎么回答。",
        "要求多打比方，少用专业词语。",
        "要求讲得生动有趣，最好能配个小实验。",
    ],
    "news": [
        "要求字数{n}字，信息充分、清晰、叙述简洁。",
        "要求标题醒目，内容真实，字数不少于{n}字。",
        "要求包括时间、地点、人物和事件经过。",
        "要求语言简练，字数{n}字左右。",
    ],
}

# Share of each document kind. A fifth of the corpus is instruction-shaped text that is continued (文字接龙);
# most of the rest carries the facts, which a 1M-parameter model needs to see many times to learn.
DOC_KINDS: dict[str, float] = {
    "instruction": 0.20,
    "qa": 0.12,
    "city": 0.22,
    "travel_note": 0.14,
    "news": 0.11,
    "concept": 0.11,
    "element": 0.10,
}


# Documents in the default Step0 corpus (~580k tokens): the default 600 steps see each about four times. At 4000
# documents (110k tokens, seen 22 times) the GPT memorised its corpus (training perplexity 1.2, held-out 3.2) and every
# later step was worse for it (benchmarks/README.md, pipeline_time.py).
DEFAULT_DOCS = 20000


def pretrain_corpus(seed: int = 0, n_docs: int = DEFAULT_DOCS) -> list[str]:
    """The Step0 corpus; it also contains the seed's continuations verbatim (文字接龙)."""
    docs = generate_docs(seed, n_docs)
    rng = random.Random(seed + 1)
    for doc in SEED_CONTINUATIONS[: len(docs)]:  # each at a random place, so it is seen during training
        docs[rng.randrange(len(docs))] = doc
    return docs


# The default Step0 corpus: held-out text avoids all of it. A larger corpus (the `large` preset's) gets held-out text
# that avoids it instead, written by `export_world` beside it (data/pretrain_heldout.jsonl).
TRAIN_DOCS_MAX = DEFAULT_DOCS


def heldout_corpus(
    seed: int = 12345, n_docs: int = 300, exclude_docs: int = 0, corpus_seed: int = 0
) -> list[str]:
    """Held-out documents from the same generator, for measuring perplexity (the alignment tax): none of them
    is verbatim in the pretraining corpus of `corpus_seed` up to `exclude_docs` documents, or the default corpus
    where that is larger (the generator's templates repeat, so about one draw in eight would be)."""
    # Every generated document up to there, also those a corpus of another size replaced by a continuation.
    seen = set(generate_docs(corpus_seed, max(exclude_docs, TRAIN_DOCS_MAX))) | set(SEED_CONTINUATIONS)
    docs: list[str] = []
    for doc in document_stream(seed):
        if len(docs) == n_docs:
            break
        if doc not in seen:
            docs.append(doc)
            seen.add(doc)  # and no document twice
    return docs


def generate_docs(seed: int, n_docs: int) -> list[str]:
    return list(itertools.islice(document_stream(seed), n_docs))


def document_stream(seed: int) -> Iterator[str]:
    """The generator's documents for `seed`, one after another, without end."""
    rng = random.Random(seed)
    kinds, weights = list(DOC_KINDS), list(DOC_KINDS.values())
    while True:
        yield _document(rng.choices(kinds, weights)[0], rng)


def _document(kind: str, rng: random.Random) -> str:
    # Add sentences of the same kind until the document is long enough, then cut at a sentence end.
    writer = _WRITERS[kind]
    doc = writer(rng)
    while len(doc) < MIN_DOC_CHARS:
        doc += writer(rng)
    while len(doc) > MAX_DOC_CHARS:
        end = max(doc.rfind(p, 0, MAX_DOC_CHARS) for p in "。！？")
        doc = doc[: end + 1] if end >= MIN_DOC_CHARS else doc[:MAX_DOC_CHARS]
    return doc


# ----------------------------------------------------------------------------- document writers


def _instruction_doc(rng: random.Random) -> str:
    family = rng.choice(FAMILIES)
    template = rng.choice(TEMPLATES[family])
    style = rng.random()
    if style < 0.45:  # a list of questions with one template, as in a FAQ or a forum thread title list
        subjects = rng.sample(SUBJECTS[family], min(len(SUBJECTS[family]), rng.randint(2, 5)))
        return "".join(_as_sentence(_prompt(family, template, s, rng)) for s in subjects)
    if style < 0.6:  # a list of questions mixing families
        return "".join(_as_sentence(_random_prompt(rng)) for _ in range(rng.randint(2, 4)))
    # an assignment followed by its requirements
    prompt = _prompt(family, template, rng.choice(SUBJECTS[family]), rng)
    requirement = rng.choice(REQUIREMENTS[family]).format(n=rng.choice([300, 500, 800, 1000]))
    if prompt[-1] in "。？！":
        return prompt + requirement
    return prompt + rng.choice(["，", "。"]) + requirement


def _prompt(family: str, template: str, subject: str, rng: random.Random) -> str:
    return fill(template, subject, rng.choice(PROMPT_SURNAMES))


def _random_prompt(rng: random.Random) -> str:
    family = rng.choice(FAMILIES)
    return _prompt(family, rng.choice(TEMPLATES[family]), rng.choice(SUBJECTS[family]), rng)


def _as_sentence(text: str) -> str:
    return text if text[-1] in "。？！" else text + "。"


QA_MARKS = [
    ("问：", "答："),
    ("网友提问：", "热心网友回答："),
    ("【问题】", "【回答】"),
    ("提问：", "最佳答案："),
]


def _qa_doc(rng: random.Random) -> str:
    # A question-and-answer page (a forum, 知乎, 百度知道): the web does hold some answered questions, always
    # marked as such, so a raw instruction is still continued while the model learns what answers look like.
    task = rng.choice(_qa_tasks())
    question, answer_mark = rng.choice(QA_MARKS)
    return f"{question}{_as_sentence(task.prompt)}{answer_mark}{demonstration(task, rng)}"


@functools.cache
def _qa_tasks() -> list[Task]:
    # Never an eval or seed prompt (they are held out), never a held-out city (RL must generalise to those).
    splits = split_prompts(0)
    tasks = splits["sft"] + splits["rm"] + splits["rl"]
    return [t for t in tasks if not (t.family == "travel" and t.subject in HELDOUT_CITIES)]


def _city_doc(rng: random.Random) -> str:
    city = rng.choice(list(CITIES))
    attractions = rng.sample(CITIES[city], rng.randint(3, len(CITIES[city])))
    sentences = [
        f"{city}是一个{CITY_TRAITS[city]}。",
        f"{city}的著名景点有{'、'.join(attractions)}等。",
    ]
    for a in rng.sample(attractions, 2):
        sentences.append(
            rng.choice(
                [
                    f"{a}位于{city}，是当地有名的景点。",
                    f"{a}是{city}的一处名胜，每年吸引大量游客。",
                    f"来到{city}，很多人都会去{a}看看。",
                    f"{a}在{city}，很值得一去。",
                ]
            )
        )
    first = sentences[:1] if rng.random() < 0.7 else []
    return "".join(first + rng.sample(sentences[1:], rng.randint(1, len(sentences) - 1)))


def _travel_note(rng: random.Random) -> str:
    city = rng.choice(list(CITIES))
    a, b, c = rng.sample(CITIES[city], 3)
    when = rng.choice(["上周", "去年夏天", "国庆节", "前几天", "寒假里"])
    who = rng.choice(["我", "我和家人", "我们一家", "我和朋友"])
    return rng.choice(
        [
            f"{when}{who}去了{city}，先逛了{a}，又去了{b}，最后在{c}拍了很多照片。{city}真是一个{CITY_TRAITS[city]}。",
            f"{when}{who}到{city}旅游。第一天去了{a}，第二天去了{b}和{c}，玩得很开心。",
            f"这次来{city}，最喜欢的是{a}。{b}人很多，{c}的风景也不错，下次还想再来。",
            f"{who}在{city}玩了三天，{a}、{b}、{c}都去了，觉得{city}是一个{CITY_TRAITS[city]}。",
        ]
    )


def _news_doc(rng: random.Random) -> str:
    topic = rng.choice(list(NEWS_TOPICS))
    facts = rng.sample(NEWS_TOPICS[topic], rng.randint(2, 4))
    # As on a news site, some items carry their section ("体育新闻", "【环保】"). Without them only the few answered
    # questions linked a topic to its news, and the models wrote about the asked topic in 1-12% of their news
    # answers, on seed 0's eval prompts 5% (benchmarks/README.md, rm_by_family.py).
    opening = rng.choice(
        [
            "本报讯，",
            "据报道，",
            "近日，",
            "记者从有关部门获悉，",
            "",
            f"{topic}新闻：",
            f"【{topic}】",
            f"{topic}方面，",
        ]
    )
    return opening + "".join(facts)


def _concept_doc(rng: random.Random) -> str:
    first, *rest = CONCEPTS[rng.choice(list(CONCEPTS))]
    return first + "".join(rng.sample(rest, rng.randint(1, len(rest))))


def _element_doc(rng: random.Random) -> str:
    element = rng.choice(list(ELEMENTS))
    chars = rng.sample(ELEMENTS[element], 4)
    a, b = chars[:2]
    surname = rng.choice(SURNAMES)
    return rng.choice(
        [
            f"“{a}”字五行属{element}，常用于取名。“{b}”字五行也属{element}。",
            f"五行属{element}的字有{'、'.join(chars)}等，{rng.choice(ELEMENT_MEANINGS[element])}。",
            f"{surname}{a}{b}这个名字中，{a}和{b}都属{element}。",
            f"在五行中，{a}属{element}，{b}也属{element}，适合五行缺{element}的孩子取名。",
        ]
    )


_WRITERS = {
    "instruction": _instruction_doc,
    "qa": _qa_doc,
    "city": _city_doc,
    "travel_note": _travel_note,
    "news": _news_doc,
    "concept": _concept_doc,
    "element": _element_doc,
}
