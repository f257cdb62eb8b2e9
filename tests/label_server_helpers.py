"""A real `rlhfkit label-server` process on a free loopback port, and a few calls of its JSON API, for the tests
that need the server as people meet it (browser, kill -9)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`rlhfkit label-server --db DB --port PORT` in a subprocess, bound to 127.0.0.1 only."""

    def __init__(self, db: str | Path, port: int | None = None, *flags: str):
        self.db, self.port, self.flags = str(db), port or free_port(), list(flags)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "rlhfkit.cli", "label-server", "--db", self.db]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *self.flags]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"label-server did not listen on {self.url} within {timeout} s")

    def kill9(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye — as a crash or the OOM killer would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            stream.close()

    def __enter__(self) -> Server:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def call(conn: http.client.HTTPConnection, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
    """One API call with a Bearer token on a kept-alive connection: (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"error": raw.decode("utf-8", "replace")}
