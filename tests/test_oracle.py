"""The gold judge and the simulated labelers reproduce the seed's judgements."""

import random

import pytest

from rlhfkit.world import DIMENSIONS, WEIGHTS, Task, eval_panel, labelers, score, split_prompts
from rlhfkit.world.corpus import REQUIREMENTS
from rlhfkit.world.facts import ATTRACTION_CITY, CITIES, ELEMENTS, FAKE_ATTRACTIONS
from rlhfkit.world.oracle import Labeler, find_attractions, inter_labeler_agreement
from rlhfkit.world.tasks import SEED_RANKINGS, demonstration

# The seed's examples, verbatim (the ranked ones are the world's SEED_RANKINGS, which reward/eval.json scores).
(CHONGQING, (R21, R22, R23)), (BEIJING, (BEIJING_PTX, BEIJING_PPO)) = SEED_RANKINGS
NEWS = "请写一篇关于环保的新闻稿。"
NEWS_GPT = "要求字数 800 字，信息充分、清晰、叙述简洁。"
NEWS_GOOD = (
    "本报讯，本市全面推行垃圾分类，居民小区已基本实现分类投放。有关部门加大河道治理力度，生态环境越来越好。"
)
MOON = "向一个 6 岁小孩解释什么是登录月球"
MOON_R1 = (
    "登录月球是指人类制造的飞船或者宇宙飞船成功着陆在月球表面上。就像我们在地球上生活一样，月球也是一个天体，"
    "它离地球很近，所以人类一直都对月球有着浓厚的兴趣。人类历史上第一次成功登录月球是在 1969 年，美国宇航员尼尔·"
    "阿姆斯特朗成为了第一个在月球上行走的人。所以，登录月球是人类探索宇宙的一个重要里程碑，也是人类科技发展的一个"
    "重要标志。"
)
NAMING = "给我的孩子取个名字，五行属水"


def test_weights_sum_to_ten_and_cover_dimensions():
    assert tuple(WEIGHTS) == DIMENSIONS
    assert sum(WEIGHTS.values()) == pytest.approx(10.0)
    heavy = sorted(WEIGHTS, key=WEIGHTS.get, reverse=True)[:3]
    assert set(heavy) == {"correct", "on_topic", "answers"}


def test_seed_chongqing_ranking_and_reasons():
    s1, s2, s3 = (score(CHONGQING, r) for r in (R21, R22, R23))
    assert s1.total > s2.total > s3.total
    assert s1.total == pytest.approx(10.0)
    assert 5.5 <= s2.total <= 8.0 and 2.0 <= s3.total <= 4.5  # the seed gives 10 / 6 / 2
    # 2-2: 都江堰 (成都) and 三峡大坝 (宜昌) are not in 重庆 — it loses on "correct" only
    assert s2.dims["correct"] < 0.5
    assert {d for d in DIMENSIONS if s2.dims[d] < 1.0} == {"correct"}
    # 2-3: talks about 成都, and none of its places is in 重庆 — 鸡同鸭讲
    assert s3.dims["on_topic"] == 0.0 and s3.dims["correct"] == 0.0
    assert {d for d in DIMENSIONS if s3.dims[d] < 1.0} == {"on_topic", "correct"}


def test_city_prefixed_attraction_is_recognised():
    assert find_attractions("重庆洪崖洞、三峡博物馆") == ["洪崖洞", "三峡博物馆"]
    assert score(CHONGQING, "推荐重庆洪崖洞和解放碑步行街。").dims["correct"] == 1.0


def test_every_attraction_is_found_as_itself():
    # Longest match first: 瘦西湖 is not 西湖, 南京路步行街 is not 南京.
    for a in list(ATTRACTION_CITY) + FAKE_ATTRACTIONS:
        assert find_attractions(f"推荐{a}。") == [a]


def test_travel_correct_needs_two_attractions_and_punishes_wrong_ones():
    one = score(CHONGQING, "重庆可以去洪崖洞看看。").dims["correct"]
    two = score(CHONGQING, "重庆可以去洪崖洞和磁器口古镇看看。").dims["correct"]
    fake = score(CHONGQING, "重庆可以去洪崖洞、磁器口古镇和华美极乐世界。").dims["correct"]
    assert one == 0.5 and two == 1.0 and fake < two


def test_beijing_punctuation_beats_run_on_answer():
    ptx, ppo = score(BEIJING, BEIJING_PTX), score(BEIJING, BEIJING_PPO)
    assert ptx.total > ppo.total
    assert ptx.dims["correct"] == ppo.dims["correct"] == 1.0  # both are right about 北京
    assert ptx.dims["fluency"] == 1.0 and ppo.dims["fluency"] < 0.3


def test_news_item_beats_continued_requirements():
    good, gpt = score(NEWS, NEWS_GOOD), score(NEWS, NEWS_GPT)
    assert good.total > gpt.total + 5
    assert good.dims["answers"] == 1.0 and gpt.dims["answers"] == 0.0


def test_naming_by_element():
    water = score(NAMING, "可以叫王泽涵。“泽”和“涵”五行都属水，寓意聪明灵动、心胸宽广。")
    fire = score(NAMING, "可以叫王炎煜。“炎”和“煜”五行都属火，寓意热情开朗、前程光明。")
    assert water.total > fire.total
    assert water.dims["correct"] == 1.0 and fire.dims["correct"] == 0.0
    # a surname the user gave must be used
    asked = "我姓李，给我的孩子取个名字，五行属水"
    assert score(asked, "可以叫李泽涵。").dims["correct"] > score(asked, "可以叫王泽涵。").dims["correct"]


def test_seed_moon_answer_scores_well():
    s = score(MOON, MOON_R1)
    assert s.dims["correct"] == 1.0 and s.dims["on_topic"] == 1.0 and s.dims["answers"] == 1.0
    assert s.total >= 9.0
    wrong = score(MOON, "彩虹是阳光照进空中的小水滴以后出现的彩色弧线。")
    assert wrong.dims["on_topic"] == 0.0 and wrong.total < s.total - 5


def test_continuing_the_prompt_is_not_answering():
    for response in (
        "我想去成都玩，有哪些好玩的地点呢？我想去北京玩，有哪些好玩的地点呢？",
        "最好是适合带孩子去的地方。",
    ):
        assert score(CHONGQING, response).dims["answers"] == 0.0
    assert score(NAMING, "，要求寓意好、好听、不要生僻字。").dims["answers"] == 0.0
    # restating the question before answering costs something, but less than not answering
    restated = score(CHONGQING, "重庆有哪些好玩的地点呢？" + R21)
    assert 0.0 < restated.dims["answers"] < 1.0


def test_missing_eos_lowers_score():
    ended, cut = score(CHONGQING, R21, ended=True), score(CHONGQING, R21, ended=False)
    assert cut.total < ended.total and cut.dims["ends"] < ended.dims["ends"]
    assert score(CHONGQING, R21[:-1]).dims["ends"] < 1.0  # no sentence-final punctuation


def test_repetition_lowers_no_repeat():
    loop = "重庆有洪崖洞、解放碑步行街。" * 4
    assert score(CHONGQING, loop).dims["no_repeat"] < 0.5 < score(CHONGQING, R21).dims["no_repeat"]
    assert score(CHONGQING, "重庆有洪崖洞、洪崖洞、洪崖洞、洪崖洞。").dims["no_repeat"] < 0.5


def test_length_and_garbage():
    assert score(CHONGQING, "洪崖洞。").dims["length"] < 1.0
    assert score(CHONGQING, R21 * 3).dims["length"] < 1.0
    assert score(CHONGQING, R21.replace("。", "<unk>\ufffd\ufffd。")).dims["fluency"] < 0.5


def test_out_of_world_prompt_gets_generic_dims():
    s = score("今天晚饭吃什么？", "可以吃一碗热腾腾的面条，再配一个小菜。")
    assert s.dims["on_topic"] == s.dims["correct"] == 0.5
    assert s.dims["answers"] == s.dims["fluency"] == 1.0


def test_scores_are_bounded_and_deterministic():
    rng = random.Random(0)
    alphabet = "重庆洪崖洞，。、？要求字数800北京故宫水泽abc<unk> "
    for _ in range(300):
        response = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        s = score(CHONGQING, response, ended=rng.random() < 0.5)
        assert all(0.0 <= v <= 1.0 for v in s.dims.values())
        assert 0.0 <= s.total <= 10.0 + 1e-9
        assert s == score(CHONGQING, response, ended=s.dims["ends"] >= 0.6)
    assert score(CHONGQING, "").total == 0.0


# ----------------------------------------------------------------------------- labelers


def realistic_items(n: int = 40, k: int = 4, seed: int = 0) -> list[tuple[str, list[str], list[bool]]]:
    """K responses per eval prompt, of the kinds an SFT model produces: good, cut off, unpunctuated, ..."""
    rng = random.Random(seed)
    items = []
    for task in split_prompts()["eval"][:n]:
        good = demonstration(task, rng)
        pool = [
            (good, True),
            (demonstration(task, rng), True),
            (good[: len(good) // 2], False),
            ("".join(ch for ch in good if ch not in "，。、！：“”"), True),
            (rng.choice(REQUIREMENTS[task.family]).format(n=800), True),
            (good + good, True),
        ]
        if task.family in ("travel", "naming"):
            subjects = CITIES if task.family == "travel" else ELEMENTS
            wrong = rng.choice([s for s in subjects if s != task.subject])
            pool.append((demonstration(Task(task.family, wrong, task.prompt), rng), True))
        chosen = rng.sample(pool, k)
        items.append((task.prompt, [r for r, _ in chosen], [e for _, e in chosen]))
    return items


def test_labelers_are_deterministic_and_differ():
    a, b = labelers(3), labelers(3)
    responses, ended = [R23, R21, R22, BEIJING_PTX], [True, True, False, True]
    for la, lb in zip(a, b):
        assert la.weights == lb.weights
        assert la.rank(CHONGQING, responses, ended) == lb.rank(CHONGQING, responses, ended)
        assert la.rank(CHONGQING, responses, ended) == la.rank(CHONGQING, responses, ended)
    assert a[0].weights != a[1].weights
    assert all(w > 0 for lab in a for w in lab.weights.values())


def test_noiseless_labelers_rank_seed_examples():
    for lab in labelers(5, noise=0.0):
        assert lab.rank(CHONGQING, [R21, R22, R23], [True] * 3) == [0, 1, 2]
        assert lab.rank(CHONGQING, [R23, R21, R22], [True] * 3) == [1, 2, 0]
        assert lab.compare(BEIJING, BEIJING_PTX, True, BEIJING_PPO, True) == 1.0
        assert lab.compare(NEWS, NEWS_GPT, True, NEWS_GOOD, True) == 0.0


def test_compare_ties_only_for_identical_responses():
    lab = Labeler(0, noise=5.0)
    assert lab.compare(CHONGQING, R21, True, R21, True) == 0.5
    assert lab.compare(CHONGQING, R21, True, R21, False) in (0.0, 1.0)
    # compare agrees with rank, in both orders
    for a, b in [(R21, R22), (R22, R23), (R21, R23)]:
        assert lab.compare(CHONGQING, a, True, b, True) == 1.0 - lab.compare(CHONGQING, b, True, a, True)


def test_flip_rate_swaps_one_adjacent_pair():
    clean, noisy = Labeler(0, noise=0.0), Labeler(0, noise=0.0, flip_rate=1.0)
    ranking = noisy.rank(CHONGQING, [R21, R22, R23], [True] * 3)
    assert ranking in ([1, 0, 2], [0, 2, 1])
    assert clean.rank(CHONGQING, [R21, R22, R23], [True] * 3) == [0, 1, 2]


def test_eval_panel_is_held_out_and_votes():
    train_seeds = {lab.seed for lab in labelers()}
    panel = eval_panel()
    assert len(panel.labelers) == 5 and not train_seeds & {lab.seed for lab in panel.labelers}
    assert panel.compare(CHONGQING, R21, True, R23, True) == 1.0
    assert panel.compare(CHONGQING, R23, True, R21, True) == 0.0
    assert panel.compare(CHONGQING, R21, True, R21, True) == 0.5
    even = eval_panel(n=2, noise=3.0)
    assert even.compare(CHONGQING, R21, True, R22, True) in (0.0, 1.0)


def test_inter_labeler_agreement_is_human_like():
    items = realistic_items()
    default = inter_labeler_agreement(labelers(5), items)
    assert 0.6 <= default <= 0.95  # InstructGPT reports ~73% between training labelers
    assert inter_labeler_agreement(labelers(5, noise=0.0, weight_noise=0.0), items) == 1.0
    assert inter_labeler_agreement(labelers(5, noise=2.0), items) < default


def test_keyword_dump_is_not_an_explanation():
    dump, moon = score(MOON, "月球、飞船。"), score(MOON, MOON_R1)
    assert dump.dims["correct"] < 0.5 and dump.total < moon.total - 2
