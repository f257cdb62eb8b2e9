"""`rlhfkit pipeline`: Step0 → Step1 → Step2 → Step3 (PPO and PPO-ptx) → evaluation, on the embedded world.

    data/       the world's corpus, demonstrations and prompt splits (JSONL, editable)
    gpt/        Step0 pretrained LM            sft/      Step1 SFT policy
    data/comparisons.jsonl  K answers per RM prompt, ranked by simulated labelers
    reward/     Step2 reward model             ppo/ ppo_ptx/   Step3 policies
    ppo_gold/   PPO on the world's gold judge instead of the reward model: the report's ceiling
    ppo_rounds/ ppo_ptx_rounds/   with --rlhf-rounds N > 1: each chain's rounds before its last (`step_graph`)
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
from rlhfkit import rounds
from rlhfkit.config import METHODS, PRESETS, PipelineConfig
from rlhfkit.console import console
from rlhfkit.data import load_preferences, read_records
from rlhfkit.ensemble import load_judge
from rlhfkit.errors import UsageError
from rlhfkit.evaluate import accuracy_on_samples
from rlhfkit.evaluate import run as evaluate
from rlhfkit.modeling import for_inference
from rlhfkit.report import write_markdown
from rlhfkit.rundir import write_atomic
from rlhfkit.scheduler import Step, plan, resolve_jobs, run_steps
from rlhfkit.sources import GOLD
from rlhfkit.stages import dpo, label, ppo, pretrain, reward, sft
from rlhfkit.tokenizer import load_tokenizer
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
# the methods --rlhf-rounds N splits into rounds (PPO on the gold judge needs none: its reward is never wrong)
ROUND_METHODS = ("ppo", "ppo_ptx")


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
    check_rounds(cfg, steps)
    return steps


def check_rounds(cfg: PipelineConfig, steps: dict) -> None:
    """--rlhf-rounds N > 1: some method to split, and iterations that split into N equal rounds."""
    if cfg.rlhf_rounds == 1:
        return
    chains = [m for m in ROUND_METHODS if m in cfg.methods]
    if not chains:
        raise UsageError(
            f"pipeline --rlhf-rounds {cfg.rlhf_rounds}: the rounds split PPO and PPO-ptx, and --methods "
            f"{' '.join(cfg.methods)} runs neither; add ppo or ppo_ptx, or drop --rlhf-rounds"
        )
    for m in chains:
        if steps[m].iterations % cfg.rlhf_rounds:
            raise UsageError(
                f"pipeline --rlhf-rounds {cfg.rlhf_rounds}: {m}.iterations = {steps[m].iterations} does not split "
                f"into {cfg.rlhf_rounds} rounds of equal length; set the iterations (the `ppo:` section of "
                f"--config, which PPO-ptx inherits) to a multiple of {cfg.rlhf_rounds}"
            )


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
                f"{name}={path}"
                for model in ("gpt", "sft", *cfg.methods)
                if model != "best_of_n"
                for name, path in [*round_policies(cfg, model).items(), (model, out / model)]
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


def round_policies(cfg: PipelineConfig, method: str) -> dict[str, Path]:
    """With --rlhf-rounds N > 1, the policies of a chain's rounds before its last ({"ppo_round1": ...}), which the
    evaluation reports beside the last (the method's own directory, `ppo/`); {} otherwise."""
    if cfg.rlhf_rounds == 1 or method not in ROUND_METHODS:
        return {}
    work = Path(cfg.out) / f"{method}_rounds"
    return {f"{method}_round{r}": rounds.round_dir(work, r) / "ppo" for r in range(1, cfg.rlhf_rounds)}


def round_plan(cfg: PipelineConfig, steps: dict, method: str) -> rounds.RoundPlan:
    """The pipeline's rounds: the benchmark's defaults (continue the reward model on each round's rankings, half of
    every prompt's K answers by SFT), over N disjoint parts of the RL prompts, which Step2 never ranked."""
    return rounds.RoundPlan(
        rounds=cfg.rlhf_rounds,
        iterations_total=steps[method].iterations,
        label_prompts=str(Path(cfg.out) / "data" / "rl_prompts.jsonl"),
    )


def round_steps(cfg: PipelineConfig, steps: dict, method: str) -> dict[str, tuple[object, list[str]]]:
    """One chain of rounds (`rlhfkit.rounds`), step name → (config, the steps it is built on), in order:

        ppo/round_1/ppo                 SFT → PPO on Step2's reward model, iterations/N
        ppo/round_r/label               round r−1's and SFT's answers on part r−1 of N of the RL prompts, ranked
        ppo/round_r/reward              the previous reward model continued on them (eval.json: its accuracy there)
        ppo/round_r/ppo                 round r−1's policy continued against it, the KL still to SFT
        ppo                             round N's PPO, in the method's own directory: what the evaluation reports
        ppo/round_{N+1}/label           round N's answers on part N of N: the last reward model graded on the last
                                        policy (the report's last row; nothing trains on them)

    The rounds before the last write under <out>/ppo_rounds/ (ppo_ptx: ppo_ptx/..., <out>/ppo_ptx_rounds/)."""
    out, n = Path(cfg.out), cfg.rlhf_rounds
    work, plan = out / f"{method}_rounds", round_plan(cfg, steps, method)
    chain = {**steps, "ppo": steps[method]}  # the rounds' PPO settings are the method's own (PPO-ptx: γ)
    members = {
        k: getattr(steps["reward"], k) for k in ("ensemble", "ensemble_bootstrap")
    }  # Step2's kind of RM
    found: dict[str, tuple[object, list[str]]] = {}
    policy, reward_model = None, "reward"
    for r in range(1, n + 1):
        for kind, config in rounds.round_configs(chain, plan, work, r).items():
            name = method if kind == "ppo" and r == n else f"{method}/round_{r}/{kind}"
            if kind == "label":
                parents = [policy, "sft"]
            elif kind == "reward":
                config = dataclasses.replace(config, **members)
                parents, reward_model = [f"{method}/round_{r}/label", reward_model], name
            else:
                if r == n:
                    config = dataclasses.replace(config, out=str(out / method))
                parents, policy = ["sft", reward_model, *([policy] if policy else [])], name
            found[name] = (config, parents)
    measure = dataclasses.replace(rounds.measure_config(chain, plan, work), model=str(out / method))
    found[f"{method}/round_{n + 1}/label"] = (measure, [method, "sft"])
    return found


def step_graph(cfg: PipelineConfig, steps: dict) -> dict[str, tuple[object, list[str]]]:
    """Every step the run may build, step name → (its config, the steps it is built on), parents first: `PARENTS`,
    and with --rlhf-rounds N > 1 each chain of rounds in place of its method's single PPO (`round_steps`), the
    evaluation built on all of them."""
    graph: dict[str, tuple[object, list[str]]] = {}
    extra: list[str] = []
    for name, parents in PARENTS.items():
        if cfg.rlhf_rounds > 1 and name in ROUND_METHODS and name in cfg.methods:
            chain = round_steps(cfg, steps, name)
            graph |= chain
            extra += [step for step in chain if step != name]
        elif name == "eval":
            graph[name] = (steps[name], [*parents, *extra])
        else:
            graph[name] = (steps[name], list(parents))
    return graph


def round_chain(name: str) -> str | None:
    """The method whose chain of rounds `name` belongs to (ppo/round_2/label → ppo), None for the other steps."""
    return name.split("/")[0] if "/" in name else None


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
    graph = step_graph(cfg, steps)
    ledger = Ledger.open(cfg, steps, graph, began)
    dag = plan(pipeline_steps(cfg, steps, graph, ledger))
    ledger.jobs = resolve_jobs(cfg.jobs, dag)
    run_steps(dag, ledger.jobs, torch.get_num_threads(), ledger.begin, ledger.end)
    report = json.loads((out / "eval" / "report.json").read_text())
    total, now = sum(ledger.timings.values()), time.time() - began
    took = f"{now:.0f} s" + (
        f" ({total:.0f} s of steps, earlier runs' included)"
        if cfg.resume
        else f" ({total:.0f} s of steps, up to {ledger.jobs} at a time)"
        if ledger.jobs > 1
        else ""
    )
    console.print(f"[pipeline] done in {took} — read {out / 'eval' / 'report.md'}")
    return report


@dataclasses.dataclass
class Ledger:
    """What a run has built, in `<out>/steps.json` (each step's settings fingerprint and whether it finished) and
    `<out>/timings.json`: which steps --resume runs again, and each step's time in the report."""

    cfg: PipelineConfig
    steps: dict
    graph: dict
    began: float
    prints: dict  # each step's settings now (`fingerprints`)
    built: dict  # steps.json: what was built, with which settings
    timings: dict
    ran: set = dataclasses.field(default_factory=set)
    jobs: int = 1

    @classmethod
    def open(cls, cfg: PipelineConfig, steps: dict, graph: dict, began: float) -> Ledger:
        out = Path(cfg.out)
        timings = (read_record(out / "timings.json") or {}) if cfg.resume else {}
        built = read_record(out / "steps.json")
        if cfg.resume and built is None and (out / "gpt").exists():
            console.print(
                "[pipeline] no steps.json (a run of an older rlhfkit): its finished steps are trusted to match "
                "these settings"
            )
        built = built if cfg.resume and built else {}
        return cls(cfg, steps, graph, began, fingerprints(cfg, steps), built, timings)

    def record(self, name: str, complete: bool) -> None:
        self.built[name] = {**self.prints[name], "complete": complete}
        write_atomic(Path(self.cfg.out) / "steps.json", json.dumps(self.built, indent=2, default=str))

    def begin(self, step: Step) -> bool:
        """Whether `step` must run: not when --resume finds it finished with these settings. A step that runs is
        recorded unfinished first, and finished last (`end`, after its time and report): a kill in between runs
        it again, and only with the same settings."""
        name, done, resume = step.name, step.done(), self.cfg.resume
        new, old = self.prints.get(name), self.built.get(name)
        if resume and new and old and old["fingerprint"] != new["fingerprint"]:
            console.print(f"[pipeline] {name}: {why_stale(old, new)} since it was built; rebuilding it")
            target = Path(self.graph[name][0].out)
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            done = False
        if old and not old.get("complete", True):  # it was interrupted, whatever its files say
            done = False
        if resume and done:
            console.print(f"[pipeline] {name}: finished earlier, skipped")
            if new:
                self.record(name, complete=True)
            return False
        if new:
            self.record(name, complete=False)
        self.ran.add(name)
        return True

    def end(self, step: Step, seconds: float) -> None:
        self.timings[step.name] = round(seconds, 2)
        write_atomic(Path(self.cfg.out) / "timings.json", json.dumps(self.timings, indent=2))
        if step.name == "eval":
            self.add_timings_and_rounds()
        if step.name in self.prints:
            self.record(step.name, complete=True)

    def add_timings_and_rounds(self) -> None:
        """The report with every step's wall time and, with rounds, what each round measured: part of the eval
        step, so a kill here runs it again."""
        cfg, out = self.cfg, Path(self.cfg.out)
        report = json.loads((out / "eval" / "report.json").read_text())
        if cfg.rlhf_rounds > 1:
            report["rlhf_rounds"] = rounds_report(cfg, self.steps, self.graph, report)
        report["seconds"] = {
            **report["seconds"],
            "steps": self.timings,
            "total": round(sum(self.timings.values()), 2),  # the steps' seconds, side by side ones added up
            "wall": round(time.time() - self.began, 2),  # this command's, up to here
            "jobs": self.jobs,
        }
        write_markdown(report, out / "eval" / "report.md", self.timings)
        write_atomic(out / "eval" / "report.json", json.dumps(report, ensure_ascii=False, indent=2))


def copy_tokenizer(out: Path, pretrained: bool) -> None:
    """<out>/tokenizer: Step0's tokenizer files, for the stages and the reader; copied again when Step0 ran."""
    if pretrained:
        shutil.rmtree(out / "tokenizer", ignore_errors=True)  # (re)built: its tokenizer is the one to copy
    if not (out / "tokenizer").exists():
        shutil.copytree(
            out / "gpt",
            out / "tokenizer",
            ignore=lambda d, names: [
                n for n in names if not n.startswith(("tokenizer", "chat_template", "special"))
            ],
        )


def pipeline_steps(cfg: PipelineConfig, steps: dict, graph: dict, ledger: Ledger) -> list[Step]:
    """The scheduler's steps: the world's data, the stages, the methods asked for and their rounds (a round step
    is named after its stage last: ppo/round_2/label runs label), and the evaluation; parents first."""
    out = Path(cfg.out)
    functions = {"pretrain": pretrain.run, "sft": sft.run, "label": label.run, "reward": reward.run}
    functions |= {m: dpo.run if m == "dpo" else ppo.run for m in TRAINED_METHODS}
    functions["eval"] = evaluate
    stages = {
        name: functions[name.rsplit("/", 1)[-1]]
        for name in graph
        if (round_chain(name) or name) in cfg.methods
        or name in ("pretrain", "sft", "label", "reward", "eval")
    }
    finished = {
        "pretrain": lambda: is_finished(out / "gpt"),
        "label": lambda: (out / "data" / "comparisons.jsonl").exists(),
        # The report stands while nothing it judges was (re)built: a finished run resumed does nothing.
        "eval": lambda: (out / "eval" / "report.json").exists() and not ledger.ran,
    }

    def stage_step(name: str) -> Step:
        function, (config, parents) = stages[name], graph[name]
        if round_chain(name) is None:
            done = finished.get(name, lambda: is_finished(out / name))
            log = out / ("label" if name == "label" else Path(config.out).name) / "log.txt"
        elif function is label.run:  # a round's rankings: one file, its log beside it
            done, log = (lambda: Path(config.out).exists()), Path(config.out).parent / "label" / "log.txt"
        else:
            done, log = (lambda: is_finished(config.out)), Path(config.out) / "log.txt"
        if (
            round_chain(name) or name in ROUND_METHODS and cfg.rlhf_rounds > 1
        ):  # a round: about 1/N of the step
            kind = (round_chain(name) or name) if function is ppo.run else name.rsplit("/", 1)[-1]
            expected = EXPECTED_SECONDS.get(kind, 1.0) / cfg.rlhf_rounds
        else:
            expected = EXPECTED_SECONDS.get(name, 1.0)
        return Step(
            name,
            ["data"] if name == "pretrain" else [p for p in parents if p in stages],
            done,
            lambda: function(config),
            stage=(function, config),
            log=log,
            after=(lambda pretrained: copy_tokenizer(out, pretrained)) if name == "pretrain" else None,
            seconds=ledger.timings.get(name) or expected,
        )

    corpus_docs = steps["pretrain"].world_docs  # data/pretrain.jsonl is the corpus Step0 trains on
    data = Step(
        "data",
        [],
        lambda: (out / "data" / "eval_prompts.jsonl").exists(),
        lambda: export_world(out / "data", n_docs=corpus_docs),
    )
    return [data, *(stage_step(name) for name in stages)]


ROUND_ROWS = ("win_rate", "win_rate_ci", "gold_score", "kl_to_sft", "pretrain_ppl")


def rounds_report(cfg: PipelineConfig, steps: dict, graph: dict, report: dict) -> dict:
    """report.json's "rlhf_rounds": per chain, per round, its policy's evaluation and the accuracy of the reward
    model that round's PPO optimised on that policy's answers (agreement with the held-out panel, ties excluded) —
    measured before it was updated (round r+1's reward eval.json; the last round: its rankings of part N of N) —
    and of the updated one on the held-out part of them."""
    n, found = cfg.rlhf_rounds, {}
    for method in (m for m in ROUND_METHODS if m in cfg.methods):
        plan, rows = round_plan(cfg, steps, method), []
        for r in range(1, n + 1):
            policy = method if r == n else f"{method}_round{r}"
            ppo_step = method if r == n else f"{method}/round_{r}/ppo"
            model = report["models"].get(policy, {})
            row = {
                "round": r,
                "iterations": plan.iterations * r,
                "policy": policy,
                "reward_model": "reward" if r == 1 else f"{method}/round_{r}/reward",
                **{key: model.get(key) for key in ROUND_ROWS},
            }
            if r < n:
                path = Path(graph[f"{method}/round_{r + 1}/reward"][0].out) / "eval.json"
                after = json.loads(path.read_text(encoding="utf-8")).get("accuracy_on_new_samples") or {}
                row["rm_on_own_policy"] = after.get("previous")
                row["updated_rm_on_held_out"] = after.get("new_on_val")
                row["labels_vs_panel_agreement"] = after.get("labels_vs_panel_agreement")
            else:
                row["rm_on_own_policy"] = last_rm_accuracy(
                    graph[f"{method}/round_{n + 1}/label"][0].out,
                    graph[ppo_step][0].reward_model,
                    steps["reward"].max_len,
                )
            rows.append(row)
        found[method] = rows
    return found


def last_rm_accuracy(comparisons: str, reward_model: str, max_len: int) -> dict:
    """The last reward model on the last policy's answers (the rankings nothing trained on)."""
    tokenizer = load_tokenizer(reward_model)
    judge = for_inference(load_judge(reward_model, tokenizer.pad_token_id))
    items = list(load_preferences(comparisons))
    writers = [record.get("models") for _, record in read_records(comparisons)]
    return accuracy_on_samples(judge, tokenizer, items, max_len, writers)


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
    for name, (config, parents) in step_graph(cfg, steps).items():
        own = derived.get(name, {})
        # a round's paths are all under `out`: written relative to it, so that a moved run is the same run
        relative = round_chain(name) is not None or (cfg.rlhf_rounds > 1 and name in ROUND_METHODS)
        settings = {
            k: _under_out(v, cfg.out) if relative else v
            for k, v in dataclasses.asdict(config).items()
            if k not in C.HOW_IT_RUNS and not (k in own and k not in RUN_WIDE and v == own[k])
        }
        record = {"settings": settings, "parents": {p: prints[p]["fingerprint"] for p in parents}}
        text = json.dumps(record, sort_keys=True, default=str)
        prints[name] = {"fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16], **record}
    return prints


def _under_out(value, out: str):
    """A path under the run directory as <out>/...; lists path by path; anything else as it is."""
    if isinstance(value, list):
        return [_under_out(v, out) for v in value]
    root = str(Path(out)) + "/"
    return "<out>/" + value[len(root) :] if isinstance(value, str) and value.startswith(root) else value


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
