"""What test_scheduler.py's child processes run (`python -m rlhfkit.scheduler scheduler_helpers:work ...`): a
job that records its process and thread count, waits, and fails when told to."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.errors import RunError


@dataclass
class Job:
    out: str
    seconds: float = 0.0
    fail: bool = False


def work(job: Job) -> None:
    Path(job.out).write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))
    print(f"working on {job.out}")
    time.sleep(job.seconds)
    if job.fail:
        raise RunError(f"job {job.out} failed as told")
    Path(job.out + ".done").write_text("")
