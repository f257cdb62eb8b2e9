"""Iterated RLHF rounds on tiny models, stage by stage: label ranks a policy's answers beside SFT's on a fresh part
of the prompts, the reward model continues (head included) or retrains and grades itself on the new answers, PPO
continues a PPO policy with the KL still to SFT (rollouts numbered on, adaptive β and the value model's units
carried over), the same round from people's rankings exported by the label server, and RM ensembles wherever a
reward model goes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from conftest import TINY_REWARD, console_text, read_jsonl
from rlhfkit import rounds
from rlhfkit.batching import score_responses
from rlhfkit.cli import main
from rlhfkit.config import EvalConfig, LabelConfig, PPOConfig, RewardConfig, preset_config
from rlhfkit.data import load_preferences, load_responses
from rlhfkit.ensemble import RewardEnsemble, is_ensemble, load_judge
from rlhfkit.errors import UsageError
from rlhfkit.evaluate import JudgedPair, accuracy_on_samples, agreement, best_of_n
from rlhfkit.labelserver.db import Database
from rlhfkit.losses import ensemble_reward
from rlhfkit.modeling import load_causal_lm, load_reward_model, per_token_scores, read_meta
from rlhfkit.stages import label, ppo, reward
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.world import labelers, split_prompts

RM_PROMPTS = [t.prompt for t in split_prompts()["rm"]]


def toy_reward(prompts, responses, ended):
    return [float(r.count("的")) for r in responses]


def toy_ppo(out: Path, policy: Path, **kw) -> PPOConfig:
    values = dict(
        policy=str(policy),
        reward_model="",
        iterations=2,
        batch_size=16,
        mini_batch_size=8,
        max_new_tokens=8,
        lr=3e-3,
        kl_coef=0.05,
        ema_decay=0.0,
        save_every=0,
        sample_every=1,
    )
    return preset_config(PPOConfig, out=str(out), **{**values, **kw})


# --- label: the round's policy beside SFT, on a part of the prompts -----------------------------------------------


@pytest.fixture(scope="module")
def round_comparisons(tiny_sft, tiny_gpt, tmp_path_factory) -> Path:
    """Round 2's rankings: 2 of K=4 answers by the "policy" (here the SFT model), 2 by a second model (the tiny
    pretrained one stands in for SFT), on part 1 of 4 of the RM prompts."""
    out = tmp_path_factory.mktemp("round2") / "comparisons.jsonl"
    cfg = LabelConfig(
        out=str(out),
        model=str(tiny_sft),
        mix_model=str(tiny_gpt),
        mix_share=0.5,
        k=4,
        rounds=1,
        max_new_tokens=8,
        prompt_part="1/4",
    )
    label.run(cfg)
    return out


def test_a_round_ranks_both_models_answers_and_says_which_wrote_each(round_comparisons, tiny_sft, tiny_gpt):
    rows = read_jsonl(round_comparisons)
    assert rows and all(
        sorted(row["models"]) == sorted([str(tiny_sft)] * 2 + [str(tiny_gpt)] * 2) for row in rows
    )
    # the two models' answers are not always in one order: labelers (and people) must not read the writer off it
    assert len({tuple(row["models"]) for row in rows}) > 1
    assert all(sorted(row.get("ranking", [])) == [0, 1, 2, 3] or "ranks" in row for row in rows)
    settings = json.loads(round_comparisons.with_suffix(".labelers.json").read_text())
    assert settings["seed"] == 0 and settings["n_labelers"] == 5  # the same labelers as Step2's


def test_prompt_parts_are_disjoint_and_cover_every_prompt(round_comparisons):
    parts = [label.prompt_part(RM_PROMPTS, LabelConfig(prompt_part=f"{r}/4")) for r in range(1, 5)]
    assert sorted(p for part in parts for p in part) == sorted(RM_PROMPTS)
    assert sum(map(len, parts)) == len(RM_PROMPTS)
    ranked = {row["prompt"] for row in read_jsonl(round_comparisons)}
    assert ranked <= set(parts[0]) and len(ranked) > 0.9 * len(parts[0])  # all but identical-answer prompts


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(prompt_part="0/3"), "the part R of R/N must be in 1..N"),
        (dict(prompt_part="4/3"), "the part R of R/N must be in 1..N"),
        (dict(prompt_part="half"), "expected R/N"),
        (dict(mix_model="runs/sft", k=4, mix_share=0.1), "each model must write at least one"),
        (dict(mix_model="runs/sft", k=4, mix_share=0.9), "each model must write at least one"),
    ],
)
def test_bad_round_label_settings_are_named(settings, message):
    with pytest.raises(UsageError, match=message):
        LabelConfig(**settings)


def test_unranked_answers_go_to_the_label_server(tiny_sft, tiny_gpt, tmp_path):
    out = tmp_path / "answers.jsonl"
    label.run(
        LabelConfig(
            out=str(out),
            model=str(tiny_sft),
            mix_model=str(tiny_gpt),
            k=2,
            rounds=1,
            max_new_tokens=6,
            prompt_part="1/40",
            rank=False,
        )
    )
    rows = read_jsonl(out)
    assert rows and all(set(row) == {"prompt", "responses", "ended", "models"} for row in rows)
    assert len(load_responses(out)) == len(rows)  # what `label-server tasks add --responses` reads
    assert not out.with_suffix(".labelers.json").exists()  # nobody ranked them


# --- reward: continue, retrain, and the accuracy on the newest answers ----------------------------------------------


def test_agreement_by_hand():
    pairs = [
        JudgedPair(0, 0, 1, labels_prefer_a=True, panel_prefers_a=True, writers="ppo + sft"),
        JudgedPair(0, 0, 2, labels_prefer_a=None, panel_prefers_a=False, writers="ppo + ppo"),  # a label tie
        JudgedPair(1, 3, 4, labels_prefer_a=False, panel_prefers_a=None, writers="ppo + sft"),  # a panel tie
        JudgedPair(1, 3, 5, labels_prefer_a=True, panel_prefers_a=True, writers="ppo + sft"),
    ]
    rewards = [1.0, 0.0, 2.0, 0.5, 0.5, 0.7]  # 0 > 1, 2 > 0; 3 = 4 (a reward tie agrees with no side), 5 > 3
    report = agreement(rewards, pairs)
    assert report["panel_agreement"] == pytest.approx(2 / 3) and report["n_panel_pairs"] == 3  # pairs 1 and 2
    assert report["label_accuracy"] == pytest.approx(1 / 3) and report["n_label_pairs"] == 3  # pair 1 only
    assert report["panel_agreement_by_writers"] == {
        "ppo + ppo": {"panel_agreement": 1.0, "n_panel_pairs": 1},
        "ppo + sft": {"panel_agreement": 0.5, "n_panel_pairs": 2},
    }
    assert agreement(rewards, pairs, keep={1})["n_panel_pairs"] == 1


@pytest.fixture(scope="module")
def continued_rm(tiny_reward, round_comparisons, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm_continued")
    settings = {**TINY_REWARD, "epochs": 1.0, "warmup_steps": 0, "lr": 5e-4, "mixed_precision": "no"}  # fp32
    reward.run(
        preset_config(
            RewardConfig, out=str(out), model=str(tiny_reward), data=str(round_comparisons), **settings
        )
    )
    return out


def test_a_continued_reward_model_starts_from_the_previous_one_head_included(
    continued_rm, tiny_reward, round_comparisons
):
    from rlhfkit.losses import ranking_loss
    from rlhfkit.modeling import TokenScores
    from rlhfkit.training import batch_indices

    # The loss logged at step 1 is that of the model before its first update: the previous reward model's, head
    # and all, on the first batch. A head that scored every answer alike would give log 2; the previous model's
    # loss must differ from that by far more than the 1e-6 the match is held to (the tiny RM barely trains, so
    # its loss sits near log 2: 2.3e-3 away on the CI machine, more here), or the match would prove nothing.
    cfg = preset_config(RewardConfig, **read_meta(continued_rm)["settings"])
    train, _ = reward.split_by_prompt(list(load_preferences(round_comparisons)), cfg.val_fraction, cfg.seed)
    batch = [train[i] for i in batch_indices(len(train), cfg.batch_size, 0, cfg.seed)]
    tokenizer = load_tokenizer(tiny_reward)
    previous = TokenScores(load_reward_model(tiny_reward, tokenizer.pad_token_id)).train()  # as trained
    expected = ranking_loss(*reward.batch_rewards(previous, tokenizer, batch, cfg.max_len, "cpu")).item()
    first = read_jsonl(continued_rm / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(expected, abs=1e-6) and abs(expected - math.log(2)) > 1e-4
    assert cfg.model == str(tiny_reward)
    report = json.loads((continued_rm / "eval.json").read_text())
    assert report["initialised_from"]["stage"] == "reward"
    model = AutoModelForSequenceClassification.from_pretrained(continued_rm, num_labels=1)
    assert model.config.reward_std > 0 and model.config.reward_bias == report["reward_bias"]  # centred again
    assert model.config.reward_bias != read_meta(tiny_reward)["reward_bias"]


def test_the_previous_reward_model_is_graded_on_the_newest_answers(
    continued_rm, tiny_reward, round_comparisons
):
    new = json.loads((continued_rm / "eval.json").read_text())["accuracy_on_new_samples"]
    items = list(load_preferences(round_comparisons))
    assert new["previous_reward_model"] == str(tiny_reward) and new["n_rankings"] == len(items)
    # the numbers are accuracy_on_samples' of the previous reward model on every new ranking
    tokenizer = load_tokenizer(tiny_reward)
    writers = [row["models"] for row in read_jsonl(round_comparisons)]
    by_hand = accuracy_on_samples(
        load_judge(tiny_reward, tokenizer.pad_token_id), tokenizer, items, 160, writers
    )
    assert new["previous"]["panel_agreement"] == pytest.approx(by_hand["panel_agreement"])
    assert new["previous"]["n_panel_pairs"] == by_hand["n_panel_pairs"] > 0
    assert set(new["previous"]["panel_agreement_by_writers"]) == set(by_hand["panel_agreement_by_writers"])
    assert 0 < new["n_val_rankings"] < new["n_rankings"]
    for key in ("previous_on_val", "new_on_val"):  # the held-out rankings: the same pairs for both models
        assert new[key]["n_panel_pairs"] == new["new_on_val"]["n_panel_pairs"] > 0
        assert 0.0 <= new[key]["panel_agreement"] <= 1.0
    assert 0.0 <= new["labels_vs_panel_agreement"] <= 1.0


def test_a_retrained_reward_model_trains_on_every_round(
    tiny_sft, tiny_reward, tiny_comparisons, round_comparisons, tmp_path
):
    out = tmp_path / "rm_retrained"
    cfg = preset_config(
        RewardConfig,
        out=str(out),
        model=str(tiny_sft),
        data=str(round_comparisons),
        earlier_data=[str(tiny_comparisons)],
        previous_reward_model=str(tiny_reward),
        **{**TINY_REWARD, "epochs": 0.3},
    )
    reward.run(cfg)
    report = json.loads((out / "eval.json").read_text())
    n = len(load_preferences(round_comparisons)) + len(load_preferences(tiny_comparisons))
    assert report["n_val_rankings"] + round(n * 0.9) == pytest.approx(n, abs=3)
    assert report["initialised_from"]["stage"] == "sft"
    assert report["accuracy_on_new_samples"]["previous_reward_model"] == str(tiny_reward)
    assert read_jsonl(out / "metrics.jsonl")[0]["loss"] == pytest.approx(
        math.log(2), abs=0.02
    )  # a fresh head


def test_a_first_reward_model_reports_no_new_samples(tiny_reward):
    assert "accuracy_on_new_samples" not in json.loads((tiny_reward / "eval.json").read_text())


# --- PPO: a round after the first ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_rounds(tiny_sft, tiny_reward, tmp_path_factory):
    """Round 1 (2 iterations against the reward model, adaptive β, rewards not scaled), round 2 from it (2 more,
    the KL to SFT, its value model), and one straight run of 4 for the prompts a run that long reads."""
    root = tmp_path_factory.mktemp("ppo_rounds")
    common = dict(adaptive_kl=True, kl_horizon=50, target_kl=0.01)
    first = toy_ppo(root / "r1", tiny_sft, reward_model=str(tiny_reward), scale_rewards=False, **common)
    ppo.run(first)
    second = toy_ppo(
        root / "r2",
        root / "r1",
        ref_policy=str(tiny_sft),
        value_model=str(root / "r1" / "value_model"),
        **common,
    )
    ppo.run(second, toy_reward)
    straight = toy_ppo(root / "straight", tiny_sft, iterations=4, **common)
    ppo.run(straight, toy_reward)
    return root, first, second


def prompts_by_step(out: Path) -> dict[int, list]:
    by_step: dict[int, list] = {}
    for row in read_jsonl(out / "samples.jsonl"):
        by_step.setdefault(row["step"], []).append(row["prompt"])
    return by_step


def test_a_later_round_reads_the_prompts_a_longer_run_would_read_next(ppo_rounds):
    root, _, _ = ppo_rounds
    first, second, straight = (prompts_by_step(root / n) for n in ("r1", "r2", "straight"))
    assert second[1] != first[1]  # no replay of round 1's first rollout
    assert [second[1], second[2]] == [straight[3], straight[4]]
    meta = read_meta(root / "r2")
    assert meta["rollouts_before"] == 2 and meta["iterations"] == 2


def test_an_adaptive_beta_starts_where_the_last_round_left_it(ppo_rounds):
    root, first, _ = ppo_rounds
    beta_1 = read_meta(root / "r1")["kl_coef"]
    assert beta_1 != first.kl_coef  # it moved in round 1
    assert read_meta(root / "r2")["kl_coef_start"] == beta_1
    assert read_meta(root / "r1")["kl_coef_start"] == first.kl_coef


def test_the_value_model_keeps_the_units_it_was_trained_in(ppo_rounds, tiny_sft, tiny_reward, continued_rm):
    root, _, second = ppo_rounds
    saved = root / "r1" / "value_model"
    shift, scale = read_meta(saved)["value_units"]
    rm = load_reward_model(tiny_reward, 0)
    # round 1 ran without --scale-rewards: its values are in the RM's centred but unscaled units
    assert shift == pytest.approx(rm.config.reward_bias) and scale == 1.0 != rm.config.reward_std
    config = AutoModelForSequenceClassification.from_pretrained(saved, num_labels=1).config
    assert (config.reward_bias, config.reward_std) == (shift, scale)  # the saved model says so too
    tokenizer = load_tokenizer(tiny_sft)
    policy = load_causal_lm(tiny_sft).eval()
    # round 2 scales rewards, and may have a new reward model: the values are read in their own units all the same
    for reward_model in (str(tiny_reward), str(continued_rm)):
        cfg = dataclasses.replace(second, reward_model=reward_model, scale_rewards=True)
        value_model = ppo.make_value_model(cfg, policy, tokenizer)
        assert (value_model.shift, value_model.scale) == (shift, scale)
    ids = torch.tensor([[5, 6, 7, 8]])
    raw = per_token_scores(load_reward_model(saved, tokenizer.pad_token_id), ids, torch.ones_like(ids))
    values = per_token_scores(value_model, ids, torch.ones_like(ids))
    torch.testing.assert_close(values, (raw + shift) / scale)


def test_continuing_without_the_sft_reference_is_named(ppo_rounds, tmp_path, capsys):
    root, _, _ = ppo_rounds
    ppo.run(toy_ppo(tmp_path / "r2", root / "r1", iterations=1, sample_every=0), toy_reward)
    assert "the KL penalty is to" in console_text(capsys)


# --- the same round from people's rankings ---------------------------------------------------------------------------


def test_a_round_from_rankings_exported_by_the_label_server(tiny_sft, tiny_gpt, tiny_reward, tmp_path):
    """label --no-rank → label-server tasks add --responses → people rank → export → reward --model PREV_RM."""
    answers, db_path = tmp_path / "answers.jsonl", tmp_path / "labels.sqlite"
    argv = ["label", "--model", str(tiny_sft), "--mix-model", str(tiny_gpt), "--k", "4", "--rounds", "1"]
    argv += ["--max-new-tokens", "8", "--prompt-part", "2/20", "--no-rank", "--out", str(answers)]
    assert main(argv) == 0
    add = [
        "label-server",
        "tasks",
        "add",
        "--db",
        str(db_path),
        "--kind",
        "rank",
        "--responses",
        str(answers),
    ]
    assert main([*add, "--name", "round2"]) == 0
    db = Database(db_path)
    person, _ = db.add_user("ann")
    task_set = db.task_sets()[0]
    taste = labelers(1, seed=77)[0]  # a person: ranks with a taste and noise of their own
    while (item := db.next_item(person, task_set.id, lease=1800)) is not None:
        texts, ended = [r["text"] for r in item.responses], [r["ended"] for r in item.responses]
        order = taste.rank(item.prompt, texts, ended)
        ranks = [order.index(i) + 1 for i in range(len(texts))]
        db.submit(person, item.id, {"ranks": ranks, "unacceptable": [False] * len(texts)})
    assert main(["label-server", "export", "--db", str(db_path), "--out", str(tmp_path / "labels")]) == 0
    exported = tmp_path / "labels" / "round2.jsonl"
    out = tmp_path / "rm_round2"
    argv = [
        "reward",
        "--model",
        str(tiny_reward),
        "--data",
        str(exported),
        "--out",
        str(out),
        "--max-steps",
        "3",
    ]
    assert main([*argv, "--val-fraction", "0.3", "--warmup-steps", "0"]) == 0
    new = json.loads((out / "eval.json").read_text())["accuracy_on_new_samples"]
    assert new["previous_reward_model"] == str(tiny_reward)
    assert new["n_rankings"] == len(load_preferences(exported)) > 0
    assert new["previous"]["n_label_pairs"] > 0 and 0 <= new["previous"]["label_accuracy"] <= 1
    assert new["new_on_val"]["n_label_pairs"] > 0


# --- RM ensembles ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_sft, tiny_comparisons, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ensemble")
    reward.run(
        preset_config(
            RewardConfig,
            out=str(out),
            model=str(tiny_sft),
            data=str(tiny_comparisons),
            ensemble=2,
            **TINY_REWARD,
        )
    )
    return out


def test_an_ensemble_is_stock_reward_models_whose_first_is_the_single_one(tiny_ensemble, tiny_reward):
    meta = read_meta(tiny_ensemble)
    assert (
        meta["complete"] is True
        and meta["members"] == ["member_0", "member_1"]
        and is_ensemble(tiny_ensemble)
    )
    for m, name in enumerate(meta["members"]):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_ensemble / name, num_labels=1)
        assert model.config.reward_std > 0
        assert read_meta(tiny_ensemble / name)["member_seed"] == m
    # member 0 has the single reward model's seed and settings: it is that model; member 1 differs
    single, first = (
        load_file(str(tiny_reward / "model.safetensors")),
        load_file(str(tiny_ensemble / "member_0" / "model.safetensors")),
    )
    for key in single:
        torch.testing.assert_close(first[key], single[key], atol=1e-6, rtol=0, msg=key)
    second = load_file(str(tiny_ensemble / "member_1" / "model.safetensors"))
    assert not torch.equal(second["score.weight"], first["score.weight"])
    report = json.loads((tiny_ensemble / "eval.json").read_text())
    assert len(report["ensemble"]["seconds"]) == 2 and all(s > 0 for s in report["ensemble"]["seconds"])
    assert 0 <= report["panel_agreement"] <= 1 and 0 <= report["val_accuracy"] <= 1
    assert not (tiny_ensemble / "config.json").exists()  # nothing at the top loads as one model


@pytest.mark.parametrize(("reduce", "lam"), [("mean", 0.0), ("mean_minus_std", 0.5), ("min", 0.0)])
def test_an_ensemble_scores_each_member_in_its_own_units_then_combines(tiny_ensemble, reduce, lam):
    tokenizer = load_tokenizer(tiny_ensemble)
    judge = load_judge(tiny_ensemble, tokenizer.pad_token_id, reduce, lam)
    assert isinstance(judge, RewardEnsemble) and judge.config.reward_bias == 0.0
    prompts, answers = [RM_PROMPTS[0]] * 3, ["洪崖洞。", "北京有故宫。", "要求字数800字"]
    each = []
    for name in ("member_0", "member_1"):
        member = load_reward_model(tiny_ensemble / name, tokenizer.pad_token_id, trained=True)
        each.append(
            score_responses(member, tokenizer, prompts, answers) / member.config.reward_std
        )  # (r+b)/std
    torch.testing.assert_close(
        score_responses(judge, tokenizer, prompts, answers), ensemble_reward(torch.stack(each), reduce, lam)
    )


def test_ppo_best_of_n_and_score_take_an_ensemble(tiny_ensemble, tiny_sft, tmp_path, capsys):
    out = tmp_path / "ppo"
    cfg = toy_ppo(out, tiny_sft, reward_model=str(tiny_ensemble), ensemble_reduce="min", sample_every=0)
    ppo.run(cfg)
    assert "an ensemble of 2 reward models" in console_text(capsys)
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["reward"]) and math.isfinite(r["v_loss"]) for r in rows)
    member_0 = read_meta(tiny_ensemble / "member_0")
    assert read_meta(out / "value_model")["value_units"] == [member_0["reward_bias"], member_0["reward_std"]]

    tokenizer = load_tokenizer(tiny_sft)
    judge = load_judge(tiny_ensemble, tokenizer.pad_token_id)
    picked = best_of_n(load_causal_lm(tiny_sft).eval(), judge, tokenizer, RM_PROMPTS[:2], 3, max_new_tokens=6)
    assert len(picked) == 2
    assert (
        main(
            ["score", "--reward-model", str(tiny_ensemble), "--prompt", RM_PROMPTS[0], "--response", "a", "b"]
        )
        == 0
    )
    printed = console_text(capsys)
    assert (
        "an ensemble of 2 reward models" in printed and printed.count("[") >= 2
    )  # each member's score shown
    eval_cfg = EvalConfig(
        out=str(tmp_path / "eval"),
        models=[f"sft={tiny_sft}"],
        best_of_n=[2],
        reward_model=str(tiny_ensemble),
        samples_per_prompt=1,
        max_new_tokens=4,
        heldout_text="",
    )
    from rlhfkit.evaluate import run as evaluate

    assert "best_of_2" in evaluate(eval_cfg)["models"]


def test_continuing_an_ensemble_continues_each_member(tiny_ensemble, round_comparisons, tmp_path):
    out = tmp_path / "ens2"
    cfg = preset_config(
        RewardConfig,
        out=str(out),
        model=str(tiny_ensemble),
        data=str(round_comparisons),
        ensemble=2,
        max_steps=2,
        warmup_steps=0,
    )
    reward.run(cfg)
    for m in range(2):
        assert read_meta(out / f"member_{m}")["settings"]["model"] == str(tiny_ensemble / f"member_{m}")
    new = json.loads((out / "eval.json").read_text())["accuracy_on_new_samples"]
    assert new["previous_reward_model"] == str(tiny_ensemble) and new["previous"]["n_panel_pairs"] > 0
    with pytest.raises(UsageError, match="an ensemble of 2 reward models, and --ensemble is 3"):
        reward.run(dataclasses.replace(cfg, out=str(tmp_path / "ens3"), ensemble=3))
    with pytest.raises(UsageError, match="give --ensemble 2"):
        reward.run(dataclasses.replace(cfg, out=str(tmp_path / "ens1"), ensemble=1))


def test_an_ensemble_missing_a_member_is_named(tiny_ensemble, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ensemble, broken)
    shutil.rmtree(broken / "member_1")
    with pytest.raises(UsageError, match="member member_1 is missing"):
        load_judge(broken, 0)


# --- the rounds as stage settings (what a pipeline's --rlhf-rounds wires) ---------------------------------------


def test_round_settings_chain_the_steps():
    steps = {
        "label": LabelConfig(out="run/data/comparisons.jsonl", model="run/sft"),
        "reward": preset_config(
            RewardConfig, out="run/reward", model="run/sft", data="run/data/comparisons.jsonl"
        ),
        "ppo": preset_config(
            PPOConfig, out="run/ppo", policy="run/sft", reward_model="run/reward", kl_coef=0.05
        ),
    }
    plan = rounds.RoundPlan(rounds=3, iterations_total=60, label_prompts="run/data/rl_prompts.jsonl")
    first = rounds.round_configs(steps, plan, "w", 1)
    assert (
        list(first) == ["ppo"]
        and first["ppo"].policy == "run/sft"
        and first["ppo"].reward_model == "run/reward"
    )
    assert first["ppo"].iterations == 20 and first["ppo"].kl_coef == 0.05
    third = rounds.round_configs(steps, plan, "w", 3)
    assert third["label"].model == "w/round_2/ppo" and third["label"].mix_model == "run/sft"
    assert third["label"].prompt_part == "2/3" and third["label"].prompts == "run/data/rl_prompts.jsonl"
    assert (
        third["reward"].model == "w/round_2/reward" and third["reward"].data == "w/round_3/comparisons.jsonl"
    )
    assert third["reward"].earlier_data == []  # continue on the new rankings only
    assert (third["ppo"].policy, third["ppo"].ref_policy) == ("w/round_2/ppo", "run/sft")
    assert (
        third["ppo"].value_model == "w/round_2/ppo/value_model"
        and third["ppo"].reward_model == "w/round_3/reward"
    )
    assert rounds.measure_config(steps, plan, "w").prompt_part == "3/3"
    every = ["run/data/comparisons.jsonl", "w/round_2/comparisons.jsonl"]
    retrain = dataclasses.replace(plan, rm_update="retrain", ensemble=3)
    reward_3 = rounds.reward_config(steps, retrain, "w", 3)
    assert (reward_3.model, reward_3.earlier_data, reward_3.previous_reward_model) == (
        "run/sft",
        every,
        "w/round_2/reward",
    )
    assert reward_3.ensemble == 3 and rounds.reward_model_of(steps, retrain, "w", 1) == "w/reward_0"
    assert rounds.reward_config(steps, dataclasses.replace(plan, rm_data="all"), "w", 3).earlier_data == every


def test_a_pipeline_may_keep_the_first_part_for_step2():
    steps = {"label": LabelConfig(), "reward": preset_config(RewardConfig), "ppo": preset_config(PPOConfig)}
    plan = rounds.RoundPlan(
        rounds=2, iterations_total=4, label_prompts="world", label_parts=3, label_part_offset=1
    )
    parts = [rounds.label_config(steps, plan, "w", r).prompt_part for r in (2, 3)]
    assert parts == ["2/3", "3/3"]  # Step2 ranked 1/3
    with pytest.raises(UsageError, match="there are 2"):
        rounds.RoundPlan(
            rounds=2, iterations_total=4, label_prompts="world", label_parts=2, label_part_offset=1
        )


def test_rounds_of_unequal_length_are_refused():
    with pytest.raises(UsageError, match="multiple of --rounds"):
        rounds.RoundPlan(rounds=3, iterations_total=10, label_prompts="world")
