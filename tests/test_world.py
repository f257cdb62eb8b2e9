"""The embedded world: facts, prompt splits, demonstrations, pretraining corpus and export."""

import json
import re
import statistics

from rlhfkit.world import (
    FAMILIES,
    SEED_PROMPTS,
    Task,
    demonstrations,
    export_world,
    heldout_corpus,
    parse_prompt,
    pretrain_corpus,
    score,
    split_prompts,
)
from rlhfkit.world import corpus as corpus_module
from rlhfkit.world.corpus import QA_MARKS, SEED_CONTINUATIONS
from rlhfkit.world.facts import (
    CITIES,
    CITY_TRAITS,
    CONCEPT_KEYWORDS,
    CONCEPTS,
    ELEMENTS,
    FAKE_ATTRACTIONS,
    HELDOUT_CITIES,
    NEWS_TOPICS,
    SURNAMES,
    TOPIC_KEYWORDS,
)
from rlhfkit.world.tasks import SUBJECTS, TEMPLATES, all_tasks, fill, normalize_prompt

# ----------------------------------------------------------------------------- facts


def test_cities_and_attractions():
    assert len(CITIES) >= 30 and set(CITY_TRAITS) == set(CITIES)
    assert all(5 <= len(a) <= 8 for a in CITIES.values())
    every = [a for attractions in CITIES.values() for a in attractions]
    assert len(every) == len(set(every)), "an attraction belongs to exactly one city"
    assert {"洪崖洞", "三峡博物馆", "南山一棵树", "解放碑步行街"} <= set(CITIES["重庆"])
    assert {"春熙路步行街", "都江堰水利工程"} <= set(CITIES["成都"])
    assert {"故宫", "颐和园", "香山", "世贸天阶"} <= set(CITIES["北京"])
    assert "三峡大坝" in CITIES["宜昌"] and "少林寺" in CITIES["登封"]
    assert CITY_TRAITS["重庆"] == "充满活力和美食的城市"
    assert "华美极乐世界" in FAKE_ATTRACTIONS and not set(FAKE_ATTRACTIONS) & set(every)


def test_heldout_cities():
    assert 5 <= len(HELDOUT_CITIES) <= 8 and set(HELDOUT_CITIES) <= set(CITIES)
    assert not {"重庆", "北京", "成都"} & set(HELDOUT_CITIES)


def test_elements_concepts_topics():
    assert list(ELEMENTS) == ["金", "木", "水", "火", "土"]
    chars = [c for cs in ELEMENTS.values() for c in cs]
    assert all(8 <= len(cs) <= 12 for cs in ELEMENTS.values()) and len(chars) == len(set(chars))
    assert {"泽", "涵", "浩", "洋", "沐", "润"} <= set(ELEMENTS["水"]) and not set(chars) & set(SURNAMES)
    for table, keywords, first in [
        (CONCEPTS, CONCEPT_KEYWORDS, "登录月球"),
        (NEWS_TOPICS, TOPIC_KEYWORDS, "环保"),
    ]:
        assert next(iter(table)) == first and set(keywords) == set(table)
        words = [k for ks in keywords.values() for k in ks]
        assert len(words) == len(set(words)), "keywords are disjoint between subjects"
        for subject, facts in table.items():
            assert 3 <= len(facts) <= 5 and 2 <= len(keywords[subject]) <= 4
            text = "".join(facts)
            assert all(k in text for k in keywords[subject])
            assert not [o for o in table if o != subject and o in text], "facts never name another subject"
    assert len(CONCEPTS) >= 20 and len(NEWS_TOPICS) >= 10
    assert {"月球", "飞船", "阿姆斯特朗", "1969"} <= set(CONCEPT_KEYWORDS["登录月球"])


# ----------------------------------------------------------------------------- prompts


def test_templates_and_seed_prompts():
    assert FAMILIES == ("travel", "naming", "explain", "news")
    assert all(len(TEMPLATES[f]) >= 6 for f in FAMILIES)
    expected = [
        ("travel", "重庆"),
        ("travel", "北京"),
        ("news", "环保"),
        ("explain", "登录月球"),
        ("naming", "水"),
    ]
    assert [(t.family, t.subject) for t in map(parse_prompt, SEED_PROMPTS)] == expected
    assert parse_prompt("向一个 6 岁小孩解释什么是登录月球") == Task(
        "explain", "登录月球", "向一个 6 岁小孩解释什么是登录月球"
    )
    assert parse_prompt("给我的孩子取个名字，五行属水。").subject == "水"
    assert parse_prompt("请问北京有什么好玩的景点?").subject == "北京"  # ASCII question mark


def test_parse_prompt_round_trips_every_template():
    tasks = all_tasks()
    assert len(tasks) >= 800
    for task in tasks:
        assert parse_prompt(task.prompt) == task
        assert parse_prompt(" ".join(task.prompt)).subject == task.subject  # spaces anywhere


def test_parse_prompt_rejects_prompts_outside_the_world():
    for prompt in [
        "我想去巴黎玩，有哪些好玩的地点呢？",
        "今天天气怎么样？",
        "",
        "给我的孩子取个名字，五行属风",
    ]:
        assert parse_prompt(prompt) is None
    assert parse_prompt(fill(TEMPLATES["travel"][0], "重庆") + "要求字数800字") is None


def test_splits_are_disjoint_and_sized():
    splits = split_prompts(0)
    assert set(splits) == {"sft", "rm", "rl", "eval"}
    keys = {name: {normalize_prompt(t.prompt) for t in tasks} for name, tasks in splits.items()}
    assert all(len(keys[n]) == len(splits[n]) for n in splits), "no duplicate prompt inside a split"
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not keys[a] & keys[b], f"{a} and {b} share prompts"
    seeds = {normalize_prompt(p) for p in SEED_PROMPTS}
    assert not seeds & set().union(*keys.values()), "the seed's prompts are showcase-only"
    assert 170 <= len(splits["sft"]) <= 230 and 260 <= len(splits["rm"]) <= 340
    assert 260 <= len(splits["rl"]) <= 340 and 110 <= len(splits["eval"]) <= 130
    for family in FAMILIES:
        assert sum(t.family == family for t in splits["eval"]) >= 25
        assert any(t.family == family for t in splits["sft"])
    assert {t.subject for t in splits["sft"] if t.family == "travel"} >= {"重庆", "北京", "成都"}


def test_heldout_cities_never_in_sft():
    sft = split_prompts(0)["sft"]
    assert not [t for t in sft if t.family == "travel" and t.subject in HELDOUT_CITIES]
    heldout_words = set(HELDOUT_CITIES) | {a for c in HELDOUT_CITIES for a in CITIES[c]}
    for demo in demonstrations(0):
        assert not [w for w in heldout_words if w in demo["prompt"] or w in demo["completion"]]
    later = [t.subject for n in ("rm", "rl", "eval") for t in split_prompts(0)[n] if t.family == "travel"]
    assert set(HELDOUT_CITIES) <= set(later)


def test_splits_are_deterministic():
    assert split_prompts(0) == split_prompts(0)
    assert split_prompts(0)["eval"] != split_prompts(1)["eval"]


# ----------------------------------------------------------------------------- demonstrations


def test_demonstrations_are_scarce_fluent_and_score_high():
    demos = demonstrations(0)
    assert demos == demonstrations(0)
    assert [d["prompt"] for d in demos] == [t.prompt for t in split_prompts(0)["sft"]]
    assert all(30 <= len(d["completion"]) <= 120 for d in demos)
    assert all(d["completion"][-1] in "。！" for d in demos)
    scores = [score(d["prompt"], d["completion"]).total for d in demos]
    assert statistics.mean(scores) >= 8.5 and min(scores) >= 7.0
    assert len({d["completion"] for d in demos}) == len(demos)


def test_naming_demonstrations_use_the_given_surname():
    demos = [
        d for d in demonstrations(0) if "姓" in d["prompt"] and parse_prompt(d["prompt"]).family == "naming"
    ]
    assert demos
    for d in demos:
        surname = d["prompt"][d["prompt"].index("姓") + 1]
        assert surname in d["completion"]


# ----------------------------------------------------------------------------- corpus


def test_corpus_is_deterministic_and_bounded():
    docs = pretrain_corpus(0, n_docs=1000)
    assert docs == pretrain_corpus(0, n_docs=1000) and docs != pretrain_corpus(1, n_docs=1000)
    assert len(docs) == 1000 and all(20 <= len(d) <= 200 for d in docs)
    heldout = heldout_corpus()
    assert len(heldout) == len(set(heldout)) == 300
    # held out means unseen: not one document verbatim in the default pretraining corpus
    assert not set(heldout) & set(pretrain_corpus(0, n_docs=20000))


def test_some_news_items_name_their_topic_and_only_carry_its_facts():
    docs = pretrain_corpus(0, n_docs=4000)
    named = {}
    for topic in NEWS_TOPICS:
        for doc in docs:
            for mark in (f"{topic}新闻：", f"【{topic}】", f"{topic}方面，"):
                if doc.startswith(mark):
                    named.setdefault(topic, []).append(doc[len(mark) :])
    assert set(named) == set(NEWS_TOPICS)  # the corpus says which topic each kind of news belongs to
    for topic, bodies in named.items():
        for body in bodies:
            assert body and all(fact in NEWS_TOPICS[topic] for fact in re.findall(r"[^。]*。", body)), topic


def test_exported_heldout_text_avoids_a_larger_corpus(tmp_path, monkeypatch):
    # A corpus larger than the default one (the large preset's) gets held-out text that avoids all of it:
    # shrink "the default" to 100 documents so that a 3000-document corpus is the larger one here.
    monkeypatch.setattr(corpus_module, "TRAIN_DOCS_MAX", 100)
    assert set(heldout_corpus()) & set(pretrain_corpus(0, n_docs=3000))  # what the default text would overlap
    export_world(tmp_path, seed=0, n_docs=3000)
    read = lambda name: {json.loads(line)["text"] for line in (tmp_path / name).read_text().splitlines()}  # noqa: E731
    heldout, corpus = read("pretrain_heldout.jsonl"), read("pretrain.jsonl")
    assert len(heldout) == 300 and len(corpus) > 2000 and not heldout & corpus


def test_corpus_continues_instructions_instead_of_answering():
    docs = pretrain_corpus(0, n_docs=1000)
    text = "\n".join(docs)
    assert "请写一篇关于环保的新闻稿。要求字数800字" in text
    assert all(doc in docs for doc in SEED_CONTINUATIONS)
    # about a fifth of the documents are instruction-shaped text (questions, assignments) that is continued
    shaped = [d for d in docs if any(parse_prompt(d[:i]) for i, ch in enumerate(d[:40]) if ch in "，。？")]
    assert 0.16 <= len(shaped) / len(docs) <= 0.24
    # answered questions exist only as marked question-and-answer pages, never for an eval or seed prompt
    qa = [d for d in docs if d.startswith(tuple(q for q, _ in QA_MARKS))]
    assert 0.09 <= len(qa) / len(docs) <= 0.15
    held_out = {normalize_prompt(t.prompt) for t in split_prompts()["eval"]} | set(
        map(normalize_prompt, SEED_PROMPTS)
    )
    for doc in qa:
        question, answer_mark = next((q, a) for q, a in QA_MARKS if doc.startswith(q))
        asked = doc[len(question) : doc.index(answer_mark)]
        assert normalize_prompt(asked) not in held_out
        task = parse_prompt(asked)
        assert task is not None and not (task.family == "travel" and task.subject in HELDOUT_CITIES)
    # the corpus knows every city, held-out ones included, and their attractions
    assert all(city in text for city in CITIES)
    assert all(any(a in text for a in CITIES[c]) for c in HELDOUT_CITIES)


def test_corpus_uses_the_task_templates():
    text = "\n".join(pretrain_corpus(0))
    for family in FAMILIES:
        used = [t for t in TEMPLATES[family] if "{s}" not in t and fill(t, SUBJECTS[family][0])[:6] in text]
        assert len(used) >= 3


# ----------------------------------------------------------------------------- export


def test_export_world(tmp_path):
    counts = export_world(tmp_path / "world", seed=0, n_docs=200)
    expected = {
        "pretrain.jsonl": {"text"},
        "pretrain_heldout.jsonl": {"text"},
        "sft.jsonl": {"prompt", "completion"},
        "rm_prompts.jsonl": {"prompt", "family", "subject"},
        "rl_prompts.jsonl": {"prompt", "family", "subject"},
        "eval_prompts.jsonl": {"prompt", "family", "subject"},
        "seed_prompts.jsonl": {"prompt", "family", "subject"},
    }
    assert set(counts) == set(expected)
    for name, fields in expected.items():
        raw = (tmp_path / "world" / name).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in raw.splitlines()]
        assert len(rows) == counts[name] > 0
        assert all(set(r) == fields for r in rows)
        assert "\\u" not in raw  # UTF-8, not escaped
    assert counts["pretrain.jsonl"] == 200 and counts["seed_prompts.jsonl"] == 5
    assert counts["sft.jsonl"] == len(split_prompts(0)["sft"])
    assert not list((tmp_path / "world").glob("*.tmp"))
