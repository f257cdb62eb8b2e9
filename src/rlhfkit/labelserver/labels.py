"""What a label of each kind is, as the server receives it from a person's browser (`check_label`).

Apart from `tasks.py`, which samples models (torch): the server imports this, and never torch.
"""

from __future__ import annotations

from rlhfkit.labelserver.db import Item, LabelError

MAX_ANSWER_CHARS = 20_000  # a written demonstration; the request body limit is checked before this


def check_label(kind: str, item: Item, body: dict) -> dict:
    """What a person sent for an item, checked and in the form stored; a LabelError says what is wrong.

    write    {"text": str}
    rank     {"ranks": [int | null x K], "unacceptable": [bool x K]}  1 = best, equal = tie; null where flagged
    compare  {"choice": "a" | "tie" | "b"}                               a and b as shown on the page
    """
    expected = {"write": {"text"}, "rank": {"ranks", "unacceptable"}, "compare": {"choice"}}[kind]
    if not isinstance(body, dict) or set(body) - expected:
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise LabelError(f"a {kind} label has the fields {sorted(expected)}, got {got}")
    if kind == "write":
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise LabelError("the answer is empty: write the answer before submitting")
        if len(text) > MAX_ANSWER_CHARS:
            raise LabelError(f"the answer has {len(text)} characters, at most {MAX_ANSWER_CHARS} are kept")
        return {"text": text.replace("\r\n", "\n")}
    if kind == "compare":
        if body.get("choice") not in ("a", "tie", "b"):
            raise LabelError(f"choice {body.get('choice')!r}: use 'a', 'tie' or 'b'")
        return {"choice": body["choice"]}
    k = len(item.responses)
    ranks, flags = body.get("ranks"), body.get("unacceptable", [False] * k)
    if not isinstance(flags, list) or len(flags) != k or not all(isinstance(f, bool) for f in flags):
        raise LabelError(f"unacceptable: give one true/false per answer ({k})")
    if not isinstance(ranks, list) or len(ranks) != k:
        raise LabelError(f"ranks: give one rank per answer ({k} answers)")
    for i, (rank, flagged) in enumerate(zip(ranks, flags)):
        if flagged:
            continue
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= k:
            raise LabelError(
                f"answer {i + 1} has no rank from 1 to {k}: rank every answer not flagged unacceptable"
            )
    return {"ranks": [None if f else r for r, f in zip(ranks, flags)], "unacceptable": flags}
