"""Label server under load on loopback: 50 labelers submitting for 60 s, then the same load killed with SIGKILL.

    .venv/bin/python benchmarks/label_server_load.py [--labelers 50] [--seconds 60] [--kill-after 20]

Each labeler is a thread with its own kept-alive HTTP connection and Bearer token, looping as a person's browser
does: GET /api/sets/1/next (an item is handed out), POST /api/items/ID/label (a K = 4 ranking). A label counts as
acknowledged when the POST answered 200 with its id.
  1. steady: `--seconds` of load, then a graceful stop; the export (`label-server export`) must hold every
     acknowledged label, none twice, and no person twice on one item.
  2. kill: the load again on the same database, the server killed with SIGKILL after `--kill-after` s while
     requests are in flight, then restarted; the export must still hold every label acknowledged in either phase.
     Labels stored but never acknowledged (committed, then killed before the answer went out) are counted: they
     are allowed, a lost acknowledged one is not.
Requests/s and p50/p99 latency per request kind are measured by the client. The load generator (Python threads)
and the server share this machine's cores: on a 2-core machine the figures are a floor, not the server's ceiling.
Every request loop is bounded by its deadline and `--max-requests`; only 127.0.0.1 is contacted.
Writes benchmarks/results/label_server_load.json and prints a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "label_server_load.json"
RANK = {"ranks": [1, 2, 3, 4], "unacceptable": [False] * 4}
console = Console(width=150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int) -> subprocess.Popen:
    """`rlhfkit label-server` on 127.0.0.1:PORT, once it accepts connections."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhfkit.cli", "label-server", "--db", db, "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label-server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("label-server did not start within 60 s")


class Load:
    """`n` labelers looping next -> label against the server until `stop` is set (or their request budget ends)."""

    def __init__(self, port: int, tokens: list[str], max_requests: int):
        self.port, self.tokens, self.max_requests = port, tokens, max_requests
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.latency: dict[str, list[float]] = {"next": [], "label": []}
        self.errors: dict[str, int] = {}
        self.requests = 0

    def labeler(self, token: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        while not self.stop.is_set():
            with self.lock:
                if self.requests >= self.max_requests:
                    return
                self.requests += 2
            try:
                status, answer, seconds = self.request(conn, "GET", "/api/sets/1/next", headers, None)
                self.note("next", status, seconds)
                if status != 200 or answer.get("item") is None:
                    self.error(f"next {status}" if status != 200 else "no item left")
                    return
                body = json.dumps(RANK).encode()
                label_headers = {**headers, "Content-Type": "application/json"}
                path = f"/api/items/{answer['item']['id']}/label"
                status, answer, seconds = self.request(conn, "POST", path, label_headers, body)
                self.note("label", status, seconds)
                if status == 200:
                    with self.lock:
                        self.acknowledged.append(answer["label_id"])
                else:
                    self.error(f"label {status}")
            except (OSError, http.client.HTTPException, ValueError) as err:
                self.error(type(err).__name__)  # the server is gone (phase 2) or a connection broke
                if self.stop.is_set():
                    return
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                time.sleep(0.05)

    @staticmethod
    def request(conn, method, path, headers, body):
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, time.perf_counter() - start

    def note(self, kind: str, status: int, seconds: float) -> None:
        if status == 200:
            with self.lock:
                self.latency[kind].append(seconds)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1

    def run(self, seconds: float, at_deadline=None) -> float:
        threads = [threading.Thread(target=self.labeler, args=(t,), daemon=True) for t in self.tokens]
        start = time.perf_counter()
        for t in threads:
            t.start()
        self.stop.wait(seconds)
        if at_deadline:
            at_deadline()  # the kill happens while every labeler is mid-loop
        self.stop.set()
        for t in threads:
            t.join(60)
        return time.perf_counter() - start

    def figures(self, seconds: float) -> dict:
        done = {kind: len(v) for kind, v in self.latency.items()}

        def pct(values: list[float], q: float) -> float | None:
            return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else None

        return {
            "seconds": round(seconds, 2),
            "requests_ok": sum(done.values()),
            "requests_per_s": round(sum(done.values()) / seconds, 1),
            "labels_acknowledged": len(self.acknowledged),
            "labels_per_s": round(len(self.acknowledged) / seconds, 1),
            "latency_ms": {
                kind: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for kind, v in self.latency.items()
            },
            "errors": dict(self.errors),
        }


def exported_ids(db: str, out: Path) -> list[int]:
    """The label ids in `label-server export`'s file of the task set, as a team would read them."""
    from rlhfkit.labelserver.export import run as export
    from rlhfkit.labelserver.settings import ExportConfig

    export(ExportConfig(db=db, out=str(out)))
    rows = [json.loads(line) for line in (out / "load.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = [(r["prompt"], r["labeler"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "a person labelled one item twice"
    return [r["label_id"] for r in rows]


def check(acknowledged: list[int], exported: list[int]) -> dict:
    missing = sorted(set(acknowledged) - set(exported))
    return {
        "acknowledged": len(acknowledged),
        "exported": len(exported),
        "acknowledged_missing": len(missing),
        "exported_twice": len(exported) - len(set(exported)),
        "acknowledged_twice": len(acknowledged) - len(set(acknowledged)),
        "stored_not_acknowledged": len(set(exported) - set(acknowledged)),
        "ok": not missing
        and len(exported) == len(set(exported))
        and len(acknowledged) == len(set(acknowledged)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="steady load before a graceful stop")
    parser.add_argument("--kill-after", type=float, default=20.0, help="load before the SIGKILL in phase 2")
    parser.add_argument(
        "--items", type=int, default=30000, help="items in the task set (each labelled twice)"
    )
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="request budget of each phase")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from rlhfkit.labelserver.db import Database

    work = Path(tempfile.mkdtemp(prefix="label_server_load_"))
    db_path = str(work / "labels.sqlite")
    db = Database(db_path)
    tokens = [db.add_user(f"labeler{i:02d}")[1] for i in range(args.labelers)]
    db.add_user("admin", "admin")
    items = [
        {"prompt": f"prompt {i}", "responses": [{"text": f"answer {i}.{j}", "ended": True} for j in range(4)]}
        for i in range(args.items)
    ]
    db.add_task_set("load", "rank", 2, "", {}, items)
    port = free_port()

    console.print(f"[load] steady: {args.labelers} labelers for {args.seconds:.0f} s on 127.0.0.1:{port}")
    server = start_server(db_path, port)
    steady = Load(port, tokens, args.max_requests)
    steady_figures = steady.figures(steady.run(args.seconds))
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    steady_check = check(steady.acknowledged, exported_ids(db_path, work / "export1"))

    console.print(f"[load] kill: the same load, SIGKILL after {args.kill_after:.0f} s, then a restart")
    server = start_server(db_path, port)
    killed = Load(port, tokens, args.max_requests)

    def kill() -> None:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()

    kill_figures = killed.figures(killed.run(args.kill_after, at_deadline=kill))
    server = start_server(db_path, port)  # SQLite replays its log on the first open
    restarted_ok = False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/sets", headers={"Authorization": f"Bearer {tokens[0]}"})
    restarted_ok = conn.getresponse().status == 200
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    kill_check = check(steady.acknowledged + killed.acknowledged, exported_ids(db_path, work / "export2"))

    table = Table(
        title=f"label server, {args.labelers} labelers on loopback ({os.cpu_count()} cores, shared with the load)"
    )
    for column in (
        "phase",
        "s",
        "requests/s",
        "labels/s",
        "next p50/p99 ms",
        "label p50/p99 ms",
        "acknowledged",
        "lost",
        "twice",
        "errors",
    ):
        table.add_column(column)
    for name, fig, chk in (("steady", steady_figures, steady_check), ("kill -9", kill_figures, kill_check)):
        lat = fig["latency_ms"]
        table.add_row(
            name,
            f"{fig['seconds']:.0f}",
            f"{fig['requests_per_s']:.0f}",
            f"{fig['labels_per_s']:.0f}",
            f"{lat['next']['p50']:.1f} / {lat['next']['p99']:.1f}",
            f"{lat['label']['p50']:.1f} / {lat['label']['p99']:.1f}",
            str(chk["acknowledged"]),
            str(chk["acknowledged_missing"]),
            str(chk["exported_twice"]),
            ", ".join(f"{k}: {v}" for k, v in fig["errors"].items()) or "0",
        )
    console.print(table)
    console.print(
        f"[load] after the kill and restart: {kill_check['acknowledged']} labels acknowledged in both phases, "
        f"{kill_check['acknowledged_missing']} missing from the export, {kill_check['exported_twice']} twice, "
        f"{kill_check['stored_not_acknowledged']} stored but never acknowledged (in flight at the kill); "
        f"restarted server answered: {restarted_ok}"
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sqlite": {"journal_mode": "wal", "synchronous": "FULL"},
        "steady": {**steady_figures, "check": steady_check},
        "kill": {**kill_figures, "check": kill_check, "restarted": restarted_ok},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"[load] wrote {args.out}")
    if not (steady_check["ok"] and kill_check["ok"] and restarted_ok):
        raise SystemExit("an acknowledged label was lost or stored twice")


if __name__ == "__main__":
    main()
