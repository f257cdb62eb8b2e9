"""`rlhfkit eval` outside the embedded world: user prompts, judged by a reward model (the oracle cannot judge);
the reward model's comparison with the held-out panel; the report's figures."""

import json

import pytest
import torch

from rlhfkit import report as report_module
from rlhfkit.config import EvalConfig
from rlhfkit.data import Ranked
from rlhfkit.evaluate import gold_scores
from rlhfkit.evaluate import run as evaluate
from rlhfkit.report import write_figures
from rlhfkit.stages import reward as reward_stage
from rlhfkit.stages.reward import reward_model_vs_gold
from rlhfkit.world import eval_panel, inter_labeler_agreement, labelers, split_prompts

USER_PROMPTS = ["What is the capital of France?", "请问北京有什么好玩的景点？", "Tell me a joke"]


@pytest.fixture
def user_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in USER_PROMPTS))
    return path


def test_user_prompts_are_judged_by_the_reward_model(tiny_gpt, tiny_sft, tiny_reward, user_prompts, tmp_path):
    out = tmp_path / "eval"
    cfg = EvalConfig(
        out=str(out),
        models=[f"gpt={tiny_gpt}", f"sft={tiny_sft}"],
        prompts=str(user_prompts),
        judge=str(tiny_reward),
        samples_per_prompt=2,
        max_new_tokens=8,
        heldout_text="",
    )
    report = evaluate(cfg)
    assert report == json.loads((out / "report.json").read_text())
    assert report["n_prompts"] == len(USER_PROMPTS) and report["reference"] == "sft"
    assert str(tiny_reward) in report["judge"]
    assert report["models"]["sft"]["win_rate"] == 0.5
    gpt = report["models"]["gpt"]
    lo, hi = gpt["win_rate_ci"]
    assert 0.0 <= lo <= gpt["win_rate"] <= hi <= 1.0
    assert gpt["by_family"]["all"]["n"] == len(USER_PROMPTS) * 2
    assert gpt.get("gold_score") is None  # the world's gold judge knows nothing of these prompts
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "judge: reward model" in markdown and f"3 prompts of {user_prompts} × 2 samples" in markdown


def test_user_prompts_without_a_judge_say_what_to_add(tiny_sft, user_prompts, tmp_path):
    cfg = EvalConfig(out=str(tmp_path / "eval"), models=[f"sft={tiny_sft}"], prompts=str(user_prompts))
    with pytest.raises(ValueError, match="need --judge"):
        evaluate(cfg)


def test_best_of_n_without_a_reward_model_stops_before_sampling(
    tiny_sft, user_prompts, tmp_path, monkeypatch
):
    from rlhfkit import evaluate as evaluate_module

    monkeypatch.setattr(
        evaluate_module, "generate_answers", lambda *a, **k: pytest.fail("sampled before the check")
    )
    cfg = EvalConfig(
        out=str(tmp_path / "eval"),
        models=[f"sft={tiny_sft}"],
        prompts=str(user_prompts),
        judge=str(tiny_sft),
        best_of_n=[4],
        reward_model="",
    )
    with pytest.raises(ValueError, match="--best-of-n needs --reward-model"):
        evaluate(cfg)


def test_perplexity_reads_full_blocks_or_one_block_of_a_short_text(tiny_gpt):
    from rlhfkit.batching import token_stream
    from rlhfkit.evaluate import perplexity
    from rlhfkit.losses import lm_loss
    from rlhfkit.modeling import load_causal_lm
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer, model = load_tokenizer(tiny_gpt), load_causal_lm(tiny_gpt).eval()
    text = ["重庆有洪崖洞和解放碑。", "北京有故宫。"]
    stream = token_stream(text, tokenizer)
    assert 2 <= len(stream) < 128
    ids = torch.tensor([stream])
    expected = float(torch.exp(lm_loss(model(input_ids=ids).logits.float(), ids).detach()))
    assert perplexity(model, tokenizer, text) == pytest.approx(expected, rel=1e-5)  # one block of all of it
    # a longer text: its full blocks only, the tail left out
    long = text * 20
    stream = token_stream(long, tokenizer)
    block = 16
    n = len(stream) // block
    ids = torch.tensor([stream[i * block : (i + 1) * block] for i in range(n)])
    expected = float(torch.exp(lm_loss(model(input_ids=ids).logits.float(), ids).detach()))
    assert perplexity(model, tokenizer, long, block=block) == pytest.approx(expected, rel=1e-5)


# --- reward_model_vs_gold on hand-made items, the reward model replaced by fixed scores ----------------------


def world_items() -> list[Ranked]:
    """Two K=3 rankings of world prompts, answers that differ so the panel orders every pair."""
    answers = ["洪崖洞、解放碑和磁器口。", "不知道", "故宫。", "可以去看看。"]
    return [
        Ranked(task.prompt, answers[i : i + 3], [1, 2, 3], ended=[True, False, True])
        for i, task in zip(range(2), split_prompts()["rm"])
    ]


@pytest.fixture
def fixed_rewards(monkeypatch):
    """Replace the reward model by `rewards` (a list, one per response in order); records what was scored."""
    scored: dict = {"rewards": None}

    def fake(model, tokenizer, prompts, responses, ended=None, max_len=256, batch_size=64):
        scored.update(prompts=prompts, responses=responses, ended=ended)
        rewards = scored["rewards"] if scored["rewards"] is not None else [0.0] * len(prompts)
        return torch.tensor(rewards, dtype=torch.float64)

    monkeypatch.setattr(reward_stage, "score_responses", fake)
    return scored


def test_a_reward_model_tie_agrees_with_neither_side(fixed_rewards):
    # Every response scored the same: the RM orders no pair, so it agrees with the panel on none of them.
    report = reward_model_vs_gold(None, None, world_items(), max_len=64)
    assert report["n_panel_pairs"] == 6
    assert report["panel_agreement"] == 0.0
    assert report["accuracy_by_dimension"]
    assert all(d["accuracy"] == 0.0 for d in report["accuracy_by_dimension"].values())


def test_labels_vs_panel_counts_only_the_pairs_the_labels_rank(fixed_rewards):
    prompt = split_prompts()["rm"][0].prompt
    a, b = "洪崖洞、解放碑和磁器口。", "不知道"
    panel_prefers_a = eval_panel().compare(prompt, a, True, b, True) == 1.0
    ranked = Ranked(prompt, [a, b], [1, 2] if panel_prefers_a else [2, 1])  # the labels agree with the panel
    tied = Ranked(prompt, ["故宫。", "可以去看看。"], [1, 1])
    report = reward_model_vs_gold(None, None, [ranked, tied], max_len=64)
    assert report["labels_vs_panel_agreement"] == 1.0  # not 1/2: the tied pair is no disagreement
    assert (report["n_panel_pairs"], report["n_labelled_panel_pairs"]) == (2, 1)


def test_panel_agreement_is_split_by_family(fixed_rewards):
    travel = next(t.prompt for t in split_prompts()["rm"] if t.family == "travel")
    naming = next(t.prompt for t in split_prompts()["rm"] if t.family == "naming")
    good, bad = "洪崖洞、解放碑和磁器口。", "不知道"
    panel = eval_panel()
    first = {p: panel.compare(p, good, True, bad, True) == 1.0 for p in (travel, naming)}
    # The labels agree with the panel on the travel pair and not on the naming pair; the RM agrees on neither.
    items = [
        Ranked(travel, [good, bad], [1, 2] if first[travel] else [2, 1]),
        Ranked(naming, [good, bad], [2, 1] if first[naming] else [1, 2]),
    ]
    fixed_rewards["rewards"] = [0.0, 1.0] if first[travel] else [1.0, 0.0]
    fixed_rewards["rewards"] += [0.0, 1.0] if first[naming] else [1.0, 0.0]
    report = reward_model_vs_gold(None, None, items, max_len=64)
    assert report["panel_agreement_by_family"] == {
        "naming": {"reward_model": 0.0, "labels": 0.0, "pairs": 1},
        "travel": {"reward_model": 0.0, "labels": 1.0, "pairs": 1},
    }


def test_the_reward_model_is_scored_on_the_whole_conversation(fixed_rewards):
    items = world_items()
    turns = [{"role": "system", "content": "你是导游"}, {"role": "user", "content": items[0].prompt}]
    items[0].prompt_messages = turns
    fixed_rewards["rewards"] = [3.0, 2.0, 1.0, 3.0, 2.0, 1.0]
    report = reward_model_vs_gold(None, None, items, max_len=64)
    assert fixed_rewards["prompts"] == [turns] * 3 + [items[1].prompt] * 3
    assert fixed_rewards["ended"] == [True, False, True] * 2
    assert report["n_panel_pairs"] == 6  # the panel and the oracle still read the prompt text


def test_the_labelers_ceiling_uses_the_settings_that_labelled(fixed_rewards):
    items = world_items()
    as_judged = [(i.prompt, i.responses, i.ended) for i in items]
    settings = {"n_labelers": 3, "seed": 7, "labeler_noise": 3.0, "label_noise": 1.0, "source": "x.json"}
    report = reward_model_vs_gold(None, None, items, max_len=64, label_settings=settings)
    expected = inter_labeler_agreement(labelers(3, seed=7, noise=3.0, flip_rate=1.0), as_judged)
    assert report["inter_labeler_agreement"] == expected
    assert report["labelers"] == settings
    fallback = reward_model_vs_gold(None, None, items, max_len=64)
    assert fallback["labelers"] == {
        "n_labelers": 5,
        "seed": 0,
        "labeler_noise": 0.5,
        "label_noise": 0.1,
        "source": "LabelConfig defaults",
    }
    default = inter_labeler_agreement(labelers(5, seed=0, noise=0.5, flip_rate=0.1), as_judged)
    assert fallback["inter_labeler_agreement"] == default != expected


def test_gold_scores_need_every_prompt_to_be_the_worlds():
    world = split_prompts()["eval"][0].prompt
    answers = [("故宫。", True), ("故宫。", True)]
    assert len(gold_scores([world, world], answers)) == 2
    assert gold_scores([world, "Tell me a joke"], answers) == []


def test_figures_never_read_metrics_of_a_run_without_a_directory(tmp_path, monkeypatch):
    # best-of-n has no run directory: its "" must not become ./metrics.jsonl of wherever eval runs.
    read = []
    monkeypatch.setattr(report_module, "read_metrics", lambda path: read.append(path) or [])
    report = {"models": {"sft": {"win_rate": 0.5, "win_rate_ci": [0.4, 0.6]}}, "reference": "sft"}
    write_figures(report, {"sft": str(tmp_path / "sft"), "best_of_4": ""}, tmp_path)
    assert set(read) == {str(tmp_path / "sft")}
    assert (tmp_path / "curves.png").exists()


# --- models with tokenizers of their own ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_sft(tiny_sft, tmp_path_factory):
    """A tiny chat model with a tokenizer of its own (trained on other text), its vocabulary as large as the
    fixtures' so that no size check can tell the two apart."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.tokenizer import load_tokenizer, train_tokenizer
    from rlhfkit.world import pretrain_corpus

    tokenizer = train_tokenizer(pretrain_corpus(7, n_docs=300)[::-1], vocab_size=500)
    out = tmp_path_factory.mktemp("other_tokenizer_sft")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), len(load_tokenizer(tiny_sft))),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)  # no rlhfkit.json: a user's model, taken to be a chat model
    return out


def test_a_model_with_another_tokenizer_is_refused_where_models_read_each_others_ids(
    tiny_sft, other_tokenizer_sft
):
    from transformers import AutoModelForCausalLM

    from rlhfkit.modeling import check_vocab, same_tokenizer
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_sft)
    other = AutoModelForCausalLM.from_pretrained(other_tokenizer_sft)
    assert other.get_input_embeddings().num_embeddings >= len(tokenizer)  # the size check alone would pass it
    assert same_tokenizer(tokenizer, tiny_sft) and same_tokenizer(tokenizer, None)
    assert not same_tokenizer(tokenizer, other_tokenizer_sft)
    with pytest.raises(ValueError, match="ppo --reward-model X: the tokenizer saved with this model"):
        check_vocab(other, tokenizer, "ppo --reward-model X", other_tokenizer_sft)
    check_vocab(other, tokenizer, "no directory given: the size check only")


def test_eval_samples_a_model_with_its_own_tokenizer_and_reports_no_kl(
    tiny_sft, other_tokenizer_sft, tmp_path
):
    cfg = EvalConfig(
        out=str(tmp_path / "eval"),
        models=[f"sft={tiny_sft}", f"other={other_tokenizer_sft}"],
        samples_per_prompt=1,
        max_new_tokens=4,
        heldout_text="",
    )
    report = evaluate(cfg)
    other = report["models"]["other"]
    assert other["kl_to_sft"] is None and 0.0 <= other["win_rate"] <= 1.0
    assert report["models"]["sft"]["kl_to_sft"] == 0.0


def test_report_numbers_never_show_minus_zero():
    # the k1 KL estimate of a model against itself can come out at -1e-9
    assert [report_module._fmt(v, 2) for v in (-0.001, -0.01, 0.0, None)] == ["0.00", "-0.01", "0.00", "—"]


@pytest.mark.parametrize(
    "judge, title",
    [
        ("held-out panel (embedded world)", "Held-out panel preference (95% CI)"),
        ("reward model runs/x/reward", "Preference of the judge (95% CI)\nreward model runs/x/reward"),
    ],
)
def test_the_win_rate_figure_names_its_judge(judge, title, tmp_path, monkeypatch):
    import matplotlib.axes

    titles, set_title = [], matplotlib.axes.Axes.set_title
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_title",
        lambda ax, label, **kw: titles.append(label) or set_title(ax, label, **kw),
    )
    monkeypatch.setattr(report_module, "read_metrics", lambda path: [])
    report = {
        "models": {"sft": {"win_rate": 0.5, "win_rate_ci": [0.5, 0.5]}},
        "reference": "sft",
        "judge": judge,
    }
    write_figures(report, {"sft": str(tmp_path / "sft")}, tmp_path)
    assert titles[0] == title


# --- selectable headroom (eval --headroom K ...) ----------------------------------------------------------------

QUALITY = {"best": 3, "v": 3, "ref_hi": 2, "ref_lo": 1, "z": 0, "x": 0, "w": 0}


def fake_judge(prompt, a, b):
    """1 / ½ / 0 by a fixed quality of each answer text; the same answer is a tie, as the panel's is."""
    if a == b:
        return 0.5
    return 0.5 if QUALITY[a[0]] == QUALITY[b[0]] else float(QUALITY[a[0]] > QUALITY[b[0]])


def test_headroom_picks_the_best_of_k_by_gold_and_judges_it_as_the_win_rates():
    from rlhfkit.evaluate import selectable_headroom

    ok = True
    draws = [[("x", ok), ("best", ok), ("w", ok)], [("z", ok), ("w", ok), ("v", ok)]]
    golds = [[1.0, 5.0, 3.0], [2.0, 2.0, 9.0]]  # prompt 1's first two tie on gold: the first is taken
    reference = [("ref_hi", ok), ("ref_lo", ok), ("z", ok), ("ref_lo", ok)]  # two answers per prompt
    result = selectable_headroom(
        draws, golds, [2, 3], ["p0", "p0", "p1", "p1"], [0, 0, 1, 1], ["a", "b"], reference, fake_judge
    )
    two, three = result["by_k"]["2"], result["by_k"]["3"]
    # K = 2: "best" beats both of prompt 0's answers; "z" ties prompt 1's first (the same answer) and loses its second
    assert two["share"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert (two["by_family"]["a"]["share"], two["by_family"]["b"]["share"]) == (1.0, 0.25)
    assert two["share_ci"] == [0.25, 1.0]  # resampling the two prompts: both b, or both a
    assert two["gold_score"] == pytest.approx((5 + 2) / 2) and two["by_family"]["a"]["n"] == 2
    # K = 3 reaches prompt 1's third answer, the best by gold
    assert three["share"] == 1.0 and three["share_ci"] == [1.0, 1.0] and three["gold_score"] == 7.0
    assert (result["k"], result["n_prompts"], result["samples_drawn"]) == ([2, 3], 2, 6)


def test_eval_headroom_reports_every_family_and_best_of_more_is_no_worse(tiny_sft, tmp_path):
    from rlhfkit.world import FAMILIES

    out = tmp_path / "eval"
    cfg = EvalConfig(
        out=str(out),
        models=[f"sft={tiny_sft}"],
        samples_per_prompt=1,
        max_new_tokens=6,
        heldout_text="",
        headroom=[4, 2],
    )
    report = evaluate(cfg)
    headroom = report["headroom"]
    assert headroom["k"] == [2, 4] and headroom["samples_drawn"] == 4 * report["n_prompts"]
    for entry in headroom["by_k"].values():
        assert entry["share_ci"][0] <= entry["share"] <= entry["share_ci"][1]
        assert set(entry["by_family"]) == set(FAMILIES)
        assert sum(f["n"] for f in entry["by_family"].values()) == report["n_prompts"]
        for family in entry["by_family"].values():
            assert family["share_ci"][0] <= family["share"] <= family["share_ci"][1]
    # the best of 4 is the best of a superset of the best of 2's answers: its gold is never lower
    assert headroom["by_k"]["4"]["gold_score"] >= headroom["by_k"]["2"]["gold_score"]
    assert report["seconds"]["headroom"] > 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "## Selectable headroom: the best of K answers of sft by the gold judge" in markdown
    assert f"| 4 | {report_module._fmt(headroom['by_k']['4']['share'])} [" in markdown


def test_headroom_on_prompts_the_gold_judge_cannot_judge_stops_before_sampling(
    tiny_sft, tiny_reward, user_prompts, tmp_path, monkeypatch
):
    from rlhfkit import evaluate as evaluate_module

    monkeypatch.setattr(
        evaluate_module, "generate_answers", lambda *a, **k: pytest.fail("sampled before the check")
    )
    cfg = EvalConfig(
        out=str(tmp_path / "eval"),
        models=[f"sft={tiny_sft}"],
        prompts=str(user_prompts),
        judge=str(tiny_reward),
        headroom=[8],
    )
    with pytest.raises(ValueError, match=r"eval --headroom 8: picks by the gold judge, which knows only"):
        evaluate(cfg)
