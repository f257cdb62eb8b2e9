"""The settings of `rlhfkit label-server` and its verbs, one dataclass each (their flags, --help and checks, as
every stage's in `rlhfkit.config`). Apart from `cli.py` so that the modules that run a verb can name their
settings without importing the command line, which imports them.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from rlhfkit import config as C
from rlhfkit.config import arg
from rlhfkit.errors import UsageError
from rlhfkit.labelserver.db import KINDS

DB_HELP = "the label database (one SQLite file, WAL mode)"


@dataclass
class ServeConfig(C.Settings):
    """Serve the labelling pages and the JSON API (one process)."""

    db: str = arg("labels.sqlite", DB_HELP + "; made if missing")
    host: str = arg(
        "127.0.0.1", "address to listen on; anything but loopback sends tokens in clear: put TLS in front"
    )
    port: int = arg(8000, "port to listen on")
    max_body_kb: int = arg(256, "largest request body accepted, in KiB (a larger one gets 413)")
    lease_minutes: float = arg(
        30.0, "minutes an item handed to a person stays theirs before it may go to another"
    )
    secure_cookies: bool = arg(False, "mark cookies Secure (when a TLS proxy stands in front)")

    OWN_LIMITS: typing.ClassVar[dict] = {
        "port": ((lambda v: 1 <= v <= 65535), "in [1, 65535]"),
        "max_body_kb": ((lambda v: v >= 1), ">= 1"),
        "lease_minutes": ((lambda v: v > 0), "> 0"),
    }


@dataclass
class TasksAddConfig(C.Settings):
    """Add a task set: prompts to answer (write), K answers to rank (rank), or two models to compare (compare)."""

    db: str = arg("labels.sqlite", DB_HELP + "; made if missing")
    kind: str = arg("rank", "write | rank | compare")
    prompts: str | None = arg(None, "{'prompt'} or {'messages'} JSONL / dataset file of the prompts")
    responses: str | None = arg(
        None, "rank: {'prompt', 'responses'[, 'ended']} rows to rank, instead of --model"
    )
    model: str | None = arg(
        None, "rank: the model whose K answers to each prompt people rank (your SFT model)"
    )
    models: list[str] = arg(
        [], "compare: the two models, NAME=DIR NAME=DIR (names are never shown to labelers)"
    )
    k: int = arg(4, "rank: answers sampled per prompt, 2 to 9 (keys 1-9; InstructGPT: 4 to 9)")
    labels_per_item: int = arg(
        1, "different people who label each item (2 or more: their agreement is measured)"
    )
    name: str | None = arg(None, "task set name, also the export's file name (default: KIND-N)")
    instructions: str | None = arg(None, "guidelines shown above each item (default: a short one per kind)")
    max_new_tokens: int = arg(64, "longest sampled answer, in tokens")
    temperature: float | None = arg(
        None, "sampling temperature (default: 1.0 for rank as `label`, 0.7 for compare as `eval`)"
    )
    top_p: float | None = arg(None, "nucleus sampling mass (default: 1.0 for rank, 0.9 for compare)")
    seed: int = arg(0, "sampling seed; also draws the A/B order of compare items")

    OWN_LIMITS: typing.ClassVar[dict] = {
        "k": ((lambda v: 2 <= v <= 9), "in [2, 9], so that keys 1-9 can rank every answer"),
        "labels_per_item": ((lambda v: v >= 1), ">= 1"),
    }

    def check_together(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"kind = {self.kind!r}: use one of {', '.join(KINDS)} (--kind)")


@dataclass
class DbConfig(C.Settings):
    db: str = arg("labels.sqlite", DB_HELP)


@dataclass
class ExportConfig(C.Settings):
    """Write every task set's labels as JSONL in the stages' formats, and manifest.json."""

    db: str = arg("labels.sqlite", DB_HELP)
    out: str = arg("runs/labels", "output directory: <set name>.jsonl per task set, manifest.json")


@dataclass
class UsersAddConfig(C.Settings):
    db: str = arg("labels.sqlite", DB_HELP + "; made if missing")
    name: str = arg(None, "the person's name (letters, digits, _ . -)")
    admin: bool = arg(False, "an admin (sees progress, agreement, exports; adds people) instead of a labeler")


@dataclass
class UsersResetConfig(C.Settings):
    db: str = arg("labels.sqlite", DB_HELP)
    name: str = arg(None, "the person whose token is replaced (their old token and sessions stop working)")
