"""What every stage's training loop shares: devices and precision (accelerate), the LR schedule, atomic
checkpoints with resume, and metrics (metrics.jsonl + TensorBoard + a rich progress bar).

The loops themselves live in `stages/`, one readable file per stage; nothing here knows about an algorithm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter
from transformers.utils import logging as hf_logging

from rlhfkit.config import HOW_IT_RUNS
from rlhfkit.console import console  # also imported from here by the stages
from rlhfkit.errors import RunError, UsageError
from rlhfkit.modeling import read_meta
from rlhfkit.rundir import fsync_tree, open_atomic, recover_dir, swap_dirs

CHECKPOINT_DIR = "checkpoint"


class TrainingError(RunError):
    """A run cannot go on (NaN loss, bad state); the message names the step and the quantity."""


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-file bars and notices are noise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*shared tensor.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # a checkpoint's safetensors keep one of two tied tensors (embeddings, LM head); loading ties them again
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(
    mixed_precision: str = "auto", grad_accum: int = 1, cpu: bool | None = None
) -> Accelerator:
    """One Accelerator per stage. 'auto' = bf16 autocast where it is faster: Ampere+ GPUs, and CPUs with native
    bf16 matmuls (AMX / AVX512-BF16, measured 1.7x here); an AVX2-only CPU emulates bf16 ~70x slower than fp32."""
    AcceleratorState._reset_state(True)  # the pipeline runs several stages in one process
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if not cpu:
        # cuDNN's attention kernel gave non-finite gradients in bf16 (torch 2.11, H200: the default pipeline's PPO
        # stopped with NaN at its 30th step; the finite forward hid it) where the left-padded rows attend to nothing;
        # SDPA's memory-efficient and flash kernels, and eager attention, trained through. Measured in
        # benchmarks/gpu_check.sh's runs, 2026-11-26.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if mixed_precision == "fp16" and cpu:
        # accelerate accepts it and trains in fp32 without a word (CPUs have no fp16 autocast)
        raise UsageError(
            "mixed_precision = 'fp16' (--mixed-precision fp16) needs a CUDA GPU, and this run is on the CPU; use "
            "auto (bf16 where the CPU has native bf16, else fp32), bf16 or no"
        )
    if mixed_precision == "auto":
        if cpu:
            mixed_precision = "bf16" if cpu_bf16_is_fast() else "no"
        else:
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        say_auto_precision(mixed_precision, cpu)
    # Every stage counts its schedule in its own optimizer steps. Accelerate's default steps a prepared scheduler once
    # per process at each optimizer step (it assumes the step count was divided by the number of processes), which
    # ran warm-up and decay N times too fast on N processes.
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
    )


_SAID_PRECISION: set[tuple[str, bool]] = set()


def say_auto_precision(choice: str, cpu: bool) -> None:
    """Say once per process what --mixed-precision auto chose: the same seed trains to other numbers in bf16 than in
    fp32, so a run on a CPU with native bf16 must not pass for the fp32 one without a word. (Ranks above 0 print
    nothing: the console is quiet there.)"""
    if (choice, cpu) in _SAID_PRECISION:
        return
    _SAID_PRECISION.add((choice, cpu))
    where = "this CPU" if cpu else "this GPU"
    if choice == "no":
        console.print(f"[precision] --mixed-precision auto: fp32 ({where} has no native bf16)")
    else:
        why = "native bf16: " + "/".join(BF16_CPU_FLAGS) if cpu else "its native half precision"
        console.print(
            f"[precision] --mixed-precision auto: {choice} autocast ({where} has {why}); give --mixed-precision "
            "no for fp32"
        )


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 matmuls (Sapphire Rapids AMX, Cooper Lake / Zen 4)


@functools.cache
def cpu_bf16_is_fast(size: int = 256, repeats: int = 3, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Is bf16 autocast worth it on this CPU? Where the CPU lists its features (Linux), exactly when it has native
    bf16 (BF16_CPU_FLAGS): a timing decided differently from one process to the next on a loaded machine (True
    in 4 of 5 calls on an AVX2-only CPU, where bf16 is emulated at 1/60 of fp32's speed), and the same settings
    then trained in two precisions. Elsewhere, one matmul timed in bf16 and in fp32 (a few ms) decides."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }
    if flags:
        return any(flag in flags for flag in BF16_CPU_FLAGS)

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        a @ a  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        return time.perf_counter() - start

    return seconds(torch.bfloat16) < seconds(torch.float32)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
):
    """Linear warm-up, then cosine decay to min_ratio · lr. A warm-up longer than the run is cut to the run (said):
    the learning rate would otherwise never reach its peak."""
    if warmup_steps > total_steps:
        console.print(
            f"[schedule] --warmup-steps {warmup_steps} is longer than the run's {total_steps} optimizer steps: "
            f"warming up over {total_steps}"
        )
        warmup_steps = total_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95)):
    """AdamW; no weight decay on norms and biases (1-d parameters)."""
    return torch.optim.AdamW(parameter_groups(model, lr, weight_decay), lr=lr, betas=betas)


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The trainable parameters of `model` as AdamW groups: matrices decayed, norms and biases (1-d) not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def clip_gradients(accelerator: Accelerator, params, max_norm: float) -> torch.Tensor:
    """Clip the gradients' global norm to max_norm; returns the norm before clipping. max_norm ≤ 0: no clipping."""
    return accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))


def check_finite(
    step: int, accelerator: Accelerator | None = None, unit: str = "step", **values: float
) -> None:
    """Stop with a message naming the step and the quantity instead of training on NaN. Name each value by what it
    is and whose it is (PPO: "policy loss (policy)", "value loss (value model)", "reward (reward model)").

    Given the `accelerator` of a run in several processes, every process stops when any one sees a non-finite
    value (one process stopping alone would leave the others waiting for it in the next gradient all-reduce)."""
    bad = {name: not math.isfinite(value) for name, value in values.items()}
    if accelerator is not None and accelerator.num_processes > 1:
        flags = torch.tensor([float(b) for b in bad.values()], device=accelerator.device)
        anywhere = accelerator.reduce(flags, "sum").tolist()
        bad = {name: flag > 0 for name, flag in zip(bad, anywhere)}
    for name, value in values.items():
        if bad[name]:
            shown = value if not math.isfinite(value) else "non-finite in another process"
            raise TrainingError(f"{unit} {step}: {name} = {shown}; stopping. {_AFTER_NAN}")


_AFTER_NAN = (
    "Nothing is saved as finished; checkpoints already written (--save-every) are kept — lower the learning rate "
    "or check the data, then run again with --resume (it takes the new --lr)"
)


@torch.no_grad()
def check_weights(model: torch.nn.Module, step: int, what: str, unit: str = "step") -> None:
    """After an update, before its weights are saved: stop if any weight is NaN/inf or so large that its square
    overflows float32 (an lr of 1e30 gives weights of 1e28 that are finite, and a model whose RMSNorm reads inf
    and outputs zeros: a loss of log(vocab) for ever, which no loss check would notice)."""
    for name, param in model.named_parameters():
        norm = torch.linalg.vector_norm(param.detach().float())
        if not torch.isfinite(norm):
            largest = param.detach().float().abs().nan_to_num(nan=float("inf")).max().item()
            raise TrainingError(
                f"{unit} {step}: the {what}'s weights are no longer usable after the update ({name}: norm "
                f"{norm.item()}, largest |w| {largest:.3g}); stopping. {_AFTER_NAN}"
            )


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: accelerate's state (model, optimizers, schedulers, RNG) + our own JSON, written atomically.


def save_checkpoint(
    accelerator: Accelerator,
    out_dir: str | Path,
    step: int,
    extra: dict | None = None,
    settings: dict | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write to a temp dir, flush it to disk, then swap it in for the old checkpoint in one step: a kill at any
    point keeps the last good one. The run's `settings` go with it, so a resume with other settings can say what
    changed.

    Nothing that loading would unpickle is ours: the model weights are safetensors, `extra` (counters, β) goes to
    trainer_state.json and `tensors` ({name: state dict}: an EMA, a value head) to NAME.safetensors. Only
    accelerate's optimizer, scheduler and RNG state are pickles, and it loads those with weights_only=True."""
    out_dir = Path(out_dir)
    final, tmp = out_dir / CHECKPOINT_DIR, out_dir / f".{CHECKPOINT_DIR}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a run killed mid-save
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            for name, state in (tensors or {}).items():
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in state.items()},
                    str(tmp / f"{name}.safetensors"),
                )
            state = {
                "step": step,
                **(extra or {}),
                **({"settings": settings} if settings is not None else {}),
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, ensure_ascii=False, indent=2))
            fsync_tree(tmp)
            swap_dirs(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as err:  # a full disk, a failing device
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(
            f"step {step}: writing the checkpoint to {final} failed ({_one_line(err)}); the checkpoint before it "
            "is kept. Free space (or fix the disk), then run again with --resume"
        ) from err
    accelerator.wait_for_everyone()


class CheckpointError(TrainingError, UsageError):
    """A checkpoint that cannot be resumed from (damaged, pickled by someone else, or no longer fitting the run's
    settings): the user decides what to do with it, so the CLI exits 2."""


def load_checkpoint(
    accelerator: Accelerator, out_dir: str | Path, scheduler=None, settings: dict | None = None
) -> dict | None:
    """Restore everything `save_checkpoint` wrote; None when there is no checkpoint to resume from.

    The learning rates are this run's: given the `scheduler`, a run resumed with a new --lr (say, after a NaN)
    continues the schedule from the checkpoint's step with the new peak, instead of the checkpoint's. Given this
    run's `settings`, those that differ from the checkpoint's are named, and returned under "changed" ({name:
    the checkpoint's value}) for the saved model to record; a checkpoint they no longer fit is refused. The
    `tensors` it was saved with come back under "tensors" ({name: state dict})."""
    ckpt = Path(out_dir) / CHECKPOINT_DIR
    recover_dir(ckpt)
    if not (ckpt / "trainer_state.json").exists():
        console.print(f"[resume] no checkpoint in {out_dir}: training from the start")
        return None
    start_over = f"Delete {ckpt} to train this stage from its start"
    # A pickle runs whatever code it holds when loaded: accelerate's own (RNG state) it loads with weights_only
    # =True; any other is refused unread (older rlhfkit versions pickled the PPO state as custom_checkpoint_N.pkl).
    pickles = sorted(p.name for p in ckpt.glob("*.pkl") if not p.name.startswith("random_states_"))
    if pickles:
        raise CheckpointError(
            f"{ckpt}: holds {', '.join(pickles)}, pickled state that rlhfkit no longer writes (an older version's, "
            f"or put there by someone else); loading a pickle can run any code in it, so it is not loaded. {start_over}"
        )
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        tensors = {p.stem: load_file(str(p)) for p in sorted(ckpt.glob("*.safetensors")) if p.stem != "model"}
        tensors = {
            k: v for k, v in tensors.items() if not k.startswith("model_")
        }  # accelerate's extra models
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(
            f"{ckpt}: cannot be read ({_one_line(err)}); it is damaged. {start_over}"
        ) from None
    before = state.get("settings")
    changed = {k: before[k] for k in settings or {} if k in (before or {}) and before[k] != settings[k]}
    listed = ", ".join(f"{k} {v!r} (now {settings[k]!r})" for k, v in changed.items())
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the torch scheduler
    configured = list(scheduler.base_lrs) if scheduler is not None else None
    try:
        accelerator.load_state(str(ckpt))
    except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        # torch: other parameter groups, missing keys, other shapes — or a truncated file, garbage, a payload
        fits = not any(
            s in str(err) for s in ("size mismatch", "Missing key", "Unexpected key", "parameter group")
        )
        if fits or isinstance(err, (OSError, EOFError, pickle.UnpicklingError, SafetensorError)):
            raise CheckpointError(
                f"{ckpt}: cannot be loaded ({_one_line(err)}); it is damaged, or holds more than tensors "
                f"(weights_only refuses code). {start_over}"
            ) from None
        if changed:
            raise CheckpointError(
                f"{ckpt}: it was written with {listed}, and does not fit a run with these settings. Resume with "
                f"the settings it was written with, or delete {ckpt} to train this stage from its start"
            ) from None
        if "parameter group" in str(err):
            raise CheckpointError(
                f"{ckpt}: its optimizer state does not fit this run's optimizer ({err}); it was written by another "
                f"rlhfkit version or with other trainable parameters. {start_over}"
            ) from None
        raise CheckpointError(
            f"{ckpt}: does not fit this run's models ({_one_line(err)}); it was written for another model. {start_over}"
        ) from None
    if changed:
        console.print(f"[resume] continuing {ckpt}, written with {listed}; the saved model records both")
    if scheduler is not None and list(scheduler.base_lrs) != configured:
        if "lr" not in changed:  # a checkpoint without its settings
            console.print(
                f"[resume] peak learning rate {scheduler.base_lrs} → {configured}, as configured now"
            )
        scheduler.base_lrs = configured
        for group, peak, factor in zip(scheduler.optimizer.param_groups, configured, scheduler.lr_lambdas):
            group["lr"] = peak * factor(scheduler.last_epoch)
    return {**state, "changed": changed, "tensors": tensors}


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"


def remove_checkpoint(out_dir: str | Path) -> None:
    """Once the final model is saved the resume state is no longer needed (it doubles the disk use)."""
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# What a finished stage records of its settings, and what --resume does with a finished directory.


def settings_of(cfg) -> dict:
    """A stage's settings as saved in its rlhfkit.json (less `config.HOW_IT_RUNS`: how it ran, not what it made)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in HOW_IT_RUNS}


def provenance(cfg, changed: dict) -> dict:
    """What a saved model records of how it was made: its settings, and where a resumed run changed some, the
    values the checkpoint it continued was written with ({name: value})."""
    return {"settings": settings_of(cfg), **({"settings_before_resume": changed} if changed else {})}


def finished_earlier(cfg, stage: str) -> bool:
    """--resume on a finished directory: nothing to do. Settings that differ from the finished run's are named,
    so that nobody takes the old model for one trained with the new settings."""
    if not (cfg.resume and is_finished(cfg.out)):
        return False
    before, now = read_meta(cfg.out).get("settings") or {}, settings_of(cfg)
    changed = [f"{k} {before[k]!r} (now {now[k]!r})" for k in now if k in before and before[k] != now[k]]
    note = (
        f"; it was made with {', '.join(changed)}: give another --out to train with these" if changed else ""
    )
    console.print(f"[{stage}] {cfg.out} is already finished; nothing to do{note}")
    return True


def is_finished(out: str | Path) -> bool:
    """A stage directory whose final model was written (the pipeline's --resume skips it)."""
    return bool(read_meta(out).get("complete"))


# ---------------------------------------------------------------------------------------------------------------
# Metrics: one JSON line per logged step, the same scalars in TensorBoard, and a live progress bar.


class Tracker:
    """metrics.jsonl + TensorBoard + rich progress for one stage. Use as a context manager."""

    def __init__(
        self, out_dir: str | Path, stage: str, total_steps: int, start_step: int = 0, enabled: bool = True
    ):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.total_steps = total_steps
        self.enabled = enabled
        self.start_time = time.time()
        self.writer = None
        self.progress = None
        self.start_step = start_step

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # this stage's peak, not an earlier one's in the same process
        # A resumed run appends: metrics.jsonl keeps the whole history, rows after the checkpoint are dropped.
        self._truncate_metrics_after(self.start_step)
        self.metrics_file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.writer = SummaryWriter(
            log_dir=str(self.out_dir / "tensorboard"), purge_step=self.start_step or None
        )
        self.progress = Progress(
            TextColumn(f"[bold]{self.stage:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.stage, total=self.total_steps, completed=self.start_step, status=""
        )
        return self

    def _truncate_metrics_after(self, step: int) -> None:
        """Rows logged after the checkpoint will be logged again by the resumed run. A last line cut short by a
        kill mid-write is dropped with a word; a bad line anywhere else is an error naming it."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.out_dir / name
            if path.exists():
                rows = read_rows(path, repair=True)
                kept = [line for line, row in rows if row["step"] <= step]
                with open_atomic(path) as f:
                    f.write("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float], show: tuple[str, ...] = ()) -> None:
        """Record scalars for `step`; `show` picks the few that the progress bar displays."""
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.start_time, 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        row["peak_memory_mb"] = peak_memory_mb()  # how it ran, as the time: not compared between runs
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        for key, value in metrics.items():
            self.writer.add_scalar(f"{self.stage}/{key}", float(value), step)
        self.writer.flush()  # on disk now, as metrics.jsonl: a killed run's resume re-logs only what follows
        status = "  ".join(f"{k} {float(metrics[k]):.3g}" for k in show if k in metrics)
        self.progress.update(self.task, status=status)

    def advance(self, step: int) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step)

    def text(self, step: int, tag: str, text: str) -> None:
        """Sample answers etc. in TensorBoard's text tab."""
        if self.enabled:
            self.writer.add_text(f"{self.stage}/{tag}", text, step)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self.progress.stop()
        self.writer.close()
        self.metrics_file.close()


def peak_memory_mb() -> float:
    """Peak memory so far, in MiB: on a GPU the tensors allocated since this stage began
    (torch.cuda.max_memory_allocated), on a CPU the process's peak resident set (which includes earlier stages of
    one pipeline process)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [row for _, row in read_rows(path)]


def read_rows(path: Path, repair: bool = False) -> list[tuple[str, dict]]:
    """(line, row) of a metrics.jsonl / samples.jsonl. A last line that is not whole JSON is what a kill
    mid-write leaves: it is left out (said when `repair`, as the file is then rewritten without it)."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n")]
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("no step")
        except ValueError:
            if all(not rest.strip() for rest in lines[number:]):  # the last line: cut short by a kill
                if repair:
                    console.print(
                        f"[resume] {path}:{number}: dropped a partial last line (a run killed mid-write)"
                    )
                break
            raise UsageError(
                f"{path}:{number}: not a metrics row ({line[:60]!r}); the file was edited or damaged. Fix or "
                f"delete that line (or the file, losing the curve) and run again"
            ) from None
        rows.append((line, row))
    return rows


def batch_indices(n_items: int, batch_size: int, batch_number: int, seed: int) -> list[int]:
    """Items of the `batch_number`-th batch of an endless stream of seeded shuffles (one per epoch).

    A pure function of its arguments, so a resumed run (or another process, given its own batch numbers)
    reads exactly the batches the uninterrupted run would have read.
    """
    start = batch_number * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_items)
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), n_items - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


def steps_for_epochs(epochs: float, n_rows: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps for `epochs` passes over `n_rows`: each step reads batch_size × grad_accum rows in every
    process (`microbatch_numbers`), so the global batch is that times the number of processes (WORLD_SIZE, set by
    torchrun / accelerate launch; read before the stage makes its Accelerator)."""
    processes = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return max(1, math.ceil(epochs * n_rows / (batch_size * grad_accum * processes)))


def microbatch_numbers(step: int, grad_accum: int, accelerator: Accelerator) -> list[int]:
    """Global batch numbers this process reads at optimizer step `step` (accumulation × data parallelism)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    return [(step * grad_accum + m) * world + rank for m in range(grad_accum)]


def sync_gradients_if(accelerator: Accelerator, model, last_microbatch: bool):
    """Skip the DDP all-reduce on all but the last micro-batch of an accumulated step."""
    return contextlib.nullcontext() if last_microbatch else accelerator.no_sync(model)
