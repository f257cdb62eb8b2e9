"""`rlhfkit pipeline`: Step0 → Step1 → Step2 → Step3 (PPO and PPO-ptx) → evaluation, on the embedded world.

    data/       the world's corpus, demonstrations and prompt splits (JSONL, editable)
    gpt/        Step0 pretrained LM            sft/      Step1 SFT policy
    data/comparisons.jsonl  K answers per RM prompt, ranked by simulated labelers
    reward/     Step2 reward model             ppo/ ppo_ptx/   Step3 policies
    ppo_gold/   PPO on the world's gold judge instead of the reward model: the report's ceiling
    eval/       report.json, report.md, winrate.png, curves.png

Every step writes its own directory; `--resume` skips the finished ones and continues an interrupted one from
its checkpoint, so deleting one step's directory and resuming rebuilds that step (every step is seeded: with
the same settings it comes out the same, so what was built on it stays valid).
`steps.json` records, per step, the settings it was built with and the steps it was built on: a step whose
settings changed, or was built on a step whose settings changed, is rebuilt on `--resume` (a model is never
reused stale, nor finished from a checkpoint of other settings).

With `--jobs N` (`rlhfkit.scheduler`) the steps that can overlap run side by side, each in a child process with
its share of the threads, its console output in `<out>/<step>/log.txt` and one status line here when it starts
and finishes; `--jobs 1` runs every step in this process, in order. Only this process writes `steps.json`,
`timings.json` and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from rlhfkit import config as C
from rlhfkit.config import METHODS, PRESETS, PipelineConfig
from rlhfkit.console import console
from rlhfkit.errors import UsageError
from rlhfkit.evaluate import run as evaluate
from rlhfkit.report import write_markdown
from rlhfkit.rundir import write_atomic
from rlhfkit.scheduler import Step, plan, resolve_jobs, run_steps
from rlhfkit.sources import GOLD
from rlhfkit.stages import dpo, label, ppo, pretrain, reward, sft
from rlhfkit.training import is_finished
from rlhfkit.world import export_world

PTX_COEF = 1.0  # the pipeline's PPO-ptx: PPO's settings plus the pretraining LM loss at γ = 1
STEP_CONFIGS = {
    "pretrain": C.PretrainConfig,
    "sft": C.SFTConfig,
    "label": C.LabelConfig,
    "reward": C.RewardConfig,
    "ppo": C.PPOConfig,
    "ppo_ptx": C.PPOConfig,
    "rloo": C.PPOConfig,
    "ppo_gold": C.PPOConfig,
    "dpo": C.DPOConfig,
    "eval": C.EvalConfig,
}
# best_of_n trains nothing: it is evaluated from SFT + RM
TRAINED_METHODS = ("ppo", "ppo_ptx", "rloo", "ppo_gold", "dpo")


def resolve(cfg: PipelineConfig, overrides: dict | None = None) -> dict[str, object]:
    """Step configs: dataclass defaults ← preset ← YAML sections; paths, seed and precision from the pipeline."""
    if cfg.preset not in PRESETS:
        raise UsageError(f"pipeline --preset {cfg.preset!r}: use one of {list(PRESETS)}")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"pipeline --methods: unknown {unknown}; available: {list(METHODS)}")
    overrides = {step: dict(values or {}) for step, values in (overrides or {}).items()}
    for step, values in overrides.items():
        if step not in STEP_CONFIGS:
            raise UsageError(f"pipeline config: unknown section {step!r}; sections: {list(STEP_CONFIGS)}")
        known = {f.name for f in dataclasses.fields(STEP_CONFIGS[step])}
        bad = sorted(set(values) - known)
        if bad:
            raise UsageError(f"pipeline config: section {step!r} has unknown setting(s) {bad}")
    preset = copy.deepcopy(PRESETS[cfg.preset])
    settings = {step: {**preset.get(step, {}), **overrides.get(step, {})} for step in STEP_CONFIGS}
    # The PPO section is Step3's: PPO-ptx, RLOO and PPO on gold inherit it (preset and YAML alike) unless their own
    # section sets the value, so that a changed β or iteration count keeps the methods comparable.
    ppo = settings["ppo"]
    settings["ppo_ptx"] = {
        **ppo,
        "ptx_coef": PTX_COEF,
        **preset.get("ppo_ptx", {}),
        **overrides.get("ppo_ptx", {}),
    }
    settings["rloo"] = {**ppo, "algo": "rloo", **preset.get("rloo", {}), **overrides.get("rloo", {})}
    # the ceiling: the gold judge whatever a section says, so that it differs from PPO in the reward alone
    settings["ppo_gold"] = {
        **ppo,
        **preset.get("ppo_gold", {}),
        **overrides.get("ppo_gold", {}),
        "reward_model": GOLD,
    }
    for step, values in overrides.items():
        for key in RUN_WIDE & set(values):
            raise UsageError(
                f"pipeline config: {step}.{key} = {values[key]!r}, but the pipeline sets every step's {key} "
                f"from the run's ({getattr(cfg, key)!r}): set the top-level {key} (or --{key.replace('_', '-')}) "
                "and remove it from the section"
            )
    derived, steps = derived_settings(cfg), {}
    for step, cls in STEP_CONFIGS.items():
        values = {**derived[step], **settings.get(step, {})}
        if step == "eval" and "best_of_n" not in cfg.methods:
            values["best_of_n"] = []
        try:
            steps[step] = cls(**values)
        except UsageError as err:  # settings that do not go together, from the preset and the section
            raise UsageError(
                f"pipeline section {step!r} (preset {cfg.preset!r} and --config): {err}"
            ) from None
    return steps


RUN_WIDE = {"seed", "mixed_precision", "resume"}  # one value for the whole run, set at the top level


def derived_settings(cfg: PipelineConfig) -> dict[str, dict]:
    """What the pipeline sets in each step: the paths that chain the steps under `out`, and the run-wide
    seed, precision and resume flag."""
    out = Path(cfg.out)
    paths = {
        "pretrain": {"out": out / "gpt"},
        "sft": {"out": out / "sft", "model": out / "gpt"},
        "label": {"out": out / "data" / "comparisons.jsonl", "model": out / "sft"},
        "reward": {"out": out / "reward", "model": out / "sft", "data": out / "data" / "comparisons.jsonl"},
        "ppo": {"out": out / "ppo", "policy": out / "sft", "reward_model": out / "reward"},
        "ppo_ptx": {"out": out / "ppo_ptx", "policy": out / "sft", "reward_model": out / "reward"},
        "rloo": {"out": out / "rloo", "policy": out / "sft", "reward_model": out / "reward"},
        "ppo_gold": {"out": out / "ppo_gold", "policy": out / "sft", "reward_model": GOLD},
        "dpo": {"out": out / "dpo", "policy": out / "sft", "data": out / "data" / "comparisons.jsonl"},
        "eval": {
            "out": out / "eval",
            "curves": [f"reward={out / 'reward'}"],
            "reward_model": out / "reward",
            "heldout_text": out / "data" / "pretrain_heldout.jsonl",  # avoids this run's own corpus
            "models": [
                f"{name}={out / name}" for name in ("gpt", "sft", *cfg.methods) if name != "best_of_n"
            ],
        },
    }
    derived = {}
    for step, cls in STEP_CONFIGS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: (str(v) if isinstance(v, Path) else v) for k, v in paths[step].items()}
        values.update({key: getattr(cfg, key) for key in RUN_WIDE if key in names})
        derived[step] = values
    return derived


def run(cfg: PipelineConfig, overrides: dict | None = None) -> dict:
    began = time.time()
    steps = resolve(cfg, overrides)
    out = Path(cfg.out)
    if cfg.print_config:
        print(yaml.safe_dump(resolved_dict(cfg, steps), allow_unicode=True, sort_keys=False))
        return {}
    if cfg.preset == "large" and not _has_accelerator():
        console.print(
            "[pipeline] --preset large is meant for a GPU (one H200 runs it in about 9 minutes); on a 2-core "
            "CPU its Step0 alone takes about 6 hours (15 s a step) — `--preset default` is the CPU run"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out / "config.yaml", yaml.safe_dump(resolved_dict(cfg, steps), allow_unicode=True, sort_keys=False)
    )
    timings_path = out / "timings.json"
    timings = (read_record(timings_path) or {}) if cfg.resume else {}
    built_path, prints = out / "steps.json", fingerprints(cfg, steps)
    built = read_record(built_path)
    if cfg.resume and built is None and (out / "gpt").exists():
        console.print(
            "[pipeline] no steps.json (a run of an older rlhfkit): its finished steps are trusted to match "
            "these settings"
        )
    built = built if cfg.resume and built else {}

    def record(name: str, complete: bool) -> None:
        built[name] = {**prints[name], "complete": complete}
        write_atomic(built_path, json.dumps(built, indent=2, default=str))

    ran: set[str] = set()

    def begin(step: Step) -> bool:
        """Whether `step` must run: not when --resume finds it finished with these settings. A step that runs is
        recorded unfinished first, and finished last (`end`, after its time and report): a kill in between runs
        it again, and only with the same settings."""
        name, done = step.name, step.done()
        new, old = prints.get(name), built.get(name)
        if cfg.resume and new and old and old["fingerprint"] != new["fingerprint"]:
            console.print(f"[pipeline] {name}: {why_stale(old, new)} since it was built; rebuilding it")
            target = Path(steps[name].out)
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            done = False
        if old and not old.get("complete", True):  # it was interrupted, whatever its files say
            done = False
        if cfg.resume and done:
            console.print(f"[pipeline] {name}: finished earlier, skipped")
            if new:
                record(name, complete=True)
            return False
        if new:
            record(name, complete=False)
        ran.add(name)
        return True

    def end(step: Step, seconds: float) -> None:
        timings[step.name] = round(seconds, 2)
        write_atomic(timings_path, json.dumps(timings, indent=2))
        if step.name == "eval":
            add_timings()
        if step.name in prints:
            record(step.name, complete=True)

    def add_timings() -> None:
        """The report with every step's wall time: part of the eval step, so a kill here runs it again."""
        report = json.loads((out / "eval" / "report.json").read_text())
        report["seconds"] = {
            **report["seconds"],
            "steps": timings,
            "total": round(sum(timings.values()), 2),  # the steps' seconds, side by side ones added up
            "wall": round(time.time() - began, 2),  # this command's, up to here
            "jobs": jobs,
        }
        write_markdown(report, out / "eval" / "report.md", timings)
        write_atomic(out / "eval" / "report.json", json.dumps(report, ensure_ascii=False, indent=2))

    def copy_tokenizer(pretrained: bool) -> None:
        if pretrained:
            shutil.rmtree(
                out / "tokenizer", ignore_errors=True
            )  # (re)built: its tokenizer is the one to copy
        if not (out / "tokenizer").exists():
            shutil.copytree(
                out / "gpt",
                out / "tokenizer",
                ignore=lambda d, names: [
                    n for n in names if not n.startswith(("tokenizer", "chat_template", "special"))
                ],
            )

    corpus_docs = steps["pretrain"].world_docs  # data/pretrain.jsonl is the corpus Step0 trains on
    stages = {"pretrain": pretrain.run, "sft": sft.run, "label": label.run, "reward": reward.run}
    stages |= {m: dpo.run if m == "dpo" else ppo.run for m in TRAINED_METHODS if m in cfg.methods}
    stages["eval"] = evaluate

    finished = {
        "pretrain": lambda: is_finished(out / "gpt"),
        "label": lambda: (out / "data" / "comparisons.jsonl").exists(),
        # The report stands while nothing it judges was (re)built: a finished run resumed does nothing.
        "eval": lambda: (out / "eval" / "report.json").exists() and not ran,
    }

    def stage_step(name: str) -> Step:
        function, config = stages[name], steps[name]
        return Step(
            name,
            ["data"] if name == "pretrain" else [p for p in PARENTS[name] if p in stages],
            finished.get(name, lambda: is_finished(out / name)),
            lambda: function(config),
            stage=(function, config),
            log=out / ("label" if name == "label" else Path(config.out).name) / "log.txt",
            after=copy_tokenizer if name == "pretrain" else None,
            seconds=timings.get(name) or EXPECTED_SECONDS.get(name, 1.0),
        )

    data = Step(
        "data",
        [],
        lambda: (out / "data" / "eval_prompts.jsonl").exists(),
        lambda: export_world(out / "data", n_docs=corpus_docs),
    )
    graph = plan([data, *(stage_step(name) for name in stages)])
    jobs = resolve_jobs(cfg.jobs, graph)
    run_steps(graph, jobs, torch.get_num_threads(), begin, end)
    report = json.loads((out / "eval" / "report.json").read_text())
    total, now = sum(timings.values()), time.time() - began
    took = f"{now:.0f} s" + (
        f" ({total:.0f} s of steps, earlier runs' included)"
        if cfg.resume
        else f" ({total:.0f} s of steps, up to {jobs} at a time)"
        if jobs > 1
        else ""
    )
    console.print(f"[pipeline] done in {took} — read {out / 'eval' / 'report.md'}")
    return report


def read_record(path: Path) -> dict | None:
    """steps.json / timings.json, or None when it is missing — or damaged (cut short by a disk that filled up, or
    edited): said, and then rebuilt as a missing one is."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict):
            return record
    except (ValueError, UnicodeDecodeError):
        pass
    console.print(f"[pipeline] {path} is damaged (not a JSON object): read as missing, and written again")
    return None


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


# Seconds of the default run's steps (benchmarks/results/pipeline_time.json, seeds 0-2, 2 threads; ppo_gold and rloo
# taken as PPO's): with --jobs, of the steps ready at once the one on the longest path starts first (PPO-ptx before
# PPO, the reward model before DPO). A resumed run goes by its own timings.json instead.
EXPECTED_SECONDS = {
    "label": 72,
    "reward": 90,
    "ppo": 97,
    "ppo_ptx": 136,
    "rloo": 97,
    "ppo_gold": 97,
    "dpo": 114,
    "eval": 72,
}
# What each step is built on; a step is stale when its settings or any of these changed.
PARENTS = {
    "pretrain": [],
    "sft": ["pretrain"],
    "label": ["sft"],
    "reward": ["sft", "label"],
    "ppo": ["sft", "reward"],
    "ppo_ptx": ["sft", "reward"],
    "rloo": ["sft", "reward"],
    "ppo_gold": ["sft"],  # no reward model: it waits for none
    "dpo": ["sft", "label"],
    "eval": ["pretrain", "sft", "reward", *TRAINED_METHODS],
}


def fingerprints(cfg: PipelineConfig, steps: dict) -> dict[str, dict]:
    """Per step: its settings (less the paths that only chain it under `out`, and `config.HOW_IT_RUNS`), its parents'
    fingerprints, and a hash of both — so a step's fingerprint changes when anything it was built from does."""
    derived, prints = derived_settings(cfg), {}
    for name, parents in PARENTS.items():
        settings = {
            k: v
            for k, v in dataclasses.asdict(steps[name]).items()
            if k not in C.HOW_IT_RUNS
            and not (k in derived[name] and k not in RUN_WIDE and v == derived[name][k])
        }
        record = {"settings": settings, "parents": {p: prints[p]["fingerprint"] for p in parents}}
        text = json.dumps(record, sort_keys=True, default=str)
        prints[name] = {"fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16], **record}
    return prints


def why_stale(old: dict, new: dict) -> str:
    """In words: which settings changed, or which step it was built on was rebuilt."""
    keys = sorted(
        k for k in {*old["settings"], *new["settings"]} if old["settings"].get(k) != new["settings"].get(k)
    )
    parents = [p for p in new["parents"] if old["parents"].get(p) != new["parents"][p]]
    reasons = ([f"settings changed ({', '.join(keys)})"] if keys else []) + [
        f"{p} was rebuilt" for p in parents
    ]
    return "; ".join(reasons) or "its record differs"


def resolved_dict(cfg: PipelineConfig, steps: dict) -> dict:
    top = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "print_config"}
    return {**top, **{name: dataclasses.asdict(step) for name, step in steps.items()}}


def from_namespace(namespace) -> tuple[PipelineConfig, dict]:
    """CLI: --config FILE.yaml may hold top-level settings and per-step sections; flags win."""
    path = getattr(namespace, "config", None)
    data = C.read_yaml(path) if path else {}
    top_names = {f.name for f in dataclasses.fields(PipelineConfig)}
    top = C.yaml_settings(PipelineConfig, {k: v for k, v in data.items() if k in top_names}, path)
    unknown = [k for k in data if k not in top_names and k not in STEP_CONFIGS]
    if unknown:
        raise UsageError(
            f"{path}: unknown section or setting {unknown[0]!r}; sections: {list(STEP_CONFIGS)}, "
            f"settings: {sorted(top_names)}"
        )
    # Values are typed here, where the file is known (`resolve` checks sections given through the Python API).
    sections = {
        k: C.yaml_settings(STEP_CONFIGS[k], v or {}, path, k) for k, v in data.items() if k in STEP_CONFIGS
    }
    # A saved configuration (--print-config, or a run's config.yaml) spells out what the pipeline derives from
    # its own `out`, seed and precision: those entries say nothing of their own, so they are dropped and derived
    # again from this run's (another --out must not write into the saved run's directories).
    own = derived_settings(PipelineConfig(**top))
    for step, values in sections.items():
        for key in [k for k, v in values.items() if k in own.get(step, {}) and v == own[step][k]]:
            del values[key]
    for f in dataclasses.fields(PipelineConfig):
        given = getattr(namespace, f.name, None)
        if given is not None:
            top[f.name] = given
    return PipelineConfig(**top), sections
