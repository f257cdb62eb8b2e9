"""`accelerate launch` / `torchrun` with several processes: every trainer under DDP (two CPU processes, gloo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_two_processes_train_identical_copies_of_every_model(
    tiny_sft, tiny_reward, tiny_comparisons, tmp_path
):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    harness = Path(__file__).with_name("distributed_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(tiny_sft), str(tiny_reward), str(tiny_comparisons), str(tmp_path / "runs")]
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(harness), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result.pop("world_size") == 2
    for stage, (logged, single_process) in result.pop("lr").items():
        assert logged == pytest.approx(single_process, rel=1e-6), f"{stage}: the schedule ran at another pace"
    assert result.pop("nan_on_one_process_stops_all") == [True, True]
    for stage, (read, epochs_of_rows) in result.pop("epochs").items():
        assert read == epochs_of_rows, f"{stage} --epochs 1 read {read} rows of {epochs_of_rows}"
    kl_coef = result.pop("kl_coef")
    assert kl_coef["end"][0] == kl_coef["end"][1] != kl_coef["start"]  # adapted, from both processes' KL
    assert set(result) == {"sft", "reward", "dpo", "ppo_policy", "ppo_value"}
    for name, sums in result.items():
        before, after = sums["before"], sums["after"]
        assert before[0] == before[1], name  # both ranks start from the same weights
        assert after[0] != before[0], f"{name} did not train"
        # each rank saw different data; only averaged gradients keep the copies equal
        assert after[0] == after[1], f"{name}: the two processes' copies differ ({after})"
