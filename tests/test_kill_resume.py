"""kill -9 of the tiny pipeline at several points, each followed by `--resume`: every model, the comparisons, every
judged answer, every metrics row and the report come out bit-identical to an uninterrupted run. Also: a second
pipeline on the same --out is refused while the first runs, and an evaluation killed while writing its outputs is
run again by --resume (never taken for finished).

Slow (about three minutes on one core): one uninterrupted reference run, shared; one run killed at up to seven
points in turn; two evaluations killed mid-write. The runs are subprocesses started as a user would
(`python -m rlhfkit.cli pipeline --preset tiny --out run`), each in its own directory so that every path they
record is the same relative `run/...`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_jsonl, without_time

pytestmark = pytest.mark.slow

COMMAND = [sys.executable, "-m", "rlhfkit.cli", "pipeline", "--preset", "tiny", "--out", "run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
MODELS = ("gpt", "sft", "reward", "ppo", "ppo_ptx", "dpo", "ppo/value_model", "ppo_ptx/value_model")
STAGES = ("gpt", "sft", "reward", "ppo", "ppo_ptx", "dpo")


def start(cwd: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, *extra],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run; a second pipeline started on its --out while it runs must be refused."""
    root = tmp_path_factory.mktemp("reference")
    first = start(root)
    lock = root / "run" / ".rlhfkit.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(COMMAND, cwd=root, env=ENV, capture_output=True, text=True, timeout=120)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    assert second.returncode == 2, second.stdout + second.stderr
    refusal = " ".join(second.stderr.split())
    assert (
        f"--out run is being written by process {first.pid} (`rlhfkit pipeline --preset tiny --out run`"
        in refusal
    )
    assert "Traceback" not in refusal
    return root / "run"


def steps_record(run: Path) -> dict:
    try:
        return json.loads((run / "steps.json").read_text())
    except (OSError, ValueError):
        return {}


def running(run: Path, step: str) -> bool:
    """steps.json says `step` has started and not finished."""
    return steps_record(run).get(step, {}).get("complete") is False


# Where to kill, in pipeline order: a test of the run directory that is true at that point.
KILL_POINTS = {
    "mid-pretrain, after a checkpoint": lambda run: (
        run / "gpt" / "checkpoint" / "trainer_state.json"
    ).exists(),
    "mid-label": lambda run: running(run, "label"),
    "mid-reward": lambda run: (run / "reward" / "metrics.jsonl").exists() and running(run, "reward"),
    "mid-PPO, after a checkpoint": lambda run: (run / "ppo" / "checkpoint" / "trainer_state.json").exists(),
    "during PPO-ptx's checkpoint write": lambda run: (run / "ppo_ptx" / ".checkpoint.tmp").exists(),
    "mid-DPO": lambda run: (run / "dpo" / "metrics.jsonl").exists() and running(run, "dpo"),
    "mid-eval": lambda run: running(run, "eval"),
}


def test_kill_9_at_several_points_then_resume_is_bit_identical(reference, tmp_path):
    run, hit = tmp_path / "run", []
    resume: tuple[str, ...] = ()
    for point, reached in KILL_POINTS.items():
        process = start(tmp_path, *resume)
        while process.poll() is None and not reached(run):
            time.sleep(0.001)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            hit.append(point)
        process.communicate(timeout=600)
        resume = ("--resume",)
        if process.returncode == 0:  # it finished before this point was seen: the rest cannot be reached
            break
    final = start(tmp_path, "--resume")
    output, _ = final.communicate(timeout=600)
    assert final.returncode == 0, output
    print(f"killed at: {hit}")
    assert len(hit) >= 4, f"only {hit} of the kill points were reached"
    assert_same_pipeline(reference, run)


@pytest.mark.parametrize(
    "when", ["inside eval, after report.md", "after eval, before the pipeline records it"]
)
def test_an_eval_killed_while_writing_is_run_again_by_resume(when, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    if when == "inside eval, after report.md":
        shutil.rmtree(run / "eval")  # so that the resume evaluates again; it dies writing the outputs
    else:  # a model rebuilt: the evaluation must run again, and dies once the pipeline rewrites the report
        shutil.rmtree(run / "dpo")
    calls = 1 if when.startswith("inside") else 2
    # kill -9 at an exact byte: the process ends itself, without cleanup, on the n-th markdown write
    die = (
        "import os, sys\nimport rlhfkit.report as report\nreal, seen = report.write_markdown, []\n"
        "def write(*args, **kwargs):\n    real(*args, **kwargs)\n    seen.append(1)\n"
        f"    if len(seen) == {calls}:\n        os._exit(137)\n"
        "report.write_markdown = write\nimport rlhfkit.evaluate\nfrom rlhfkit.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", die, *COMMAND[3:], "--resume"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    assert steps_record(run)["eval"]["complete"] is False
    if calls == 1:
        assert (run / "eval" / "answers.jsonl").exists() and not (run / "eval" / "report.json").exists()
    else:
        assert (run / "eval" / "report.json").exists()  # eval's own, without the pipeline's timings yet
    resumed = start(tmp_path, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "eval: finished earlier" not in " ".join(output.split())
    assert_same_pipeline(reference, run)


def assert_same_pipeline(reference: Path, run: Path) -> None:
    """Bit-identical: every model's weights, the comparisons, every judged answer, every metrics row (less wall
    time), the report (less seconds) and report.md (less the wall-time table)."""
    for name in MODELS:
        a, b = (
            load_file(str(reference / name / "model.safetensors")),
            load_file(str(run / name / "model.safetensors")),
        )
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
        assert not (run / name / "checkpoint").exists(), name
    for name in STAGES:
        assert without_time(read_jsonl(run / name / "metrics.jsonl")) == without_time(
            read_jsonl(reference / name / "metrics.jsonl")
        ), name
    for name in ("data/comparisons.jsonl", "eval/answers.jsonl", "tokenizer/tokenizer.json"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    a, b = (json.loads((path / "eval" / "report.json").read_text()) for path in (reference, run))
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    a, b = ((path / "eval" / "report.md").read_text().split("## Wall time")[0] for path in (reference, run))
    assert a == b
