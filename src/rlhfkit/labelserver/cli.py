"""`rlhfkit label-server ...`: serve the pages, add task sets, export the labels, add people.

    rlhfkit label-server --db labels.sqlite [--host 127.0.0.1 --port 8000]
    rlhfkit label-server tasks add --db labels.sqlite --kind write --prompts FILE
    rlhfkit label-server tasks add --db labels.sqlite --kind rank --prompts FILE --model DIR --k 4
    rlhfkit label-server tasks add --db labels.sqlite --kind rank --responses FILE
    rlhfkit label-server tasks add --db labels.sqlite --kind compare --prompts FILE --models a=DIR b=DIR
    rlhfkit label-server tasks list --db labels.sqlite
    rlhfkit label-server export --db labels.sqlite --out DIR
    rlhfkit label-server users add --db labels.sqlite --name alice [--admin]      (prints the token)
    rlhfkit label-server users list | reset --db labels.sqlite [--name alice]

Tokens go to stdout alone (`TOKEN=$(rlhfkit label-server users add ...)`), everything else to stderr.

Like `rlhfkit.cli`, this module imports what a verb needs in the function that runs it: serving the pages must
not load torch (only `tasks add` samples models), and `rlhfkit --help` builds this parser.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from rlhfkit import config as C
from rlhfkit.errors import UsageError
from rlhfkit.labelserver.settings import (
    DbConfig,
    ExportConfig,
    ServeConfig,
    TasksAddConfig,
    UsersAddConfig,
    UsersResetConfig,
)


def add_parser(sub) -> None:
    """The `label-server` command and its verbs, on the CLI's subparsers."""
    description = (
        "People write demonstrations, rank K answers and compare two models blind, in a browser; the export "
        "feeds rlhfkit sft / reward / dpo, and eval --human reads the comparisons. Without a verb: serve."
    )
    server = sub.add_parser(
        "label-server", help="collect real demonstrations, rankings and comparisons", description=description
    )
    C.add_arguments(server, ServeConfig)
    verbs = server.add_subparsers(dest="label_command", metavar="{tasks,export,users}")
    tasks = verbs.add_parser("tasks", help="task sets: add, list").add_subparsers(
        dest="tasks_command", required=True
    )
    _verb(tasks, "add", TasksAddConfig, "add a task set (write, rank or compare)")
    _verb(tasks, "list", DbConfig, "list the task sets and their progress")
    _verb(verbs, "export", ExportConfig, "write the labels as JSONL for the stages")
    users = verbs.add_parser("users", help="people: add, list, reset").add_subparsers(
        dest="users_command", required=True
    )
    _verb(users, "add", UsersAddConfig, "add a labeler (or --admin) and print their token")
    _verb(users, "list", DbConfig, "list the people")
    _verb(users, "reset", UsersResetConfig, "give a person a new token and print it")


def _verb(parent, name: str, cls: type, help_text: str) -> None:
    parser = parent.add_parser(name, help=help_text, description=help_text)
    C.add_arguments(parser, cls)
    for action in parser._actions:
        # A flag not given here must not overwrite the same flag given before the verb (`label-server --db x
        # tasks add`): argparse copies a sub-command's defaults over its parent's values.
        if action.dest != "help":
            action.default = argparse.SUPPRESS


def main(args: argparse.Namespace, command_line: str = "rlhfkit label-server") -> None:
    """Run the verb `args` names; `command_line` is what the --out lock of `export` records as its holder."""
    command = getattr(args, "label_command", None)
    if command is None:
        serve(C.from_args(ServeConfig, args))
    elif command == "tasks" and args.tasks_command == "add":
        from rlhfkit.labelserver import tasks

        tasks.add(C.from_args(TasksAddConfig, args))
    elif command == "tasks":
        list_tasks(C.from_args(DbConfig, args))
    elif command == "export":
        from rlhfkit.labelserver import export
        from rlhfkit.rundir import locked

        cfg = C.from_args(ExportConfig, args)
        with locked(cfg.out, command_line):  # one writer per --out, as for every command that writes one
            export.run(cfg)
    elif args.users_command == "add":
        cfg = C.from_args(UsersAddConfig, args)
        if not cfg.name:
            raise UsageError("users add: give --name NAME")
        from rlhfkit.labelserver.db import Database

        user, token = Database(cfg.db).add_user(cfg.name, "admin" if cfg.admin else "labeler")
        _token(token, f"{user.role} {user.name!r} added to {cfg.db}")
    elif args.users_command == "reset":
        cfg = C.from_args(UsersResetConfig, args)
        if not cfg.name:
            raise UsageError("users reset: give --name NAME")
        from rlhfkit.labelserver.db import Database

        _token(Database(cfg.db, create=False).reset_token(cfg.name), f"new token for {cfg.name!r}")
    else:
        from rlhfkit.labelserver.db import Database

        for user in Database(C.from_args(DbConfig, args).db, create=False).users():
            print(f"{user.name}\t{user.role}")


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from rlhfkit.labelserver.app import create_app
    from rlhfkit.labelserver.db import Database

    db = Database(cfg.db)
    if not any(user.is_admin for user in db.users()):
        taken = {user.name for user in db.users()}
        name = next(n for n in ["admin", *(f"admin-{i}" for i in range(1, 100))] if n not in taken)
        _, token = db.add_user(name, "admin")
        _token(token, f"no admin yet: made {name!r}; log in with this token")
    if not _loopback(cfg.host):
        print(
            f"[label-server] warning: --host {cfg.host} is reachable from other machines and this server speaks "
            "plain HTTP, so tokens and labels cross the network unencrypted: put a TLS proxy in front "
            "(and pass --secure-cookies)",
            file=sys.stderr,
        )
    app = create_app(cfg.db, cfg.max_body_kb * 1024, cfg.lease_minutes * 60, cfg.secure_cookies)
    print(
        f"[label-server] http://{cfg.host}:{cfg.port}/  ({cfg.db}: {len(db.task_sets())} task sets, "
        f"{len(db.users())} people; Ctrl+C stops)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def list_tasks(cfg: DbConfig) -> None:
    from rlhfkit.labelserver.db import Database

    db = Database(cfg.db, create=False)
    progress = db.progress()
    print("name\tkind\titems\tcomplete\tlabels\tlabels_per_item")
    for s in db.task_sets():
        p = progress[s.id]
        print(f"{s.name}\t{s.kind}\t{p['items']}\t{p['complete']}\t{p['labels']}\t{s.labels_per_item}")


def _token(token: str, what: str) -> None:
    print(f"[label-server] {what} (token below, shown once: only its hash is kept)", file=sys.stderr)
    print(token, flush=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
