"""The simulated labelers (the embedded world's), and the file that records their settings next to the comparisons
they wrote (`comparisons.labelers.json`): `label` writes it, the reward model's evaluation reads it to measure the
agreement ceiling of the very labelers its data came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit import world
from rlhfkit.config import LabelConfig
from rlhfkit.rundir import write_atomic

LABELER_SETTINGS = ("n_labelers", "seed", "labeler_noise", "label_noise")  # LabelConfig fields that make them


def labeler_settings(cfg: LabelConfig) -> dict:
    """The LabelConfig fields that make the labelers: {n_labelers, seed, labeler_noise, label_noise}."""
    return {name: getattr(cfg, name) for name in LABELER_SETTINGS}


def simulated_labelers(settings: dict) -> list:
    """The world's labelers for the settings {n_labelers, seed, labeler_noise, label_noise}."""
    return world.labelers(
        settings["n_labelers"],
        seed=settings["seed"],
        noise=settings["labeler_noise"],
        flip_rate=settings["label_noise"],
    )


def settings_path(comparisons: str | Path) -> Path:
    """comparisons.jsonl -> comparisons.labelers.json"""
    return Path(comparisons).with_suffix(".labelers.json")


def write_settings(comparisons: str | Path, settings: dict) -> None:
    """Written whole (`rundir.write_atomic`), before the comparisons: their file is what says `label` is done."""
    write_atomic(settings_path(comparisons), json.dumps(settings, indent=2) + "\n")


def default_settings(why: str = "") -> dict:
    """LabelConfig's defaults, with "source" saying that they are a fallback (and why)."""
    source = "LabelConfig defaults" + (f" ({why})" if why else "")
    return {**labeler_settings(LabelConfig()), "source": source}


def read_settings(comparisons: str | Path) -> dict:
    """The settings of the labelers that wrote `comparisons`, with "source" naming the file they came from;
    LabelConfig's defaults for a file `label` did not write (a user's rankings, or an older run)."""
    path = settings_path(comparisons)
    if not path.is_file():
        return default_settings(f"{path} not found")
    return {**json.loads(path.read_text(encoding="utf-8")), "source": str(path)}
