"""Run directories that are safe to share and to trust (no torch here: the CLI uses it before loading any).

- **One writer at a time.** `locked(out)` holds an exclusive lock (`flock`) on `out/.rlhfkit.lock` while a command
  writes `out`; a second process is refused with a message naming the first (pid, command, start time). A lock
  held on a directory above `out` (a pipeline's run directory) or on a stage directory just below it refuses too.
  The operating system drops a lock when its process dies, by kill -9 as well: a stale lock never blocks --resume.
- **Whole files.** `open_atomic` / `write_atomic` write a temp file beside the target, fsync it, rename it over the
  target and fsync the directory, so a kill at any byte leaves the old file or the new one, never part of one. The
  files that mark work done (rlhfkit.json, steps.json, report.json) are written this way, and last.
- **Whole directories.** `swap_dirs` puts a finished directory in place of another in one step (Linux's
  renameat2 RENAME_EXCHANGE; elsewhere two renames, undone by `recover_dir` if a kill falls between them).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rlhfkit.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

LOCK_NAME = ".rlhfkit.lock"


# ---------------------------------------------------------------------------------------------------------------
# Whole files


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object whose content replaces `path` whole when the block ends, flushed to disk first; if the block
    raises, `path` is left as it was. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """`path` replaced whole by `content` (UTF-8 text or bytes), as `open_atomic` does."""
    with open_atomic(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON (non-ASCII kept readable), replacing `path` whole."""
    write_atomic(path, json.dumps(value, ensure_ascii=False, indent=2, default=str))


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (a finished temp dir, before it is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(folder)


# ---------------------------------------------------------------------------------------------------------------
# Whole directories


def swap_dirs(new: Path, dst: Path) -> None:
    """Put the finished directory `new` where `dst` is, in one step where the OS can; the old `dst` is removed."""
    if not dst.exists():
        os.replace(new, dst)
        fsync_dir(dst.parent)
        return
    if _exchange(new, dst):  # `new` now holds the old directory
        fsync_dir(dst.parent)
        shutil.rmtree(new, ignore_errors=True)
        return
    old = _old(dst)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    os.replace(new, dst)  # a kill just before this leaves `old` only: `recover_dir` moves it back
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dst: Path) -> None:
    """Undo a swap that a kill cut between its two renames (systems without RENAME_EXCHANGE)."""
    old = _old(dst)
    if not dst.exists() and old.is_dir():
        os.replace(old, dst)


def _old(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE): swap two paths atomically. False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# ---------------------------------------------------------------------------------------------------------------
# --out paths and the lock


def check_out(out: str | Path, flag: str = "--out", is_file: bool = False, replaced: bool = False) -> None:
    """Refuse an output path that cannot be written before any work: a file where a directory must go (or the
    reverse), a path under a file, or — for a stage directory, which a save `replaced` whole — the directory the
    command runs in."""
    out = Path(out)
    if replaced and Path.cwd().is_relative_to(out.absolute()):
        raise UsageError(
            f"{flag} {out} holds the current directory, and a stage replaces its directory whole when it saves "
            f"its model; give it a directory of its own, e.g. {flag} runs/sft"
        )
    if is_file and out.is_dir():
        raise UsageError(
            f"{flag} {out} is a directory; give the path of the file to write (e.g. {out}/out.jsonl)"
        )
    if not is_file and out.exists() and not out.is_dir():
        raise UsageError(
            f"{flag} {out} is a file, not a directory; give a directory (it is created) or remove it"
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(
            f"{flag} {out}: {parent} is a file, so nothing can be written under it; give another {flag}"
        )


@contextlib.contextmanager
def locked(
    out: str | Path, command: str, flag: str = "--out", is_file: bool = False, replaced: bool = False
) -> Iterator[None]:
    """Hold the lock on the run directory `out` (for `is_file`, on the file `out`) while the block runs; refuse,
    naming the holder, when another process holds it or a lock just above or below it (`check_out` first)."""
    out = Path(out)
    check_out(out, flag, is_file, replaced)
    if fcntl is None:
        yield
        return
    lock = out.parent / f".{out.name}.lock" if is_file else out / LOCK_NAME
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(
            f"{flag} {out}: cannot be written ({err.strerror}); give a directory you can write"
        ) from None
    try:
        if not _try_lock(fd):
            raise UsageError(_held_message(out, lock, flag))
        for other in _neighbour_locks(lock):
            _refuse_if_held(other, out, flag)
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, json.dumps(holder, ensure_ascii=False).encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with the next locker)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _neighbour_locks(lock: Path) -> list[Path]:
    """Locks of the directories above this one, and of those one level below it (a pipeline's stages)."""
    here = lock.parent.resolve()
    above = [folder / LOCK_NAME for folder in here.parents]
    below = [*here.glob(f"*/{LOCK_NAME}"), *here.glob("*/.*.lock")]
    return [path for path in above + below if path.is_file() and path.resolve() != lock.resolve()]


def _refuse_if_held(other: Path, out: Path, flag: str) -> None:
    try:
        fd = os.open(other, os.O_RDONLY)
    except OSError:
        return
    try:
        if not _try_lock(fd):
            raise UsageError(_held_message(out, other, flag))
    finally:
        os.close(fd)


def _held_message(out: Path, lock: Path, flag: str) -> str:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        who = f"process {holder['pid']} (`{holder['command']}`, started {holder['started']})"
    except (OSError, ValueError, KeyError):
        who = "another process"
    where = "" if lock.parent.resolve() == out.resolve() else f" through {lock.parent}"
    return (
        f"{flag} {out} is being written by {who}{where}; two runs writing one directory would mix their files. "
        f"Wait for it to finish (or stop it), or give another {flag}"
    )
