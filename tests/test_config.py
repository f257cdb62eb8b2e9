"""`--config FILE.yaml`: every value is read as its flag reads it, and a bad value or a broken file is a one-line
error naming the file and key (exit code 2), never a traceback from deep inside a stage."""

import argparse

import pytest
import yaml

import rlhfkit.stages.pretrain
from conftest import console_text
from rlhfkit.cli import GenerateArgs, main
from rlhfkit.config import (
    DPOConfig,
    EvalConfig,
    PPOConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
    add_arguments,
    from_args,
    load_yaml,
    parse_setting,
)


@pytest.fixture
def captured_config(monkeypatch, tmp_path):
    """Replace the pretrain stage with a recorder of the config the CLI built (run in tmp_path: the CLI takes
    the lock on --out, which creates the directory)."""
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", seen.append)
    return seen


@pytest.fixture
def write_yaml(tmp_path):
    def write(text: str, name: str = "run.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def yaml_error(path, cls) -> str:
    with pytest.raises(ValueError) as err:
        load_yaml(path, cls)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_float_without_a_dot_is_a_float(write_yaml, captured_config):
    """YAML 1.1 reads `1e-4` as a string; the --lr flag reads it as 1e-4, and so does the file."""
    path = write_yaml("lr: 1e-4\nweight_decay: 1\n")
    assert yaml.safe_load(path.read_text()) == {"lr": "1e-4", "weight_decay": 1}
    assert main(["pretrain", "--config", str(path)]) == 0
    [cfg] = captured_config
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 1.0 and isinstance(cfg.weight_decay, float)


def test_bad_value_names_file_key_and_type(write_yaml):
    path = write_yaml("max_steps: abc\n")
    assert yaml_error(path, PretrainConfig) == f"{path}: max_steps: expected an integer, got 'abc'"
    for text, expected in [
        ("lr: abc", "lr: expected a float, got 'abc'"),
        ("max_steps: 7.5", "max_steps: expected an integer, got 7.5"),  # --max-steps 7.5 is refused too
        ("lr: true", "lr: expected a float, got True"),
        ("resume: maybe", "resume: expected true or false, got 'maybe'"),
        ("max_steps: null", "max_steps: expected an integer, got None"),  # not an optional setting
        ("max_steps: [1, 2]", "max_steps: expected an integer, got [1, 2]"),
    ]:
        assert yaml_error(write_yaml(text), PretrainConfig) == f"{path}: {expected}"


def test_typed_values_are_kept(write_yaml):
    path = write_yaml("kl_coef: 0.2\niterations: 3\nadaptive_kl: true\nvalue_model: null\nout: runs/x\n")
    assert load_yaml(path, PPOConfig) == {
        "kl_coef": 0.2,
        "iterations": 3,
        "adaptive_kl": True,
        "value_model": None,
        "out": "runs/x",
    }
    path = write_yaml("best_of_n: [4, 16]\nmodels: [a=x, b=y]\njudge: null\ncurves: []\n")
    assert load_yaml(path, EvalConfig) == {
        "best_of_n": [4, 16],
        "models": ["a=x", "b=y"],
        "judge": None,
        "curves": [],
    }


def test_scalar_for_a_list_field_is_a_one_element_list(write_yaml):
    parser = argparse.ArgumentParser()
    add_arguments(parser, GenerateArgs)
    path = write_yaml("prompt: Tell me about cats.\n")
    args = from_args(GenerateArgs, parser.parse_args(["--config", str(path)]))
    assert args.prompt == ["Tell me about cats."]
    assert load_yaml(write_yaml("best_of_n: 4\n"), EvalConfig) == {"best_of_n": [4]}
    assert load_yaml(write_yaml("best_of_n: ['4', 16]\n"), EvalConfig) == {"best_of_n": [4, 16]}
    message = yaml_error(write_yaml("best_of_n: [4, x]\n"), EvalConfig)
    assert message.endswith("best_of_n: expected an integer or a list of them, got [4, 'x']")


def test_flags_win_over_converted_yaml(write_yaml, captured_config):
    path = write_yaml("lr: 1e-4\nmax_steps: '7'\n")
    assert main(["pretrain", "--config", str(path), "--lr", "0.5"]) == 0
    [cfg] = captured_config
    assert (cfg.lr, cfg.max_steps) == (0.5, 7)


def test_broken_yaml_names_the_file(write_yaml):
    path = write_yaml("lr: 0.01\nmax_steps: [1, 2\n")
    message = yaml_error(path, PretrainConfig)
    assert message.startswith(f"{path}: not valid YAML at line ")


def test_key_value_settings_read_lists_and_strict_bools():
    assert parse_setting(EvalConfig, "best_of_n", "4") == [4]
    assert parse_setting(RewardConfig, "kwise", "no") is False
    with pytest.raises(ValueError, match="kwise: expected true or false, got 'flase'"):
        parse_setting(RewardConfig, "kwise", "flase")


def test_bad_yaml_through_the_cli_is_exit_code_2(write_yaml, captured_config, capsys):
    for text in ("lr: abc\n", "lr: [0.1\n"):
        path = write_yaml(text)
        assert main(["pretrain", "--config", str(path)]) == 2
        message = console_text(capsys)
        assert message.startswith(f"error: {path}: ") and "Traceback" not in message
    assert captured_config == []  # nothing ran


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["sft", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"error: --config {tmp_path / 'nope.yaml'}: no such file" in console_text(capsys)


def test_pipeline_section_values_are_converted(write_yaml, tmp_path, capsys):
    path = write_yaml("methods: ppo\nppo:\n  kl_coef: 2e-1\n  iterations: '5'\n")
    out = tmp_path / "run"
    assert (
        main(["pipeline", "--preset", "tiny", "--out", str(out), "--config", str(path), "--print-config"])
        == 0
    )
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["methods"] == ["ppo"]
    assert (config["ppo"]["kl_coef"], config["ppo"]["iterations"]) == (0.2, 5)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ppo:\n  kl_coef: abc\n", "ppo.kl_coef: expected a float, got 'abc'"),
        ("eval:\n  best_of_n: [4, x]\n", "eval.best_of_n: expected an integer or a list of them"),
        ("seed: abc\n", "seed: expected an integer, got 'abc'"),
        ("ppo: 3\n", "ppo: expected a mapping of settings, got 3"),
        ("ppo: {kl_coef: 0.1\n", "not valid YAML at line"),
        ("sfft:\n  epochs: 2\n", "unknown section or setting 'sfft'; sections: ['pretrain', 'sft'"),
    ],
)
def test_pipeline_bad_yaml_names_file_section_and_key(write_yaml, tmp_path, capsys, text, expected):
    path = write_yaml(text)
    out = tmp_path / "run"
    assert (
        main(["pipeline", "--preset", "tiny", "--out", str(out), "--config", str(path), "--print-config"])
        == 2
    )
    message = console_text(capsys)
    assert message.startswith(f"error: {path}: ") and expected in message
    assert "Traceback" not in message and not out.exists()


@pytest.mark.parametrize(
    "cls, key, value, rule",
    [
        (SFTConfig, "grad_accum", 0, ">= 1"),  # trained nothing and saved the model as complete
        (SFTConfig, "max_steps", -3, ">= 0"),
        (SFTConfig, "batch_size", 0, ">= 1"),
        (SFTConfig, "lora_r", -1, ">= 0"),
        (PPOConfig, "kl_coef", -1.0, ">= 0"),  # would reward drifting away from SFT
        (PPOConfig, "iterations", 0, ">= 1"),
        (PPOConfig, "lr", -1.0, "> 0"),
        (PPOConfig, "ema_decay", 1.0, "in [0, 1)"),
        (DPOConfig, "beta", 0.0, "> 0"),  # a constant loss
        (RewardConfig, "val_fraction", 1.0, "in [0, 1)"),  # divided by zero training on nothing
        (EvalConfig, "top_p", 0.0, "in (0, 1]"),
    ],
)
def test_a_value_out_of_range_names_the_setting_its_flag_and_its_range(cls, key, value, rule):
    with pytest.raises(ValueError) as err:
        cls(**{key: value})
    assert str(err.value) == f"{key} = {value!r}: must be {rule} (--{key.replace('_', '-')})"
    cls()  # the defaults are in range


@pytest.mark.parametrize(
    "cls, key, value, choices",
    [
        (PPOConfig, "mixed_precision", "bf17", "auto, no, bf16, fp16"),
        (PPOConfig, "algo", "grpo", "ppo, rloo"),  # was checked only after the four models loaded
        (PPOConfig, "kl_estimator", "k9", "k1, k2, k3, abs"),  # only at the first rollout's KL
        (DPOConfig, "loss_type", "hinge", "sigmoid, ipo, robust"),  # only after the reference pass
    ],
)
def test_an_unknown_choice_lists_the_ones_there_are(cls, key, value, choices):
    with pytest.raises(ValueError) as err:
        cls(**{key: value})
    assert str(err.value) == f"{key} = {value!r}: use one of {choices} (--{key.replace('_', '-')})"


def test_every_choice_names_a_setting_there_is():
    import dataclasses

    from rlhfkit.config import CHOICES

    for name in CHOICES:
        defaults = [
            getattr(cls(), name)
            for cls in (PPOConfig, DPOConfig, SFTConfig)
            if name in {f.name for f in dataclasses.fields(cls)}
        ]
        assert defaults and all(d in CHOICES[name] for d in defaults), name


def test_a_yaml_value_out_of_range_is_a_user_error(tmp_path, capsys):
    (tmp_path / "sft.yaml").write_text("grad_accum: 0\n")
    assert main(["sft", "--config", str(tmp_path / "sft.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "grad_accum = 0: must be >= 1 (--grad-accum)" in capsys.readouterr().err


def test_every_limit_names_a_setting_there_is():
    import dataclasses

    from rlhfkit.config import LIMITS, LabelConfig, ScoreArgs

    classes = [PretrainConfig, SFTConfig, LabelConfig, RewardConfig, PPOConfig, DPOConfig, EvalConfig]
    names = {f.name for cls in [*classes, ScoreArgs, GenerateArgs] for f in dataclasses.fields(cls)}
    assert set(LIMITS) <= names, set(LIMITS) - names  # a misspelt name would check nothing
