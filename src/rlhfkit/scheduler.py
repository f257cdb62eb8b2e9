"""The pipeline's steps as a graph, run one after another or side by side (`rlhfkit pipeline --jobs N`).

A step runs once every step it is built on has finished. With `jobs` = 1 every step runs in this process, in the
pipeline's order, with its progress bars: the serial run. With more, the steps that can overlap (after Step1:
label and the gold-reward PPO; after Step2: PPO, PPO-ptx, RLOO, DPO) each run in a child process
(`python -m rlhfkit.scheduler ...`) with a fixed share of the threads, `threads // jobs` — never more threads
than cores, since a torch job beside another busy one slows about 5x when both spin on all cores. A step that
every other step is built on or builds on (pretrain, SFT, the evaluation) can never overlap: it runs in this
process with all the threads, as in the serial run.

A step's thread count depends only on the graph and `jobs`, not on what happened to finish first: with the
same threads per step a model comes out bit-identical whichever way the run is scheduled.

Children write their console output to the step's log (`<out>/<step>/log.txt`, appended to across resumes) and
this process prints one line when each starts and finishes. A child that fails stops the run: the others are
terminated (what they checkpointed is kept, for --resume) and the error names the step, its log and the log's
last lines. A child dies with this process (PR_SET_PDEATHSIG), so a kill -9 of the pipeline leaves nothing
writing the run directory after its lock is released.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.console import console
from rlhfkit.errors import RunError, UsageError
from rlhfkit.training import quiet_libraries

LOG_TAIL_LINES = 15  # of a failed child's log, in the error
POLL_SECONDS = 0.1


@dataclass
class Step:
    name: str
    parents: list[str]  # steps of this run it is built on
    done: Callable[[], bool]  # its output is there (asked when the step is ready to run, not before)
    action: Callable[[], None]  # runs it in this process
    stage: tuple[Callable, object] | None = None  # (stage function, its config): what a child process runs
    log: Path | None = None  # a child's console output
    after: Callable[[bool], None] | None = None  # in this process once it ran (True) or was skipped (False)
    seconds: float = (
        1.0  # what it is expected to take: of the steps ready at once, those on the longest path start first
    )
    ancestors: set[str] = field(default_factory=set)


def plan(steps: list[Step]) -> list[Step]:
    """The steps with their ancestors filled in; parents must come before their children."""
    by_name: dict[str, Step] = {}
    for step in steps:
        unknown = [p for p in step.parents if p not in by_name]
        assert not unknown, f"{step.name} is built on {unknown}, which come later or not at all"
        step.ancestors = set(step.parents).union(*(by_name[p].ancestors for p in step.parents))
        by_name[step.name] = step
    return steps


def alone(steps: list[Step]) -> set[str]:
    """Steps that cannot overlap with any other: each other step is built on them or they on it."""
    names = {s.name for s in steps}
    descendants = {s.name: {t.name for t in steps if s.name in t.ancestors} for s in steps}
    return {s.name for s in steps if s.ancestors | descendants[s.name] | {s.name} == names}


def width(steps: list[Step]) -> int:
    """The most steps that can run at once: the largest set of steps none of which is built on another."""
    free = [s for s in steps if s.name not in alone(steps)]
    for n in range(len(free), 1, -1):
        for group in itertools.combinations(free, n):
            if all(a.name not in b.ancestors for a in group for b in group):
                return n
    return 1


def resolve_jobs(asked: int | None, steps: list[Step]) -> int:
    """--jobs: by default the CPUs this process may use; never more than the steps that can run at once."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(asked or cpus, width(steps)))


def run_steps(
    steps: list[Step],
    jobs: int,
    threads: int,
    begin: Callable[[Step], bool],
    end: Callable[[Step, float], None],
) -> None:
    """Run `steps` (from `plan`), at most `jobs` at once. `begin(step)` says whether it must run (False: it is
    finished, skipped); `end(step, seconds)` records it finished. Both run in this process, in step order for
    --jobs 1, as each step is ready / done otherwise."""
    if jobs == 1:
        for step in steps:
            ran = begin(step)
            if ran:
                console.rule(step.name, style="bold")
                start = time.time()
                step.action()
                end(step, time.time() - start)
            if step.after:
                step.after(ran)
        return
    Scheduler(steps, jobs, threads, begin, end).run()


class Scheduler:
    def __init__(self, steps, jobs, threads, begin, end):
        self.steps, self.jobs, self.begin, self.end = steps, jobs, begin, end
        self.share = max(1, threads // jobs)  # threads per child
        self.alone = alone(steps)
        # the expected seconds from a step's start to the end of the run, along its longest path (critical path)
        self.to_the_end: dict[str, float] = {}
        for step in reversed(steps):
            after = [self.to_the_end[t.name] for t in steps if step.name in t.parents]
            self.to_the_end[step.name] = step.seconds + max(after, default=0.0)
        self.finished: set[str] = set()
        self.running: dict[str, tuple[subprocess.Popen, float, object]] = {}

    def run(self) -> None:
        side_by_side = [s.name for s in self.steps if s.name not in self.alone]
        console.print(
            f"[pipeline] --jobs {self.jobs}: {', '.join(side_by_side)} run side by side, in child processes "
            f"of {self.share} thread{'s' * (self.share > 1)} each (their output in <out>/<step>/log.txt); "
            f"{', '.join(s.name for s in self.steps if s.name in self.alone)} run here"
        )
        pending = sorted(self.steps, key=lambda s: -self.to_the_end[s.name])  # stable: ties in step order
        try:
            while pending or self.running:
                started = self._start_ready(pending)
                if not self._reap() and not started:
                    time.sleep(POLL_SECONDS)
        except BaseException:  # a failed child, Ctrl-C, a failing step here: nothing keeps writing the run
            self._stop_all()
            raise

    def _start_ready(self, pending: list[Step]) -> bool:
        """Start (or skip) every step whose parents are done, while a job is free; True if any was."""
        any_started = False
        for step in list(pending):
            if not all(p in self.finished for p in step.parents):
                continue
            here = step.name in self.alone or step.stage is None
            if here and self.running or not here and len(self.running) >= self.jobs:
                continue
            pending.remove(step)
            any_started = True
            if not self.begin(step):
                self._done(step, ran=False)
            elif here:
                assert not self.running, f"{step.name} runs alone, but {list(self.running)} are running"
                console.rule(step.name, style="bold")
                start = time.time()
                step.action()
                self.end(step, time.time() - start)
                console.print(f"[pipeline] {step.name}: finished in {time.time() - start:.0f} s")
                self._done(step, ran=True)
            else:
                self._spawn(step)
        return any_started

    def _spawn(self, step: Step) -> None:
        function, config = step.stage
        step.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(step.log, "a", encoding="utf-8")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} rlhfkit pipeline: step {step.name} ===\n")
        log.flush()
        package_root = str(Path(__file__).resolve().parents[1])  # the child imports this very rlhfkit
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.share),
            "MKL_NUM_THREADS": str(self.share),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
        }
        command = [
            sys.executable,
            "-m",
            "rlhfkit.scheduler",
            _path_of(function),
            _path_of(type(config)),
            json.dumps(dataclasses.asdict(config), default=str),
            str(self.share),
            str(os.getpid()),
        ]
        # its own session: a Ctrl-C reaches this process only, which stops the children itself
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.running[step.name] = (process, time.time(), log)
        console.print(
            f"[pipeline] {step.name}: started ({self.share} thread{'s' * (self.share > 1)}, log {step.log})"
        )

    def _reap(self) -> bool:
        """Record the children that ended; raise on one that failed. True if any ended."""
        ended = False
        for name, (process, start, log) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            ended = True
            log.close()
            del self.running[name]
            step = next(s for s in self.steps if s.name == name)
            if code != 0:
                raise RunError(self._failure(step, code))
            seconds = time.time() - start
            self.end(step, seconds)
            console.print(f"[pipeline] {name}: finished in {seconds:.0f} s")
            self._done(step, ran=True)
        return ended

    def _done(self, step: Step, ran: bool) -> None:
        self.finished.add(step.name)
        if step.after:
            step.after(ran)

    def _failure(self, step: Step, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        others = sorted(self.running)
        lines = step.log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
        tail = "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])
        stopped = f"; {', '.join(others)} stopped (their checkpoints are kept)" if others else ""
        return (
            f"pipeline step {step.name} failed: its process {how}{stopped}. Its log is {step.log}; the last lines:\n"
            f"{tail}\nFix the cause, then run the same command with --resume"
        )

    def _stop_all(self) -> None:
        for process, _, _ in self.running.values():
            process.terminate()
        deadline = time.time() + 10
        for name, (process, _, log) in list(self.running.items()):
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            console.print(f"[pipeline] {name}: stopped")
        self.running.clear()


def _path_of(thing) -> str:
    return f"{thing.__module__}:{thing.__qualname__}"


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the pipeline's process ends, however it ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def child_main(argv: list[str]) -> int:
    """A step in a child process: `python -m rlhfkit.scheduler MODULE:FUNCTION MODULE:CONFIG JSON THREADS PID`."""
    target, config_class, values, threads, parent = argv
    _die_with_parent(int(parent))
    torch.set_num_threads(int(threads))
    quiet_libraries()  # as cli.main does for the serial run
    function, config = _load(target), _load(config_class)(**json.loads(values))
    try:
        function(config)
    except (UsageError, RunError) as err:
        console.print(f"error: {err}", soft_wrap=True)
        return 2 if isinstance(err, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
