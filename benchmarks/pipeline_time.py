"""Wall time of the default pipeline per step, and its headline results, for one or more seeds.

    .venv/bin/python benchmarks/pipeline_time.py                 # seed 0, preset default
    .venv/bin/python benchmarks/pipeline_time.py --seeds 0 1 2   # the ordering check of the pipeline issue
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/pipeline_time.py --preset tiny --jobs 2 \
        --out runs/bench_j2 --json runs/bench_j2.json               # steps side by side, 2 threads between them

Writes benchmarks/results/pipeline_time.json (replacing the seeds it ran, keeping the others) and prints a
table: seconds per step, win rate vs SFT with its 95% interval per model, pretraining perplexity, and whether
the expected ordering held (GPT < 0.5 < PPO, PPO-ptx; PPO-ptx's perplexity closer to SFT's than PPO's).
With several seeds in the file it also pools them: each model's win rate over every seed's eval prompts (each
seed's model against that seed's SFT), its interval resampling (seed, prompt) — does a method beat SFT across
seeds, not only on one?

    .venv/bin/python benchmarks/pipeline_time.py --pool-only --out runs/news   # pool the seeds --json records, anew
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from rlhfkit.evaluate import bootstrap_ci
from rlhfkit.pipeline import PipelineConfig, run
from rlhfkit.training import quiet_libraries


def ordering(report: dict) -> dict[str, bool]:
    m = report["models"]
    checks = {"gpt_below_half": m["gpt"]["win_rate_ci"][1] < 0.5}
    for name in ("ppo", "ppo_ptx"):
        if name in m:
            checks[f"{name}_above_sft"] = m[name]["win_rate_ci"][0] > 0.5
    if "ppo" in m and "ppo_ptx" in m:
        # The alignment tax: PPO raises perplexity on pretraining text; ptx should lower what PPO causes.
        checks["ptx_lowers_ppl"] = m["ppo_ptx"]["pretrain_ppl"] < m["ppo"]["pretrain_ppl"]
        sft_ppl = m["sft"]["pretrain_ppl"]
        checks["ptx_ppl_closer_to_sft"] = abs(m["ppo_ptx"]["pretrain_ppl"] - sft_ppl) < abs(
            m["ppo"]["pretrain_ppl"] - sft_ppl
        )
    return checks


def pooled(run_dirs: list[Path]) -> dict:
    """Win rate vs the reference over every run's eval answers (`eval/answers.jsonl`), per model, with a 95%
    interval that resamples (run, prompt) groups; {} unless at least two runs have answers."""
    rows = []
    for n, run_dir in enumerate(run_dirs):
        path = run_dir / "eval" / "answers.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            rows += [(n, row) for row in map(json.loads, lines) if row["vs_reference"] is not None]
    if len({n for n, _ in rows}) < 2:
        return {}
    out = {}
    for name in dict.fromkeys(row["model"] for _, row in rows):
        mine = [(n, row) for n, row in rows if row["model"] == name]
        groups = {key: i for i, key in enumerate(dict.fromkeys((n, row["prompt"]) for n, row in mine))}
        wins = [row["vs_reference"] for _, row in mine]
        out[name] = {
            "win_rate": sum(wins) / len(wins),
            "win_rate_ci": bootstrap_ci(wins, [groups[(n, row["prompt"])] for n, row in mine]),
            "runs": len({n for n, _ in mine}),
            "answers": len(wins),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--json", default="benchmarks/results/pipeline_time.json")
    parser.add_argument("--note", default="", help="stored with each run, e.g. what else ran at the time")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="rlhfkit pipeline --jobs: steps side by side, the threads (OMP_NUM_THREADS) shared between them "
        "(default: the pipeline's, the CPUs; 1 = one step at a time)",
    )
    parser.add_argument(
        "--pool-only",
        action="store_true",
        help="run nothing: recompute the seeds-pooled win rates of --json from its runs' eval answers",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip steps already finished in the run directory (their seconds come from its timings.json)",
    )
    args = parser.parse_args()
    quiet_libraries()

    results = []
    if args.pool_only:
        earlier = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
        recorded = earlier.get("runs", []) if earlier.get("preset") == args.preset else []
        if len(recorded) < 2:
            raise SystemExit(
                f"pipeline_time --pool-only: {args.json} records {len(recorded)} run(s) of preset {args.preset}; "
                "pooling needs two or more (run them with --seeds, or give the --json that did)"
            )
        print_pooled(write_json(args, []))
        print(f"\nwrote {args.json}")
        return
    for seed in args.seeds:
        start = time.time()
        cfg = PipelineConfig(
            out=f"{args.out}/seed{seed}", preset=args.preset, seed=seed, resume=args.resume, jobs=args.jobs
        )
        report = run(cfg)
        wall = time.time() - start
        models = {
            name: {
                k: m.get(k) for k in ("win_rate", "win_rate_ci", "gold_score", "kl_to_sft", "pretrain_ppl")
            }
            for name, m in report["models"].items()
        }
        results.append(
            {
                "seed": seed,
                "run": cfg.out,
                "wall_seconds": round(wall, 1),
                "torch_threads": torch.get_num_threads(),
                "jobs": report["seconds"]["jobs"],
                "step_seconds_sum": report["seconds"]["total"],
                "date": time.strftime("%Y-%m-%d"),
                "note": args.note,
                "resumed": args.resume,
                "steps": report["seconds"]["steps"],
                "models": models,
                # the selectable headroom (best of K SFT answers by gold vs SFT's), overall and per family
                "headroom": {
                    k: {
                        "share": e["share"],
                        "share_ci": e["share_ci"],
                        "by_family": {f: v["share"] for f, v in e["by_family"].items()},
                    }
                    for k, e in report.get("headroom", {}).get("by_k", {}).items()
                },
                "ordering": ordering(report),
            }
        )
        summary = write_json(args, results)  # after every seed, so a long run keeps what it measured

    print(f"\npreset {args.preset} on {os.cpu_count()} cores, torch {torch.__version__}")
    for r in results:
        jobs = r.get("jobs", 1)
        print(
            f"\nseed {r['seed']}: {r['wall_seconds']:.0f} s total, --jobs {jobs}"
            + (f" ({r['step_seconds_sum']:.0f} s of steps side by side)" if jobs > 1 else "")
        )
        print("  " + "  ".join(f"{step} {sec:.0f}s" for step, sec in r["steps"].items()))
        for name, m in r["models"].items():
            lo, hi = m["win_rate_ci"]
            ppl = m["pretrain_ppl"]
            print(
                f"  {name:<8} win {m['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]  gold {m['gold_score']:.2f}  "
                f"ppl {ppl:.2f}" + (f"  KL {m['kl_to_sft']:.2f}" if m["kl_to_sft"] is not None else "")
            )
        print("  ordering: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["ordering"].items()))
    print_pooled(summary)
    print(f"\nwrote {args.json}")


def print_pooled(summary: dict) -> None:
    if not summary.get("pooled"):
        return
    seeds = ", ".join(str(r["seed"]) for r in summary["runs"])
    print(f"\nseeds {seeds} pooled (each seed's model against that seed's SFT):")
    for name, m in summary["pooled"].items():
        lo, hi = m["win_rate_ci"]
        print(
            f"  {name:<10} win {m['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]  ({m['runs']} runs, {m['answers']} answers)"
        )


def write_json(args, results: list[dict]) -> dict:
    """Write this invocation's seeds, keeping the other seeds of an earlier run of the same preset, so seeds
    run one at a time (or side by side, in separate processes) end up in one file, with their pooled win rates.
    Returns what it wrote."""
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("preset") == args.preset:
            done = {r["seed"] for r in results}
            kept = [r for r in earlier.get("runs", []) if r["seed"] not in done]
    meta = {
        "preset": args.preset,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    runs = sorted(kept + results, key=lambda r: r["seed"])
    # entries written before runs named their directory were run under --out
    summary = {
        **meta,
        "runs": runs,
        "pooled": pooled([Path(r.get("run", f"{args.out}/seed{r['seed']}")) for r in runs]),
    }
    path.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
