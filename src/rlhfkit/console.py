"""The one rich console every stage prints to. Its own module (rich only), so that building the command line —
`rlhfkit --help`, `rlhfkit pipeline --help` — does not wait for torch and transformers to load."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Messages hold [stage] prefixes and file[row 3] locations (no markup). Under torchrun / accelerate launch only
# the first process (RANK 0) prints progress; errors are printed by every process (cli.main).
# Written to a file or pipe (a log), lines get 160 columns instead of rich's 80, which cut the progress bars' metrics.
console = Console(
    stderr=True,
    markup=False,
    quiet=int(os.environ.get("RANK", "0")) > 0,
    width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 160,
)
