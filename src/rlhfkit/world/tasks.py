"""Prompt families of the embedded world, their disjoint SFT / RM / RL / eval splits, and demonstrations.

Four families, as in the seed: travel recommendations for a city, naming a child by element (五行), explaining a
concept to a 6-year-old, and writing a short news item. A prompt is a template filled with a subject; the same
templates appear (continued, not answered) in the pretraining corpus.
"""

import random
import re
from dataclasses import dataclass
from functools import lru_cache

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

FAMILIES = ("travel", "naming", "explain", "news")


@dataclass(frozen=True)
class Task:
    family: str  # one of FAMILIES
    subject: str  # a city, an element (金木水火土), a concept or a news topic
    prompt: str


# "{x}" is the subject; "{s}" (naming only) a surname the user gives.
TEMPLATES: dict[str, list[str]] = {
    "travel": [
        "我想去{x}玩，有哪些好玩的地点呢？",
        "请问{x}有什么好玩的景点？",
        "推荐几个{x}值得去的地方。",
        "{x}有哪些必去的景点？",
        "第一次去{x}旅游，应该去哪些地方？",
        "去{x}旅行，有什么景点推荐吗？",
        "周末打算去{x}，哪里好玩？",
        "请介绍一下{x}的旅游景点。",
    ],
    "naming": [
        "给我的孩子取个名字，五行属{x}",
        "帮宝宝起个五行属{x}的名字。",
        "我家孩子五行缺{x}，请推荐一个名字。",
        "请给新生儿取一个五行属{x}的名字。",
        "想给儿子取个五行属{x}的名字，有什么建议？",
        "女儿五行属{x}，取什么名字好？",
        "请帮忙起一个五行属{x}的好名字。",
        "我姓{s}，给我的孩子取个名字，五行属{x}",
        "我姓{s}，宝宝五行属{x}，请帮忙取个名字。",
        "孩子姓{s}，五行缺{x}，取什么名字好？",
        "请给姓{s}的宝宝起个五行属{x}的名字。",
    ],
    "explain": [
        "向一个6岁小孩解释什么是{x}",
        "请用小朋友能听懂的话解释{x}。",
        "怎么跟6岁的孩子讲清楚{x}？",
        "给幼儿园小朋友讲讲什么是{x}。",
        "孩子问我什么是{x}，该怎么回答？",
        "用简单的话向孩子介绍{x}。",
        "请向一个小学生简单解释{x}。",
        "我家孩子6岁，想知道{x}是怎么回事，请解释一下。",
    ],
    "news": [
        "请写一篇关于{x}的新闻稿。",
        "写一则关于{x}的简短新闻。",
        "请以{x}为主题写一条新闻。",
        "帮我写一篇{x}方面的新闻报道。",
        "请撰写一则{x}新闻。",
        "围绕{x}写一段新闻稿。",
        "请就{x}写一篇短新闻。",
        "写一篇报道{x}领域最新进展的新闻。",
        "请写一条关于{x}的消息。",
    ],
}

SUBJECTS: dict[str, list[str]] = {
    "travel": list(CITIES),
    "naming": list(ELEMENTS),
    "explain": list(CONCEPTS),
    "news": list(NEWS_TOPICS),
}

# Surnames that prompts may name ("我姓王，…"); a subset keeps the number of naming prompts in proportion.
PROMPT_SURNAMES: list[str] = SURNAMES[:12]

# The seed's own prompts, in the seed's order of appearance; showcase prompts, kept out of every split.
SEED_PROMPTS: list[str] = [
    "我想去重庆玩，有哪些好玩的地点呢？",
    "请问北京有什么好玩的景点？",
    "请写一篇关于环保的新闻稿。",
    "向一个6岁小孩解释什么是登录月球",
    "给我的孩子取个名字，五行属水",
]

# The seed's own answers to two of its prompts, verbatim, best first: 2-1 names four 重庆 attractions, 2-2 puts
# 都江堰 and 三峡大坝 in 重庆, 2-3 is about 成都; the punctuated 北京 answer (PPO-ptx's in the seed) beats the
# unpunctuated one (PPO's). Step2's acceptance: the reward model orders each as here (`reward/eval.json`).
SEED_RANKINGS: list[tuple[str, list[str]]] = [
    (
        SEED_PROMPTS[0],
        [
            "重庆是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：重庆洪崖洞、三峡博物馆、南山一棵树、解放碑步行街。",
            "重庆是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：重庆洪崖洞、都江堰水利工程、三峡大坝、解放碑步行街。",
            "成都是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：春熙路步行街、都江堰水利工程、华美极乐世界、少林寺。",
        ],
    ),
    (
        SEED_PROMPTS[1],
        ["北京的好玩景点非常多，包括故宫、颐和园、香山、世贸天阶等等。", "北京有故宫颐和园香山世贸天阶"],
    ),
]

# Approximate split sizes (InstructGPT: demonstrations are the scarcest data).
EVAL_PER_FAMILY = 30
SFT_FRACTION, RM_FRACTION = 0.25, 0.375  # of each family's non-eval prompts; RL gets the rest


def fill(template: str, subject: str, surname: str = "") -> str:
    return template.replace("{x}", subject).replace("{s}", surname)


def all_tasks() -> list[Task]:
    """Every (template, subject[, surname]) combination, in a fixed order."""
    tasks = []
    for family in FAMILIES:
        for template in TEMPLATES[family]:
            for subject in SUBJECTS[family]:
                surnames = PROMPT_SURNAMES if "{s}" in template else [""]
                tasks += [Task(family, subject, fill(template, subject, s)) for s in surnames]
    return tasks


# ----------------------------------------------------------------------------- parsing prompts

# ASCII and full-width variants users type; map them onto the punctuation the templates use.
_PUNCT = str.maketrans(",?!:;()０１２３４５６７８９", "，？！：；（）0123456789")
_TRAILING = "。.！!？?"


def normalize_prompt(text: str) -> str:
    """Remove whitespace, unify punctuation and drop sentence-final punctuation, so spacing never matters."""
    return "".join(text.split()).translate(_PUNCT).rstrip(_TRAILING)


def _template_regex(family: str, template: str) -> re.Pattern:
    subjects = "|".join(sorted(map(re.escape, SUBJECTS[family]), key=len, reverse=True))
    pattern = re.escape(normalize_prompt(template))
    pattern = pattern.replace(re.escape("{x}"), f"(?P<x>{subjects})")
    pattern = pattern.replace(re.escape("{s}"), r"(?P<s>[\u4e00-\u9fff])")
    return re.compile(pattern)


_TEMPLATE_REGEXES = [(f, _template_regex(f, t)) for f in FAMILIES for t in TEMPLATES[f]]


def parse_prompt(prompt: str | list[dict]) -> Task | None:
    """Recover family and subject from a prompt of the world (any template, any spacing); None otherwise,
    and for a conversation (a user's chat messages: the world's prompts are single turns)."""
    return _parse_text(prompt) if isinstance(prompt, str) else None


@lru_cache(maxsize=65536)
def _parse_text(prompt: str) -> Task | None:
    text = normalize_prompt(prompt)
    for family, regex in _TEMPLATE_REGEXES:
        m = regex.fullmatch(text)
        if m:
            return Task(family, m.group("x"), prompt)
    return None


def prompt_surname(prompt: str) -> str | None:
    """The surname a naming prompt asks for ("我姓王，…"), if any."""
    m = re.search(r"姓([\u4e00-\u9fff])", normalize_prompt(prompt))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- splits


def split_prompts(seed: int = 0) -> dict[str, list[Task]]:
    """Disjoint prompt sets: "sft" (demonstrations), "rm" (rankings), "rl" (PPO) and "eval" (balanced).

    Held-out cities never reach "sft"; the seed's own prompts are in no split.
    """
    rng = random.Random(seed)
    seed_prompts = {normalize_prompt(p) for p in SEED_PROMPTS}
    splits: dict[str, list[Task]] = {"sft": [], "rm": [], "rl": [], "eval": []}
    seen = set(seed_prompts)
    by_family: dict[str, list[Task]] = {f: [] for f in FAMILIES}
    for task in all_tasks():
        key = normalize_prompt(task.prompt)
        if key not in seen:  # the same string must never land in two splits
            seen.add(key)
            by_family[task.family].append(task)
    for family in FAMILIES:
        tasks = by_family[family]
        rng.shuffle(tasks)
        splits["eval"] += tasks[:EVAL_PER_FAMILY]
        rest = tasks[EVAL_PER_FAMILY:]
        n_sft = round(SFT_FRACTION * len(rest))
        n_rm = round(RM_FRACTION * len(rest))
        sft_ok = [t for t in rest if not (family == "travel" and t.subject in HELDOUT_CITIES)]
        sft = sft_ok[:n_sft]
        sft_set = set(sft)
        others = [t for t in rest if t not in sft_set]
        splits["sft"] += sft
        splits["rm"] += others[:n_rm]
        splits["rl"] += others[n_rm:]
    for tasks in splits.values():
        rng.shuffle(tasks)  # mix the families
    return splits


# ----------------------------------------------------------------------------- demonstrations

_TRAVEL_DEMOS = [
    "{c}是一个{trait}，有很多值得一去的地方。以下是一些推荐：{list}。",
    "{c}的好玩景点非常多，包括{list}等等。",
    "去{c}旅游，推荐这几个地方：{list}。{close}",
    "{c}是{trait}。值得一去的景点有{list}。{close}",
    "推荐你去{c}的{list}。这些地方都很有特色，{close}",
    "{c}是一个{trait}。如果第一次去，可以先去{list}看看。{close}",
]
_TRAVEL_CLOSINGS = ["祝你旅途愉快！", "可以根据时间安排行程。", "祝你玩得开心！", "记得提前查好开放时间。"]

_NAMING_DEMOS = [
    "可以叫{n1}。“{a}”和“{b}”五行都属{e}，{meaning}。",
    "推荐两个名字：{n1}、{n2}。这几个字五行都属{e}，{meaning}。",
    "建议取名{n1}。{a}、{b}二字都属{e}，{meaning}，读起来也很好听。",
    "给孩子取名{n1}或{n2}都不错。{a}、{b}、{c}、{d}都是五行属{e}的字，{meaning}。",
    "可以考虑{n1}这个名字。{a}和{b}在五行中都属{e}，{meaning}。",
]

_EXPLAIN_OPENINGS = ["", "小朋友，", "简单来说，", "我们可以这样讲：", ""]
_EXPLAIN_CLOSINGS = ["", "是不是很神奇！", "这就是{k}。", "大自然真有趣！", ""]

_NEWS_OPENINGS = ["本报讯，", "据报道，", "记者从有关部门获悉，", "本报讯（记者{reporter}），", "近日，"]
_NEWS_CLOSINGS = ["", "这一消息引起了市民的广泛关注。", "相关工作还将继续推进。", "市民纷纷表示点赞。"]

MIN_DEMO_CHARS, MAX_DEMO_CHARS = 30, 120


def demonstration(task: Task, rng: random.Random) -> str:
    """A labeler-quality answer to a task, from varied templates (30–120 characters)."""
    for _ in range(20):  # re-draw the rare template/fact combination that falls outside the length bounds
        text = _DEMO_WRITERS[task.family](task, rng)
        if MIN_DEMO_CHARS <= len(text) <= MAX_DEMO_CHARS:
            return text
    return text


def _travel_demo(task: Task, rng: random.Random) -> str:
    attractions = rng.sample(CITIES[task.subject], rng.randint(3, 5))
    return rng.choice(_TRAVEL_DEMOS).format(
        c=task.subject,
        trait=CITY_TRAITS[task.subject],
        list="、".join(attractions),
        close=rng.choice(_TRAVEL_CLOSINGS),
    )


def _naming_demo(task: Task, rng: random.Random) -> str:
    surname = prompt_surname(task.prompt) or rng.choice(SURNAMES)
    a, b, c, d = rng.sample(ELEMENTS[task.subject], 4)
    return rng.choice(_NAMING_DEMOS).format(
        n1=surname + a + b,
        n2=surname + c + d,
        a=a,
        b=b,
        c=c,
        d=d,
        e=task.subject,
        meaning=rng.choice(ELEMENT_MEANINGS[task.subject]),
    )


def _explain_demo(task: Task, rng: random.Random) -> str:
    first, *rest = CONCEPTS[task.subject]
    facts = [first] + rng.sample(rest, rng.randint(1, 2))  # the defining fact always comes first
    opening = rng.choice(_EXPLAIN_OPENINGS)
    closing = rng.choice(_EXPLAIN_CLOSINGS).format(k=task.subject)
    return opening + "".join(facts) + closing


def _news_demo(task: Task, rng: random.Random) -> str:
    facts = rng.sample(NEWS_TOPICS[task.subject], rng.randint(2, 3))
    reporter = rng.choice(SURNAMES) + rng.choice("明华丽军平静伟芳")
    opening = rng.choice(_NEWS_OPENINGS).format(reporter=reporter)
    return opening + "".join(facts) + rng.choice(_NEWS_CLOSINGS)


_DEMO_WRITERS = {"travel": _travel_demo, "naming": _naming_demo, "explain": _explain_demo, "news": _news_demo}


def demonstrations(seed: int = 0) -> list[dict]:
    """One {"prompt", "completion"} per SFT prompt — the scarce labeler-written data of Step1."""
    rng = random.Random(seed)
    return [{"prompt": t.prompt, "completion": demonstration(t, rng)} for t in split_prompts(seed)["sft"]]
