"""Issue #23: a practitioner's own checkpoint and TRL-format data, with nothing done silently — defaults that
suit a real model while the presets keep the world's tuned run, and (further down) prompt length, end of turn,
exported reward models, DDP epochs, dtypes and the world never standing in for the user's data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import console_text
from rlhfkit import pipeline
from rlhfkit.cli import main
from rlhfkit.config import (
    METHODS,
    PRESETS,
    DPOConfig,
    PipelineConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    preset_config,
)
from rlhfkit.training import cosine_schedule

DATA = Path(__file__).parent / "data"

# ---------------------------------------------------------------------------------------------------------------
# 6. Defaults for a real checkpoint; the presets keep the tuned values of the world.


def test_every_preset_resolves_to_the_settings_it_had_before_the_defaults_moved():
    """resolved_presets.json holds `resolve` of every preset (all methods) as main had it at 1c07861, when the
    dataclasses' defaults were the world's. A deliberate change of a preset's values regenerates the file (the
    snippet is in its commit message); a new setting is checked by its own test."""
    before = json.loads((DATA / "resolved_presets.json").read_text(encoding="utf-8"))
    assert set(before) == set(PRESETS)
    for preset, steps in before.items():
        now = pipeline.resolve(PipelineConfig(out="runs/demo", preset=preset, methods=list(METHODS)))
        for step, settings in steps.items():
            resolved = dataclasses.asdict(now[step])
            differ = {k: (v, resolved.get(k, "missing")) for k, v in settings.items() if resolved.get(k) != v}
            assert not differ, f"{preset}.{step}: {differ}"


def test_stage_defaults_are_trls_not_the_demo_models():
    assert (SFTConfig().lr, SFTConfig().epochs, SFTConfig().max_len, SFTConfig().warmup_steps) == (
        2e-5,
        3.0,
        1024,
        0,
    )
    assert (RewardConfig().lr, RewardConfig().max_len) == (1e-5, 1024)
    assert (DPOConfig().lr, DPOConfig().beta, DPOConfig().max_len) == (1e-6, 0.1, 1024)
    assert (PPOConfig().lr, PPOConfig().kl_coef) == (3e-6, 0.05)
    # the Python API's --preset: the world's tuned run
    assert (preset_config(SFTConfig).lr, preset_config(SFTConfig, epochs=2.0).epochs) == (1e-3, 2.0)
    assert preset_config(PPOConfig, "tiny").iterations == 3


def test_a_warmup_longer_than_the_run_is_cut_to_the_run(capsys):
    schedule = cosine_schedule(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup_steps=20, total_steps=5)
    factors = [schedule.lr_lambdas[0](step) for step in range(5)]
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # the peak is reached, at the run's last step
    assert "--warmup-steps 20 is longer than the run's 5 optimizer steps" in console_text(capsys)


@pytest.mark.parametrize("command", ["sft", "reward", "ppo", "dpo", "label"])
def test_a_stage_with_the_default_preset_runs_the_pipelines_step(command, tmp_path, monkeypatch):
    """`rlhfkit ppo --preset default` + the pipeline's paths = the default pipeline's Step3, setting for setting."""
    import importlib

    from rlhfkit.cli import STAGES

    monkeypatch.chdir(tmp_path)
    step = pipeline.resolve(PipelineConfig(out="run"))[command]
    seen = []
    module, name = STAGES[command][1].split(":")
    monkeypatch.setattr(importlib.import_module(module), name, seen.append)
    paths = {k: v for k, v in dataclasses.asdict(step).items() if isinstance(v, str) and v.startswith("run")}
    flags = [item for k, v in paths.items() for item in ("--" + k.replace("_", "-"), v)]
    assert main([command, "--preset", "default", *flags]) == 0
    assert seen == [step]
    seen.clear()
    assert main([command, "--preset", "default", "--lr" if command != "label" else "--k", "7", *flags]) == 0
    assert seen[0] != step  # a flag wins over the preset


# ---------------------------------------------------------------------------------------------------------------
# Tiny checkpoints of three families (tests/own_models.py).


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    from own_models import KINDS, build

    root = tmp_path_factory.mktemp("own")
    return {kind: build(kind, root / kind) for kind in KINDS}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


LONG_SYSTEM = "You are a careful assistant. " * 40  # ~200 tokens of this tokenizer


# ---------------------------------------------------------------------------------------------------------------
# 1. Prompt length: a setting, from the data by default, the template's tokens never cut, the cut ones counted.


def test_a_long_prompt_keeps_its_template_and_the_question(own, capsys):
    from rlhfkit.batching import encode_prompts, fit_prompts
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(own["qwen2"])
    conversation = [
        {"role": "system", "content": LONG_SYSTEM},
        {"role": "user", "content": "What is two plus two?"},
    ]
    short = "Hello, how are you?"
    fitted = fit_prompts(tokenizer, [conversation, short], True, 40, 16, 256, "ppo")
    assert fitted[1] == short
    ids = encode_prompts(tokenizer, fitted[:1], True)[0]
    text = tokenizer.decode(ids)
    assert len(ids) <= 40
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
    )
    said = console_text(capsys)
    assert "[ppo] 1 of 2 prompts are longer than --max-prompt-length 40: 40 tokens" in said
    # by default: the longest prompt, capped by what the context leaves for the answer
    assert fit_prompts(tokenizer, [conversation, short], True, None, 16, None, "ppo") == [conversation, short]
    capped = fit_prompts(tokenizer, [conversation], True, None, 200, 256, "ppo")
    assert len(encode_prompts(tokenizer, capped, True)[0]) <= 56
    with pytest.raises(ValueError, match=r"--max-prompt-length 250 \+ --max-new-tokens 16 is more than"):
        fit_prompts(tokenizer, [short], True, 250, 16, 256, "ppo")


def test_generate_says_it_cut_a_prompt_longer_than_the_context(own, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": LONG_SYSTEM * 2 + "What is two plus two?"}])
    args = ["generate", "--model", str(own["qwen2"]), "--prompts-file", str(prompts), "--max-new-tokens", "4"]
    assert main(args) == 0
    said = console_text(capsys)
    assert (
        "[generate] 1 of 1 prompts are longer than --max-prompt-length (default: the longest prompt, within the model's 256-token context): 252 tokens"
        in said
    )
    assert main([*args, "--max-prompt-length", "30"]) == 0
    assert "--max-prompt-length 30: 30 tokens" in console_text(capsys)


def test_the_worlds_prompts_are_encoded_as_before(tiny_sft):
    """The default (the longest prompt) cuts nothing of the world's: the same ids as main's cut to 96 tokens."""
    from rlhfkit import world
    from rlhfkit.batching import encode_prompts, fit_prompts
    from rlhfkit.tokenizer import format_prompt, load_tokenizer

    tokenizer = load_tokenizer(tiny_sft)
    for split, prompts in world.split_prompts().items():
        texts = [task.prompt for task in prompts]
        before = [
            ids[-96:]
            for ids in tokenizer([format_prompt(tokenizer, p) for p in texts], add_special_tokens=False)[
                "input_ids"
            ]
        ]
        fitted = fit_prompts(tokenizer, texts, True, None, 64, 512, "ppo")
        assert encode_prompts(tokenizer, fitted, True) == before, split


# ---------------------------------------------------------------------------------------------------------------
# 2, 3, 9. SFT: answers end with the template's end-of-turn token, every assistant turn is learned, what is too
# long is cut / skipped / refused and counted.


def labelled(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != -100])


def test_answers_end_with_the_templates_end_of_turn_token(own, tiny_sft):
    from rlhfkit.batching import encode_response
    from rlhfkit.stages.sft import build_examples
    from rlhfkit.tokenizer import end_of_turn, load_tokenizer

    expected = {"gpt2": "<|im_end|>", "qwen2": "<|im_end|>", "llama": "</s>"}
    for kind, token in expected.items():
        tokenizer = load_tokenizer(own[kind])
        assert end_of_turn(tokenizer) == token, kind
        (example,) = build_examples([("Hi", "Hello.")], tokenizer, 64)
        assert labelled(tokenizer, example).endswith("Hello." + token), kind
        assert encode_response(tokenizer, [1], "Hello.", True, 64)[-1] == tokenizer.convert_tokens_to_ids(
            token
        )
    world = load_tokenizer(tiny_sft)  # the world's: EOS, as before
    assert end_of_turn(world) == world.eos_token


def test_sft_on_a_chatml_model_says_and_records_its_end_of_turn(own, tmp_path, capsys):
    from rlhfkit.modeling import read_meta
    from rlhfkit.stages import sft

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello."}] * 4)
    out = tmp_path / "sft"
    sft.run(SFTConfig(out=str(out), model=str(own["qwen2"]), data=str(data), max_steps=1, batch_size=2))
    assert (
        "answers end with <|im_end|>, what the chat template renders after an assistant turn"
        in console_text(capsys)
    )
    assert read_meta(out)["end_of_turn"] == "<|im_end|>"


def test_multi_turn_sft_learns_every_assistant_turn(own):
    from rlhfkit.stages.sft import build_examples
    from rlhfkit.tokenizer import load_tokenizer

    conversation = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And you?"},
        {"role": "assistant", "content": "Fine."},
    ]
    for kind, eot in (("qwen2", "<|im_end|>"), ("llama", "</s>")):
        tokenizer = load_tokenizer(own[kind])
        (example,) = build_examples([conversation], tokenizer, 128)
        learned = labelled(tokenizer, example)
        assert learned.replace(" ", "") == f"Hello.{eot}Fine.{eot}", kind
        assert "Hi there" not in learned and "And you" not in learned


def test_a_template_without_a_system_role_is_a_clear_error(own):
    from rlhfkit.stages.sft import build_examples
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(own["llama"])
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    with pytest.raises(
        ValueError, match="refuses a conversation of roles system → user.*takes no system turn"
    ):
        build_examples([conversation], tokenizer, 128)


def test_sft_counts_what_is_too_long_and_does_what_truncation_mode_says(own, capsys):
    from rlhfkit.stages.sft import build_examples
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(own["qwen2"])
    demos = [("Hi", "Hello."), ("Hi", "Hello. " * 30), ("Hello, how are you? " * 20, "Fine.")]
    kept = build_examples(demos, tokenizer, 48, "sft --data d.jsonl")
    assert len(kept) == 2 and len(kept[1].input_ids) == 48  # the long answer cut, the long prompt skipped
    said = console_text(capsys)
    assert "2 of 3 demonstrations are longer than --max-len 48 tokens" in said
    assert "1 cut to their first 48 tokens (the end of the answer and its <|im_end|> are not learned" in said
    assert "1 skipped, their prompt alone filling --max-len" in said
    assert len(build_examples(demos, tokenizer, 48, truncation_mode="skip")) == 1
    with pytest.raises(
        ValueError, match="demonstration 2 is .* tokens with its prompt, longer than --max-len 48"
    ):
        build_examples(demos, tokenizer, 48, truncation_mode="error")


# ---------------------------------------------------------------------------------------------------------------
# 4. A reward model scores in plain transformers as in rlhfkit.

PAIRS = [{"prompt": "Hi", "chosen": "Hello, how are you?", "rejected": "Go away."}] * 4


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "llama"])
def test_an_exported_reward_model_scores_the_same_in_plain_transformers(kind, own, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.batching import score_responses
    from rlhfkit.modeling import load_reward_model
    from rlhfkit.stages import reward, sft
    from rlhfkit.tokenizer import end_of_turn, format_prompt, load_tokenizer

    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello."}] * 4)
    sft.run(
        SFTConfig(out=str(tmp_path / "sft"), model=str(own[kind]), data=str(demos), max_steps=1, batch_size=2)
    )
    rm = tmp_path / "rm"
    pairs = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    reward.run(
        RewardConfig(
            out=str(rm), model=str(tmp_path / "sft"), data=str(pairs), demonstrations="", max_steps=2, lr=1e-2
        )
    )
    tokenizer = load_tokenizer(rm)
    assert tokenizer.pad_token_id != tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    ours = load_reward_model(rm, tokenizer.pad_token_id, trained=True).eval()
    bias = float(ours.config.reward_bias or 0.0)
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    system = [] if kind == "llama" else [{"role": "system", "content": "Be kind."}]
    conversation = [*system, *earlier, {"role": "user", "content": "How are you today?"}]
    prompts, responses = ["Hi", conversation, "Hi"], ["Hello, how are you?", "Fine, thank you.", "Go"]
    expected = score_responses(ours, tokenizer, prompts, responses, [True, True, False]) - bias

    hf_tokenizer = AutoTokenizer.from_pretrained(rm)
    hf_model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    eot = end_of_turn(tokenizer)
    texts = [
        format_prompt(hf_tokenizer, p) + r + (eot if ended else "")
        for p, r, ended in zip(prompts, responses, [True, True, False])
    ]
    batch = hf_tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        plain = hf_model(**batch).logits.squeeze(-1)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    assert len(set(expected.tolist())) == 3  # three different scores, not one pooled position


# ---------------------------------------------------------------------------------------------------------------
# 5 is in tests/test_distributed.py (two processes). 7. Precision, memory, loading options.


def test_a_bf16_checkpoint_trains_and_saves_in_bf16_with_its_memory_logged(tmp_path):
    from safetensors.torch import load_file

    from own_models import build
    from rlhfkit.stages import sft

    model = build("qwen2", tmp_path / "bf16", dtype=torch.bfloat16)
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello."}] * 4)
    common = dict(
        model=str(model), data=str(data), max_steps=2, batch_size=2, log_every=1, mixed_precision="no"
    )
    sft.run(
        SFTConfig(
            out=str(tmp_path / "auto"), gradient_checkpointing=True, attn_implementation="eager", **common
        )
    )
    assert {t.dtype for t in load_file(str(tmp_path / "auto" / "model.safetensors")).values()} == {
        torch.bfloat16
    }
    rows = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["peak_memory_mb"] > 0 for row in rows)
    sft.run(SFTConfig(out=str(tmp_path / "fp32"), dtype="fp32", **common))
    assert {t.dtype for t in load_file(str(tmp_path / "fp32" / "model.safetensors")).values()} == {
        torch.float32
    }


def test_loading_options_reach_transformers(own, monkeypatch):
    from rlhfkit import modeling

    seen = {}
    real = modeling.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", spy)
    modeling.use_load_options(SFTConfig(trust_remote_code=True, attn_implementation="eager", dtype="bf16"))
    try:
        model = modeling.load_causal_lm(own["llama"])
    finally:
        modeling.use_load_options(SFTConfig())
    assert seen["trust_remote_code"] is True and seen["attn_implementation"] == "eager"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert SFTConfig().trust_remote_code is False


# ---------------------------------------------------------------------------------------------------------------
# 8. The embedded world never stands in for a user's data.


def test_eval_with_a_judge_on_a_users_model_needs_its_prompts(own, tmp_path, capsys):
    out = str(tmp_path / "eval")
    code = main(
        ["eval", "--models", f"sft={own['qwen2']}", "--reference", "sft", "--judge", "rm", "--out", out]
    )
    assert code == 2
    said = console_text(capsys)
    assert "eval --judge rm without --prompts" in said and "give --prompts FILE.jsonl" in said


def test_ppo_ptx_on_a_users_model_needs_its_text(own, tmp_path):
    from rlhfkit.stages import ppo

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}] * 4)
    cfg = PPOConfig(out=str(tmp_path / "ppo"), policy=str(own["qwen2"]), prompts=str(prompts), ptx_coef=1.0)
    with pytest.raises(ValueError, match="ppo --ptx-coef 1.0 without --ptx-data.*give --ptx-data FILE.jsonl"):
        ppo.run(cfg, reward_fn=lambda prompts, texts, ended: [0.0] * len(texts))


@pytest.mark.parametrize("kind", ["qwen2"])
def test_scoring_a_row_longer_than_the_reward_models_context_says_so(kind, own, capsys):
    """`score_responses` (score, best-of-n, eval's RM judge) reads a row's score at its last token, so a row longer
    than the model's context keeps its last tokens: never silently, and a row that fits is scored whole."""
    from rlhfkit import batching
    from rlhfkit.modeling import context_length, load_reward_model
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(own[kind])
    model = load_reward_model(own[kind], tokenizer.pad_token_id).eval()
    limit = context_length(model)
    batching._SAID_CUT.discard(limit)
    long = "word " * (2 * limit)
    short, cut = batching.score_responses(model, tokenizer, ["Hi", "Hi"], ["Fine.", long]).tolist()
    assert (
        f"[score] warning: 1 of 2 responses are longer than the reward model's context of {limit} tokens with "
        f"their prompt; they keep their last {limit} tokens"
    ) in console_text(capsys)
    rows = batching.encode_rows(tokenizer, ["Hi", "Hi"], ["Fine.", long], [True, True], 10 * limit)
    ids, mask = batching.pad([rows[0], rows[1][-limit:]], tokenizer.pad_token_id)
    with torch.no_grad():
        expected = batching.last_token_scores(model, ids, mask).tolist()
    assert [short, cut] == pytest.approx(expected, abs=1e-6)
    batching.score_responses(model, tokenizer, ["Hi"], ["Fine."])
    assert "longer than" not in console_text(capsys)  # nothing cut, nothing said


def test_gradient_checkpointing_recomputes_the_layers_in_training(tmp_path, monkeypatch):
    """--gradient-checkpointing reaches the training forward: transformers runs each decoder layer through
    torch.utils.checkpoint (counted here), and without the flag it runs none."""
    import transformers.modeling_utils as hf_modeling

    from own_models import build
    from rlhfkit.stages import sft

    calls = []
    real = hf_modeling.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_modeling, "checkpoint", counting)
    model = build("llama", tmp_path / "llama")
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello."}] * 4)
    common = dict(model=str(model), data=str(data), max_steps=1, batch_size=2, mixed_precision="no")
    sft.run(SFTConfig(out=str(tmp_path / "plain"), **common))
    assert calls == []
    sft.run(SFTConfig(out=str(tmp_path / "ckpt"), gradient_checkpointing=True, **common))
    assert len(calls) >= 1
