"""DPO on tiny models: every ranking is one element (its K responses scored once, all pairs taken from them),
the implicit reward learns the labelers' order, and the result is a stock causal LM."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import assert_same_run, console_text, read_jsonl, weights
from rlhfkit.config import DPOConfig, preset_config
from rlhfkit.stages import dpo
from rlhfkit.tokenizer import format_prompt, load_tokenizer


def training_config(out, policy, data, **kw) -> DPOConfig:
    """A short DPO run on the tiny SFT model: β 1, no warm-up, every step logged, no checkpoints."""
    values = dict(batch_size=8, beta=1.0, warmup_steps=0, max_len=64, log_every=1, save_every=0)
    return preset_config(DPOConfig, out=str(out), policy=str(policy), data=str(data), **{**values, **kw})


def rankings_file(tmp_path, n: int = 8) -> Path:
    """n K=3 rankings of fixed answers to the world's first n RM prompts."""
    from rlhfkit.world import split_prompts

    answers = ["洪崖洞、解放碑和磁器口。", "不知道", "故宫。", "可以去看看长城。"]
    rows = [
        {"prompt": task.prompt, "responses": answers[i % 2 : i % 2 + 3], "ranking": [0, 1, 2]}
        for i, task in enumerate(split_prompts()["rm"][:n])
    ]
    data = tmp_path / "rankings.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return data


def test_pair_index_weighs_every_ranking_the_same():
    rankings = [
        dpo.EncodedRanking([[1], [2], [3]], 1, [(0, 1), (0, 2), (1, 2)]),  # K=3, 3 pairs
        dpo.EncodedRanking([[4], [5]], 1, [(1, 0)]),  # a pairwise row: K=2, 1 pair
    ]
    chosen, rejected, weights = dpo.pair_index(rankings, "cpu")
    assert chosen.tolist() == [0, 0, 1, 4]  # the second ranking's responses sit at flat positions 3 and 4
    assert rejected.tolist() == [1, 2, 2, 3]
    assert torch.allclose(weights, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))
    assert math.isclose(weights.sum().item(), 1.0, rel_tol=1e-6)


def test_dpo_learns_the_rankings_and_saves_a_causal_lm(tiny_sft, tiny_comparisons, tmp_path):
    out = tmp_path / "dpo"
    cfg = training_config(out, tiny_sft, tiny_comparisons, max_steps=60, lr=3e-3)
    dpo.run(cfg)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert all(math.isfinite(r["loss"]) for r in rows)
    # The loss starts at log 2 (policy = reference) and the implicit reward comes to order the pairs.
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-3
    assert sum(r["loss"] for r in rows[-5:]) / 5 < math.log(2) - 0.01
    assert sum(r["reward_accuracy"] for r in rows[-5:]) / 5 > 0.55
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(load_tokenizer(out)) == model.config.vocab_size
    assert json.loads((out / "rlhfkit.json").read_text())["stage"] == "dpo"


def test_dpo_rejects_a_ranking_of_only_ties_with_file_and_line(tiny_sft, tmp_path):
    from rlhfkit.data import DataError

    data = tmp_path / "ties.jsonl"
    rows = [
        {"prompt": "请问北京有什么好玩的景点？", "responses": ["故宫、颐和园。", "故宫"], "ranking": [0, 1]},
        {"prompt": "请问北京有什么好玩的景点？", "responses": ["故宫。", "长城。"], "ranks": [1, 1]},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    cfg = preset_config(DPOConfig, out=str(tmp_path / "o"), policy=str(tiny_sft), data=str(data), max_len=64)
    with pytest.raises(DataError, match=f'{data}:2: field "ranks"'):
        dpo.encode_rankings(cfg, load_tokenizer(tiny_sft))


def test_a_prompt_longer_than_max_len_keeps_every_answer_token(tiny_sft, tmp_path):
    # Rows are cut from the left to max_len; the answer tokens must still be the ones the loss reads.
    data = tmp_path / "long.jsonl"
    answers = ["故宫、颐和园。", "长城"]
    row = {"prompt": "请问北京有什么好玩的景点？" * 20, "chosen": answers[0], "rejected": answers[1]}
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(tiny_sft)
    cfg = preset_config(DPOConfig, out=str(tmp_path / "o"), policy=str(tiny_sft), data=str(data), max_len=32)
    (ranking,) = dpo.encode_rankings(cfg, tokenizer)
    for ids, n_prompt, answer in zip(ranking.rows, ranking.prompt_lens, answers):
        assert len(ids) == 32 and 0 < n_prompt < 32
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[n_prompt:-1]) == answer


def test_a_conversation_reaches_the_model_whole(tiny_sft, tmp_path):
    # TRL's conversational rows: the system turn and earlier turns are part of what the answers are scored on.
    turns = [{"role": "system", "content": "你是导游"}, {"role": "user", "content": "重庆有什么好玩的？"}]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "洪崖洞。"}],
        "rejected": [*turns, {"role": "assistant", "content": "故宫。"}],
    }
    data = tmp_path / "conv.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(tiny_sft)
    cfg = preset_config(DPOConfig, out=str(tmp_path / "o"), policy=str(tiny_sft), data=str(data))
    (ranking,) = dpo.encode_rankings(cfg, tokenizer)
    for ids, n_prompt in zip(ranking.rows, ranking.prompt_lens):
        assert tokenizer.decode(ids[:n_prompt]) == format_prompt(tokenizer, turns)
        assert "你是导游" in tokenizer.decode(ids[:n_prompt])


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_step_zero_log_ratios_are_zero_under_mixed_precision(precision, tiny_sft, tmp_path):
    # The reference log-probs are cached under the policy's autocast, so policy = reference gives log-ratios
    # of exactly 0 at step 0 — in bf16 too, where a float32 reference would be off by bf16 rounding.
    out = tmp_path / "dpo"
    cfg = training_config(out, tiny_sft, rankings_file(tmp_path), mixed_precision=precision, max_steps=1)
    dpo.run(cfg)
    [step] = read_jsonl(out / "metrics.jsonl")
    assert (step["chosen_reward"], step["rejected_reward"], step["reward_margin"]) == (0.0, 0.0, 0.0)
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_grad_accum_takes_half_the_steps_of_the_same_batches_unaccumulated(tiny_sft, tmp_path):
    # 8 rankings, one epoch. Micro-batches 2s and 2s+1 of 2 are the first and second half of batch s of 4 (one
    # shuffle per epoch), so 2 × 2 accumulated must train as batches of 4: the same losses, gradients, weights.
    data = rankings_file(tmp_path)
    runs = {"2x1": dict(batch_size=2), "2x2": dict(batch_size=2, grad_accum=2), "4x1": dict(batch_size=4)}
    for name, kw in runs.items():
        dpo.run(
            training_config(tmp_path / name, tiny_sft, data, epochs=1, lr=1e-2, mixed_precision="no", **kw)
        )
    metrics = {name: read_jsonl(tmp_path / name / "metrics.jsonl") for name in runs}
    assert [r["step"] for r in metrics["2x1"]] == [1, 2, 3, 4]
    assert [r["step"] for r in metrics["2x2"]] == [r["step"] for r in metrics["4x1"]] == [1, 2]
    for accumulated, whole in zip(metrics["2x2"], metrics["4x1"]):
        for key in ("loss", "grad_norm", "reward_margin", "reward_accuracy", "chosen_reward", "lr"):
            assert accumulated[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    a, b = weights(tmp_path / "2x2"), weights(tmp_path / "4x1")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    unaccumulated = weights(tmp_path / "2x1")  # twice the steps of batches half the size: another model
    assert any(not torch.equal(a[key], unaccumulated[key]) for key in a)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_dpo_resume_is_exact(grad_accum, tiny_sft, tmp_path, capsys):
    data = rankings_file(tmp_path)

    def config(out, **kw) -> DPOConfig:
        return training_config(out, tiny_sft, data, batch_size=2, grad_accum=grad_accum, max_steps=4, **kw)

    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    dpo.run(config(straight))
    calls, real_loss = [], dpo.dpo_loss

    def loss(*args, **kwargs):  # Ctrl-C in the first micro-batch of step 3, after the checkpoint at step 2
        calls.append(1)
        if len(calls) == 2 * grad_accum + 1:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(dpo, "dpo_loss", loss)
        dpo.run(config(interrupted, save_every=2))
    assert json.loads((interrupted / "checkpoint" / "trainer_state.json").read_text())["step"] == 2

    capsys.readouterr()
    dpo.run(config(interrupted, save_every=2, resume=True))
    text = console_text(capsys)
    assert "[dpo] resuming from" in text and "at step 2" in text
    assert f"[dpo] saved to {interrupted}" in text
    assert_same_run(straight, interrupted)


def test_rows_longer_than_max_len_are_counted_in_a_warning(tiny_sft, tmp_path, capsys):
    tokenizer = load_tokenizer(tiny_sft)
    rows = [
        {"prompt": "请问北京有什么好玩的景点？", "chosen": "故宫、颐和园。" * 20, "rejected": "长城"},
        {"prompt": "重庆有什么好玩的？", "chosen": "洪崖洞。", "rejected": "故宫。"},
    ]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    dpo.encode_rankings(
        preset_config(DPOConfig, out=str(tmp_path / "o"), policy=str(tiny_sft), data=str(data), max_len=32),
        tokenizer,
    )
    assert (
        "[dpo] warning: 1 of 4 responses are longer than --max-len 32 with their prompt; they keep their last 32 "
        "tokens (the prompt's start is cut)"
    ) in console_text(capsys)
    dpo.encode_rankings(
        preset_config(DPOConfig, out=str(tmp_path / "o"), policy=str(tiny_sft), data=str(data), max_len=512),
        tokenizer,
    )
    assert "warning" not in console_text(capsys)
