"""The pipeline's step graph (`rlhfkit.scheduler`): which steps may overlap, how many jobs, and children that
get their share of the threads, write their own log, stop the run when one fails and die with the pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfkit.errors import RunError
from rlhfkit.scheduler import Step, alone, plan, resolve_jobs, run_steps, width
from scheduler_helpers import Job, work

TESTS = Path(__file__).resolve().parent
# The pipeline's graph with every method: PPO on gold needs SFT only, DPO the comparisons only.
PIPELINE = {
    "data": [],
    "pretrain": ["data"],
    "sft": ["pretrain"],
    "label": ["sft"],
    "reward": ["sft", "label"],
    "ppo": ["sft", "reward"],
    "ppo_ptx": ["sft", "reward"],
    "ppo_gold": ["sft"],
    "dpo": ["sft", "label"],
    "eval": ["pretrain", "sft", "reward", "ppo", "ppo_ptx", "ppo_gold", "dpo"],
}


def graph(parents: dict[str, list[str]], **kwargs) -> list[Step]:
    return plan([Step(name, ps, lambda: False, lambda: None, **kwargs) for name, ps in parents.items()])


def test_which_steps_run_alone_and_how_many_can_overlap():
    steps = graph(PIPELINE)
    assert alone(steps) == {"data", "pretrain", "sft", "eval"}
    assert width(steps) == 4  # ppo, ppo_ptx, ppo_gold, dpo
    no_gold = graph(
        {k: v for k, v in PIPELINE.items() if k != "ppo_gold"} | {"eval": ["ppo", "ppo_ptx", "dpo"]}
    )
    assert alone(no_gold) == {"data", "pretrain", "sft", "label", "eval"}  # label overlaps nothing then
    assert width(no_gold) == 3  # reward beside dpo, or ppo, ppo_ptx and dpo
    chain = graph({"a": [], "b": ["a"], "c": ["b"]})
    assert alone(chain) == {"a", "b", "c"} and width(chain) == 1


def test_jobs_default_to_the_cpus_and_never_exceed_what_can_overlap():
    steps = graph(PIPELINE)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_jobs(None, steps) == min(cpus, 4)
    assert resolve_jobs(1, steps) == 1 and resolve_jobs(3, steps) == 3 and resolve_jobs(16, steps) == 4
    assert resolve_jobs(8, graph({"a": [], "b": ["a"]})) == 1  # a chain: nothing to run side by side


def test_a_bad_jobs_value_is_refused_where_it_is_given():
    from rlhfkit.config import PipelineConfig
    from rlhfkit.errors import UsageError

    with pytest.raises(UsageError, match=r"jobs = 0: must be >= 1 \(--jobs\)"):
        PipelineConfig(jobs=0)


def test_of_the_steps_ready_at_once_the_one_on_the_longest_path_starts_first():
    # no stage: each runs here, one at a time, in the order the scheduler picks
    steps = plan(
        [
            Step("sft", [], lambda: False, lambda: None),
            Step("ppo", ["sft"], lambda: False, lambda: None, seconds=97),
            Step("ppo_ptx", ["sft"], lambda: False, lambda: None, seconds=136),
            Step("dpo", ["sft"], lambda: False, lambda: None, seconds=60),
            Step("after_dpo", ["dpo"], lambda: False, lambda: None, seconds=50),
            Step("eval", ["ppo", "ppo_ptx", "after_dpo"], lambda: False, lambda: None),
        ]
    )
    began, ended, begin, end = recorder()
    run_steps(steps, jobs=2, threads=2, begin=begin, end=end)
    assert began == ["sft", "ppo_ptx", "dpo", "ppo", "after_dpo", "eval"]  # dpo's path: 60 + 50 > 97


@pytest.fixture
def children_import_helpers(monkeypatch):
    """Children import scheduler_helpers from this directory (PYTHONPATH, as the pipeline's import rlhfkit)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def job_steps(tmp_path: Path, jobs: dict[str, tuple[list[str], Job]]) -> list[Step]:
    return plan(
        [
            Step(
                name, parents, lambda: False, lambda: None, stage=(work, job), log=tmp_path / name / "log.txt"
            )
            for name, (parents, job) in jobs.items()
        ]
    )


def recorder():
    began, ended = [], []
    return (
        began,
        ended,
        (lambda step: began.append(step.name) or True),
        (lambda step, seconds: ended.append((step.name, seconds))),
    )


def test_a_failing_child_stops_the_others_and_names_its_log(tmp_path, children_import_helpers):
    out = {name: str(tmp_path / f"{name}.json") for name in ("bad", "slow", "later")}
    steps = job_steps(
        tmp_path,
        {
            "bad": ([], Job(out["bad"], seconds=0.5, fail=True)),
            "slow": ([], Job(out["slow"], seconds=120)),
            "later": (["bad"], Job(out["later"])),
        },
    )
    began, ended, begin, end = recorder()
    start = time.time()
    with pytest.raises(RunError) as err:
        run_steps(steps, jobs=2, threads=2, begin=begin, end=end)
    message = str(err.value)
    log = tmp_path / "bad" / "log.txt"
    assert "pipeline step bad failed: its process exited with 1; slow stopped" in message
    assert f"Its log is {log}" in message
    assert f"error: job {out['bad']} failed as told" in message  # the log's last lines
    assert "--resume" in message
    assert time.time() - start < 60  # slow was terminated, not waited for
    assert began == ["bad", "slow"] and ended == []
    slow = json.loads(Path(out["slow"]).read_text())["pid"]
    assert not Path(out["slow"] + ".done").exists() and not _alive(slow)


def test_children_get_their_share_of_the_threads_a_log_and_die_with_a_killed_pipeline(
    tmp_path, children_import_helpers
):
    """A pipeline (its own process) runs `quick` and `slow` side by side with 4 threads between 2 jobs, and is
    killed -9 while `slow` runs: `slow` must not outlive it."""
    out = {name: tmp_path / f"{name}.json" for name in ("quick", "slow")}
    script = (
        "import sys\nfrom pathlib import Path\nfrom rlhfkit.scheduler import Step, plan, run_steps\n"
        "from scheduler_helpers import Job, work\n"
        f"jobs = {{'quick': Job({str(out['quick'])!r}, 0.2), 'slow': Job({str(out['slow'])!r}, 120)}}\n"
        "steps = plan([Step(n, [], lambda: False, lambda: None, stage=(work, job), log=Path(sys.argv[1]) / n / "
        "'log.txt') for n, job in jobs.items()])\n"
        "run_steps(steps, 2, 4, lambda s: True, lambda s, t: None)\n"
    )
    pipeline = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True, env=os.environ
    )
    console = []
    for line in pipeline.stderr:  # until the pipeline says `quick` finished (a killed pipeline ends the loop)
        console.append(line)
        if "[pipeline] quick: finished in" in line:
            break
    deadline = time.time() + 60
    while not out["slow"].exists() and time.time() < deadline:
        time.sleep(0.05)
    runs = {name: json.loads(path.read_text()) for name, path in out.items()}
    assert {r["threads"] for r in runs.values()} == {2}  # 4 threads between 2 jobs
    assert len({r["pid"] for r in runs.values()} | {pipeline.pid}) == 3  # each in a process of its own
    log = tmp_path / "quick" / "log.txt"
    assert "step quick ===" in log.read_text() and f"working on {out['quick']}" in log.read_text()
    slow = runs["slow"]["pid"]
    assert _alive(slow)
    pipeline.send_signal(signal.SIGKILL)
    console = " ".join((" ".join(console) + pipeline.communicate()[1]).split())
    assert f"[pipeline] quick: started (2 threads, log {log})" in console
    assert "[pipeline] quick: finished in" in console and "slow: finished" not in console
    deadline = time.time() + 10
    while _alive(slow) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(slow)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
