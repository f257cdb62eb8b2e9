"""The label server's storage: one SQLite file in WAL mode.

Durability: `synchronous=FULL` makes every COMMIT fsync the write-ahead log before it returns, and the server
answers a label only after its COMMIT returned — so an acknowledged label survives a `kill -9` of the server (WAL
alone would) and a power cut of the machine (that needs FULL; NORMAL may lose the last commits there). A restart
replays the log: SQLite recovers it when the file is next opened.

Tokens are 192-bit random strings (`secrets.token_urlsafe`) and only their SHA-256 is stored. A slow password
hash (bcrypt, scrypt) exists to make guessing a *person's* password expensive; a random token of this length
cannot be guessed, so one fast hash is enough and keeps every request's lookup cheap. Session ids are stored the
same way, so a copy of the database lets no one in.

Assignment: each item is to be labelled by `labels_per_item` different people. A person asking for work gets
their own unfinished item back first, else the first item (in file order) that still needs labels, counting
the labels it has and the items handed out to others in the last `lease` seconds, that they have not seen. A
person never gets an item twice (one label per person and item, enforced by the schema), and a label is
accepted only from someone the item was handed to.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.errors import UsageError
from rlhfkit.rundir import check_out

SCHEMA_VERSION = 1
KINDS = ("write", "rank", "compare")
ROLES = ("admin", "labeler")
SESSION_SECONDS = 7 * 24 * 3600
NAME = re.compile(r"^[\w.-]{1,40}$")  # people and task sets: letters (any script), digits, _ . -

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'labeler')),
    token_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    csrf TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS task_sets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('write', 'rank', 'compare')),
    labels_per_item INTEGER NOT NULL CHECK (labels_per_item >= 1),
    instructions TEXT NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    set_id INTEGER NOT NULL REFERENCES task_sets (id),
    position INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    context TEXT,
    responses TEXT NOT NULL,
    n_labels INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 1,
    UNIQUE (set_id, position)
);
CREATE INDEX IF NOT EXISTS items_open ON items (set_id, position) WHERE open = 1;
CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    assigned REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'labelled', 'skipped')),
    PRIMARY KEY (item_id, user_id)
);
CREATE INDEX IF NOT EXISTS assignments_user ON assignments (user_id, state);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    value TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (item_id, user_id)
);
"""


class NotYours(PermissionError):
    """An item that was not handed to this person (or does not exist: the two are not told apart)."""


class LabelError(UsageError):
    """A label the server refuses; the message says why, for the person who sent it (a 422)."""


@dataclass
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class TaskSet:
    id: int
    name: str
    kind: str
    labels_per_item: int
    instructions: str
    source: dict = field(default_factory=dict)


@dataclass
class Item:
    """One thing to label. `responses` are {"text", "ended"} (rank) or {"text", "ended", "model"} (compare, in the
    order shown: A then B); `context` is the conversation when the prompt was given as chat turns."""

    id: int
    set_id: int
    position: int
    prompt: str
    context: list[dict] | None
    responses: list[dict]
    n_labels: int


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def check_name(what: str, name: str) -> str:
    if not NAME.match(name or ""):
        raise UsageError(
            f"{what} {name!r}: use 1-40 letters, digits, '_', '.' or '-' (no spaces), e.g. alice or rank-sft-1"
        )
    return name


class Database:
    """The label server's SQLite file. One connection per thread; writes in `BEGIN IMMEDIATE` transactions."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = str(path)
        self._local = threading.local()
        # This process's writers queue here, not in SQLite's busy handler, whose sleeps (up to 100 ms each)
        # made the slowest requests under load wait over a second; other processes still meet busy_timeout.
        self._write_lock = threading.Lock()
        if not create and not Path(self.path).is_file():
            raise UsageError(
                f"{self.path}: no such label-server database (make one with `rlhfkit label-server tasks add "
                f"--db {self.path} ...`)"
            )
        if Path(self.path).is_dir():
            raise UsageError(
                f"--db {self.path} is a directory; give the database file's path (e.g. {Path(self.path) / 'labels.sqlite'})"
            )
        if create:
            check_out(self.path, "--db", is_file=True)  # not under a file
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self.connect()
            if create:
                conn.executescript(SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise UsageError(f"{self.path}: not a label-server database ({err})") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise UsageError(
                f"{self.path}: a label-server database of schema {version[0] if version else '?'}, "
                f"this rlhfkit reads schema {SCHEMA_VERSION}"
            )

    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise UsageError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local disk")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that takes the write lock at once (no upgrade deadlocks); COMMIT fsyncs before return."""
        conn = self.connect()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one state of the database."""
        conn = self.connect()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- people -----------------------------------------------------------------------------------------------

    def add_user(self, name: str, role: str = "labeler") -> tuple[User, str]:
        """A new person and their token (shown once: only its hash is kept)."""
        check_name("name", name)
        assert role in ROLES
        token = new_token()
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UsageError(
                    f"a person named {name!r} exists already (`users reset --name {name}` gives a new token)"
                )
            cur = conn.execute(
                "INSERT INTO users (name, role, token_hash, created) VALUES (?, ?, ?, ?)",
                (name, role, hash_secret(token), time.time()),
            )
        return User(cur.lastrowid, name, role), token

    def reset_token(self, name: str) -> str:
        """A new token for `name`; the old one and every session made with it stop working."""
        token = new_token()
        with self.write() as conn:
            row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UsageError(f"no person named {name!r} (see `rlhfkit label-server users list`)")
            conn.execute("UPDATE users SET token_hash = ? WHERE id = ?", (hash_secret(token), row[0]))
            conn.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
        return token

    def users(self) -> list[User]:
        rows = self.connect().execute("SELECT id, name, role FROM users ORDER BY id").fetchall()
        return [User(*row) for row in rows]

    def user_by_token(self, token: str) -> User | None:
        row = (
            self.connect()
            .execute("SELECT id, name, role FROM users WHERE token_hash = ?", (hash_secret(token),))
            .fetchone()
        )
        return User(*row) if row else None

    # -- sessions (a browser logged in with a token) ----------------------------------------------------------

    def create_session(self, user: User) -> tuple[str, str]:
        """(session id for the cookie, CSRF token for the pages)."""
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self.write() as conn:
            conn.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            conn.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf, expires) VALUES (?, ?, ?, ?)",
                (hash_secret(session), user.id, csrf, now + SESSION_SECONDS),
            )
        return session, csrf

    def session(self, session: str) -> tuple[User, str] | None:
        """(the person, their CSRF token) of a live session, else None."""
        row = (
            self.connect()
            .execute(
                "SELECT u.id, u.name, u.role, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE s.id_hash = ? AND s.expires > ?",
                (hash_secret(session), time.time()),
            )
            .fetchone()
        )
        return (User(row[0], row[1], row[2]), row[3]) if row else None

    def delete_session(self, session: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_secret(session),))

    # -- task sets and items ----------------------------------------------------------------------------------

    def add_task_set(
        self,
        name: str,
        kind: str,
        labels_per_item: int,
        instructions: str,
        source: dict,
        items: list[dict],
    ) -> TaskSet:
        """A task set and its items ({"prompt", "context", "responses"}), in one transaction."""
        check_name("task set name", name)
        assert kind in KINDS and labels_per_item >= 1 and items
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM task_sets WHERE name = ?", (name,)).fetchone():
                raise UsageError(
                    f"a task set named {name!r} exists already in {self.path}; give --name another"
                )
            cur = conn.execute(
                "INSERT INTO task_sets (name, kind, labels_per_item, instructions, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, kind, labels_per_item, instructions, _dumps(source), time.time()),
            )
            set_id = cur.lastrowid
            conn.executemany(
                "INSERT INTO items (set_id, position, prompt, context, responses) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        set_id,
                        position,
                        item["prompt"],
                        None if item.get("context") is None else _dumps(item["context"]),
                        _dumps(item.get("responses", [])),
                    )
                    for position, item in enumerate(items)
                ],
            )
        return TaskSet(set_id, name, kind, labels_per_item, instructions, source)

    def task_sets(self) -> list[TaskSet]:
        rows = self.connect().execute("SELECT * FROM task_sets ORDER BY id").fetchall()
        return [_task_set(row) for row in rows]

    def task_set(self, set_id: int) -> TaskSet | None:
        row = self.connect().execute("SELECT * FROM task_sets WHERE id = ?", (set_id,)).fetchone()
        return _task_set(row) if row else None

    def item(self, item_id: int) -> Item | None:
        row = self.connect().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    # -- work -------------------------------------------------------------------------------------------------

    def next_item(self, user: User, set_id: int, lease: float) -> Item | None:
        """The item this person should label next in the set (see the module docstring), handed to them now."""
        now = time.time()
        with self.write() as conn:
            mine = conn.execute(
                "SELECT a.item_id FROM assignments a JOIN items i ON i.id = a.item_id "
                "WHERE a.user_id = ? AND i.set_id = ? AND a.state = 'open' ORDER BY a.assigned LIMIT 1",
                (user.id, set_id),
            ).fetchone()
            if mine is not None:
                item_id = mine[0]
                conn.execute(
                    "UPDATE assignments SET assigned = ? WHERE item_id = ? AND user_id = ?",
                    (now, item_id, user.id),
                )
            else:
                wanted = conn.execute(
                    "SELECT labels_per_item FROM task_sets WHERE id = ?", (set_id,)
                ).fetchone()
                if wanted is None:
                    return None
                free = conn.execute(
                    "SELECT i.id FROM items i WHERE i.set_id = ? AND i.open = 1 "
                    "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ?) "
                    "AND i.n_labels + (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id "
                    "AND a.state = 'open' AND a.assigned > ?) < ? ORDER BY i.position LIMIT 1",
                    (set_id, user.id, now - lease, wanted[0]),
                ).fetchone()
                if free is None:
                    return None
                item_id = free[0]
                conn.execute(
                    "INSERT INTO assignments (item_id, user_id, assigned, state) VALUES (?, ?, ?, 'open')",
                    (item_id, user.id, now),
                )
            return _item(conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())

    def assignment(self, user: User, item_id: int) -> str | None:
        """'open', 'labelled' or 'skipped' when the item was handed to this person, else None."""
        row = (
            self.connect()
            .execute("SELECT state FROM assignments WHERE item_id = ? AND user_id = ?", (item_id, user.id))
            .fetchone()
        )
        return row[0] if row else None

    def submit(self, user: User, item_id: int, value: dict) -> tuple[int, bool]:
        """Store a label; returns (label id, whether it was a repeat of the one already stored). The label is on
        disk when this returns (COMMIT with synchronous=FULL). Sending the same label again — a retry after a
        lost answer — stores nothing new; a different one for the same item is refused: labels are final."""
        text = _dumps(value)
        with self.write() as conn:
            held = conn.execute(
                "SELECT state FROM assignments WHERE item_id = ? AND user_id = ?", (item_id, user.id)
            ).fetchone()
            if held is None:
                raise NotYours(item_id)
            done = conn.execute(
                "SELECT id, value FROM labels WHERE item_id = ? AND user_id = ?", (item_id, user.id)
            ).fetchone()
            if done is not None:
                if done[1] == text:
                    return done[0], True
                raise LabelError("you labelled this item already, differently; a label cannot be changed")
            cur = conn.execute(
                "INSERT INTO labels (item_id, user_id, value, created) VALUES (?, ?, ?, ?)",
                (item_id, user.id, text, time.time()),
            )
            conn.execute(
                "UPDATE assignments SET state = 'labelled' WHERE item_id = ? AND user_id = ?",
                (item_id, user.id),
            )
            conn.execute(
                "UPDATE items SET n_labels = n_labels + 1, open = (n_labels + 1 < "
                "(SELECT labels_per_item FROM task_sets WHERE id = items.set_id)) WHERE id = ?",
                (item_id,),
            )
            return cur.lastrowid, False

    def skip(self, user: User, item_id: int) -> None:
        """This person passes on the item (it goes to someone else); a labelled item stays labelled."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE assignments SET state = 'skipped' WHERE item_id = ? AND user_id = ? AND state = 'open'",
                (item_id, user.id),
            )
            if (
                cur.rowcount == 0
                and not conn.execute(
                    "SELECT 1 FROM assignments WHERE item_id = ? AND user_id = ?", (item_id, user.id)
                ).fetchone()
            ):
                raise NotYours(item_id)

    # -- what has been done -----------------------------------------------------------------------------------

    def progress(self) -> dict[int, dict]:
        """Per task set: items, labels, items with all their labels, and labels per person."""
        with self.snapshot() as conn:
            out = {
                row["id"]: {
                    "items": row["items"],
                    "labels": row["labels"] or 0,
                    "complete": row["complete"] or 0,
                    "skipped": 0,
                    "by_labeler": {},
                }
                for row in conn.execute(
                    "SELECT s.id, COUNT(i.id) AS items, SUM(i.n_labels) AS labels, "
                    "SUM(i.n_labels >= s.labels_per_item) AS complete "
                    "FROM task_sets s LEFT JOIN items i ON i.set_id = s.id GROUP BY s.id"
                )
            }
            for row in conn.execute(
                "SELECT i.set_id, u.name, COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                "JOIN users u ON u.id = l.user_id GROUP BY i.set_id, u.id ORDER BY u.name"
            ):
                out[row[0]]["by_labeler"][row[1]] = row[2]
            for row in conn.execute(
                "SELECT i.set_id, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id "
                "WHERE a.state = 'skipped' GROUP BY i.set_id"
            ):
                out[row[0]]["skipped"] = row[1]
        return out

    def user_progress(self, user: User) -> dict[int, dict]:
        """Per task set: labels this person gave, and items still open to them (not yet seen, not complete)."""
        with self.snapshot() as conn:
            done = dict(
                conn.execute(
                    "SELECT i.set_id, COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                    "WHERE l.user_id = ? GROUP BY i.set_id",
                    (user.id,),
                ).fetchall()
            )
            todo = dict(
                conn.execute(
                    "SELECT i.set_id, COUNT(*) FROM items i WHERE (i.open = 1 AND NOT EXISTS "
                    "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ?)) OR EXISTS "
                    "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ? AND a.state = 'open') "
                    "GROUP BY i.set_id",
                    (user.id, user.id),
                ).fetchall()
            )
        return {s.id: {"done": done.get(s.id, 0), "open": todo.get(s.id, 0)} for s in self.task_sets()}

    def labels(self, set_id: int) -> list[dict]:
        """Every label of a set with its item, in item order: {"label_id", "labeler", "value", "created", "item"}."""
        rows = (
            self.connect()
            .execute(
                "SELECT l.id AS label_id, u.name AS labeler, l.value, l.created, i.* FROM labels l "
                "JOIN items i ON i.id = l.item_id JOIN users u ON u.id = l.user_id "
                "WHERE i.set_id = ? ORDER BY i.position, l.id",
                (set_id,),
            )
            .fetchall()
        )
        return [
            {
                "label_id": row["label_id"],
                "labeler": row["labeler"],
                "value": json.loads(row["value"]),
                "created": row["created"],
                "item": _item(row),
            }
            for row in rows
        ]


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _task_set(row: sqlite3.Row) -> TaskSet:
    return TaskSet(
        row["id"],
        row["name"],
        row["kind"],
        row["labels_per_item"],
        row["instructions"],
        json.loads(row["source"]),
    )


def _item(row: sqlite3.Row) -> Item:
    return Item(
        row["id"],
        row["set_id"],
        row["position"],
        row["prompt"],
        json.loads(row["context"]) if row["context"] else None,
        json.loads(row["responses"]),
        row["n_labels"],
    )
