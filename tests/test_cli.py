"""`rlhfkit <command>`: help from the config dataclasses, YAML + flags, generate, and user errors as exit code 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rlhfkit.stages.pretrain
from conftest import console_text, read_jsonl
from rlhfkit.cli import main
from rlhfkit.config import PPOConfig, PretrainConfig, RewardConfig, key_values, parse_setting


@pytest.mark.parametrize(
    "command, flags",
    [
        ("pretrain", ["--max-steps", "optimizer steps", "--vocab-size", "--resume", "--no-resume"]),
        ("sft", ["--lora-r", "LoRA rank"]),
        ("reward", ["--kwise", "--no-kwise", "--center-rewards-coefficient"]),
        ("ppo", ["--kl-coef", "--ptx-coef", "--cliprange", "--missing-eos-penalty", "--algo"]),
        ("dpo", ["--beta", "--loss-type", "--ref-policy", "--label-smoothing"]),
        ("pipeline", ["--preset", "--print-config"]),
    ],
)
def test_help_lists_every_field(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in flags:
        assert flag in out
    assert "--config" in out


def test_every_command_and_flag_the_readme_documents_exists(capsys):
    root = Path(__file__).parents[1]
    text = "".join((root / doc).read_text(encoding="utf-8") for doc in ("README.md", "docs/commands.md"))
    table = "\n".join(re.findall(r"^\| `rlhfkit .*$", text, flags=re.MULTILINE))
    documented = re.findall(r"`rlhfkit ((?:world )?[\w-]+)([^`]*)`", table)
    assert {"pipeline", "ppo", "dpo", "eval"} <= {cmd for cmd, _ in documented}
    for cmd, usage in documented:
        with pytest.raises(SystemExit) as exit_:
            main([*cmd.split(), "--help"])
        help_text = capsys.readouterr().out
        assert exit_.value.code == 0, f"README documents `rlhfkit {cmd}`, the CLI lacks it"
        flags = set(re.findall(r"--[a-z][a-z-]*", usage))
        missing = sorted(f for f in flags if not re.search(rf"{f}\b", help_text))
        assert not missing, f"README documents `rlhfkit {cmd}` {missing}, its --help lacks them"


def test_dpo_command_trains_and_saves(tiny_sft, tiny_comparisons, tmp_path):
    out = tmp_path / "dpo"
    flags = [
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "64",
        "--save-every",
        "0",
        "--log-every",
        "1",
    ]
    code = main(
        ["dpo", "--policy", str(tiny_sft), "--data", str(tiny_comparisons), "--out", str(out), *flags]
    )
    assert code == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "rlhfkit.json").read_text())["stage"] == "dpo"


def test_pretrain_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {PretrainConfig().max_steps})" in out


@pytest.fixture
def captured_config(monkeypatch, tmp_path):
    """Replace the pretrain stage with a recorder of the config the CLI built (run in tmp_path: the CLI takes
    the lock on --out, which creates the directory)."""
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", seen.append)
    return seen


def test_yaml_values_are_used_and_flags_win(tmp_path, captured_config):
    path = tmp_path / "pretrain.yaml"
    path.write_text("max_steps: 7\nlr: 0.01\nout: from_yaml\nresume: true\n", encoding="utf-8")
    assert main(["pretrain", "--config", str(path), "--lr", "0.5", "--no-resume"]) == 0
    [cfg] = captured_config
    assert isinstance(cfg, PretrainConfig)
    assert cfg.max_steps == 7 and cfg.out == "from_yaml"  # from the file
    assert cfg.lr == 0.5 and cfg.resume is False  # flags override the file
    assert cfg.vocab_size == PretrainConfig().vocab_size  # neither: the dataclass default


def test_flags_alone(captured_config):
    assert main(["pretrain", "--max-steps", "3", "--resume", "--out", "x"]) == 0
    [cfg] = captured_config
    assert (cfg.max_steps, cfg.resume, cfg.out) == (3, True, "x")


def test_key_value_settings_take_the_fields_declared_type():
    """The benchmarks' `--set KEY=VALUE`: read as `--KEY VALUE` would be, whatever the field's current value."""
    assert parse_setting(PPOConfig, "kl_coef", "0.2") == 0.2
    assert parse_setting(RewardConfig, "lr", "1e-3") == 1e-3
    assert parse_setting(RewardConfig, "batch_size", "4") == 4
    assert parse_setting(RewardConfig, "kwise", "false") is False
    assert parse_setting(PPOConfig, "value_model", "runs/x/reward") == "runs/x/reward"  # str | None
    with pytest.raises(ValueError, match="batch_sise: not a RewardConfig setting"):
        parse_setting(RewardConfig, "batch_sise", "4")
    assert key_values(["kl_coef=0.2", "reward_model=a=b"]) == {"kl_coef": "0.2", "reward_model": "a=b"}
    with pytest.raises(ValueError, match="--set 'kl_coef': expected KEY=VALUE"):
        key_values(["kl_coef"])


def test_unknown_yaml_key_names_the_file_and_key(tmp_path, captured_config, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("max_steps: 7\nmax_stpes: 8\n", encoding="utf-8")
    assert main(["pretrain", "--config", str(path)]) == 2
    message = console_text(capsys)
    assert str(path) in message and "max_stpes" in message
    assert captured_config == []  # nothing ran


def test_yaml_config_runs_a_real_stage(tiny_sft, tmp_path):
    """label with k and max_new_tokens from YAML, k overridden by a flag."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"prompt": p}, ensure_ascii=False)
            for p in [
                "我想去重庆玩，有哪些好玩的地点呢？",
                "请问北京有什么好玩的景点？",
            ]  # the labelers know these
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "ranked.jsonl"
    path = tmp_path / "label.yaml"
    path.write_text(
        f"k: 2\nrounds: 1\nmax_new_tokens: 4\nprompts: {prompts}\nmodel: {tiny_sft}\nout: {out}\n",
        encoding="utf-8",
    )
    assert main(["label", "--config", str(path), "--k", "3"]) == 0
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == ["我想去重庆玩，有哪些好玩的地点呢？", "请问北京有什么好玩的景点？"]
    assert all(len(r["responses"]) == 3 and sorted(r["ranking"]) == [0, 1, 2] for r in rows)


def test_generate_prints_an_answer(tiny_sft, capsys):
    prompt = "我想去重庆玩，有哪些好玩的地点呢？"
    assert main(["generate", "--model", str(tiny_sft), "--prompt", prompt, "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"> {prompt}"
    assert lines[1].strip()  # an answer (possibly marked as cut off), not an empty line
    assert "<|" not in out  # special tokens are not printed


def test_generate_several_samples_and_greedy(tiny_sft, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_sft),
        "--prompt",
        "你好",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]
    assert main([*args, "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    answers = [block.split("\n", 1)[1] for block in out.strip().split("\n\n")]
    assert len(answers) == 2 and answers[0] == answers[1]  # greedy: both samples agree


def test_generate_keeps_a_conversation_from_a_prompts_file_whole(tiny_sft, tmp_path, monkeypatch, capsys):
    import rlhfkit.rollout

    conversation = [
        {"role": "system", "content": "你是导游。"},
        {"role": "user", "content": "重庆有什么好玩的？"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": conversation}, ensure_ascii=False) + "\n", encoding="utf-8")
    asked = []
    monkeypatch.setattr(
        rlhfkit.rollout,
        "generate_answers",
        lambda m, t, prompts, *a, **k: asked.extend(prompts) or [("好。", True)],
    )
    assert main(["generate", "--model", str(tiny_sft), "--prompts-file", str(path)]) == 0
    assert asked == [conversation]  # the system turn reaches the model, as in every stage
    assert capsys.readouterr().out.splitlines()[0] == "> 重庆有什么好玩的？"


def test_generate_without_a_prompt_is_a_user_error(tiny_sft, capsys):
    assert main(["generate", "--model", str(tiny_sft)]) == 2
    assert "--prompt" in console_text(capsys)


def test_malformed_sft_data_names_file_and_line(tiny_gpt, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        '{"prompt": "去哪玩？", "completion": "重庆。"}\n{"prompt": "去哪玩？", "completion": "成都。"\n',
        encoding="utf-8",
    )
    code = main(["sft", "--model", str(tiny_gpt), "--data", str(data), "--out", str(tmp_path / "sft")])
    assert code == 2
    message = console_text(capsys)
    assert f"{data}:2" in message and "malformed JSON" in message
    assert "Traceback" not in message
    assert not (tmp_path / "sft" / "rlhfkit.json").exists()


def test_missing_model_dir_is_a_user_error(tmp_path, capsys):
    code = main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "你好"])
    assert code == 2
    assert "nowhere" in console_text(capsys)


def test_error_location_in_a_json_array_file_survives_printing(tiny_sft, tmp_path, capsys):
    path = tmp_path / "prefs.json"
    rows = [
        {"prompt": "去哪玩？", "responses": ["重庆。", "不知道"], "ranking": [0, 1]},
        {"prompt": "去哪玩？", "chosen": "重庆。", "rejected": "重庆。"},
    ]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert main(["reward", "--data", str(path), "--model", str(tiny_sft), "--out", str(tmp_path / "rm")]) == 2
    assert f"{path}[row 1]" in console_text(capsys)


def test_an_optional_yes_no_flag_takes_no_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--chat", "maybe", "--prompt", "x"])  # `--chat` / `--no-chat`, not `--chat VALUE`
    assert exit_.value.code == 2
    assert "unrecognized arguments: maybe" in capsys.readouterr().err


def test_ctrl_c_says_how_to_continue(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", interrupted)
    assert main(["pretrain", "--out", "x"]) == 130
    assert "run the same command with --resume" in console_text(capsys)


def test_two_models_of_one_name_are_refused(tiny_sft, capsys):
    assert main(["eval", "--models", f"sft={tiny_sft}", f"sft={tiny_sft}/x"]) == 2
    assert "two models are named 'sft'" in console_text(capsys)


def test_judging_with_a_causal_lm_is_refused(tiny_sft, capsys):
    # Its scalar head would be freshly initialised: every score noise. Score, PPO's RM and eval's judge refuse it.
    assert main(["score", "--reward-model", str(tiny_sft), "--prompt", "p", "--response", "a"]) == 2
    assert "is not a reward model (LlamaForCausalLM)" in console_text(capsys)


def test_a_reward_model_as_a_language_model_is_refused(tiny_reward, tmp_path, capsys):
    # Its LM head was replaced by the scalar head: SFT, PPO, DPO and eval would start from a random LM head.
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_reward), "--out", str(out), "--max-steps", "1"]) == 2
    assert "is a reward model (LlamaForSequenceClassification), not a language model" in console_text(capsys)
    assert not (out / "model.safetensors").exists()


def test_zero_new_tokens_is_a_user_error(tiny_sft, capsys):
    assert main(["generate", "--model", str(tiny_sft), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens = 0: must be >= 1 (--max-new-tokens)" in console_text(capsys)


def test_world_export_takes_the_corpus_size(tmp_path, capsys):
    main(["world", "export", "--out", str(tmp_path / "w"), "--docs", "150"])
    assert len(read_jsonl(tmp_path / "w" / "pretrain.jsonl")) == 150
    assert f"{tmp_path / 'w'}/pretrain.jsonl: 150 rows" in console_text(capsys)


def test_a_model_directory_without_a_model_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(tmp_path / "empty"), "--prompt", "x"]) == 2
    assert f"tokenizer {tmp_path / 'empty'} has no loadable files" in console_text(capsys)


def test_an_error_is_one_line_however_long(tmp_path, capsys):
    missing = tmp_path / ("x" * 120)
    assert main(["generate", "--model", str(missing), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(missing) in err


def test_chat_offers_only_the_options_it_uses(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            ["chat", "--model", "runs/sft", "--best-of-n", "4"]
        )  # generate's option: chat has no reward model
    assert exit_.value.code == 2 and "unrecognized arguments: --best-of-n 4" in capsys.readouterr().err


def test_a_world_export_with_another_seed_warns_of_the_eval_split(tmp_path, capsys):
    main(["world", "export", "--out", str(tmp_path / "w"), "--seed", "1", "--docs", "50"])
    assert "warning: --seed 1 draws other prompt splits" in capsys.readouterr().err


def test_help_answers_without_loading_torch():
    """`rlhfkit … --help` builds every command's options from the config dataclasses alone: no torch (seconds)."""
    code = (
        "import sys\nfrom rlhfkit import cli\n"
        "for argv in (['--help'], ['pipeline', '--help'], ['ppo', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch loaded:', 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--print-config" in done.stdout and "--kl-coef" in done.stdout  # the helps were printed
    assert done.stdout.strip().endswith("torch loaded: False")
