"""The embedded default world: facts, a pretraining corpus, prompts, demonstrations and a gold judge.

A small synthetic Chinese world that reproduces the seed's examples, so the whole pipeline runs without
downloads. The trainers never import it; it is only a data source (`export_world`) and a judge (`score`,
`Labeler`, `eval_panel`).
"""

from rlhfkit.world.corpus import heldout_corpus, pretrain_corpus
from rlhfkit.world.export import export_world
from rlhfkit.world.oracle import (
    DIMENSIONS,
    WEIGHTS,
    GoldScore,
    Labeler,
    Panel,
    eval_panel,
    inter_labeler_agreement,
    labelers,
    score,
)
from rlhfkit.world.tasks import (
    FAMILIES,
    SEED_PROMPTS,
    SEED_RANKINGS,
    Task,
    demonstration,
    demonstrations,
    parse_prompt,
    split_prompts,
)

__all__ = [
    "DIMENSIONS",
    "FAMILIES",
    "SEED_PROMPTS",
    "SEED_RANKINGS",
    "WEIGHTS",
    "GoldScore",
    "Labeler",
    "Panel",
    "Task",
    "demonstration",
    "demonstrations",
    "eval_panel",
    "export_world",
    "heldout_corpus",
    "inter_labeler_agreement",
    "labelers",
    "parse_prompt",
    "pretrain_corpus",
    "score",
    "split_prompts",
]
