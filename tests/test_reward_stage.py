"""Step2 on tiny models: simulated labelers rank the SFT model's answers, a reward model learns from the rankings,
is centred on the demonstrations and saved as a stock sequence-classification model; bad preference files stop at
the CLI with the file and line."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import TINY_REWARD, read_jsonl
from rlhfkit.batching import encode_items, score_responses
from rlhfkit.cli import main
from rlhfkit.config import RewardConfig, preset_config
from rlhfkit.data import Ranked
from rlhfkit.modeling import load_reward_model, read_meta
from rlhfkit.stages import reward
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.world import demonstrations, split_prompts


def test_label_writes_k_ranked_answers_per_rm_prompt(tiny_comparisons):
    rows = read_jsonl(tiny_comparisons)
    rm_prompts = [task.prompt for task in split_prompts()["rm"]]
    assert [row["prompt"] for row in rows] == rm_prompts
    for row in rows:
        assert len(row["responses"]) == 3 and all(isinstance(r, str) for r in row["responses"])
        assert sorted(row["ranking"]) == [0, 1, 2]
        assert len(row["ended"]) == 3 and all(isinstance(e, bool) for e in row["ended"])
    assert len({row["labeler"] for row in rows}) == 5  # prompts go to the labelers in turn
    # The K answers to a prompt are samples, not one answer repeated.
    assert sum(len(set(row["responses"])) == 3 for row in rows) > 0.9 * len(rows)


def test_label_rows_load_as_preferences(tiny_comparisons):
    from rlhfkit.data import load_preferences

    items = load_preferences(tiny_comparisons)
    assert len(items) == len(read_jsonl(tiny_comparisons))
    assert all(len(item.pairs()) == 3 for item in items)  # C(3, 2), rankings have no ties


def test_reward_training_logs_accuracy(tiny_reward):
    rows = read_jsonl(tiny_reward / "metrics.jsonl")
    steps = math.ceil(TINY_REWARD["epochs"] * 261 / TINY_REWARD["batch_size"])  # 290 prompts, 10% held out
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["loss"]) for r in rows)
    last = rows[-1]
    for key in ("val_accuracy", "train_accuracy", "val_loss", "train_loss"):
        assert key in last and math.isfinite(last[key])
    # The ranking loss starts at log 2 (a fresh, nearly-zero head) and goes down; the model fits its data.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert sum(r["loss"] for r in rows[-5:]) / 5 < sum(r["loss"] for r in rows[:5]) / 5 - 0.005
    assert last["train_accuracy"] > 0.6


def test_reward_model_is_a_stock_hf_model(tiny_reward):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward, num_labels=1)
    assert model.config.num_labels == 1
    assert isinstance(model.config.reward_bias, float) and math.isfinite(model.config.reward_bias)
    assert isinstance(model.config.reward_std, float) and model.config.reward_std > 0
    meta = read_meta(tiny_reward)
    assert meta["stage"] == "reward" and meta["complete"] is True and meta["kwise"] is True
    assert meta["reward_bias"] == model.config.reward_bias and meta["reward_std"] == model.config.reward_std
    assert not (tiny_reward / "checkpoint").exists()


def test_reward_eval_report(tiny_reward):
    report = json.loads((tiny_reward / "eval.json").read_text())
    # the ceiling is that of the labelers who wrote the comparisons, as `label` recorded them
    assert report["labelers"]["source"].endswith("comparisons.labelers.json")
    assert report["labelers"]["label_noise"] == 0.1
    for key in ("val_accuracy", "panel_agreement", "inter_labeler_agreement", "train_accuracy"):
        assert 0.0 <= report[key] <= 1.0, key
    assert -1.0 <= report["spearman_reward_vs_gold"] <= 1.0
    assert report["n_val_rankings"] == 29 and report["n_val_pairs"] == 3 * 29
    by_dim = report["accuracy_by_dimension"]
    assert by_dim and all(0.0 <= d["accuracy"] <= 1.0 and d["pairs"] > 0 for d in by_dim.values())
    assert sum(d["pairs"] for d in by_dim.values()) <= report["n_panel_pairs"]
    assert report["initialised_from"]["stage"] == "sft"


def test_the_seed_rankings_are_scored_as_score_scores_them(tiny_reward):
    """reward/eval.json holds the RM's scores of the seed's 重庆 and 北京 answers and says whether they are in the
    seed's order — Step2's acceptance check, recorded by every run."""
    from rlhfkit.world import SEED_RANKINGS

    report = json.loads((tiny_reward / "eval.json").read_text())
    tokenizer = load_tokenizer(tiny_reward)
    model = load_reward_model(tiny_reward, tokenizer.pad_token_id, trained=True).eval()
    assert [r["prompt"] for r in report["seed_rankings"]] == [p for p, _ in SEED_RANKINGS]
    for ranking, (prompt, answers) in zip(report["seed_rankings"], SEED_RANKINGS):
        with torch.no_grad():
            rewards = score_responses(
                model, tokenizer, [prompt] * len(answers), answers, max_len=TINY_REWARD["max_len"]
            )
        assert ranking["rewards"] == pytest.approx(rewards.tolist(), abs=1e-5)
        assert ranking["in_seed_order"] == all(
            a > b for a, b in zip(ranking["rewards"], ranking["rewards"][1:])
        )


def test_reward_is_centred_on_the_demonstrations(tiny_reward):
    tokenizer = load_tokenizer(tiny_reward)
    model = load_reward_model(tiny_reward, tokenizer.pad_token_id).eval()
    demos = demonstrations()
    scores = score_responses(
        model,
        tokenizer,
        [d["prompt"] for d in demos],
        [d["completion"] for d in demos],
        max_len=TINY_REWARD["max_len"],
    )
    assert abs(scores.mean().item()) < 1e-3
    assert scores.std().item() == pytest.approx(model.config.reward_std, rel=1e-3)
    assert model.config.reward_bias != 0.0  # the shift was needed and stored, not an accident of the head


def test_score_responses_is_last_token_head_plus_bias(tiny_reward):
    """A response scored alone or inside a padded batch gets the same reward; the bias is added once."""
    tokenizer = load_tokenizer(tiny_reward)
    model = load_reward_model(tiny_reward, tokenizer.pad_token_id).eval()
    prompts = ["我想去重庆玩，有哪些好玩的地点呢？"] * 3
    responses = ["洪崖洞。", "重庆有洪崖洞、解放碑和磁器口，都很好玩。", "不知道"]
    batch = score_responses(model, tokenizer, prompts, responses, [True, True, False])
    alone = torch.cat(
        [
            score_responses(model, tokenizer, [p], [r], [e])
            for p, r, e in zip(prompts, responses, [True, True, False])
        ]
    )
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    model.config.reward_bias = 0.0
    unbiased = score_responses(model, tokenizer, prompts, responses, [True, True, False])
    torch.testing.assert_close(batch - unbiased, torch.full((3,), read_meta(tiny_reward)["reward_bias"]))


def test_pairwise_ablation_runs(tiny_sft, tiny_comparisons, tmp_path):
    out = tmp_path / "pairs"
    reward.run(
        preset_config(
            RewardConfig,
            out=str(out),
            model=str(tiny_sft),
            data=str(tiny_comparisons),
            kwise=False,
            max_steps=4,
            batch_size=8,
            max_len=96,
            log_every=1,
            demonstrations="",
        )
    )
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "val_accuracy" in rows[-1]
    report = json.loads((out / "eval.json").read_text())
    assert report["kwise"] is False and read_meta(out)["kwise"] is False
    assert (report["reward_bias"], report["reward_std"]) == (0.0, 1.0)  # no demonstrations: no centring
    AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)


GOOD = {"prompt": "去哪玩？", "responses": ["重庆。", "不知道"], "ranking": [0, 1]}
BAD_ROWS = {
    "not a permutation": (
        {"prompt": "去哪玩？", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]},
        "ranking",
    ),
    "K < 2": ({"prompt": "去哪玩？", "responses": ["a"], "ranking": [0]}, "K >= 2"),
    "null response": ({"prompt": "去哪玩？", "responses": ["a", None], "ranking": [1, 0]}, "responses[1]"),
    "missing rejected": ({"prompt": "去哪玩？", "chosen": "重庆。"}, '"rejected": is missing'),
    "chosen == rejected": ({"prompt": "去哪玩？", "chosen": "重庆。", "rejected": "重庆。"}, "identical"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_preference_file_names_file_and_line(case, tiny_sft, tmp_path, capsys):
    row, problem = BAD_ROWS[case]
    path = tmp_path / "prefs.jsonl"
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in (GOOD, GOOD, row)) + "\n", encoding="utf-8"
    )
    code = main(["reward", "--data", str(path), "--model", str(tiny_sft), "--out", str(tmp_path / "rm")])
    assert code == 2
    captured = capsys.readouterr()
    message = " ".join((captured.out + captured.err).split())  # the console may wrap long lines
    assert f"{path}:3" in message
    assert problem in message
    assert "Traceback" not in message
    assert not (tmp_path / "rm" / "rlhfkit.json").exists()


def test_identical_answers_are_tied_not_ranked():
    from rlhfkit.stages.label import ranks_with_ties

    # The labeler's order puts copy 2 of "a" first; both copies share rank 1, so no pair compares them, and
    # the ranks stay consecutive: "b" is one step below "a", so a rank margin counts one step, not two.
    tied = ranks_with_ties([2, 0, 1, 3], ["a", "b", "a", "c"], [True] * 4)
    assert tied == {"ranks": [1, 2, 1, 3]}
    margin = reward.margins(torch.tensor([tied["ranks"]]), 0.5)[0]  # (K, K): [w, l]
    expected = [[0, 0.5, 0, 1.0], [0, 0, 0, 0.5], [0, 0.5, 0, 1.0], [0, 0, 0, 0]]
    torch.testing.assert_close(margin, torch.tensor(expected))
    # The same text cut off before EOS is a different answer.
    assert ranks_with_ties([0, 1], ["a", "a"], [True, False]) == {"ranking": [0, 1]}
    assert ranks_with_ties([2, 0, 1], ["a", "b", "c"], [True] * 3) == {"ranking": [2, 0, 1]}


def test_best_of_n_shares_one_set_of_samples(tiny_sft, tiny_reward):
    # best-of-n for several n samples max(n) answers once; best-of-1 is the first sample, and a larger n never
    # picks an answer the reward model scores lower.
    from rlhfkit.evaluate import best_of_n
    from rlhfkit.modeling import load_causal_lm
    from rlhfkit.rollout import generate_answers

    tokenizer = load_tokenizer(tiny_sft)
    policy = load_causal_lm(tiny_sft).eval()
    rm = load_reward_model(tiny_reward, tokenizer.pad_token_id).eval()
    prompts = [t.prompt for t in split_prompts()["eval"][:6]]
    picked = best_of_n(policy, rm, tokenizer, prompts, [1, 2, 4], max_new_tokens=16, seed=3)
    samples = generate_answers(
        policy, tokenizer, [p for p in prompts for _ in range(4)], max_new_tokens=16, seed=3
    )
    assert picked[1] == samples[::4]
    scores = {
        n: score_responses(rm, tokenizer, prompts, [a for a, _ in ans], [e for _, e in ans])
        for n, ans in picked.items()
    }
    assert bool((scores[2] >= scores[1] - 1e-5).all()) and bool((scores[4] >= scores[2] - 1e-5).all())
    assert best_of_n(policy, rm, tokenizer, prompts, 4, max_new_tokens=16, seed=3) == picked[4]


def test_label_rounds_rank_each_prompt_again_by_another_labeler(tiny_sft, tmp_path):
    from rlhfkit.config import LabelConfig
    from rlhfkit.labelers import read_settings
    from rlhfkit.stages import label

    prompts = tmp_path / "prompts.jsonl"
    asked = [t.prompt for t in split_prompts()["rm"][:5]]
    prompts.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in asked))
    out = tmp_path / "comparisons.jsonl"
    cfg = LabelConfig(
        out=str(out), model=str(tiny_sft), prompts=str(prompts), k=3, rounds=2, max_new_tokens=12
    )
    label.run(cfg)
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == asked + asked  # every prompt once per round
    # The labelers' settings sit next to the comparisons, for the reward model's agreement ceiling.
    settings = {"n_labelers": 5, "seed": 0, "labeler_noise": 0.5, "label_noise": 0.1}
    assert json.loads((tmp_path / "comparisons.labelers.json").read_text()) == settings
    assert read_settings(out) == {**settings, "source": str(tmp_path / "comparisons.labelers.json")}
    for first, second in zip(rows[:5], rows[5:]):
        assert first["labeler"] != second["labeler"]  # a round later, the next labeler ranks it
        assert first["responses"] != second["responses"]  # fresh samples
    with pytest.raises(ValueError, match="rounds"):
        label.run(LabelConfig(out=str(out), model=str(tiny_sft), prompts=str(prompts), rounds=0))


def test_comparisons_outside_the_world_are_centred_on_their_best_answers(tiny_sft, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.", "rejected": "I do not know."}
        for a in range(4)
        for b in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    model = reward.run(
        preset_config(
            RewardConfig,
            out=str(out),
            model=str(tiny_sft),
            data=str(data),
            max_steps=2,
            batch_size=4,
            val_fraction=0,
        )
    )
    printed = " ".join(capsys.readouterr().err.split())
    assert "not the embedded world's: the reward is centred on their best-ranked answers" in printed
    assert "no validation rankings (--val-fraction 0 of 16 rankings' prompts)" in printed
    assert json.loads((out / "eval.json").read_text())["val_accuracy"] is None  # not a 0.000 accuracy
    tokenizer = load_tokenizer(out)
    chosen = score_responses(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert abs(chosen.mean().item()) < 1e-4  # bias included: the chosen answers average 0


def test_label_refuses_prompts_its_labelers_cannot_judge(tiny_sft, tmp_path):
    from rlhfkit.config import LabelConfig
    from rlhfkit.stages import label

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "请问北京有什么好玩的景点？"}) + "\n" + json.dumps({"prompt": "Hi!"}) + "\n"
    )
    cfg = LabelConfig(out=str(tmp_path / "c.jsonl"), model=str(tiny_sft), prompts=str(prompts))
    with pytest.raises(
        ValueError, match=r"1 of 2 prompts \(the first: prompt 2, 'Hi!'\) are not the embedded world's"
    ):
        label.run(cfg)


@pytest.mark.parametrize("seed", [996, 1000, 1004])
def test_training_labelers_are_never_the_held_out_panel(seed, tiny_sft, tmp_path):
    from rlhfkit.config import LabelConfig
    from rlhfkit.stages import label

    cfg = LabelConfig(out=str(tmp_path / "c.jsonl"), model=str(tiny_sft), seed=seed)
    with pytest.raises(ValueError, match=rf"label --seed {seed}: .*held-out evaluation panel \(1000..1004\)"):
        label.run(cfg)


def test_label_settings_of_a_file_label_did_not_write_are_the_named_defaults(tmp_path):
    from rlhfkit.labelers import read_settings

    settings = read_settings(tmp_path / "mine.jsonl")
    assert settings == {
        "n_labelers": 5,
        "seed": 0,
        "labeler_noise": 0.5,
        "label_noise": 0.1,
        "source": f"LabelConfig defaults ({tmp_path / 'mine.labelers.json'} not found)",
    }


def fake_scores(monkeypatch, score_of: dict[str, float]) -> dict:
    """Replace `score_responses` with a lookup of each answer's score; returns what it was asked to score."""
    scored = {}

    def fake(model, tokenizer, prompts, responses, ended=None, max_len=256, batch_size=64):
        scored.update(prompts=prompts, responses=responses, ended=ended)
        return torch.tensor([score_of[r] for r in responses])

    monkeypatch.setattr(reward, "score_responses", fake)
    return scored


def test_best_answers_standing_in_for_demonstrations_keep_their_ended_flag(monkeypatch):
    # A best-ranked answer that was cut off is scored as cut off (no EOS), as the reward model saw it.
    scored = fake_scores(monkeypatch, {"cut off": 1.0, "done": 0.0, "first": 5.0, "second": 3.0})
    items = [
        Ranked("Hi?", ["cut off", "done"], [1, 2], ended=[False, True]),
        Ranked("Bye?", ["first", "second"], [2, 1]),  # no "ended" field: every answer ended
    ]
    model = SimpleNamespace(config=SimpleNamespace(reward_bias=5.0))
    bias, scale = reward.centre_on_demonstrations(
        model, None, preset_config(RewardConfig, max_len=32), items, None
    )
    assert scored == {
        "prompts": ["Hi?", "Hi?", "Bye?", "Bye?"],
        "responses": ["cut off", "done", "first", "second"],
        "ended": [False, True, True, True],
    }
    assert (bias, model.config.reward_bias) == (
        -2.0,
        0.0,
    )  # the best answers, "cut off" and "second", average 0
    assert scale == pytest.approx(torch.tensor([1.0, 0.0, 5.0, 3.0]).std().item())


def test_identical_best_answers_do_not_shrink_the_reward_scale(monkeypatch):
    # Every ranking's best answer is the same text, so the best answers' scores do not spread at all; the scale
    # PPO divides rewards by is the spread between all the answers ranked, not ~0 (which would blow rewards up).
    fake_scores(monkeypatch, {"Paris.": 2.0, "Lyon.": -1.0, "No idea.": -3.0})
    items = [
        Ranked("Capital of France?", ["Lyon.", "Paris.", "No idea."], [2, 1, 3]),
        Ranked("Where is the Louvre?", ["Paris.", "No idea."], [1, 2]),
    ]
    model = SimpleNamespace(config=SimpleNamespace(reward_bias=0.0))
    bias, scale = reward.centre_on_demonstrations(model, None, preset_config(RewardConfig), items, None)
    assert bias == -2.0  # the best answers, which stand in for demonstrations, score 0
    assert scale == pytest.approx(torch.tensor([-1.0, 2.0, -3.0, 2.0, -3.0]).std().item())
    assert scale > 2.0


def test_demonstrations_files_are_read_before_training(tmp_path):
    sft = tmp_path / "sft.jsonl"
    turns = [{"role": "user", "content": "去哪玩？"}, {"role": "assistant", "content": "重庆。"}]
    sft.write_text(
        json.dumps({"prompt": "你好", "completion": "你好！"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"messages": turns}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    cfg = preset_config(RewardConfig, demonstrations=str(sft))
    assert reward.load_demonstrations(cfg, []) == [("你好", "你好！", True), (turns[:1], "重庆。", True)]
    assert reward.load_demonstrations(preset_config(RewardConfig, demonstrations=""), []) is None
    world = reward.load_demonstrations(
        preset_config(RewardConfig), [Ranked(demonstrations()[0]["prompt"], ["a", "b"], [1, 2])]
    )
    assert world == [(d["prompt"], d["completion"], True) for d in demonstrations()]


def test_bad_demonstrations_file_stops_before_any_training_step(tiny_sft, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "What is 1 plus 1?", "chosen": "2.", "rejected": "3."}) + "\n")
    out = tmp_path / "rm"
    args = ["reward", "--model", str(tiny_sft), "--data", str(data), "--out", str(out), "--max-steps", "2"]
    code = main([*args, "--demonstrations", str(data)])  # comparisons, not demonstrations
    assert code == 2
    captured = capsys.readouterr()
    message = " ".join((captured.out + captured.err).split())
    assert f'reward --demonstrations {data}: {data}:1: field "completion": is missing' in message
    assert "Traceback" not in message
    assert not (out / "metrics.jsonl").exists() and not (out / "rlhfkit.json").exists()


def test_responses_cut_by_max_len_are_counted_once_before_training(tiny_sft, capsys):
    tokenizer = load_tokenizer(tiny_sft)
    short = Ranked("去哪玩？", ["重庆。", "不知道"], [1, 2])
    long = Ranked("去哪玩？", ["重庆有洪崖洞、解放碑和磁器口。" * 6, "不知道"], [1, 2], ended=[False, True])
    length = len(encode_items(tokenizer, [long], max_len=10_000)[0])  # chat(prompt) + response, no EOS
    reward.warn_if_truncated(tokenizer, [short, long], max_len=length)
    assert "warning" not in capsys.readouterr().err  # exactly max_len tokens: nothing is cut
    reward.warn_if_truncated(tokenizer, [short, long], max_len=length - 1)
    printed = " ".join(capsys.readouterr().err.split())
    assert printed == (
        f"[reward] warning: 1 of 4 responses are longer than --max-len {length - 1} with their prompt; they keep "
        f"their last {length - 1} tokens (the prompt's start is cut)"
    )


def test_conversation_prompts_without_a_chat_template_stop_before_training(tiny_sft, tmp_path):
    import shutil

    base = tmp_path / "base"  # the SFT model with its chat template taken away
    shutil.copytree(tiny_sft, base)
    (base / "chat_template.jinja").unlink()
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "pairs.jsonl"
    turn = [{"role": "user", "content": "去哪玩？"}]
    rows = [
        {"prompt": "去哪玩？", "chosen": "重庆。", "rejected": "不知道"},
        {"prompt": turn, "chosen": "北京。", "rejected": "不"},
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(
        ValueError, match=r"1 rows give the prompt as a conversation \(the first is ranking 2\)"
    ):
        reward.run(
            preset_config(
                RewardConfig, out=str(tmp_path / "rm"), model=str(base), data=str(data), max_steps=1
            )
        )
    assert not (tmp_path / "rm" / "checkpoint").exists()
