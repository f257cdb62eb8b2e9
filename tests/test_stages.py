"""Step0 (pretrain) and Step1 (SFT) on tiny models: something is learned, what is saved loads as a stock HF model,
and an interrupted run resumes to exactly the weights and metrics of an uninterrupted one."""

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

import rlhfkit.stages.lm
import rlhfkit.training
from conftest import TINY_PRETRAIN, assert_same_run, console_text, read_jsonl, weights
from rlhfkit.config import PretrainConfig, SFTConfig, preset_config
from rlhfkit.modeling import check_vocab, read_meta
from rlhfkit.stages import pretrain, sft
from rlhfkit.stages.sft import build_examples
from rlhfkit.tokenizer import format_prompt, load_tokenizer
from rlhfkit.training import TrainingError


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# --- Step0 ----------------------------------------------------------------------------------------------------


def test_pretrain_loss_falls(tiny_gpt):
    rows = read_jsonl(tiny_gpt / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, TINY_PRETRAIN["max_steps"] + 1))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.2
    assert all(r["tokens"] == TINY_PRETRAIN["batch_size"] * TINY_PRETRAIN["max_len"] for r in rows)  # packed


def test_pretrain_saves_a_stock_hf_model(tiny_gpt):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == TINY_PRETRAIN["hidden_size"]
    assert model.config.num_hidden_layers == TINY_PRETRAIN["num_layers"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) <= TINY_PRETRAIN["vocab_size"]
    meta = json.loads((tiny_gpt / "rlhfkit.json").read_text())
    assert meta["chat"] is False and meta["stage"] == "pretrain" and meta["complete"] is True
    assert not (tiny_gpt / "checkpoint").exists()  # resume state removed once the model is saved
    ids = tokenizer("重庆有洪崖洞。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()


def test_pretrained_model_beats_a_fresh_one(tiny_gpt):
    """20 steps already beat the uniform guess: loss below log(vocab)."""
    rows = read_jsonl(tiny_gpt / "metrics.jsonl")
    vocab = len(AutoTokenizer.from_pretrained(tiny_gpt))
    assert rows[-1]["loss"] < torch.log(torch.tensor(float(vocab))).item()


def resume_config(out: Path, tiny_gpt: Path, **kw) -> PretrainConfig:
    values = {**TINY_PRETRAIN, "max_steps": 12, "save_every": 4}
    values.update(kw)
    return PretrainConfig(out=str(out), tokenizer=str(tiny_gpt), **values)


@contextlib.contextmanager
def interrupted_at_step(step: int):
    """Run the body with Ctrl-C pressed during optimizer step `step` (lm_loss raises on its `step`-th call)."""
    calls, real_loss = [], rlhfkit.stages.lm.lm_loss

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rlhfkit.stages.lm, "lm_loss", loss)
        with pytest.raises(KeyboardInterrupt):
            yield


def test_pretrain_resume_is_exact(tiny_gpt, tmp_path, capsys):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    pretrain.run(resume_config(straight, tiny_gpt))

    with interrupted_at_step(9):
        pretrain.run(resume_config(interrupted, tiny_gpt))
    state = json.loads((interrupted / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 8
    assert not (interrupted / "rlhfkit.json").exists()  # no final model yet
    assert [r["step"] for r in read_jsonl(interrupted / "metrics.jsonl")] == list(range(1, 9))

    capsys.readouterr()
    pretrain.run(resume_config(interrupted, tiny_gpt, resume=True))
    assert "at step 8" in " ".join(capsys.readouterr().err.split())
    assert_same_run(straight, interrupted)
    assert read_meta(interrupted)["complete"] is True


def test_a_resume_with_other_settings_names_them_and_the_model_records_both(tiny_gpt, tmp_path, capsys):
    out = tmp_path / "changed"
    with interrupted_at_step(9):
        pretrain.run(resume_config(out, tiny_gpt))
    capsys.readouterr()
    pretrain.run(resume_config(out, tiny_gpt, resume=True, batch_size=4, lr=1e-3))
    said = " ".join(capsys.readouterr().err.split())
    assert "written with batch_size 8 (now 4), lr 0.003 (now 0.001); the saved model records both" in said
    meta = read_meta(out)
    assert meta["settings"]["batch_size"] == 4
    assert meta["settings_before_resume"] == {"batch_size": 8, "lr": 3e-3}


def test_a_resume_that_adds_lora_is_refused_naming_the_setting(tiny_gpt, tmp_path):
    def config(**kw):
        return preset_config(
            SFTConfig,
            out=str(tmp_path / "sft"),
            model=str(tiny_gpt),
            max_steps=6,
            batch_size=4,
            max_len=64,
            save_every=2,
            **kw,
        )

    with interrupted_at_step(3):
        sft.run(config())
    with pytest.raises(TrainingError, match=r"it was written with lora_r 0 \(now 4\).*delete .*checkpoint"):
        sft.run(config(resume=True, lora_r=4))


def test_a_resume_without_a_checkpoint_says_it_starts_over(tiny_gpt, tmp_path, capsys):
    sft.run(
        preset_config(
            SFTConfig,
            out=str(tmp_path / "sft"),
            model=str(tiny_gpt),
            max_steps=1,
            batch_size=4,
            max_len=64,
            resume=True,
        )
    )
    assert "no checkpoint in" in " ".join(capsys.readouterr().err.split())


def test_lora_sft_resume_is_exact(tiny_gpt, tmp_path):
    def config(out, **kw):
        return preset_config(
            SFTConfig,
            out=str(out),
            model=str(tiny_gpt),
            lora_r=4,
            max_steps=6,
            batch_size=4,
            max_len=64,
            save_every=2,
            **kw,
        )

    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    sft.run(config(straight))
    with interrupted_at_step(4):
        sft.run(config(interrupted))
    sft.run(config(interrupted, resume=True))
    assert_same_run(straight, interrupted)


def test_resume_takes_a_new_learning_rate(tiny_gpt, tmp_path):
    # After a NaN the message says: lower the learning rate, then --resume. The schedule must then use it.
    out, lr = tmp_path / "run", TINY_PRETRAIN.get("lr", PretrainConfig.lr)
    with interrupted_at_step(9):
        pretrain.run(resume_config(out, tiny_gpt, log_every=1))
    pretrain.run(resume_config(out, tiny_gpt, log_every=1, resume=True, lr=lr / 10))
    rows = {r["step"]: r["lr"] for r in read_jsonl(out / "metrics.jsonl")}
    warmup = PretrainConfig.warmup_steps
    schedule = rlhfkit.training.cosine_schedule(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup, 12)
    factors = [schedule.lr_lambdas[0](step) for step in range(1, 13)]  # the lr logged after step s
    assert rows[8] == pytest.approx(lr * factors[7])
    assert rows[9] == pytest.approx(lr / 10 * factors[8])
    assert rows[12] == pytest.approx(lr / 10 * factors[11])


def test_resume_of_a_finished_run_does_nothing(tiny_gpt, monkeypatch):
    before = (tiny_gpt / "model.safetensors").stat().st_mtime_ns

    def must_not_load(*args, **kwargs):
        raise AssertionError("a finished stage was loaded again")

    monkeypatch.setattr(pretrain, "load_texts", must_not_load)
    assert pretrain.run(PretrainConfig(out=str(tiny_gpt), resume=True)) is None
    assert (tiny_gpt / "model.safetensors").stat().st_mtime_ns == before


def tiny_llama_dir(path: Path, tokenizer, vocab_size: int) -> Path:
    """A model directory made with plain transformers, as a user would bring one."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_vocab_mismatch_names_both_sizes(tiny_gpt, tmp_path):
    tokenizer = load_tokenizer(tiny_gpt)
    small = tiny_llama_dir(tmp_path / "small", tokenizer, vocab_size=100)
    with pytest.raises(ValueError, match=rf"{len(tokenizer)} tokens.*embedding table has 100"):
        sft.run(preset_config(SFTConfig, out=str(tmp_path / "out"), model=str(small), max_steps=1))
    with pytest.raises(ValueError, match=rf"where: the tokenizer has {len(tokenizer)} tokens.* has 100"):
        check_vocab(AutoModelForCausalLM.from_pretrained(small), tokenizer, "where")
    check_vocab(AutoModelForCausalLM.from_pretrained(tiny_gpt), tokenizer, "fine")  # matching sizes pass


@pytest.mark.parametrize(
    "where",
    ["ppo --ref-policy", "ppo --value-model", "dpo --ref-policy", "eval --models", "eval --judge"],
)
def test_every_second_model_is_checked_against_the_tokenizer(
    where, tiny_sft, tiny_reward, tiny_comparisons, tmp_path
):
    from rlhfkit.config import DPOConfig, EvalConfig, PPOConfig, preset_config
    from rlhfkit.evaluate import run as evaluate
    from rlhfkit.stages import dpo, ppo

    tokenizer = load_tokenizer(tiny_sft)
    small = str(tiny_llama_dir(tmp_path / "small", tokenizer, vocab_size=100))
    small_rm = str(
        tmp_path / "small_rm"
    )  # the same, with a (trained-looking) scalar head: a judge must have one
    AutoModelForSequenceClassification.from_pretrained(small, num_labels=1).save_pretrained(small_rm)
    tokenizer.save_pretrained(small_rm)
    out = str(tmp_path / "out")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    ppo_cfg = preset_config(
        PPOConfig, out=out, policy=str(tiny_sft), reward_model=str(tiny_reward), iterations=1
    )
    runs = {
        "ppo --ref-policy": lambda: ppo.run(dataclasses.replace(ppo_cfg, ref_policy=small)),
        "ppo --value-model": lambda: ppo.run(dataclasses.replace(ppo_cfg, value_model=small)),
        "dpo --ref-policy": lambda: dpo.run(
            preset_config(
                DPOConfig, out=out, policy=str(tiny_sft), ref_policy=small, data=str(tiny_comparisons)
            )
        ),
        "eval --models": lambda: evaluate(EvalConfig(out=out, models=[f"sft={tiny_sft}", f"small={small}"])),
        "eval --judge": lambda: evaluate(
            EvalConfig(out=out, models=[f"sft={tiny_sft}"], prompts=str(prompts), judge=small_rm)
        ),
    }
    with pytest.raises(ValueError, match=rf"{where} .*the tokenizer has {len(tokenizer)} tokens.* has 100"):
        runs[where]()


# --- Step1 ----------------------------------------------------------------------------------------------------


def test_build_examples_masks_the_prompt(tiny_gpt):
    tokenizer = load_tokenizer(tiny_gpt)
    prompt, completion = "我想去重庆玩，有哪些好玩的地点呢？", "重庆有洪崖洞。"
    [example] = build_examples([(prompt, completion)], tokenizer, max_len=64)
    context = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example.input_ids == context + answer
    assert example.labels == [-100] * len(context) + answer
    assert tokenizer.decode(example.input_ids) == f"<|user|>{prompt}<|assistant|>{completion}<|endoftext|>"


def test_build_examples_trains_on_every_assistant_turn(tiny_gpt):
    tokenizer = load_tokenizer(tiny_gpt)
    messages = [
        {"role": "user", "content": "去哪玩？"},
        {"role": "assistant", "content": "重庆。"},
        {"role": "user", "content": "还有呢？"},
        {"role": "assistant", "content": "成都。"},
    ]
    [example] = build_examples([messages], tokenizer, max_len=64)
    targets = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
    assert [label for label in example.labels if label != -100] == targets
    assert tokenizer.decode(targets) == "重庆。<|endoftext|>成都。<|endoftext|>"
    assert targets[-1] == tokenizer.eos_token_id
    n_context = example.labels.index(targets[0])
    assert all(label == -100 for label in example.labels[:n_context])


def test_build_examples_truncates_and_skips_prompt_only(tiny_gpt):
    tokenizer = load_tokenizer(tiny_gpt)
    prompt = "我想去重庆玩，有哪些好玩的地点呢？"
    n_context = len(tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    [example] = build_examples([(prompt, "重庆有洪崖洞。" * 10)], tokenizer, max_len=n_context + 3)
    assert len(example.input_ids) == len(example.labels) == n_context + 3
    assert sum(label != -100 for label in example.labels) == 3
    # a prompt that fills max_len leaves nothing to learn: skipped and counted, not the end of the run
    kept = build_examples([("北京", "故宫。"), (prompt, "重庆")], tokenizer, n_context, "data.jsonl")
    assert len(kept) == 1
    with pytest.raises(ValueError, match="data.jsonl: all 1 demonstrations are longer than --max-len"):
        build_examples([(prompt, "重庆")], tokenizer, n_context, "data.jsonl")


def test_sft_loss_falls_and_saves_a_chat_model(tiny_sft):
    rows = read_jsonl(tiny_sft / "metrics.jsonl")
    assert len(rows) == 20
    assert mean(r["loss"] for r in rows[-3:]) < mean(r["loss"] for r in rows[:3])
    assert all(0 < r["tokens"] < 8 * 64 for r in rows)  # completion tokens only
    meta = read_meta(tiny_sft)
    assert meta["chat"] is True and meta["stage"] == "sft" and meta["complete"] is True
    AutoModelForCausalLM.from_pretrained(tiny_sft)
    assert AutoTokenizer.from_pretrained(tiny_sft).chat_template


def test_sft_with_lora_saves_a_merged_model(tiny_gpt, tmp_path):
    out = tmp_path / "lora"
    cfg = preset_config(
        SFTConfig,
        out=str(out),
        model=str(tiny_gpt),
        lora_r=4,
        max_steps=6,
        batch_size=8,
        max_len=64,
        lr=1e-2,
        log_every=1,
    )
    sft.run(cfg)
    sft.run(dataclasses.replace(cfg, out=str(tmp_path / "again")))
    first, again = weights(out), weights(tmp_path / "again")
    assert all(torch.equal(first[n], again[n]) for n in first)  # seeded: the adapters' initialisation too
    assert not (out / "adapter_config.json").exists()
    merged, base = weights(out), weights(tiny_gpt)
    assert not any("lora" in name for name in merged)
    assert merged.keys() == base.keys()
    changed = [n for n in base if not torch.equal(merged[n], base[n])]
    assert any("q_proj" in n for n in changed)  # the adapters were trained and merged in
    assert not any("embed" in n or "norm" in n for n in changed)  # only the linear layers had adapters
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(read_jsonl(out / "metrics.jsonl")) == 6


def test_sft_accepts_a_plain_hf_model_dir(tiny_gpt, tmp_path):
    tokenizer = load_tokenizer(tiny_gpt)
    model_dir = tiny_llama_dir(tmp_path / "hf", tokenizer, vocab_size=len(tokenizer))
    assert not (model_dir / "rlhfkit.json").exists()
    out = tmp_path / "sft"
    sft.run(
        preset_config(
            SFTConfig, out=str(out), model=str(model_dir), max_steps=3, batch_size=4, max_len=64, log_every=1
        )
    )
    assert read_meta(out)["chat"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 1  # the user's architecture, not the default model
    assert not torch.equal(
        weights(out)["lm_head.weight"], load_file(str(model_dir / "model.safetensors"))["lm_head.weight"]
    )
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_continued_pretraining_keeps_the_models_tokenizer(tiny_gpt, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"cats and dogs, line {i}."}) + "\n" for i in range(40)))
    out = tmp_path / "gpt2"
    cfg = PretrainConfig(
        out=str(out), model=str(tiny_gpt), data=str(data), max_steps=2, batch_size=2, max_len=16
    )
    pretrain.run(cfg)
    before, after = load_tokenizer(tiny_gpt), load_tokenizer(out)
    assert len(after) == len(before)  # not a new BPE trained on the user's 40 lines
    text = "请问北京有什么好玩的景点？ cats and dogs"
    assert after(text)["input_ids"] == before(text)["input_ids"]


def test_auto_precision_follows_the_cpu(monkeypatch):
    # bf16 autocast only where this CPU does bf16 matmuls natively; an AVX2-only CPU emulates them ~70x slower.
    from rlhfkit import training

    monkeypatch.setattr(training, "cpu_bf16_is_fast", lambda: False)
    assert training.make_accelerator("auto", cpu=True).mixed_precision == "no"
    monkeypatch.setattr(training, "cpu_bf16_is_fast", lambda: True)
    assert training.make_accelerator("auto", cpu=True).mixed_precision == "bf16"
    assert training.make_accelerator("no", cpu=True).mixed_precision == "no"


def test_auto_precision_says_what_it_chose_once(monkeypatch, capsys):
    # The same seed trains to other numbers in bf16 than in fp32: a run on a CPU with native bf16 says so.
    from rlhfkit import training

    monkeypatch.setattr(training, "_SAID_PRECISION", set())
    monkeypatch.setattr(training, "cpu_bf16_is_fast", lambda: True)
    training.make_accelerator("auto", cpu=True)
    training.make_accelerator("auto", cpu=True)
    training.make_accelerator("no", cpu=True)
    said = console_text(capsys)
    assert said.count("[precision]") == 1
    assert (
        "--mixed-precision auto: bf16 autocast (this CPU has native bf16" in said
        and "--mixed-precision no" in said
    )
    monkeypatch.setattr(training, "cpu_bf16_is_fast", lambda: False)
    training.make_accelerator("auto", cpu=True)
    assert "--mixed-precision auto: fp32 (this CPU has no native bf16)" in console_text(capsys)


def test_a_checkpoint_whose_optimizer_does_not_fit_is_a_clear_error(tmp_path):
    """A checkpoint written with other parameter groups (another version, other trainable parameters) cannot be
    resumed: say which directory to delete, not torch's state-dict error."""
    from rlhfkit.training import (
        TrainingError,
        load_checkpoint,
        make_accelerator,
        parameter_groups,
        save_checkpoint,
    )

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    accelerator = make_accelerator("no")
    one_group = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accelerator.prepare(model, one_group)
    save_checkpoint(accelerator, tmp_path, 1)

    accelerator = make_accelerator("no")
    two_groups = torch.optim.AdamW(parameter_groups(model, 1e-3, 0.01))  # matrices decayed, the rest not
    accelerator.prepare(model, two_groups)
    with pytest.raises(
        TrainingError, match=r"checkpoint: its optimizer state does not fit .* Delete .*checkpoint"
    ):
        load_checkpoint(accelerator, tmp_path)


def test_resuming_a_finished_run_names_the_settings_it_was_made_with(tiny_gpt, tmp_path, capsys):
    cfg = preset_config(
        SFTConfig, out=str(tmp_path / "sft"), model=str(tiny_gpt), max_steps=2, batch_size=4, max_len=64
    )
    sft.run(cfg)
    assert read_meta(tmp_path / "sft")["settings"] == {
        k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"
    }
    capsys.readouterr()
    assert sft.run(dataclasses.replace(cfg, resume=True)) is None
    assert " ".join(capsys.readouterr().err.split()).endswith("is already finished; nothing to do")
    assert sft.run(dataclasses.replace(cfg, resume=True, lr=2e-3, batch_size=2)) is None
    said = " ".join(capsys.readouterr().err.split())
    assert "it was made with batch_size 4 (now 2), lr 0.001 (now 0.002): give another --out" in said


def test_cpu_bf16_is_decided_by_the_cpus_flags_where_it_lists_them(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    )
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert [rlhfkit.training.cpu_bf16_is_fast(cpuinfo=avx2) for _ in range(5)] == [False] * 5
    assert rlhfkit.training.cpu_bf16_is_fast(cpuinfo=amx) is True
    assert isinstance(rlhfkit.training.cpu_bf16_is_fast(cpuinfo=tmp_path / "missing"), bool)  # timed instead
