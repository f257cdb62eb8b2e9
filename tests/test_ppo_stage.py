"""Step3 on the tiny SFT model: PPO raises a toy reward, PPO-ptx/RLOO/LoRA run, resume is exact, a NaN stops the
run with a clear error and keeps the last checkpoint, and the real reward model drives a run to the end."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import read_jsonl, without_time
from rlhfkit.config import PPOConfig, preset_config
from rlhfkit.modeling import read_meta
from rlhfkit.stages import ppo
from rlhfkit.training import TrainingError

TOY_CHAR = "的"  # the most frequent character in the world's text, and in the tiny SFT model's answers


def toy_reward(prompts, responses, ended):
    """How often the answer says 的: a reward the tiny policy can learn to raise within a few iterations."""
    return [float(r.count(TOY_CHAR)) for r in responses]


def toy_config(out: Path, policy: Path, **kw) -> PPOConfig:
    """Small and fast; no KL, EOS penalty or EMA, so the reward curve shows the policy gradient alone."""
    values = dict(
        policy=str(policy),
        reward_model="",  # with a reward_fn there is no reward model; the value model starts from the policy
        iterations=2,
        batch_size=16,
        mini_batch_size=8,
        max_new_tokens=12,
        lr=3e-3,
        kl_coef=0.0,
        missing_eos_penalty=0.0,
        ema_decay=0.0,
        warmup_steps=0,
        save_every=0,
        sample_every=0,
    )
    values.update(kw)
    return preset_config(PPOConfig, out=str(out), **values)


def test_ppo_raises_a_toy_reward(tiny_sft, tmp_path):
    out = tmp_path / "ppo"
    ppo.run(
        toy_config(out, tiny_sft, iterations=10, batch_size=32, mini_batch_size=16, max_new_tokens=16),
        toy_reward,
    )
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    rewards = [r["reward"] for r in rows]
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.2, rewards
    for key in ("pg_loss", "v_loss", "clipfrac", "approx_kl", "entropy", "kl", "response_length"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert "ptx_loss" not in rows[0]  # ptx_coef = 0 is plain PPO
    assert read_meta(out)["stage"] == "ppo" and read_meta(out)["complete"] is True
    AutoModelForCausalLM.from_pretrained(out)
    AutoModelForSequenceClassification.from_pretrained(out / "value_model", num_labels=1)


def test_ppo_ptx_logs_the_pretraining_loss(tiny_sft, tmp_path):
    out = tmp_path / "ppo_ptx"
    ppo.run(toy_config(out, tiny_sft, ptx_coef=1.0, ptx_batch_size=4, max_len=64), toy_reward)
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        # the LM loss of the tiny model on world text: between a perfect model and a uniform guess
        assert 0.0 < row["ptx_loss"] < math.log(1000)
    meta = read_meta(out)
    assert meta["stage"] == "ppo_ptx" and meta["ptx_coef"] == 1.0


def test_rloo_runs_without_a_critic(tiny_sft, tmp_path):
    out = tmp_path / "rloo"
    ppo.run(toy_config(out, tiny_sft, algo="rloo", rloo_k=4, batch_size=16), toy_reward)
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2
    assert all(math.isfinite(r["pg_loss"]) and math.isfinite(r["reward"]) for r in rows)
    assert "v_loss" not in rows[0]
    assert not (out / "value_model").exists()
    assert read_meta(out)["algo"] == "rloo"
    AutoModelForCausalLM.from_pretrained(out)


def test_rloo_rejects_an_unknown_algo(tiny_sft, tmp_path):
    with pytest.raises(ValueError, match="'a2c'"):
        ppo.run(toy_config(tmp_path / "x", tiny_sft, algo="a2c"), toy_reward)


def test_lora_policy_uses_itself_without_adapters_as_reference(tiny_sft, tmp_path):
    out = tmp_path / "lora"
    ppo.run(toy_config(out, tiny_sft, iterations=3, lora_r=4, kl_coef=0.05), toy_reward)
    kls = [r["kl"] for r in read_jsonl(out / "metrics.jsonl")]
    # LoRA's B starts at zero: the first rollout's policy IS the reference, so the KL is exactly 0 …
    assert kls[0] == 0.0
    # … and once the adapters have trained, the policy has moved away from the adapter-free reference.
    assert all(kl != 0.0 for kl in kls[1:])
    merged, sft_weights = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tiny_sft / "model.safetensors")),
    )
    assert merged.keys() == sft_weights.keys()  # a plain model: adapters merged, no lora_* tensors
    assert any(not torch.equal(merged[n], sft_weights[n]) for n in merged if "proj" in n)
    assert not (out / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out)


def test_full_policy_starts_at_zero_kl(tiny_sft, tmp_path):
    out = tmp_path / "full"
    ppo.run(toy_config(out, tiny_sft, iterations=2, kl_coef=0.05), toy_reward)
    kls = [r["kl"] for r in read_jsonl(out / "metrics.jsonl")]
    assert kls[0] == 0.0 and kls[1] != 0.0


# --- resume ---------------------------------------------------------------------------------------------------

# Everything that carries state across iterations is on: EMA, adaptive β, the value model, samples.
RESUME = dict(
    iterations=5, save_every=2, ema_decay=0.9, adaptive_kl=True, kl_coef=0.05, kl_horizon=50, sample_every=1
)


class Interrupt:
    """A reward_fn that is interrupted (Ctrl-C) on its n-th call, i.e. in iteration n."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, prompts, responses, ended):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return toy_reward(prompts, responses, ended)


@pytest.fixture(scope="module")
def resumed_runs(tiny_sft, tmp_path_factory):
    """An uninterrupted run, and one interrupted in iteration 4 (after the checkpoint at 2) and resumed."""
    root = tmp_path_factory.mktemp("ppo_resume")
    straight, resumed = root / "straight", root / "resumed"
    ppo.run(toy_config(straight, tiny_sft, **RESUME), toy_reward)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(toy_config(resumed, tiny_sft, **RESUME), Interrupt(4))
    state = json.loads((resumed / "checkpoint" / "trainer_state.json").read_text())
    interrupted_steps = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl")]
    ppo.run(toy_config(resumed, tiny_sft, **RESUME, resume=True), toy_reward)
    return straight, resumed, state, interrupted_steps


def test_interrupted_run_kept_its_checkpoint(resumed_runs):
    _, _, state, interrupted_steps = resumed_runs
    assert state["step"] == 2
    assert interrupted_steps == [1, 2, 3]  # iteration 4 was interrupted; 3 was logged but not checkpointed


def test_ppo_resume_reproduces_the_metrics(resumed_runs):
    straight, resumed, _, _ = resumed_runs
    expected = without_time(read_jsonl(straight / "metrics.jsonl"))
    assert [r["step"] for r in expected] == [1, 2, 3, 4, 5]
    assert expected[-1]["kl_coef"] != RESUME["kl_coef"]  # adaptive β moved, so its restore is tested
    assert without_time(read_jsonl(resumed / "metrics.jsonl")) == expected


def test_ppo_resume_reproduces_the_weights(resumed_runs):
    straight, resumed, _, _ = resumed_runs
    for name in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
    assert not (resumed / "checkpoint").exists()


def test_ppo_resume_does_not_duplicate_samples(resumed_runs):
    straight, resumed, _, _ = resumed_runs
    assert read_jsonl(resumed / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")


# --- NaN ------------------------------------------------------------------------------------------------------


class NaNAt:
    """A reward_fn that returns NaN rewards in iteration n (its n-th call)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, prompts, responses, ended):
        self.calls += 1
        if self.calls == self.n:
            return [math.nan] * len(responses)
        return toy_reward(prompts, responses, ended)


@pytest.fixture(scope="module")
def nan_run(tiny_sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_nan") / "run"
    with pytest.raises(TrainingError) as error:
        ppo.run(toy_config(out, tiny_sft, iterations=4, save_every=2), NaNAt(3))
    return out, str(error.value)


def test_nan_reward_stops_with_a_training_error(nan_run):
    out, message = nan_run
    assert re.search(r"iteration \d+: reward \(reward model\) = nan", message), message
    assert "--resume" in message
    # The iteration with NaN rewards was neither logged nor saved; the checkpoint from iteration 2 survives.
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    assert not (out / "rlhfkit.json").exists()


def test_nan_run_resumes_from_its_last_checkpoint(nan_run, tiny_sft, capsys):
    out, _ = nan_run
    before = read_jsonl(out / "metrics.jsonl")
    capsys.readouterr()
    ppo.run(toy_config(out, tiny_sft, iterations=4, save_every=2, resume=True), toy_reward)
    assert "at iteration 2" in " ".join(capsys.readouterr().err.split())
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == before
    assert all(math.isfinite(r["reward"]) for r in rows)
    assert read_meta(out)["complete"] is True


def test_nan_error_names_the_iteration_and_the_reward(tiny_sft, tmp_path):
    with pytest.raises(TrainingError) as error:
        ppo.run(toy_config(tmp_path / "run", tiny_sft, iterations=3, save_every=2), NaNAt(3))
    assert re.match(r"iteration 3: reward \(reward model\) = nan", str(error.value)), str(error.value)


# --- the real reward model ------------------------------------------------------------------------------------


def test_ppo_with_the_tiny_reward_model(tiny_sft, tiny_reward, tmp_path):
    out = tmp_path / "ppo_rm"
    config = toy_config(
        out,
        tiny_sft,
        reward_model=str(tiny_reward),
        iterations=2,
        kl_coef=0.05,
        missing_eos_penalty=1.0,
        ema_decay=0.992,
    )
    ppo.run(config)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["reward"]) and math.isfinite(r["v_loss"]) for r in rows)
    value = AutoModelForSequenceClassification.from_pretrained(out / "value_model", num_labels=1)
    assert read_meta(out / "value_model")["stage"] == "value"
    # The value model starts as a copy of the reward model and is trained: its head has moved.
    rm_head = load_file(str(tiny_reward / "model.safetensors"))["score.weight"]
    assert value.score.weight.shape == rm_head.shape
    assert not torch.equal(value.score.weight.detach(), rm_head)
    assert read_meta(out)["complete"] is True
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_value_head_on_the_policy_trunk_trains(lora_r, tiny_sft, tmp_path):
    out = tmp_path / "shared"
    ppo.run(toy_config(out, tiny_sft, shared_trunk=True, lora_r=lora_r, log_every=1), toy_reward)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["v_loss"]) for r in rows)
    assert not (out / "value_model").exists()  # the head lives on the policy, nothing separate to save


def test_rloo_batch_must_hold_whole_groups_of_samples(tiny_sft, tmp_path):
    with pytest.raises(ValueError, match="--batch-size 6 must be a multiple of --rloo-k 4"):
        config = toy_config(
            tmp_path / "rloo", tiny_sft, algo="rloo", batch_size=6, mini_batch_size=6, rloo_k=4
        )
        ppo.run(config, toy_reward)


def test_conversation_prompts_reach_the_policy_whole(tiny_sft, tmp_path):
    system = {"role": "system", "content": "你是导游"}
    rows = [
        {"messages": [system, {"role": "user", "content": f"第{i}个城市有什么好玩的？"}]} for i in range(4)
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    seen = []

    def reward(prompts, responses, ended):
        seen.extend(prompts)
        return toy_reward(prompts, responses, ended)

    out = tmp_path / "conv"
    ppo.run(
        toy_config(out, tiny_sft, prompts=str(prompts), batch_size=4, mini_batch_size=4, sample_every=1),
        reward,
    )
    assert seen and all(p[0] == system for p in seen)  # the system turn is part of every prompt
    logged = read_jsonl(out / "samples.jsonl")[0]["prompt"]  # the whole conversation, system turn included
    assert logged[0] == system and logged[-1]["content"].endswith("有什么好玩的？")


def test_too_little_ptx_text_names_the_flag(tiny_sft, tmp_path):
    text = tmp_path / "ptx.jsonl"
    text.write_text(json.dumps({"text": "短。"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"ppo --ptx-data {text}: \d+ tokens, fewer than one block of 128"):
        ppo.run(toy_config(tmp_path / "ptx", tiny_sft, ptx_coef=1.0, ptx_data=str(text)), toy_reward)


def rm_setup(tiny_sft, tiny_reward, **kw):
    from transformers import AutoTokenizer

    from rlhfkit.modeling import load_causal_lm, load_reward_model

    config = toy_config(
        Path("unused"), tiny_sft, reward_model=str(tiny_reward), missing_eos_penalty=0.0, **kw
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    reward_model = load_reward_model(str(tiny_reward), tokenizer.pad_token_id, trained=True).eval()
    assert reward_model.config.reward_bias != 0 and reward_model.config.reward_std not in (0, 1)
    return config, tokenizer, load_causal_lm(tiny_sft).eval(), reward_model


def test_value_model_starts_in_the_rewards_units(tiny_sft, tiny_reward):
    """Initialised from the RM, V at the last token of an answer is the reward PPO gives it (shift and scale)."""
    from rlhfkit.batching import encode_prompts
    from rlhfkit.modeling import per_token_scores
    from rlhfkit.rollout import sample

    config, tokenizer, policy, reward_model = rm_setup(tiny_sft, tiny_reward)
    ids = encode_prompts(
        tokenizer, ["我想去重庆玩，有哪些好玩的地点呢？", "请问北京有什么好玩的景点？"], chat=True
    )
    batch = sample(
        policy, ids, tokenizer.eos_token_id, tokenizer.pad_token_id, 8, 1.0, 1.0, torch.Generator()
    )
    value_model = ppo.make_value_model(config, policy, tokenizer)
    with torch.no_grad():
        values = per_token_scores(value_model, batch.sequences, batch.attention_mask)  # (B, T) every position
        rewards = ppo.score_episodes(
            reward_model, ppo.reward_units(reward_model.config, config), None, batch, [], [], config
        )  # (B,)
    last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(1).argmax(1)  # the last real token
    torch.testing.assert_close(values[torch.arange(2), last], rewards, atol=1e-5, rtol=0)


def test_shared_value_head_starts_as_the_rm_head_in_reward_units(tiny_sft, tiny_reward):
    config, tokenizer, policy, reward_model = rm_setup(tiny_sft, tiny_reward, shared_trunk=True)
    head = ppo.make_value_model(config, policy, tokenizer)
    shift, scale = reward_model.config.reward_bias, reward_model.config.reward_std
    torch.testing.assert_close(head.weight.detach(), reward_model.score.weight.detach() / scale)
    torch.testing.assert_close(head.bias.detach(), torch.tensor([shift / scale]))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            dict(temperature=0.0),
            "ppo --temperature 0.0: PPO needs the sampling distribution's log-probabilities",
        ),
        (dict(grad_accum=2), "ppo --grad-accum 2: PPO takes one optimizer step per minibatch"),
        (
            dict(lora_r=4, ref_policy="runs/other_sft"),
            "with LoRA the reference is the policy with its adapters off",
        ),
    ],
)
def test_settings_ppo_cannot_honour_are_refused(setting, message, tiny_sft, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        ppo.run(toy_config(tmp_path / "bad", tiny_sft, **setting), toy_reward)


def test_max_grad_norm_zero_turns_clipping_off(tiny_sft, tmp_path):
    """0 means no clipping, not gradients clipped to nothing: the policy still moves."""
    out = tmp_path / "noclip"
    policy = ppo.run(toy_config(out, tiny_sft, max_grad_norm=0.0, iterations=1), toy_reward)
    before = load_file(str(tiny_sft / "model.safetensors"))
    after = dict(policy.named_parameters())
    moved = [n for n, w in before.items() if n in after and not torch.equal(after[n].detach(), w)]
    assert moved


def test_a_reward_model_that_barely_separates_answers_is_named(tiny_sft, tiny_reward, tmp_path, capsys):
    # A reward model whose scores of the centring answers hardly differ: PPO's rewards are divided by that spread.
    narrow = tmp_path / "narrow_rm"
    shutil.copytree(tiny_reward, narrow)
    config = json.loads((narrow / "config.json").read_text())
    (narrow / "config.json").write_text(json.dumps({**config, "reward_std": 0.0033}))
    ppo.run(toy_config(tmp_path / "ppo", tiny_sft, reward_model=str(narrow), iterations=1))
    said = " ".join(capsys.readouterr().err.split())
    assert "[ppo] warning: the reward model's scores of the centring answers spread by only 0.0033" in said
    assert "(×303) unless given --no-scale-rewards" in said
    assert "RL prompts: the embedded world's (--prompts FILE for yours)" in said  # no ptx text: no --ptx-data


def test_the_saved_average_says_how_much_of_it_is_the_starting_policy(tiny_sft, tmp_path, capsys):
    ppo.run(toy_config(tmp_path / "ppo", tiny_sft, iterations=1, ema_decay=0.9), toy_reward)
    said = " ".join(capsys.readouterr().err.split())
    assert (
        "saved the EMA of the policy weights (decay 0.9 over 4 steps: 66% of it is still the starting" in said
    )


# --- the gold reward (--reward-model gold: the ceiling) -------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_gold_reward_trains_on_the_worlds_judge_and_says_so(algo, tiny_sft, tmp_path):
    from rlhfkit.world import score

    out = tmp_path / algo
    ppo.run(toy_config(out, tiny_sft, reward_model="gold", algo=algo, iterations=1, sample_every=1))
    meta = read_meta(out)
    assert (meta["reward"], meta["reward_formula"], meta["settings"]["reward_model"]) == (
        "gold",
        "(gold - 7) / 2",
        "gold",
    )
    assert (out / "value_model").exists() == (algo == "ppo")
    # every logged episode's reward is its answer's gold score, (gold − 7) / 2 (with or without EOS: the
    # samples do not say which, and the gold judge's `ends` dimension tells the two apart)
    for row in read_jsonl(out / "samples.jsonl"):
        golds = {round((score(row["prompt"], row["response"], e).total - 7) / 2, 4) for e in (True, False)}
        assert row["score"] in golds, row
    assert math.isfinite(read_jsonl(out / "metrics.jsonl")[0]["reward"])


def test_a_run_on_a_reward_model_records_it(tiny_sft, tiny_reward, tmp_path):
    out = tmp_path / "rm"
    ppo.run(toy_config(out, tiny_sft, reward_model=str(tiny_reward), iterations=1))
    assert read_meta(out)["reward"] == "reward_model" and "reward_formula" not in read_meta(out)


def test_gold_reward_is_refused_on_prompts_the_world_cannot_judge(tiny_sft, tmp_path):
    from rlhfkit.world import split_prompts

    world = [t.prompt for t in split_prompts()["rl"][:3]]
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p} for p in world] + [{"prompt": "帮我写一首关于秋天的诗"}]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        ppo.run(toy_config(tmp_path / "x", tiny_sft, reward_model="gold", prompts=str(prompts)))
    message = " ".join(str(err.value).split())
    assert f"ppo --prompts {prompts} --policy {tiny_sft} --reward-model gold" in message
    assert "1 of 4 prompts are not one (the first, prompt 4: '帮我写一首关于秋天的诗')" in message
    assert not (tmp_path / "x").exists()  # refused before anything was trained or written
    from rlhfkit.cli import main  # the command line says it in one line, as a usage error (exit 2)

    flags = ["--policy", str(tiny_sft), "--prompts", str(prompts), "--out", str(tmp_path / "x")]
    assert main(["ppo", "--reward-model", "gold", *flags]) == 2
    # the world's own prompts in a file of the user's are the world's tasks: accepted
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:3]), encoding="utf-8")
    ppo.run(toy_config(tmp_path / "y", tiny_sft, reward_model="gold", prompts=str(prompts), batch_size=8))
    assert read_meta(tmp_path / "y")["reward"] == "gold"


class AsciiTokenizer:
    """A tokenizer that cannot spell Chinese: every other character comes back as <unk>."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) if ord(c) < 128 else 0 for c in text]}

    def decode(self, ids):
        return "".join(chr(i) if i else "<unk>" for i in ids)


def test_gold_reward_is_refused_with_a_tokenizer_that_is_not_the_worlds(tiny_sft):
    from rlhfkit.sources import gold_reward
    from rlhfkit.tokenizer import load_tokenizer
    from rlhfkit.world import split_prompts

    prompts = [t.prompt for t in split_prompts()["rl"][:4]]
    with pytest.raises(
        ValueError, match=r"X --reward-model gold: the tokenizer is not the world's: it cannot"
    ):
        gold_reward(prompts, AsciiTokenizer(), "X")
    reward = gold_reward(prompts, load_tokenizer(tiny_sft), "X")  # the world's tokenizer: accepted
    assert reward(prompts[:1], ["重庆有洪崖洞和解放碑。"], [True])[0] > reward(prompts[:1], ["。"], [True])[0]


@pytest.mark.parametrize("shared_trunk", [False, True])
def test_without_a_reward_model_the_value_head_starts_at_zero(shared_trunk, tiny_sft):
    """Gold (or a reward_fn) has no RM to copy: the value model is the policy with a zero head, every value 0."""
    from rlhfkit.batching import encode_prompts
    from rlhfkit.modeling import load_causal_lm, scalar_head
    from rlhfkit.rollout import sample
    from rlhfkit.tokenizer import load_tokenizer

    config = toy_config(Path("unused"), tiny_sft, reward_model="gold", shared_trunk=shared_trunk)
    tokenizer, policy = load_tokenizer(tiny_sft), load_causal_lm(tiny_sft).eval()
    value_model = ppo.make_value_model(config, policy, tokenizer)
    head = value_model if shared_trunk else scalar_head(value_model.model)
    assert torch.count_nonzero(head.weight) == 0
    batch = sample(
        policy,
        encode_prompts(tokenizer, ["请问北京有什么好玩的景点？"], chat=True),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        6,
        1.0,
        1.0,
        torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        values = ppo.values_of(value_model, policy, batch, config)
    assert values.shape == batch.response_mask.shape and torch.count_nonzero(values) == 0
    if not shared_trunk:  # the trunk is the policy's own
        torch.testing.assert_close(
            value_model.model.model.embed_tokens.weight, policy.model.embed_tokens.weight
        )
