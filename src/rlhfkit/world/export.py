"""Write the embedded world's data as JSONL files in the formats every stage reads."""

from pathlib import Path

from rlhfkit.data import write_jsonl
from rlhfkit.world.corpus import DEFAULT_DOCS, heldout_corpus, pretrain_corpus
from rlhfkit.world.tasks import SEED_PROMPTS, Task, demonstrations, parse_prompt, split_prompts


def export_world(out_dir: str | Path, seed: int = 0, n_docs: int = DEFAULT_DOCS) -> dict[str, int]:
    """Write pretrain / SFT / prompt-split files under `out_dir`; returns the number of rows per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_prompts(seed)
    seed_tasks = [parse_prompt(p) for p in SEED_PROMPTS]
    files = {
        "pretrain.jsonl": [{"text": t} for t in pretrain_corpus(seed, n_docs)],
        "pretrain_heldout.jsonl": [
            {"text": t} for t in heldout_corpus(seed + 12345, exclude_docs=n_docs, corpus_seed=seed)
        ],
        "sft.jsonl": demonstrations(seed),
        "rm_prompts.jsonl": _prompt_rows(splits["rm"]),
        "rl_prompts.jsonl": _prompt_rows(splits["rl"]),
        "eval_prompts.jsonl": _prompt_rows(splits["eval"]),
        "seed_prompts.jsonl": _prompt_rows(seed_tasks),
    }
    return {name: write_jsonl(out / name, rows) for name, rows in files.items()}


def _prompt_rows(tasks: list[Task]) -> list[dict]:
    return [{"prompt": t.prompt, "family": t.family, "subject": t.subject} for t in tasks]
