"""Where a stage's data comes from: a file in `data.py`'s formats, or the embedded world for a setting given as
"world" (the default of every data setting, which the pipeline relies on).

This is the one place the trainers reach the world, as a data source: world → sources → stage. The world imports
no stage; the stages that also use it as a judge (label's simulated labelers, reward's and eval's held-out panel)
import it for that alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from rlhfkit import world
from rlhfkit.console import console
from rlhfkit.data import load_pretrain, load_prompts, load_sft
from rlhfkit.world.corpus import DEFAULT_DOCS, TRAIN_DOCS_MAX

WORLD = "world"


def pretrain_texts(source: str, n_docs: int = DEFAULT_DOCS) -> list[str]:
    """Documents of a {"text"} file, or the world's pretraining corpus of `n_docs` documents (the world is fixed:
    a stage's seed varies its training, not its data)."""
    if source != WORLD:
        return list(load_pretrain(source))
    if n_docs > TRAIN_DOCS_MAX:
        console.print(
            f"[pretrain] {n_docs} world documents: `rlhfkit eval --heldout-text world` avoids only the "
            f"first {TRAIN_DOCS_MAX}; measure perplexity on the pretrain_heldout.jsonl of `rlhfkit world export "
            f"--docs {n_docs}` (rlhfkit pipeline does)"
        )
    return world.pretrain_corpus(n_docs=n_docs)


def heldout_texts(source: str) -> list[str]:
    """Held-out pretraining text for the perplexity (alignment tax): a {"text"} file, the world's, or none ('')."""
    if not source:
        return []
    if source == WORLD:
        return world.heldout_corpus()
    return list(load_pretrain(source))


def demonstrations(source: str, control_tokens: Iterable[str] = ()) -> list[tuple[str, str] | list[dict]]:
    """SFT demonstrations: (prompt, completion) pairs, or message lists for {"messages"} rows; a file's text that
    spells one of the tokenizer's `control_tokens` is refused (`data.load_sft`)."""
    if source == WORLD:
        return [(d["prompt"], d["completion"]) for d in world.demonstrations()]
    return [
        row.messages if row.messages else (row.prompt, row.completion)
        for row in load_sft(source, control_tokens)
    ]


def prompt_texts(source: str, split: str, control_tokens: Iterable[str] = ()) -> list[str | list[dict]]:
    """The prompts of a file (conversations kept whole, see `Prompt.context`), or the world's `split` ("rm", "rl"
    or "eval"; disjoint from each other and from the demonstrations' prompts); a file's text that spells one of
    the tokenizer's `control_tokens` is refused (`data.load_prompts`)."""
    if source == WORLD:
        return [task.prompt for task in world.split_prompts()[split]]
    return [p.context for p in load_prompts(source, control_tokens)]
