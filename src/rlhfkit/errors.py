"""The two kinds of error rlhfkit raises on purpose; `rlhfkit.cli` turns each into one line and an exit code.

    UsageError   something the user gave is wrong: a setting, a data file, a model or checkpoint directory, an
                 --out path. The message says what, where (file:line and field, or the setting, its flag and
                 value) and what to do. Exit 2.
    RunError     the run itself cannot go on: a NaN, a full disk, a lock another process holds. Exit 1.

Anything else is a bug or a library failure (a torch shape error, out of memory): exit 1 with its type, message
and where it was raised; `--debug` (or RLHFKIT_DEBUG=1) prints the traceback. Both classes subclass the
built-in exceptions code has always caught (ValueError, RuntimeError), so callers of the Python API keep working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Something the user gave is wrong; the message names the place and the fix."""


class RunError(RuntimeError):
    """The run cannot go on; the message says what failed, where, and what is kept."""
