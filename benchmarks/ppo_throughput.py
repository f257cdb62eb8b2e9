"""PPO throughput: the rollout and the update measured separately, rlhfkit side by side with TRL.

    .venv/bin/python benchmarks/ppo_throughput.py [--no-peers] [--iterations N] [--sizes default,4x]

Everything runs on the same random-init models, tokenizer and prompts, with the same settings (`Settings`):
  1. sampling — HF `model.generate(do_sample=True)` vs rlhfkit `sample(fast=True)` (the lean Llama loop,
     `FastSampler`) vs `sample(compiled=True)` (its decoding step and token pick under torch.compile; the first
     call, which compiles, is timed apart) vs `sample(fast=False)` (the same Python loop over the HF forward + KV
     cache): generated tokens/s and ms per decoding step at batch 16 and 64; and FastSampler's logits vs the HF forward's for the
     same prefixes (max |Δ|), which is what "same outputs in distribution" rests on.
  2. training — episodes/s and generated tokens/s of the rollout (the sampling call) and of score+update (RM,
     value, reference and old-policy forwards, advantages, the clipped minibatch updates) for
       rlhfkit PPO and RLOO (`rlhfkit.stages.ppo.run`, in this process),
       TRL 1.x RLOOTrainer and TRL 0.25 PPOTrainer (`benchmarks/peers/*.py`, each in its own virtualenv under
       .bench-venvs/, created here on first use; not dependencies of rlhfkit).
     The first iteration of each run is warm-up and not counted; `peers/common.py` defines the timing.
Models: Llama at rlhfkit's default size (hidden 128, 4 layers, 4 heads, MLP 352, tied embeddings) and one ~4×
larger (hidden 256, MLP 704), a byte-level BPE tokenizer (vocab 3000) trained on the world's corpus, and reward /
value models of the same architecture with a scalar head. Random-init models almost never emit EOS, so nearly
every response runs to max_new_tokens, for every system alike (the mean response length is reported).
Writes benchmarks/results/ppo_throughput.json (all figures, machine, versions, settings) and prints tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from peers.common import PhaseClock, summarize

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "benchmarks" / "peers"
WORK = ROOT / ".bench-venvs"  # gitignored: peer venvs, benchmark models, scratch run dirs
RESULTS = ROOT / "benchmarks" / "results" / "ppo_throughput.json"
console = Console(width=150)

SIZES = {  # (hidden, layers, heads, intermediate)
    "default": (128, 4, 4, 352),
    "4x": (256, 4, 4, 704),
    "100m": (768, 12, 12, 2048),  # ~87M parameters: for a GPU (--parts training --no-peers --precision bf16)
}


@dataclass(frozen=True)
class Settings:
    """The same for every system."""

    batch_size: int = 64  # episodes per rollout (RLOO: batch_size / rloo_k prompts × rloo_k samples)
    mini_batch_size: int = 16  # episodes per optimizer step
    ppo_epochs: int = 2  # passes over each rollout
    max_new_tokens: int = 48
    temperature: float = 1.0  # plain sampling: top_p 1, no top_k, no min_new_tokens
    kl_coef: float = 0.05
    vf_coef: float = 0.5
    cliprange: float = 0.2
    rloo_k: int = 4
    lr: float = 1e-4
    missing_eos_penalty: float = 1.0
    precision: str = "fp32"  # no bf16/autocast anywhere (rlhfkit mixed_precision=no, TRL bf16=False)
    device: str = "cpu"
    seed: int = 0


@dataclass(frozen=True)
class Peer:
    name: str  # venv directory under .bench-venvs/
    system: str
    algo: str
    worker: str  # script in benchmarks/peers/
    requirements: tuple[str, ...]
    why: str


PEERS = [
    Peer(
        "trl-old",
        "TRL PPOTrainer",
        "ppo",
        "trl_ppo.py",
        ("torch==2.13.0", "trl==0.25.1", "transformers<5"),
        "0.25.1 is the last TRL whose PPOTrainer is a regular `trl.PPOTrainer` (0.26 moved it to "
        "trl.experimental, 1.x dropped it); it predates transformers 5, so transformers<5 (4.57)",
    ),
    Peer(
        "trl1",
        "TRL RLOOTrainer",
        "rloo",
        "trl_rloo.py",
        ("torch==2.13.0", "trl>=1,<2"),
        "latest TRL 1.x from PyPI, with the transformers it resolves",
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# Shared models, tokenizer and prompts (under .bench-venvs/models, rebuilt only when missing).


def prepare_assets(sizes: list[str]) -> dict:
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.modeling import ModelSize, build_default_model
    from rlhfkit.tokenizer import load_tokenizer, train_tokenizer
    from rlhfkit.world import pretrain_corpus, split_prompts

    root = WORK / "models"
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(pretrain_corpus(n_docs=1000), vocab_size=3000).save_pretrained(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    prompts_file = root / "prompts.jsonl"
    if not prompts_file.exists():
        rows = [json.dumps({"prompt": t.prompt}, ensure_ascii=False) for t in split_prompts()["rl"]]
        prompts_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assets = {"tokenizer": tok_dir, "prompts": prompts_file, "models": {}}
    for name in sizes:
        hidden, layers, heads, mlp = SIZES[name]
        policy_dir, reward_dir = root / name / "policy", root / name / "reward"
        if not (reward_dir / "config.json").exists():
            size = ModelSize(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=mlp)
            policy = build_default_model(
                len(tokenizer), size, tokenizer.pad_token_id, tokenizer.eos_token_id, seed=0
            )
            policy.save_pretrained(policy_dir)
            tokenizer.save_pretrained(policy_dir)
            config = policy.config
            config.num_labels = 1
            torch.manual_seed(1)
            AutoModelForSequenceClassification.from_config(config).save_pretrained(reward_dir)
            tokenizer.save_pretrained(reward_dir)
        assets["models"][name] = {"policy": policy_dir, "reward": reward_dir}
    return assets


def model_info(policy_dir: Path) -> dict:
    config = json.loads((policy_dir / "config.json").read_text())
    from rlhfkit.modeling import load_causal_lm

    n = sum(p.numel() for p in load_causal_lm(policy_dir).parameters())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    return {**{k: config[k] for k in keys}, "tie_word_embeddings": config["tie_word_embeddings"], "params": n}


# ---------------------------------------------------------------------------------------------------------------
# 1. Sampling microbenchmark.


@torch.no_grad()
def bench_sampling(
    policy_dir: Path, tokenizer, prompts: list[str], batch: int, s: Settings, reps: int
) -> list:
    from rlhfkit.batching import encode_prompts, pad
    from rlhfkit.modeling import load_causal_lm
    from rlhfkit.rollout import sample

    model = load_causal_lm(policy_dir).eval()
    ids = encode_prompts(tokenizer, prompts[:batch], chat=True)
    input_ids, mask = pad(ids, tokenizer.pad_token_id, left=True)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def hf_generate(seed):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        new = out[:, input_ids.shape[1] :]
        return new.shape[1], float((new == eos).any(1).float().mean())

    def rlhfkit_sample(fast, compiled=False):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            b = sample(
                model, ids, eos, pad, s.max_new_tokens, s.temperature, 1.0, g, fast=fast, compiled=compiled
            )
            return b.responses.shape[1], float(b.ended.float().mean())

        return run

    methods = {
        "HF model.generate": hf_generate,
        "rlhfkit sample(fast=True)": rlhfkit_sample(True),
        "rlhfkit sample(compiled=True)": rlhfkit_sample(True, compiled=True),
        "rlhfkit sample(fast=False)": rlhfkit_sample(False),
    }
    first_call: dict[str, float] = {}  # rep 0, not counted: includes torch.compile's compilation
    times: dict[str, list[float]] = {m: [] for m in methods}
    steps: dict[str, list[int]] = {m: [] for m in methods}
    ended: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps + 1):  # round-robin so drift hits every method alike; rep 0 is warm-up
        for name, fn in methods.items():
            start = time.perf_counter()
            n, e = fn(1000 + rep)
            elapsed = time.perf_counter() - start
            if not rep:
                first_call[name] = elapsed
            else:
                times[name].append(elapsed)
                steps[name].append(n)
                ended[name].append(e)
    rows = []
    for name in methods:
        t = statistics.median(times[name])
        n = statistics.median(steps[name])
        rows.append(
            {
                "method": name,
                "batch": batch,
                "seconds_median": t,
                "decode_steps": n,
                "tokens_per_s": batch * n / t,
                "ms_per_step": 1000 * t / n,
                "eos_fraction": statistics.mean(ended[name]),
                "repeats": reps,
                "first_call_seconds": first_call[name],
            }
        )
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_generate"] = row["tokens_per_s"] / base
    return rows


@torch.no_grad()
def logits_check(policy_dir: Path, tokenizer, prompts: list[str], s: Settings, steps: int = 8) -> dict:
    """FastSampler vs the HF model on the same prefixes: max |Δlogit| at the prefill and `steps` decode steps, and
    whether greedy decoding (rlhfkit `sample(temperature=0)` vs `generate(do_sample=False)`) gives the same tokens.
    Sampling itself is the same rule in both (multinomial over softmax(logits / T)), so equal logits mean the
    same output distribution."""
    from rlhfkit.batching import encode_prompts, pad
    from rlhfkit.fast_sampler import FastSampler
    from rlhfkit.modeling import load_causal_lm, position_ids
    from rlhfkit.rollout import sample

    model = load_causal_lm(policy_dir).eval()
    prompt_ids = encode_prompts(tokenizer, prompts[:64], chat=True)
    ids, mask = pad(prompt_ids[:8], tokenizer.pad_token_id, left=True)
    step = FastSampler.for_model(model).stepper(ids, mask, steps)
    fast = step(None)
    g = torch.Generator().manual_seed(0)
    diffs, scale = [], 0.0
    for k in range(steps + 1):
        ref = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1].float()
        diffs.append(float((fast - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        if k == steps:
            break
        token = torch.multinomial(torch.softmax(ref, -1), 1, generator=g).squeeze(1)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        fast = step(token)

    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, mask = pad(prompt_ids, pad_id, left=True)
    hf = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=s.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad_id,
    )[:, ids.shape[1] :]
    mine = sample(model, prompt_ids, eos, pad_id, s.max_new_tokens, temperature=0.0, fast=True).responses
    width = min(hf.shape[1], mine.shape[1])
    same = (hf[:, :width] == mine[:, :width]).all(1)
    return {
        "max_abs_diff": max(diffs),
        "max_abs_logit": scale,
        "positions_checked": steps + 1,
        "rows": 8,
        "greedy_rows_identical": f"{int(same.sum())}/{len(same)}",
        "greedy_tokens": width,
    }


# ---------------------------------------------------------------------------------------------------------------
# 2. Training throughput: rlhfkit in this process, TRL in its venvs.


def run_rlhfkit(algo: str, model: dict, prompts: Path, s: Settings, iterations: int, warmup: int) -> dict:
    from rlhfkit.config import PPOConfig, preset_config
    from rlhfkit.stages import ppo

    clock = PhaseClock()
    real_sample, real_tracker = ppo.sample, ppo.Tracker

    def timed_sample(*args, **kwargs):
        start = time.perf_counter()
        batch = real_sample(*args, **kwargs)
        end = time.perf_counter()
        clock.add_rollout(start, end, len(batch.sequences), int(batch.response_mask.sum()))
        return batch

    class TimedTracker(real_tracker):
        def log(self, step, metrics, show=()):  # called once per iteration (log_every=1), after the updates
            clock.end_iteration()
            super().log(step, metrics, show)

    with tempfile.TemporaryDirectory(dir=WORK) as out:
        cfg = preset_config(
            PPOConfig,
            out=out,
            policy=str(model["policy"]),
            reward_model=str(model["reward"]),
            prompts=str(prompts),
            algo=algo,
            rloo_k=s.rloo_k,
            iterations=warmup + iterations,
            batch_size=s.batch_size,
            mini_batch_size=s.mini_batch_size,
            ppo_epochs=s.ppo_epochs,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=1.0,
            kl_coef=s.kl_coef,
            vf_coef=s.vf_coef,
            cliprange=s.cliprange,
            cliprange_value=s.cliprange,
            lr=s.lr,
            missing_eos_penalty=s.missing_eos_penalty,
            mixed_precision="bf16" if s.precision == "bf16" else "no",
            seed=s.seed,
            log_every=1,
            save_every=0,
            sample_every=0,
        )
        ppo.sample, ppo.Tracker = timed_sample, TimedTracker
        try:
            ppo.run(cfg)
        finally:
            ppo.sample, ppo.Tracker = real_sample, real_tracker
    return {"status": "ok", **summarize(clock.iterations(), warmup)}


def ensure_venv(peer: Peer) -> Path:
    """.bench-venvs/<name> with the peer's requirements; reused when its stamp matches (idempotent)."""
    venv = WORK / peer.name
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(peer.requirements)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    console.print(f"[peers] creating {venv} with {' '.join(peer.requirements)} (a few minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", *peer.requirements],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(peer.requirements)} failed: {last_lines(pip.stderr)}")
    stamp.write_text(wanted)
    return python


def run_peer(
    peer: Peer, model: dict, prompts: Path, s: Settings, iterations: int, warmup: int, timeout: int
) -> dict:
    try:
        python = ensure_venv(peer)
    except Exception as e:  # no network, no wheel for this Python, ...: say so in the table
        return {"status": "failed", "error": f"venv: {e}"}
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        result_file = Path(scratch) / "result.json"
        command = [
            str(python),
            str(PEERS_DIR / peer.worker),
            *("--policy", str(model["policy"]), "--reward", str(model["reward"]), "--prompts", str(prompts)),
            *("--workdir", str(Path(scratch) / "run"), "--result", str(result_file)),
            *("--iterations", str(warmup + iterations), "--batch-size", str(s.batch_size)),
            *("--mini-batch-size", str(s.mini_batch_size), "--ppo-epochs", str(s.ppo_epochs)),
            *("--max-new-tokens", str(s.max_new_tokens), "--temperature", str(s.temperature)),
            *("--kl-coef", str(s.kl_coef), "--vf-coef", str(s.vf_coef), "--cliprange", str(s.cliprange)),
            *("--rloo-k", str(s.rloo_k), "--lr", str(s.lr), "--seed", str(s.seed)),
            *("--missing-eos-penalty", str(s.missing_eos_penalty)),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["TRL_EXPERIMENTAL_SILENCE"] = "1"
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout} s"}
        if not result_file.exists():
            return {"status": "failed", "error": f"exit {proc.returncode}: {last_lines(proc.stderr)}"}
        result = json.loads(result_file.read_text())
    if result["status"] != "ok":
        return result
    rates = summarize(result.pop("iterations"), warmup)
    return {**result, **rates}


def source_state() -> dict:
    """The commit measured, and the files under src/ that differed from it (the tree may be shared)."""

    def git(*args):
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_src": changed.splitlines() if changed else []}


def last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-600:]


class OtherLoad:
    """Cores that *other* processes kept busy during a measurement, on average (Linux /proc/stat minus this
    process and its children). This machine may be shared; a measurement with other_load > 0.2 is suspect."""

    def __enter__(self) -> OtherLoad:
        self.cores = None
        self.start = (time.perf_counter(), _busy_cpu_s(), _own_cpu_s())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.perf_counter(), _busy_cpu_s(), _own_cpu_s()
        if busy is not None and self.start[1] is not None:
            other = (busy - self.start[1]) - (own - self.start[2])
            self.cores = max(0.0, other / (wall - self.start[0]))


def wait_for_quiet(max_wait: float, threshold: float = 0.2) -> float:
    """Wait up to `max_wait` s until other processes use < `threshold` cores (2 s probes); returns the wait."""
    start = time.perf_counter()
    while True:
        with OtherLoad() as probe:
            time.sleep(2)
        waited = time.perf_counter() - start
        if probe.cores is None or probe.cores < threshold:
            return waited
        if waited >= max_wait:
            console.print(f"[yellow]other processes still use {probe.cores:.1f} cores; measuring anyway")
            return waited
        time.sleep(3)


def _busy_cpu_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------------------------------
# Report.


def print_tables(report: dict) -> None:
    if report["sampling"]:
        console.print(sampling_table(report))
        for name, check in report["logits_check"].items():
            console.print(
                f"FastSampler vs HF forward, {name} model: max |Δlogit| = {check['max_abs_diff']:.1e} "
                f"(|logit| ≤ {check['max_abs_logit']:.2f}; {check['positions_checked']} positions × {check['rows']} rows); "
                f"greedy {check['greedy_tokens']} tokens identical to generate in {check['greedy_rows_identical']} rows"
            )
    if report["training"]:  # --parts prints only the tables it measured
        console.print(training_table(report))
    for line in report["targets"]["summary"]:
        console.print(line)
    loads = [r.get("other_load") or 0.0 for r in report["sampling"] + report["training"]]
    if max(loads, default=0.0) > 0.2:
        console.print(
            f"[yellow]warning: other processes used up to {max(loads):.1f} of {report['machine']['cpu_cores']} cores during "
            "some measurements (column 'other load'); those figures are low and noisy — rerun on an idle machine"
        )


def sampling_table(report: dict) -> Table:
    settings, machine = report["settings"], report["machine"]
    table = Table(
        title=f"Sampling: generated tokens/s (median of {settings['sampling_repeats']}), max_new_tokens "
        f"{settings['max_new_tokens']}, T=1, fp32, {machine['torch_threads']} threads"
    )
    columns = (
        "model",
        "batch",
        "method",
        "tokens/s",
        "ms/step",
        "× generate",
        "first call s",
        "EOS rows",
        "other load",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for row in report["sampling"]:
        table.add_row(
            row["model"],
            str(row["batch"]),
            row["method"],
            f"{row['tokens_per_s']:,.0f}",
            f"{row['ms_per_step']:.2f}",
            f"{row['speedup_vs_generate']:.2f}",
            f"{row['first_call_seconds']:.1f}",
            f"{row['eos_fraction']:.0%}",
            load_cell(row["other_load"]),
        )
    return table


def training_table(report: dict) -> Table:
    settings = report["settings"]
    table = Table(
        title=f"Training: episodes/s (generated tokens/s) per phase; {settings['batch_size']} episodes/iteration, "
        f"minibatch {settings['mini_batch_size']}, {settings['ppo_epochs']} epochs, median iteration of "
        f"{settings['iterations_timed']} iterations after {settings['warmup']} warm-up"
    )
    columns = (
        "model",
        "system",
        "rollout",
        "score+update",
        "total",
        "s/iter",
        "resp. len",
        "other load",
        "notes",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "system", "notes") else "right")
    for row in report["training"]:
        if row["status"] != "ok":
            dashes = ["—"] * 5
            table.add_row(
                row["model"],
                row["system"],
                *dashes,
                load_cell(row.get("other_load")),
                f"[red]did not run: {row['error']}",
            )
            continue
        eps, tok = row["episodes_per_s"], row["tokens_per_s"]
        cells = [f"{eps[p]:.1f} ({tok[p]:,.0f})" for p in ("rollout", "update", "total")]
        shown = {
            k: v for k, v in row.get("trl_reported", {}).items() if k in ("eps", "train_samples_per_second")
        }
        notes = ", ".join(f"TRL's {k} {v:.3g} (incl. warm-up)" for k, v in shown.items())
        table.add_row(
            row["model"],
            row["system"],
            *cells,
            f"{row['s_per_iteration']['total']:.2f}",
            f"{row['mean_response_tokens']:.1f}",
            load_cell(row.get("other_load")),
            notes,
        )
    return table


def load_cell(cores: float | None) -> str:
    if cores is None:
        return "?"
    return f"[yellow]{cores:.2f}" if cores > 0.2 else f"{cores:.2f}"


def targets(report: dict) -> dict:
    out: dict = {"sampling_3x_generate": {}, "faster_than_peers": {}, "summary": []}
    for row in report["sampling"]:
        if row["method"] in ("rlhfkit sample(fast=True)", "rlhfkit sample(compiled=True)"):
            key = f"{row['model']} batch {row['batch']}, {row['method'].removeprefix('rlhfkit ')}"
            out["sampling_3x_generate"][key] = {
                "speedup": row["speedup_vs_generate"],
                "met": row["speedup_vs_generate"] >= 3,
            }
            out["summary"].append(
                f"target ≥3× generate, {key}: {row['speedup_vs_generate']:.2f}× — "
                f"{'met' if row['speedup_vs_generate'] >= 3 else 'NOT met'}"
            )
    ok = {(r["model"], r["system"]): r for r in report["training"] if r["status"] == "ok"}
    for (model, system), peer in ok.items():
        if system.startswith("rlhfkit"):
            continue
        for mine in ("rlhfkit ppo", "rlhfkit rloo"):
            if (model, mine) not in ok:
                continue
            ratio = ok[(model, mine)]["episodes_per_s"]["total"] / peer["episodes_per_s"]["total"]
            key = f"{model}: {mine} vs {system}"
            same = mine.endswith(peer["algo"])
            out["faster_than_peers"][key] = {"ratio": ratio, "met": ratio > 1, "same_algorithm": same}
            if same:
                out["summary"].append(
                    f"target faster than {system}, {model}: {mine} is {ratio:.2f}× its episodes/s — "
                    f"{'met' if ratio > 1 else 'NOT met'}"
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per training run")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up iterations before them (not counted)")
    parser.add_argument("--no-peers", action="store_true", help="skip TRL (no venvs, no subprocesses)")
    parser.add_argument("--sizes", default="default,4x", help="comma-separated: default, 4x, 100m")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="rlhfkit's training precision (bf16 autocast)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per sampling measurement")
    parser.add_argument("--parts", default="sampling,training", help="comma-separated: sampling, training")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="before each measurement, wait up to this many seconds for other processes to leave the CPU",
    )
    parser.add_argument("--peer-timeout", type=int, default=600, help="seconds per peer run")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for every system (0 = torch's default: the cores)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="JSON file to write")
    args = parser.parse_args()
    sizes = [x for x in args.sizes.split(",") if x]
    parts = {x for x in args.parts.split(",") if x}
    s = Settings(precision=args.precision, device="cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    WORK.mkdir(exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the same for the peers (inherited)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the peers' torch reads it at start
    torch.manual_seed(s.seed)

    from rlhfkit.tokenizer import load_tokenizer

    assets = prepare_assets(sizes)
    tokenizer = load_tokenizer(assets["tokenizer"])
    prompts = [json.loads(line)["prompt"] for line in assets["prompts"].read_text().splitlines() if line]
    report: dict = {
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "gpu": torch.cuda.is_available(),
        },
        "rlhfkit_source": source_state(),
        "settings": {
            **dataclasses.asdict(s),
            "iterations_timed": args.iterations,
            "warmup": args.warmup,
            "sampling_batches": [16, 64],
            "sampling_repeats": args.repeats,
            "prompts": len(prompts),
        },
        "models": {name: model_info(assets["models"][name]["policy"]) for name in sizes},
        "sampling": [],
        "logits_check": {},
        "training": [],
        "peers": {},
    }

    for name in sizes if "sampling" in parts else []:
        policy_dir = assets["models"][name]["policy"]
        report["logits_check"][name] = logits_check(policy_dir, tokenizer, prompts, s)
        for batch in (16, 64):
            console.print(f"[sampling] {name} model, batch {batch}")
            wait_for_quiet(args.wait_quiet)
            with OtherLoad() as load:
                rows = bench_sampling(policy_dir, tokenizer, prompts, batch, s, args.repeats)
            report["sampling"] += [{"model": name, **row, "other_load": load.cores} for row in rows]

    for name in sizes if "training" in parts else []:
        model = assets["models"][name]
        for algo in ("ppo", "rloo"):
            console.print(f"[training] rlhfkit {algo}, {name} model")
            wait_for_quiet(args.wait_quiet)
            with OtherLoad() as load:
                row = run_rlhfkit(algo, model, assets["prompts"], s, args.iterations, args.warmup)
            report["training"].append(
                {"model": name, "system": f"rlhfkit {algo}", "algo": algo, **row, "other_load": load.cores}
            )
        if args.no_peers:
            continue
        for peer in PEERS:
            console.print(f"[training] {peer.system} ({peer.name}), {name} model")
            wait_for_quiet(args.wait_quiet)
            with OtherLoad() as load:
                row = run_peer(
                    peer, model, assets["prompts"], s, args.iterations, args.warmup, args.peer_timeout
                )
            report["training"].append(
                {"model": name, "system": peer.system, "algo": peer.algo, **row, "other_load": load.cores}
            )
            report["peers"][peer.name] = {
                "system": peer.system,
                "requirements": list(peer.requirements),
                "why": peer.why,
                "versions": row.get("versions"),
            }

    report["targets"] = targets(report)
    report["wall_time_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    print_tables(report)
    console.print(f"wrote {out} ({report['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
