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
