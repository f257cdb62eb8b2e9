"""`rlhfkit eval` outside the embedded world: user prompts, judged by a reward model (the oracle cannot judge)."""

import json

import pytest

from rlhfkit.config import EvalConfig
from rlhfkit.evaluate import run as evaluate

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
    assert "judge: reward model" in (out / "report.md").read_text(encoding="utf-8")


def test_user_prompts_without_a_judge_say_what_to_add(tiny_sft, user_prompts, tmp_path):
    cfg = EvalConfig(out=str(tmp_path / "eval"), models=[f"sft={tiny_sft}"], prompts=str(user_prompts))
    with pytest.raises(ValueError, match="need --judge"):
        evaluate(cfg)
