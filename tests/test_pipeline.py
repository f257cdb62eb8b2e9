"""End to end: `rlhfkit pipeline --preset tiny` writes every artifact, a well-formed report, and `--resume` after
deleting one step's directory rebuilds only that step (and the evaluation)."""

import json
import math
import shutil

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import read_jsonl
from rlhfkit.cli import main
from rlhfkit.modeling import read_meta
from rlhfkit.world import FAMILIES, SEED_PROMPTS

POLICIES = ("gpt", "sft", "ppo", "ppo_ptx")
STEPS = ("pretrain", "sft", "label", "reward", "ppo", "ppo_ptx", "eval")


def console_text(capsys) -> str:
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["pipeline", "--preset", "tiny", "--out", str(out)]) == 0
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
    for name in ("ppo", "ppo_ptx"):
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
    for name in ("sft", "ppo", "ppo_ptx"):
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
