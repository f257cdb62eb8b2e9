"""The embedded default world: facts, a pretraining corpus, prompts, demonstrations and a gold judge.

A small synthetic Chinese world that reproduces the seed's examples, so the whole pipeline runs without
downloads. It is only a data source and a judge, and it imports nothing of rlhfkit but the file writer
(`data.write_jsonl`). The trainers read it as a data source through `rlhfkit.sources` (a data setting given as
"world"; `export_world` writes the same data as files); as a judge (`score`, `Labeler`, `eval_panel`) it serves
the simulated labelers (`label`), and the held-out panel of the reward model's and the policies' evaluations.
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
