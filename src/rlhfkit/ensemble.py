"""Reward models as judges: one reward model, or an ensemble of M (Coste et al. 2023), loaded as one scorer.

An ensemble is a directory that `rlhfkit reward --ensemble M` writes:

    reward/
      rlhfkit.json      {"stage": "reward", "ensemble": M, "members": ["member_0", ...], "complete": true, ...}
      tokenizer files   the members' tokenizer (the one every model of the run shares)
      eval.json         the ensemble's own evaluation (members' scores by their mean)
      member_0/ ...     each a stock `AutoModelForSequenceClassification` directory (num_labels=1) with its own
                        reward_bias / reward_std, metrics.jsonl and eval.json

`load_judge` takes either kind of directory and returns a module whose per-position scores `last_token_scores`
and `score_responses` read, so PPO, best-of-n, `eval --judge` and `score` take an ensemble wherever they take one
reward model. An ensemble scores in standard units: each member's (r + bias) / std, combined by
`losses.ensemble_reward`; its `config.reward_bias` is 0 and `reward_std` 1, so nothing downstream shifts or
scales it again.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from rlhfkit.errors import UsageError
from rlhfkit.losses import ensemble_reward
from rlhfkit.modeling import TokenScores, load_reward_model, read_meta


def members(path: str | Path) -> list[Path]:
    """The member directories of an ensemble, [] for a directory that is not one."""
    names = read_meta(path).get("members") if Path(path).is_dir() else None
    return [Path(path) / name for name in names or []]


def is_ensemble(path: str | Path | None) -> bool:
    return bool(path) and bool(members(path))


def load_judge(
    path: str | Path,
    pad_token_id: int,
    reduce: str = "mean",
    lam: float = 0.0,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A trained reward model (`modeling.load_reward_model(..., trained=True)`), or the ensemble at `path` as one
    `RewardEnsemble` combining its members by `reduce` (and λ)."""
    dirs = members(path)
    if not dirs:
        return load_reward_model(path, pad_token_id, dtype=dtype, trained=True)
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise UsageError(
            f"reward model {path}: an ensemble of {len(dirs)} whose member {missing[0].name} is missing; train "
            f"it again (rlhfkit reward --ensemble {len(dirs)} --resume --out {path})"
        )
    return RewardEnsemble(
        [load_reward_model(d, pad_token_id, dtype=dtype, trained=True) for d in dirs], reduce, lam
    )


class RewardEnsemble(TokenScores):
    """M scalar-head models as one: per position, each member's (head + bias) / std, combined by
    `losses.ensemble_reward`. (B, T), like `TokenScores`, whose type the scoring functions look for."""

    def __init__(self, models: list, reduce: str = "mean", lam: float = 0.0):
        nn.Module.__init__(self)  # no `.model`: there are M of them
        self.members = nn.ModuleList(models)
        self.units = [
            (
                float(getattr(m.config, "reward_bias", 0.0) or 0.0),
                float(getattr(m.config, "reward_std", 1.0) or 1.0),
            )
            for m in models
        ]
        self.reduce, self.lam = reduce, lam
        # What `score_responses` and PPO's `reward_units` read: the combined score is already in standard units.
        self.config = SimpleNamespace(reward_bias=0.0, reward_std=1.0, ensemble=len(models))

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each member's score in its own units, (head + bias) / std: (M, B, T)."""
        return torch.stack(
            [
                (TokenScores(model)(input_ids, attention_mask) + shift) / scale
                for model, (shift, scale) in zip(self.members, self.units)
            ]
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ensemble_reward(self.member_scores(input_ids, attention_mask).float(), self.reduce, self.lam)

    def get_input_embeddings(self) -> nn.Module:  # `modeling.check_vocab` reads the embedding table's size
        return self.members[0].get_input_embeddings()

    def describe(self) -> str:
        reduce = {
            "mean": "their mean",
            "mean_minus_std": f"mean − {self.lam}·std",
            "mean_minus_var": f"mean − {self.lam}·variance",
            "min": "their minimum",
        }[self.reduce]
        return (
            f"an ensemble of {len(self.members)} reward models, each in its own units, combined as {reduce}"
        )
