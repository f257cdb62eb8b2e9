"""People's labels in the formats the stages read, the agreement between people, and the blind verdicts.

One JSONL file per task set, `OUT/<set name>.jsonl`, and `OUT/manifest.json` (files, counts, agreement):

    write    {"prompt", "completion"}, or {"messages": [..., {"role": "assistant", ...}]} when the prompt was a
             conversation                                                       -> rlhfkit sft --data
    rank     {"prompt", "responses", "ranks", "ended", "unacceptable"}          -> rlhfkit reward / dpo --data
    compare  {"prompt", "models", "responses", "ended", "winner", "shown_first"} (winner null = tie)
                                                                                -> rlhfkit eval --human reads the db

Every row also carries "labeler" and "label_id" (the loaders ignore fields they do not know); an item labelled
by N people gives N rows, as `rlhfkit label --rounds` gives several rankings of a prompt.

Unacceptable answers are ranked below every acceptable one and tied with each other, in dense ranks: acceptable
ranks 1, 1, 3 and one flagged answer export as [1, 1, 2, 3]; the flags themselves stay in "unacceptable". A
ranking that ties every answer (all flagged, or all given one rank) holds no comparison and `rlhfkit reward`
refuses such a row, so it is left out of the file and counted in the manifest and the printed summary.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from rlhfkit.console import console
from rlhfkit.data import write_jsonl
from rlhfkit.labelserver.db import Database, TaskSet
from rlhfkit.labelserver.settings import ExportConfig
from rlhfkit.rundir import write_json


def run(cfg: ExportConfig) -> dict:
    """`label-server export`: write every task set's labels and manifest.json (each file whole, the manifest
    last); returns the manifest."""
    db = Database(cfg.db, create=False)
    out = Path(cfg.out)
    manifest = {"db": cfg.db, "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sets": []}
    for task_set in db.task_sets():
        labels = db.labels(task_set.id)
        rows, left_out = set_rows(task_set, labels)
        path = out / f"{task_set.name}.jsonl"
        write_jsonl(path, rows)
        entry = {"name": task_set.name, "kind": task_set.kind, "file": path.name, "rows": len(rows)}
        entry.update({"labels": len(labels), "left_out": left_out, "agreement": agreement(task_set, labels)})
        manifest["sets"].append(entry)
        said = "".join(f", {n} {why} (left out)" for why, n in left_out.items())
        console.print(f"[label-server] wrote {path}: {len(rows)} {task_set.kind} rows{said}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", manifest)
    console.print(f"[label-server] wrote {out / 'manifest.json'}")
    return manifest


def set_rows(task_set: TaskSet, labels: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """(JSONL rows of a task set's labels, {reason: count} of labels left out)."""
    rows, left_out = [], {}
    for label in labels:
        item, value = label["item"], label["value"]
        prompt = item.context or item.prompt  # a conversation whole, as the loaders read "prompt"
        who = {"labeler": label["labeler"], "label_id": label["label_id"]}
        if task_set.kind == "write":
            if item.context:
                turns = [*item.context, {"role": "assistant", "content": value["text"]}]
                rows.append({"messages": turns, **who})
            else:
                rows.append({"prompt": item.prompt, "completion": value["text"], **who})
        elif task_set.kind == "rank":
            ranks = export_ranks(value)
            if len(set(ranks)) < 2:
                left_out["rankings that tie every answer"] = (
                    left_out.get("rankings that tie every answer", 0) + 1
                )
                continue
            responses = item.responses
            rows.append(
                {
                    "prompt": prompt,
                    "responses": [r["text"] for r in responses],
                    "ranks": ranks,
                    "ended": [r["ended"] for r in responses],
                    "unacceptable": value["unacceptable"],
                    **who,
                }
            )
        else:
            names = list(task_set.source["models"])
            by_model = {r["model"]: r for r in item.responses}
            rows.append(
                {
                    "prompt": prompt,
                    "models": names,
                    "responses": [by_model[n]["text"] for n in names],
                    "ended": [by_model[n]["ended"] for n in names],
                    "winner": winner(item.responses, value["choice"]),
                    "shown_first": item.responses[0]["model"],
                    **who,
                }
            )
    return rows, left_out


def export_ranks(value: dict) -> list[int]:
    """Dense ranks (1 = best, equal = tie) of a rank label, flagged answers tied below every other."""
    given = sorted({r for r, flagged in zip(value["ranks"], value["unacceptable"]) if not flagged})
    dense = {r: i + 1 for i, r in enumerate(given)}
    last = len(given) + 1
    return [last if flagged else dense[r] for r, flagged in zip(value["ranks"], value["unacceptable"])]


def winner(shown: list[dict], choice: str) -> str | None:
    """The model a compare label prefers (None for a tie); `shown` is the order the page showed, A first."""
    return None if choice == "tie" else shown[0 if choice == "a" else 1]["model"]


def label_ranks(kind: str, value: dict) -> list[int] | None:
    """A label as ranks of its item's answers in the order shown (compare: A, B), for agreement; write: None."""
    if kind == "rank":
        return export_ranks(value)
    if kind == "compare":
        return {"a": [1, 2], "tie": [1, 1], "b": [2, 1]}[value["choice"]]
    return None


def agreement(task_set: TaskSet, labels: list[dict]) -> dict | None:
    """Agreement between the people of a rank or compare set (`pairwise_agreement`); None for write sets."""
    if task_set.kind == "write":
        return None
    by_item: dict[int, dict[str, list[int]]] = {}
    for label in labels:
        by_item.setdefault(label["item"].id, {})[label["labeler"]] = label_ranks(
            task_set.kind, label["value"]
        )
    return pairwise_agreement(by_item)


def pairwise_agreement(by_item: dict[int, dict[str, list[int]]]) -> dict:
    """InstructGPT's inter-labeler agreement, as `reward/eval.json`'s `inter_labeler_agreement` computes it for
    the simulated labelers: for two people, the fraction of answer pairs — of the items both labelled — that they
    order the same way; then the mean over every two people who share a pair. A pair either of them tied says
    nothing about order and is left out.

    `by_item`: {item: {person: ranks of the item's answers}}. Returns {"agreement": mean over pairs of people or
    None, "pairs_of_people": n, "per_labeler": {person: {"agreement": mean over the others, "pairs": answer pairs
    compared, "others": people compared with}}}."""
    people = sorted({p for ranks in by_item.values() for p in ranks})
    rates: dict[tuple[str, str], tuple[int, int]] = {}
    for a, b in itertools.combinations(people, 2):
        agree = total = 0
        for ranks in by_item.values():
            if a not in ranks or b not in ranks:
                continue
            ra, rb = ranks[a], ranks[b]
            for i, j in itertools.combinations(range(len(ra)), 2):
                if ra[i] == ra[j] or rb[i] == rb[j]:
                    continue
                agree += (ra[i] < ra[j]) == (rb[i] < rb[j])
                total += 1
        if total:
            rates[(a, b)] = (agree, total)
    per_labeler = {}
    for person in people:
        mine = [(agree, total) for pair, (agree, total) in rates.items() if person in pair]
        per_labeler[person] = {
            "agreement": sum(a / t for a, t in mine) / len(mine) if mine else None,
            "pairs": sum(t for _, t in mine),
            "others": len(mine),
        }
    overall = sum(a / t for a, t in rates.values()) / len(rates) if rates else None
    return {"agreement": overall, "pairs_of_people": len(rates), "per_labeler": per_labeler}


def verdicts(db_path: str) -> list[dict]:
    """Every compare label of the database as {"set", "model", "opponent", "item", "prompt", "score",
    "labeler"}: `score` is 1 when people preferred `model` (the first of the set's --models), ½ a tie, 0 not."""
    db = Database(db_path, create=False)
    out = []
    for task_set in db.task_sets():
        if task_set.kind != "compare":
            continue
        first, second = list(task_set.source["models"])
        for label in db.labels(task_set.id):
            preferred = winner(label["item"].responses, label["value"]["choice"])
            out.append(
                {
                    "set": task_set.name,
                    "model": first,
                    "opponent": second,
                    "item": label["item"].id,
                    "prompt": label["item"].prompt,
                    "score": 0.5 if preferred is None else float(preferred == first),
                    "labeler": label["labeler"],
                }
            )
    return out
