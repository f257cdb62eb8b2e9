"""Session fixtures for the stage smoke tests: one tiny pretrained model, an SFT model from it, ranked comparisons
sampled from the SFT model, and a reward model trained on them — each built once and shared by every test file.

Sizes are the smallest that still learn something measurable (the loss falls, PPO raises a toy reward) so the
whole default suite stays well inside a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The models here are tiny and overhead-bound: a second intra-op thread buys nothing and, on a busy 2-core
# machine, spin-waiting threads make each matmul ~20x slower.
torch.set_num_threads(1)

# The tiny pretrained model every other fixture starts from (see the module docstring).
TINY_PRETRAIN = dict(
    world_docs=300,
    vocab_size=600,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_steps=20,
    batch_size=8,
    max_len=64,
    save_every=0,
    log_every=1,
)


def read_jsonl(path: str | Path) -> list[dict]:
    # split on "\n" only, as the loaders do: str.splitlines also splits on U+2028, U+0085 and the like, which a
    # tiny model's answers may hold (json.dumps(ensure_ascii=False) writes them as they are)
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def console_text(capsys) -> str:
    """stdout + stderr with whitespace collapsed: the rich console wraps long lines at its width."""
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


def without_time(rows: list[dict]) -> list[dict]:
    """Metrics rows less how the run went (wall time, peak memory), which differ between identical runs."""
    return [{k: v for k, v in row.items() if k not in ("time", "peak_memory_mb")} for row in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def assert_same_run(straight: Path, resumed: Path) -> None:
    """A resumed run logged the uninterrupted run's metrics (less wall time) and saved its weights."""
    assert without_time(read_jsonl(resumed / "metrics.jsonl")) == without_time(
        read_jsonl(straight / "metrics.jsonl")
    )
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
    assert not (resumed / "checkpoint").exists()


@pytest.fixture(scope="session")
def tiny_gpt(tmp_path_factory) -> Path:
    """Step0 on 300 world documents: a 600-token BPE and a 2-layer, 32-wide Llama, 20 steps."""
    from rlhfkit.config import PretrainConfig
    from rlhfkit.stages import pretrain

    out = tmp_path_factory.mktemp("gpt")
    pretrain.run(PretrainConfig(out=str(out), **TINY_PRETRAIN))
    return out


@pytest.fixture(scope="session")
def tiny_sft(tiny_gpt, tmp_path_factory) -> Path:
    """Step1 on the world's demonstrations, 20 steps of 8."""
    from rlhfkit.config import SFTConfig, preset_config
    from rlhfkit.stages import sft

    out = tmp_path_factory.mktemp("sft")
    sft.run(
        preset_config(
            SFTConfig,
            out=str(out),
            model=str(tiny_gpt),
            max_steps=20,
            batch_size=8,
            max_len=64,
            log_every=1,
            save_every=0,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_comparisons(tiny_sft, tmp_path_factory) -> Path:
    """K=3 answers of the SFT model to each of the world's RM prompts, ranked by the simulated labelers."""
    from rlhfkit.config import LabelConfig
    from rlhfkit.stages import label

    out = tmp_path_factory.mktemp("label") / "comparisons.jsonl"
    label.run(LabelConfig(out=str(out), model=str(tiny_sft), k=3, rounds=1, max_new_tokens=8))
    return out


TINY_REWARD = dict(
    epochs=2.0, batch_size=16, lr=2e-3, warmup_steps=20, max_len=160, eval_every=25, log_every=1, save_every=0
)


@pytest.fixture(scope="session")
def tiny_reward(tiny_sft, tiny_comparisons, tmp_path_factory) -> Path:
    """Step2: two epochs of the K-wise ranking loss, centred on the world's demonstrations."""
    from rlhfkit.config import RewardConfig, preset_config
    from rlhfkit.stages import reward

    out = tmp_path_factory.mktemp("reward")
    reward.run(
        preset_config(
            RewardConfig, out=str(out), model=str(tiny_sft), data=str(tiny_comparisons), **TINY_REWARD
        )
    )
    return out
