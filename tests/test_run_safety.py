"""Run directories that are safe to share and to trust: one writer per --out, whole-directory saves, resume state
without pickles, a NaN guard that sees the last update, and errors that are one line (a traceback with --debug).
The kill -9 tests of the whole pipeline are in test_kill_resume.py (slow)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlhfkit.stages.pretrain
from conftest import console_text, read_jsonl, without_time
from rlhfkit.cli import main
from rlhfkit.errors import RunError, UsageError
from rlhfkit.modeling import read_meta, save_model
from rlhfkit.rundir import LOCK_NAME, locked, write_atomic
from rlhfkit.stages import ppo
from rlhfkit.training import CheckpointError, TrainingError
from test_ppo_stage import Interrupt, NaNAt, toy_config, toy_reward

# --- one writer per --out -------------------------------------------------------------------------------------

HOLD = """
import sys, time
from rlhfkit.rundir import locked
with locked(sys.argv[1], "rlhfkit pipeline --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path/run, as a running pipeline does."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield out, process
    process.kill()
    process.wait()


def test_a_second_writer_of_one_out_is_refused_naming_the_first(holder, capsys):
    out, process = holder
    assert main(["pipeline", "--preset", "tiny", "--out", str(out)]) == 2
    text = console_text(capsys)
    assert f"--out {out} is being written by process {process.pid} (`rlhfkit pipeline --out {out}`" in text
    assert "give another --out" in text and not (out / "data").exists()  # refused before any work


def test_a_stage_inside_a_held_run_directory_is_refused(holder, tiny_gpt, capsys):
    out, process = holder
    code = main(["sft", "--model", str(tiny_gpt), "--out", str(out / "sft"), "--max-steps", "1"])
    assert code == 2
    text = console_text(capsys)
    assert f"--out {out / 'sft'} is being written by process {process.pid}" in text
    assert f"through {out};" in text  # the directory whose lock is held
    assert not (out / "sft" / "model.safetensors").exists()


def test_a_killed_holder_leaves_no_stale_lock(holder):
    out, process = holder
    process.kill()  # kill -9: the operating system drops its flock
    process.wait()
    with locked(out, "rlhfkit pipeline"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_lock_is_released_when_the_command_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", lambda cfg: None)
    assert main(["pretrain", "--out", "gpt"]) == 0
    assert main(["pretrain", "--out", "gpt"]) == 0  # the same directory again: nothing holds it


def test_a_stage_out_that_holds_the_working_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--out", ".", "--max-steps", "1"]) == 2
    assert "--out . holds the current directory" in console_text(capsys)


# --- whole-directory saves ------------------------------------------------------------------------------------


def test_a_save_replaces_the_model_whole_and_keeps_the_logs(tiny_gpt, tmp_path):
    from rlhfkit.modeling import load_causal_lm
    from rlhfkit.tokenizer import load_tokenizer

    model, tokenizer = load_causal_lm(tiny_gpt), load_tokenizer(tiny_gpt)
    out = tmp_path / "stage"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events").write_text("e")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "model-00002-of-00002.safetensors").write_text("a stale shard of an older model")
    lock = out / LOCK_NAME
    lock.write_text("")
    inode = lock.stat().st_ino
    save_model(model, tokenizer, out, stage="test", complete=True)
    assert read_meta(out)["complete"] is True and (out / "model.safetensors").is_file()
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (out / "tensorboard" / "events").read_text() == "e"
    assert lock.stat().st_ino == inode  # the same file: a lock held on it stays held
    assert not (out / "model-00002-of-00002.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temp dir left beside it


def test_a_swap_cut_between_its_two_renames_is_undone(tmp_path, monkeypatch):
    import rlhfkit.rundir as rundir

    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)  # a system without renameat2
    new, dst = tmp_path / ".stage.new", tmp_path / "stage"
    for folder, text in ((new, "new"), (dst, "old")):
        folder.mkdir()
        (folder / "rlhfkit.json").write_text(json.dumps({"which": text}))
    rundir.swap_dirs(new, dst)
    assert read_meta(dst) == {"which": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    os.replace(dst, tmp_path / ".stage.old")  # killed after the first rename of the next swap
    assert read_meta(dst) == {"which": "new"}  # moved back before it is read


def test_a_full_disk_at_the_final_save_leaves_the_directory_as_it_was(
    tiny_gpt, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sft"
    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", full_disk)
    code = main(["sft", "--model", str(tiny_gpt), "--out", str(out), "--max-steps", "2", "--save-every", "1"])
    assert code == 1
    text = console_text(capsys)
    assert f"saving the model to {out} failed (OSError: [Errno 28] No space left on device)" in text
    assert "run again with --resume" in text and "Traceback" not in text
    assert not (out / "rlhfkit.json").exists() and (out / "checkpoint" / "trainer_state.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no .sft.new left behind


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(tiny_gpt, tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    out = tmp_path / "sft"
    real = Accelerator.save_state

    def fills_the_disk_at_step_4(self, path, **kwargs):
        if json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")
        return real(self, path, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fills_the_disk_at_step_4)
    args = ["sft", "--model", str(tiny_gpt), "--out", str(out), "--max-steps", "6", "--save-every", "2"]
    assert main([*args, "--log-every", "1"]) == 1
    text = console_text(capsys)
    assert f"step 4: writing the checkpoint to {out / 'checkpoint'} failed" in text
    assert "the checkpoint before it is kept" in text
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    assert not (out / ".checkpoint.tmp").exists()


# --- resume state: no pickles ---------------------------------------------------------------------------------

# What an attacker would put in a shared run directory: a pickle whose loading runs a command.
PAYLOAD_MARK = "payload_ran"


class Payload:
    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


PPO_STATE = dict(iterations=3, save_every=2, ema_decay=0.9, adaptive_kl=True, kl_coef=0.05, kl_horizon=50)


@pytest.fixture
def ppo_checkpoint(tiny_sft, tmp_path):
    """A PPO run with an EMA, an adaptive β and a value head on the policy trunk, interrupted after its checkpoint
    at iteration 2."""
    out = tmp_path / "ppo"
    with pytest.raises(KeyboardInterrupt):
        ppo.run(toy_config(out, tiny_sft, shared_trunk=True, **PPO_STATE), Interrupt(3))
    return out


def test_ppo_resume_state_is_json_and_safetensors(ppo_checkpoint):
    ckpt = ppo_checkpoint / "checkpoint"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "value_head.safetensors", "trainer_state.json"} <= names
    assert not [n for n in names if n.endswith(".pkl") and not n.startswith("random_states_")]
    assert json.loads((ckpt / "trainer_state.json").read_text())["kl_coef"] != PPO_STATE["kl_coef"]  # adapted
    assert set(load_file(str(ckpt / "value_head.safetensors"))) == {"weight", "bias"}


def test_ppo_resume_with_shared_trunk_and_ema_is_exact(ppo_checkpoint, tiny_sft, tmp_path):
    straight = tmp_path / "straight"
    ppo.run(toy_config(straight, tiny_sft, shared_trunk=True, **PPO_STATE), toy_reward)
    ppo.run(toy_config(ppo_checkpoint, tiny_sft, shared_trunk=True, resume=True, **PPO_STATE), toy_reward)
    assert without_time(read_jsonl(ppo_checkpoint / "metrics.jsonl")) == without_time(
        read_jsonl(straight / "metrics.jsonl")
    )
    a, b = (
        load_file(str(straight / "model.safetensors")),
        load_file(str(ppo_checkpoint / "model.safetensors")),
    )
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_a_crafted_pickle_in_a_ppo_checkpoint_is_refused_on_resume(
    ppo_checkpoint, tiny_sft, tmp_path, capsys
):
    mark = tmp_path / PAYLOAD_MARK
    with open(ppo_checkpoint / "checkpoint" / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(Payload(mark), f)
    config = toy_config(ppo_checkpoint, tiny_sft, shared_trunk=True, resume=True, **PPO_STATE)
    with pytest.raises(
        CheckpointError, match=r"custom_checkpoint_0\.pkl.*can run any code in it, so it is not loaded"
    ):
        ppo.run(config, toy_reward)
    assert not mark.exists()
    assert issubclass(CheckpointError, UsageError)  # the CLI prints it as one line, exit 2


def test_a_crafted_optimizer_pickle_is_refused_by_weights_only(ppo_checkpoint, tiny_sft, tmp_path):
    mark = tmp_path / PAYLOAD_MARK
    with open(ppo_checkpoint / "checkpoint" / "optimizer.bin", "wb") as f:
        pickle.dump(Payload(mark), f)
    config = toy_config(ppo_checkpoint, tiny_sft, shared_trunk=True, resume=True, **PPO_STATE)
    with pytest.raises(CheckpointError, match=r"cannot be loaded \(UnpicklingError.*weights_only"):
        ppo.run(config, toy_reward)
    assert not mark.exists()


@pytest.fixture
def interrupted_sft(tiny_gpt, tmp_path, monkeypatch):
    """`sft --max-steps 2 --save-every 1` whose final save failed (a full disk): its checkpoint at step 1 and the
    metrics of steps 1 and 2 stay, as after a kill during the save. Returns the command and its --out."""
    out = tmp_path / "sft"
    args = ["sft", "--model", str(tiny_gpt), "--out", str(out), "--max-steps", "2", "--save-every", "1"]
    args += ["--log-every", "1"]
    with monkeypatch.context() as patch:
        patch.setattr("transformers.PreTrainedModel.save_pretrained", full_disk)
        assert main(args) == 1
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 1
    return args, out


def full_disk(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"trainer_state.json": "{"}, "cannot be read (JSONDecodeError"),
        ({"optimizer.bin": b"PK\x03\x04 cut"}, "cannot be loaded"),
        ({"model.safetensors": b""}, "cannot be loaded (SafetensorError"),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_line(damage, message, interrupted_sft, capsys):
    args, out = interrupted_sft
    for name, content in damage.items():
        path = out / "checkpoint" / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    text = console_text(capsys)
    assert f"error: {out / 'checkpoint'}: " in text and message in text, text
    assert f"Delete {out / 'checkpoint'} to train this stage from its start" in text


# --- a NaN guard that sees the last update --------------------------------------------------------------------


def test_an_overflowing_last_update_saves_nothing_marked_complete(tiny_gpt, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_gpt), "--out", str(out), "--max-steps", "1", "--lr", "1e30"]) == 1
    text = console_text(capsys)
    assert "step 1: the model's weights are no longer usable after the update" in text
    assert "Nothing is saved as finished" in text and "--resume" in text
    assert not (out / "rlhfkit.json").exists() and not (out / "model.safetensors").exists()


def test_ppo_names_the_model_whose_loss_went_non_finite(tiny_sft, tmp_path):
    class NaNValues(ppo.ValueModel):
        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, attention_mask) * float("nan")

    original = ppo.ValueModel
    ppo.ValueModel = NaNValues
    try:
        with pytest.raises(TrainingError, match=r"iteration 1: values \(value model\) = nan"):
            ppo.run(toy_config(tmp_path / "ppo", tiny_sft, iterations=1), toy_reward)
    finally:
        ppo.ValueModel = original


def test_ppo_nan_reward_names_the_reward_model(tiny_sft, tmp_path):
    with pytest.raises(TrainingError, match=r"iteration 1: reward \(reward model\) = nan"):
        ppo.run(toy_config(tmp_path / "ppo", tiny_sft, iterations=1), NaNAt(1))


# --- metrics, steps.json, and errors that are not the user's --------------------------------------------------


def test_a_partial_last_metrics_line_is_repaired_on_resume(interrupted_sft, tiny_gpt, tmp_path, capsys):
    args, out = interrupted_sft
    straight = tmp_path / "straight"
    assert main([*[str(straight) if a == str(out) else a for a in args]]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 5.')  # what a kill mid-write leaves
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert f"{out / 'metrics.jsonl'}:3: dropped a partial last line" in console_text(capsys)
    assert without_time(read_jsonl(out / "metrics.jsonl")) == without_time(
        read_jsonl(straight / "metrics.jsonl")
    )
    assert read_meta(out)["complete"] is True


def test_a_damaged_metrics_line_in_the_middle_is_named(tmp_path):
    from rlhfkit.training import read_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(UsageError, match=rf"{path}:2: not a metrics row"):
        read_rows(path)


def test_an_unexpected_error_is_one_line_with_where_and_debug_shows_the_traceback(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)

    def shape_error(cfg):
        torch.zeros(2, 3) @ torch.zeros(2, 3)

    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", shape_error)
    assert main(["pretrain", "--out", "gpt"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "error: the run failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in err
    assert "tests/test_run_safety.py" in err and "--debug shows the traceback" in err
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # --debug: the exception itself
        main(["pretrain", "--out", "gpt", "--debug"])
    monkeypatch.setenv("RLHFKIT_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["pretrain", "--out", "gpt"])


def test_a_run_error_is_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)

    def fails(cfg):
        raise RunError("what failed, and what is kept")

    monkeypatch.setattr(rlhfkit.stages.pretrain, "run", fails)
    assert main(["pretrain", "--out", "gpt"]) == 1
    assert capsys.readouterr().err == "error: what failed, and what is kept\n"


def test_code_shipped_with_a_model_is_never_run(tiny_gpt, tmp_path, capsys):
    model = tmp_path / "remote"
    import shutil

    shutil.copytree(tiny_gpt, model)
    mark = tmp_path / PAYLOAD_MARK
    (model / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(mark)!r}).touch()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.Evil",
    }
    (model / "config.json").write_text(json.dumps(config))
    main(["generate", "--model", str(model), "--prompt", "你好", "--max-new-tokens", "2"])
    assert not mark.exists()


def test_write_atomic_leaves_the_old_file_when_it_fails(tmp_path):
    path = tmp_path / "steps.json"
    write_atomic(path, "old")

    class Boom(Exception):
        pass

    from rlhfkit.rundir import open_atomic

    with pytest.raises(Boom), open_atomic(path) as f:
        f.write("half of the new")
        raise Boom
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["steps.json"]
