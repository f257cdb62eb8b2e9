"""End to end: `rlhfkit pipeline --preset tiny` writes every artifact, a well-formed report, and `--resume` after
deleting one step's directory rebuilds only that step (and the evaluation)."""

import json
import math
import shutil

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import console_text, read_jsonl
from rlhfkit.cli import main
from rlhfkit.modeling import read_meta
from rlhfkit.world import FAMILIES, SEED_PROMPTS

POLICIES = ("gpt", "sft", "ppo", "ppo_ptx", "ppo_gold")
STEPS = ("pretrain", "sft", "label", "reward", "ppo", "ppo_ptx", "ppo_gold", "eval")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The serial run (every step in this process, at conftest's one thread); the resumes below take the default
    --jobs, side by side on a machine of two or more CPUs."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["pipeline", "--preset", "tiny", "--out", str(out), "--jobs", "1"]) == 0
    return out


@pytest.mark.slow
def test_every_artifact_exists_and_loads(tiny_run):
    out = tiny_run
    for name in POLICIES:
        AutoModelForCausalLM.from_pretrained(out / name)
        AutoTokenizer.from_pretrained(out / name)
        assert read_meta(out / name)["complete"] is True, name
        assert read_jsonl(out / name / "metrics.jsonl"), name
    assert read_meta(out / "gpt")["chat"] is False and read_meta(out / "sft")["chat"] is True
    assert read_meta(out / "ppo_ptx")["ptx_coef"] > 0 and read_meta(out / "ppo")["ptx_coef"] == 0
    reward = AutoModelForSequenceClassification.from_pretrained(out / "reward", num_labels=1)
    assert math.isfinite(reward.config.reward_bias) and reward.config.reward_std > 0
    assert "val_accuracy" in json.loads((out / "reward" / "eval.json").read_text())
    for name in ("ppo", "ppo_ptx", "ppo_gold"):
        AutoModelForSequenceClassification.from_pretrained(out / name / "value_model", num_labels=1)

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer.decode(tokenizer("重庆有洪崖洞。")["input_ids"]) == "重庆有洪崖洞。"
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(out / "gpt"))

    data = sorted((out / "data").glob("*.jsonl"))
    names = {p.name for p in data}
    assert {
        "comparisons.jsonl",
        "pretrain.jsonl",
        "sft.jsonl",
        "rm_prompts.jsonl",
        "rl_prompts.jsonl",
    } <= names
    assert {"eval_prompts.jsonl", "seed_prompts.jsonl"} <= names
    for path in data:
        assert read_jsonl(path), path.name
    assert len(read_jsonl(out / "data" / "seed_prompts.jsonl")) == len(SEED_PROMPTS)

    for name in ("winrate.png", "curves.png"):
        assert (out / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "eval" / "report.md").read_text(encoding="utf-8").startswith("# rlhfkit evaluation")

    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert config["preset"] == "tiny"
    for step in STEPS:
        assert isinstance(config[step], dict), step
    assert config["ppo_ptx"]["ptx_coef"] > 0

    timings = json.loads((out / "timings.json").read_text())
    for step in ("data", *STEPS):
        assert timings[step] >= 0, step


@pytest.mark.slow
def test_report_is_complete(tiny_run):
    report = json.loads((tiny_run / "eval" / "report.json").read_text(encoding="utf-8"))
    assert report["reference"] == "sft"
    assert report["n_prompts"] > 0
    models = report["models"]
    assert set(POLICIES) <= set(models)
    for name, m in models.items():
        assert 0.0 <= m["win_rate"] <= 1.0, name
        lo, hi = m["win_rate_ci"]
        assert lo <= m["win_rate"] <= hi, name
        assert math.isfinite(m["gold_score"]), name
        assert set(m["by_family"]) == set(FAMILIES), name
        for family in m["by_family"].values():
            assert 0.0 <= family["win_rate"] <= 1.0 and family["n"] > 0
        assert (
            sum(f["n"] for f in m["by_family"].values()) == report["n_prompts"] * report["samples_per_prompt"]
        )
    for name in POLICIES:
        assert models[name]["pretrain_ppl"] > 1.0, name
    assert models["gpt"]["kl_to_sft"] is None
    for name in ("sft", "ppo", "ppo_ptx", "ppo_gold"):
        assert math.isfinite(models[name]["kl_to_sft"]), name
    assert models["sft"]["win_rate"] == 0.5 and models["sft"]["win_rate_ci"] == [0.5, 0.5]
    assert abs(models["sft"]["kl_to_sft"]) < 1e-6
    seconds = report["seconds"]
    assert seconds["total"] > 0 and set(STEPS) <= set(seconds["steps"])
    assert set(POLICIES) <= set(seconds)
    assert list(report["seed_prompts"]) == list(SEED_PROMPTS)
    for prompt, answers in report["seed_prompts"].items():
        assert set(answers) == set(models), prompt
        assert all(isinstance(a, str) for a in answers.values())


@pytest.mark.slow
def test_the_gold_reward_ceiling_is_ppo_on_its_own_settings_and_shown_as_the_ceiling(tiny_run):
    """ppo_gold is PPO with the gold judge as the reward and every other setting PPO's, and the report says it is
    the ceiling (last row, named so; hatched in winrate.png)."""
    gold, ppo = read_meta(tiny_run / "ppo_gold"), read_meta(tiny_run / "ppo")
    assert (gold["reward"], ppo["reward"]) == ("gold", "reward_model")
    differ = {k for k in ppo["settings"] if ppo["settings"][k] != gold["settings"][k]}
    assert differ == {"out", "reward_model"} and gold["settings"]["reward_model"] == "gold"
    report = json.loads((tiny_run / "eval" / "report.json").read_text(encoding="utf-8"))
    assert report["models"]["ppo_gold"]["reward"] == "gold"
    assert report["models"]["ppo"]["reward"] == "reward_model" and "reward" not in report["models"]["sft"]
    md = (tiny_run / "eval" / "report.md").read_text(encoding="utf-8")
    rows = [
        line for line in md.split("## Win rate by prompt family")[0].splitlines() if line.startswith("| ")
    ]
    assert rows[-1].startswith("| ppo_gold: PPO on gold (ceiling) | ")  # the upper reference, last
    assert "**ppo_gold** is trained on the embedded world's gold judge instead of the reward model" in md


@pytest.mark.slow
def test_the_report_holds_the_selectable_headroom_per_family(tiny_run):
    report = json.loads((tiny_run / "eval" / "report.json").read_text(encoding="utf-8"))
    headroom = report["headroom"]
    assert (
        headroom["k"] == [4, 8] and headroom["samples_drawn"] == 8 * report["n_prompts"]
    )  # the tiny preset's
    for entry in headroom["by_k"].values():
        assert set(entry["by_family"]) == set(FAMILIES)
        assert entry["share_ci"][0] <= entry["share"] <= entry["share_ci"][1]
    assert report["seconds"]["headroom"] > 0
    md = (tiny_run / "eval" / "report.md").read_text(encoding="utf-8")
    table = md.split("## Selectable headroom")[1].split("\n## ")[0]
    assert "| K | overall | gold score (0–10) | " + " | ".join(sorted(FAMILIES)) + " |" in table
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "[" in line] == [
        "| 4",
        "| 8",
    ]


@pytest.mark.slow
def test_answers_file_holds_what_the_report_averages(tiny_run):
    report = json.loads((tiny_run / "eval" / "report.json").read_text(encoding="utf-8"))
    lines = (tiny_run / "eval" / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    per_model = report["n_prompts"] * report["samples_per_prompt"]
    assert len(rows) == per_model * len(report["models"])
    for name, m in report["models"].items():
        mine = [r for r in rows if r["model"] == name]
        assert len(mine) == per_model, name
        assert sum(r["vs_reference"] for r in mine) / per_model == pytest.approx(m["win_rate"]), name
        assert sum(r["gold"] for r in mine) / per_model == pytest.approx(m["gold_score"], abs=1e-3), name
        for family, entry in m["by_family"].items():
            wins = [r["vs_reference"] for r in mine if r["family"] == family]
            assert len(wins) == entry["n"] and sum(wins) / len(wins) == pytest.approx(entry["win_rate"])
        assert all(set(r["gold_dims"]) == set(m["gold_dims"]) for r in mine), name


@pytest.mark.slow
def test_jobs_2_runs_steps_side_by_side_and_builds_the_same_models(tiny_run, tmp_path, capsys):
    """--jobs 2 at one thread in all (conftest's): the children get 1 thread each, as the serial run's steps had,
    so every model is the serial run's, byte for byte."""
    import torch

    assert torch.get_num_threads() == 1
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["pipeline", "--preset", "tiny", "--out", str(out), "--jobs", "2"]) == 0
    console = console_text(capsys)
    side_by_side = ("label", "reward", "ppo", "ppo_ptx", "ppo_gold", "dpo")
    assert f"--jobs 2: {', '.join(side_by_side)} run side by side" in console
    for name in side_by_side:
        log = out / name / "log.txt"
        assert f"[pipeline] {name}: started (1 thread, log {log})" in console
        assert f"[pipeline] {name}: finished in" in console
        stage = name.replace("_ptx", "").replace("_gold", "")
        assert f"[{stage}]" in log.read_text(encoding="utf-8"), name  # the step's own lines
    for name in ("gpt", "sft", "reward", "ppo", "ppo_ptx", "ppo_gold", "dpo", "ppo/value_model"):
        assert (out / name / "model.safetensors").read_bytes() == (
            tiny_run / name / "model.safetensors"
        ).read_bytes(), name
    for name in ("data/comparisons.jsonl", "eval/answers.jsonl"):  # they name the models they come from
        ours = (out / name).read_text(encoding="utf-8").replace(str(out), str(tiny_run))
        assert ours == (tiny_run / name).read_text(encoding="utf-8"), name
    seconds = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))["seconds"]
    assert seconds["jobs"] == 2 and 0 < seconds["wall"]
    assert seconds["total"] == pytest.approx(sum(seconds["steps"].values()), abs=0.05)
    markdown = (out / "eval" / "report.md").read_text(encoding="utf-8")
    assert "| **sum of the steps** |" in markdown and "(--jobs 2) |" in markdown


@pytest.mark.slow
def test_resume_rebuilds_only_the_deleted_step(tiny_run, capsys):
    out = tiny_run
    kept = {
        name: (out / name / "model.safetensors").stat().st_mtime_ns
        for name in ("gpt", "sft", "reward", "ppo_ptx")
    }
    comparisons = (out / "data" / "comparisons.jsonl").stat().st_mtime_ns
    before = json.loads((out / "timings.json").read_text())
    report_before = (out / "eval" / "report.json").stat().st_mtime_ns
    shutil.rmtree(out / "ppo")
    capsys.readouterr()

    assert main(["pipeline", "--preset", "tiny", "--out", str(out), "--resume"]) == 0

    console = console_text(capsys)
    for step in ("pretrain", "sft", "label", "reward", "ppo_ptx"):
        assert f"{step}: finished earlier, skipped" in console, step
    assert "ppo: finished earlier" not in console
    for name, mtime in kept.items():
        assert (out / name / "model.safetensors").stat().st_mtime_ns == mtime, f"{name} was rebuilt"
    assert (out / "data" / "comparisons.jsonl").stat().st_mtime_ns == comparisons
    after = json.loads((out / "timings.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("ppo", "eval")} == {
        k: v for k, v in before.items() if k not in ("ppo", "eval")
    }
    assert read_meta(out / "ppo")["complete"] is True
    AutoModelForCausalLM.from_pretrained(out / "ppo")
    assert (out / "eval" / "report.json").stat().st_mtime_ns > report_before
    report = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))
    assert "ppo" in report["models"]


def test_resuming_a_finished_run_does_nothing(tiny_run, capsys):
    report = tiny_run / "eval" / "report.json"
    before, timings = report.stat().st_mtime_ns, (tiny_run / "timings.json").read_text()
    capsys.readouterr()
    assert main(["pipeline", "--preset", "tiny", "--out", str(tiny_run), "--resume"]) == 0
    console = console_text(capsys)
    for step in (*STEPS, "dpo"):
        assert f"{step}: finished earlier, skipped" in console, step
    assert report.stat().st_mtime_ns == before and (tiny_run / "timings.json").read_text() == timings


def test_a_damaged_steps_json_is_read_as_missing_with_a_word(tiny_run, capsys):
    steps = tiny_run / "steps.json"
    whole = json.loads(steps.read_text())
    steps.write_text(steps.read_text()[:100])  # what a disk that filled up mid-write could leave
    capsys.readouterr()
    assert main(["pipeline", "--preset", "tiny", "--out", str(tiny_run), "--resume"]) == 0
    console = console_text(capsys)
    assert f"{steps} is damaged (not a JSON object): read as missing, and written again" in console
    assert "eval: finished earlier, skipped" in console  # nothing rebuilt
    assert {k: v["fingerprint"] for k, v in json.loads(steps.read_text()).items()} == {
        k: v["fingerprint"] for k, v in whole.items()
    }


def test_print_config_shows_every_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--preset", "tiny", "--out", str(out), "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for step in STEPS:
        assert isinstance(config[step], dict), step
    assert config["pretrain"]["out"] == str(out / "gpt")
    assert config["ppo"]["policy"] == str(out / "sft")
    assert config["pretrain"]["max_steps"] == 40  # the tiny preset
    assert not out.exists()  # printing the configuration runs nothing


def resolved(*flags, config: dict | None = None, tmp_path=None):
    """The step configs `rlhfkit pipeline [flags] [--config file]` would run, without running anything."""
    import argparse

    from rlhfkit.config import add_arguments
    from rlhfkit.pipeline import PipelineConfig, from_namespace, resolve

    parser = argparse.ArgumentParser()
    add_arguments(parser, PipelineConfig)
    argv = list(flags)
    if config is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        argv += ["--config", str(path)]
    cfg, sections = from_namespace(parser.parse_args(argv))
    return cfg, resolve(cfg, sections)


def test_a_saved_config_runs_under_another_out(tmp_path, capsys):
    assert main(["pipeline", "--preset", "tiny", "--out", str(tmp_path / "a"), "--print-config"]) == 0
    saved = yaml.safe_load(capsys.readouterr().out)
    _, steps = resolved("--out", str(tmp_path / "b"), config=saved, tmp_path=tmp_path)
    assert steps["pretrain"].out == str(tmp_path / "b" / "gpt")  # not the saved run's directory
    assert steps["ppo"].reward_model == str(tmp_path / "b" / "reward")
    assert steps["pretrain"].max_steps == 40  # the saved settings themselves are kept


def test_the_large_preset_on_a_cpu_says_it_is_meant_for_a_gpu(tmp_path, monkeypatch, capsys):
    import rlhfkit.pipeline as pipeline

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(pipeline, "_has_accelerator", lambda: False)
    monkeypatch.setattr(pipeline, "export_world", stop)  # the first step: stop before any work
    cfg, steps = resolved("--preset", "large", "--out", str(tmp_path / "run"))
    assert steps["pretrain"].world_docs == 100000 and steps["eval"].heldout_text.endswith(
        "pretrain_heldout.jsonl"
    )
    with pytest.raises(Stop):
        pipeline.run(cfg)
    assert "--preset large is meant for a GPU" in " ".join(
        capsys.readouterr().err.split()
    )  # the console's stream


def test_a_step_section_cannot_set_the_run_wide_seed(tmp_path):
    with pytest.raises(ValueError, match=r"ppo.seed = 5, but the pipeline sets every step's seed"):
        resolved("--preset", "tiny", config={"ppo": {"seed": 5}}, tmp_path=tmp_path)


def test_the_ppo_section_is_every_step3_methods(tmp_path):
    config = {
        "ppo": {"kl_coef": 0.5, "iterations": 5, "reward_model": "elsewhere"},
        "rloo": {"iterations": 7},
    }
    _, steps = resolved("--preset", "tiny", config=config, tmp_path=tmp_path)
    assert (steps["ppo"].kl_coef, steps["ppo"].iterations) == (0.5, 5)
    # the ceiling takes PPO's settings but never its reward model: the two differ in the reward alone
    gold = steps["ppo_gold"]
    assert (gold.kl_coef, gold.iterations, gold.reward_model) == (0.5, 5, "gold")
    assert gold.out.endswith("ppo_gold") and gold.policy == steps["ppo"].policy
    assert (steps["ppo_ptx"].kl_coef, steps["ppo_ptx"].iterations, steps["ppo_ptx"].ptx_coef) == (0.5, 5, 1.0)
    assert (steps["rloo"].kl_coef, steps["rloo"].iterations, steps["rloo"].algo) == (0.5, 7, "rloo")


def test_fingerprints_follow_settings_and_parents(tmp_path):
    from rlhfkit.pipeline import fingerprints

    def prints(*flags, config=None):
        cfg, steps = resolved("--preset", "tiny", *flags, config=config, tmp_path=tmp_path)
        return {name: p["fingerprint"] for name, p in fingerprints(cfg, steps).items()}

    base = prints("--out", str(tmp_path / "a"))
    assert prints("--out", str(tmp_path / "elsewhere")) == base  # a moved run is the same run
    assert all(base[s] != other for s, other in prints("--seed", "1").items())
    changed = prints("--out", str(tmp_path / "a"), config={"reward": {"epochs": 1.0}})
    assert {s for s in base if base[s] != changed[s]} == {
        "reward",
        "ppo",
        "ppo_ptx",
        "rloo",
        "eval",
    }  # not DPO, nor PPO on gold (no reward model)
    # how a step runs is not what it makes: compiling the sampler leaves every step as it was
    steps = ("label", "ppo", "ppo_ptx", "rloo", "ppo_gold", "eval")
    compiled = {step: {"compile_sampler": True} for step in steps}
    assert prints("--out", str(tmp_path / "a"), config=compiled) == base


def test_resume_rebuilds_what_changed_settings_make_stale(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    kept = {
        name: (out / name / "model.safetensors").stat().st_mtime_ns
        for name in ("gpt", "sft", "reward", "dpo")
    }
    config = tmp_path / "run.yaml"
    config.write_text("ppo: {kl_coef: 0.5}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["pipeline", "--preset", "tiny", "--out", str(out), "--resume", "--config", str(config)]) == 0
    console = console_text(capsys)
    for name in ("ppo", "ppo_ptx", "ppo_gold"):
        assert f"{name}: settings changed (kl_coef) since it was built; rebuilding it" in console
        assert read_meta(out / name)["kl_coef"] == 0.5
    for name, mtime in kept.items():
        assert f"{name.replace('gpt', 'pretrain')}: finished earlier, skipped" in console
        assert (out / name / "model.safetensors").stat().st_mtime_ns == mtime, f"{name} was rebuilt"
    built = json.loads((out / "steps.json").read_text())
    assert built["ppo"]["settings"]["kl_coef"] == 0.5 and built["ppo"]["complete"] is True


# ---------------------------------------------------------------------------------------------------------------
# --rlhf-rounds N: PPO in rounds, the reward model shown each round's policy's answers.

ROUND_STEPS = ("ppo/round_1/ppo", "ppo/round_2/label", "ppo/round_2/reward", "ppo", "ppo/round_3/label")


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    """The tiny preset in 2 rounds, PPO and its ceiling only, 4 PPO iterations (2 a round) and no headroom, so that
    the evaluation is not the run's largest step: ~25 s, serial (the resume below takes the default --jobs)."""
    out = tmp_path_factory.mktemp("rounds") / "run"
    config = out.parent / "rounds.yaml"
    config.write_text("rlhf_rounds: 2\nppo: {iterations: 4}\neval: {headroom: []}\n", encoding="utf-8")
    flags = ["--preset", "tiny", "--out", str(out), "--methods", "ppo", "ppo_gold", "--config", str(config)]
    assert main(["pipeline", *flags, "--jobs", "1"]) == 0
    return out, flags


def test_rlhf_rounds_run_end_to_end_and_report_each_round(rounds_run):
    out, _ = rounds_run
    built = json.loads((out / "steps.json").read_text())
    assert {*ROUND_STEPS, "ppo_gold"} <= set(built) and all(built[s]["complete"] for s in ROUND_STEPS)
    # round 2's rankings are of round 1's policy, its reward model continues Step2's, its PPO round 1's policy
    assert set(built["ppo/round_2/label"]["parents"]) == {"ppo/round_1/ppo", "sft"}
    assert set(built["ppo/round_2/reward"]["parents"]) == {"ppo/round_2/label", "reward"}
    assert set(built["ppo"]["parents"]) == {"sft", "ppo/round_2/reward", "ppo/round_1/ppo"}
    assert built["ppo"]["settings"]["policy"] == "<out>/ppo_rounds/round_1/ppo"  # a moved run is the same run
    first, last = read_meta(out / "ppo_rounds" / "round_1" / "ppo"), read_meta(out / "ppo")
    assert (first["iterations"], last["iterations"], last["rollouts_before"]) == (2, 2, 2)
    assert last["settings"]["ref_policy"] == str(out / "sft")  # the KL still to SFT
    assert last["settings"]["reward_model"] == str(out / "ppo_rounds" / "round_2" / "reward")
    rankings = read_jsonl(out / "ppo_rounds" / "round_2" / "comparisons.jsonl")
    writers = {w for row in rankings for w in row["models"]}
    assert writers == {str(out / "ppo_rounds" / "round_1" / "ppo"), str(out / "sft")}
    measured = read_jsonl(out / "ppo_rounds" / "round_3" / "comparisons.jsonl")
    assert {r["prompt"] for r in measured}.isdisjoint({r["prompt"] for r in rankings})  # parts 1/2 and 2/2

    report = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))
    assert {"ppo_round1", "ppo", "ppo_gold"} <= set(report["models"])
    rows = report["rlhf_rounds"]["ppo"]
    assert [(r["round"], r["iterations"], r["policy"]) for r in rows] == [(1, 2, "ppo_round1"), (2, 4, "ppo")]
    assert [r["reward_model"] for r in rows] == ["reward", "ppo/round_2/reward"]
    eval_json = json.loads((out / "ppo_rounds" / "round_2" / "reward" / "eval.json").read_text())
    assert rows[0]["rm_on_own_policy"] == eval_json["accuracy_on_new_samples"]["previous"]
    for row in rows:
        assert row["win_rate"] == report["models"][row["policy"]]["win_rate"]
        assert (
            0 <= row["rm_on_own_policy"]["panel_agreement"] <= 1
            and row["rm_on_own_policy"]["n_panel_pairs"] > 0
        )
    md = (out / "eval" / "report.md").read_text(encoding="utf-8")
    table = md.split("## RLHF rounds")[1].split("\n## ")[0]
    assert [line.split(" | ")[:3] for line in table.splitlines() if line.startswith("| ppo")] == [
        ["| ppo_round1", "1", "2"],
        ["| ppo", "2", "4"],
    ]


def test_resume_after_deleting_round_2s_ppo_rebuilds_it_alone(rounds_run, capsys):
    out, flags = rounds_run
    kept = {
        name: (out / name / "model.safetensors").stat().st_mtime_ns
        for name in ("sft", "reward", "ppo_rounds/round_1/ppo", "ppo_rounds/round_2/reward", "ppo_gold")
    }
    before = (out / "ppo" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "ppo")
    capsys.readouterr()
    assert main(["pipeline", *flags, "--resume"]) == 0
    console = console_text(capsys)
    for step in ("pretrain", "sft", "label", "reward", "ppo_gold", *ROUND_STEPS):
        assert (f"] {step}: finished earlier, skipped" in console) == (step != "ppo"), step
    for name, mtime in kept.items():
        assert (out / name / "model.safetensors").stat().st_mtime_ns == mtime, f"{name} was rebuilt"
    # seeded, at the serial run's one thread (the resume's child: 1 // jobs, at least 1): the same model again
    assert (out / "ppo" / "model.safetensors").read_bytes() == before
    assert "rlhf_rounds" in json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))


def test_one_rlhf_round_is_todays_pipeline_and_n_rounds_split_the_iterations(tmp_path):
    from rlhfkit.pipeline import fingerprints, step_graph

    def graph(*flags, config=None):
        cfg, steps = resolved(
            "--preset", "tiny", "--out", str(tmp_path / "a"), *flags, config=config, tmp_path=tmp_path
        )
        return cfg, steps, step_graph(cfg, steps), fingerprints(cfg, steps)

    _, today, names, prints = graph()
    _, one, names_1, prints_1 = graph("--rlhf-rounds", "1")
    assert one == today and list(names_1) == list(names) and prints_1 == prints
    cfg, steps, rounds, prints_2 = graph("--rlhf-rounds", "2", config={"ppo": {"iterations": 4}})
    assert [n for n in rounds if n.startswith("ppo_ptx")] == [
        "ppo_ptx/round_1/ppo",
        "ppo_ptx/round_2/label",
        "ppo_ptx/round_2/reward",
        "ppo_ptx",
        "ppo_ptx/round_3/label",
    ]
    assert rounds["ppo_ptx"][0].ptx_coef == 1.0 and rounds["ppo_ptx"][0].iterations == 2
    assert set(rounds["eval"][1]) >= {*ROUND_STEPS, "ppo_ptx/round_3/label"}
    # the steps before Step3 and the methods without rounds are the one-round run's: adding rounds reuses them
    _, _, _, prints_4 = graph(config={"ppo": {"iterations": 4}})
    same = {n for n in prints_4 if prints_4[n]["fingerprint"] == prints_2[n]["fingerprint"]}
    assert same == {"pretrain", "sft", "label", "reward", "rloo", "ppo_gold", "dpo"}
    with pytest.raises(ValueError, match=r"ppo.iterations = 3 does not split into 2 rounds"):
        graph("--rlhf-rounds", "2")
    with pytest.raises(ValueError, match=r"--methods dpo runs neither"):
        graph("--rlhf-rounds", "2", "--methods", "dpo")
