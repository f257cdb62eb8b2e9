"""Where a stage's data comes from: a file in `data.py`'s formats, or the embedded world for a setting given as
"world" (the default of every data setting, which the pipeline relies on).

This is the one place the trainers reach the world, as a data source: world → sources → stage — and, for
`ppo --reward-model gold`, as PPO's reward (`gold_reward`: the gold judge instead of a reward model). The world
imports no stage; the stages that also use it as a judge (label's simulated labelers, reward's and eval's held-out
panel) import it for that alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from rlhfkit import world
from rlhfkit.console import console
from rlhfkit.data import load_pretrain, load_prompts, load_sft
from rlhfkit.errors import UsageError
from rlhfkit.world.corpus import DEFAULT_DOCS, TRAIN_DOCS_MAX

WORLD = "world"
GOLD = "gold"  # `ppo --reward-model gold`: the world's gold judge as the reward (the ceiling of any RM)
# The gold reward's units: (gold − 7) / 2, where the default run's SFT answers average 7.4 of 10 — about the
# centred, std-scaled units of the reward model (the value model then starts near the right level).
GOLD_SHIFT, GOLD_SCALE = 7.0, 2.0
GOLD_FORMULA = f"(gold - {GOLD_SHIFT:g}) / {GOLD_SCALE:g}"


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


def gold_reward(prompts: list, tokenizer, where: str):
    """reward_fn(prompts, responses, ended) -> [(gold − 7) / 2]: the embedded world's gold score (0–10) of each
    answer as the reward, in place of a reward model (PPO's upper reference: a reward that is never wrong).

    Refused (UsageError) where the gold judge cannot judge: a prompt that is not one of the world's tasks (a
    user's prompt file, a conversation), or a tokenizer that cannot write the world's text (its answers would
    reach the judge as other text). `where` names the settings, e.g. "ppo --prompts X --policy Y"."""
    foreign = [i for i, p in enumerate(prompts) if not isinstance(p, str) or world.parse_prompt(p) is None]
    if foreign:
        first = prompts[foreign[0]]
        shown = repr(first[:60]) if isinstance(first, str) else f"a conversation of {len(first)} messages"
        raise UsageError(
            f"{where} --reward-model {GOLD}: the gold judge knows only the embedded world's tasks, and "
            f"{len(foreign)} of {len(prompts)} prompts are not one (the first, prompt {foreign[0] + 1}: {shown}); "
            f"train on the world's prompts (--prompts {WORLD}), or give a reward model (--reward-model DIR)"
        )
    texts = [*world.SEED_PROMPTS, *(d["completion"] for d in world.demonstrations()[:50])]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if "".join(tokenizer.decode(ids).split()) != "".join(text.split()):
            raise UsageError(
                f"{where} --reward-model {GOLD}: the tokenizer is not the world's: it cannot write the world's "
                f"text ({text[:30]!r} comes back as {tokenizer.decode(ids)[:30]!r}), so the gold judge would "
                "grade other text than the policy meant; use a policy whose tokenizer spells the world's text "
                "(the pipeline's), or give a reward model (--reward-model DIR)"
            )

    def reward(prompts: list[str], responses: list[str], ended: list[bool]) -> list[float]:
        return [
            (world.score(p, r, e).total - GOLD_SHIFT) / GOLD_SCALE
            for p, r, e in zip(prompts, responses, ended)
        ]

    return reward
