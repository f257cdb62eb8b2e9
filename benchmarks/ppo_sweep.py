"""One PPO setting swept on a finished run: win rate vs SFT, gold, KL to SFT and alignment tax for each value.

    .venv/bin/python benchmarks/ppo_sweep.py --run runs/bench/seed0 --param kl_coef --values 0.05 0.1 0.2 0.4
    .venv/bin/python benchmarks/ppo_sweep.py --run runs/bench/seed0 --base ppo_ptx \\
        --param ptx_coef --values 0 0.1 0.3 1 --out benchmarks/results/ptx_sweep

Trains PPO (or PPO-ptx, `--base ppo_ptx`) with the run's own settings (its config.yaml) and one setting changed
per value, reusing the run's `ppo` / `ppo_ptx` model where the settings are the run's own, and evaluates them
all against the run's SFT model with the run's eval settings (held-out panel, same prompts and seed).
Writes benchmarks/results/<out>.{json,png} (default out: <param>_sweep).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from rlhfkit.config import EvalConfig, PPOConfig, key_values, parse_setting
from rlhfkit.evaluate import run as evaluate
from rlhfkit.stages import ppo
from rlhfkit.training import quiet_libraries

ROWS = ("win_rate", "win_rate_ci", "gold_score", "kl_to_sft", "pretrain_ppl", "mean_length", "eos_fraction")
DIMS = ("on_topic", "correct", "fluency", "ends")


def same_training(a: PPOConfig, b: PPOConfig) -> bool:
    """Would a and b train the same model? (Where it is written and whether it resumes do not matter.)"""
    keep = {f.name for f in dataclasses.fields(PPOConfig)} - {"out", "resume"}
    return all(getattr(a, name) == getattr(b, name) for name in keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench/seed0", help="a finished `rlhfkit pipeline` directory")
    parser.add_argument("--base", default="ppo", choices=["ppo", "ppo_ptx"], help="the run's step to vary")
    parser.add_argument("--param", default="kl_coef", help="a PPOConfig field, e.g. kl_coef, ptx_coef, lr")
    parser.add_argument("--values", nargs="+", default=["0.05", "0.1", "0.2", "0.4"])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other PPO settings, the same for every value",
    )
    parser.add_argument("--out", default=None, help="results path without suffix")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    out_path = args.out or f"benchmarks/results/{args.param}_sweep"
    settings = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    base = PPOConfig(**settings[args.base])
    try:  # every setting read before anything trains; an unknown one is named (parse_setting checks the keys)
        fixed = key_values(args.set)
        base = dataclasses.replace(
            base, **{key: parse_setting(PPOConfig, key, text) for key, text in fixed.items()}
        )
        values = [parse_setting(PPOConfig, args.param, text) for text in args.values]
    except ValueError as error:
        raise SystemExit(f"ppo_sweep: {error}") from None
    work = (
        run / "ppo_sweep" / "_".join(f"{key}-{Path(text).parent.name or text}" for key, text in fixed.items())
    )
    own = {step: PPOConfig(**settings[step]) for step in ("ppo", "ppo_ptx") if step in settings}

    models, seconds = {}, {}
    for text, value in zip(args.values, values):
        name = f"{args.param}_{Path(text).name if '/' in text else text}"  # a path: its last folder
        cfg = dataclasses.replace(base, **{args.param: value})
        reuse = [step for step, c in own.items() if same_training(c, cfg)]
        if reuse and (run / reuse[0] / "model.safetensors").exists():
            models[name] = run / reuse[0]
            continue
        out = work / name
        start = time.time()
        ppo.run(dataclasses.replace(cfg, out=str(out), resume=True))
        seconds[name] = round(time.time() - start, 1)
        models[name] = out

    eval_cfg = dataclasses.replace(
        EvalConfig(**settings["eval"]),
        out=str(work / f"eval_{args.param}"),
        models=[f"sft={run / 'sft'}"] + [f"{name}={path}" for name, path in models.items()],
        reference="sft",
        best_of_n=[],
        curves=[],
    )
    report = evaluate(eval_cfg)
    rows = []
    for value, name in zip(values, models):
        m = report["models"][name]
        rows.append(
            {
                args.param: value,
                "model": str(models[name]),
                **{key: m[key] for key in ROWS},
                "gold_dims": {dim: m["gold_dims"][dim] for dim in DIMS},
                "train_seconds": seconds.get(name),
            }
        )
    sft = report["models"]["sft"]
    print(
        f"SFT: gold {sft['gold_score']:.2f}, perplexity {sft['pretrain_ppl']:.3f}, "
        + ", ".join(f"{dim} {sft['gold_dims'][dim]:.2f}" for dim in DIMS)
    )
    print(
        f"{args.param:>10} {'win vs SFT':>11} {'95% CI':>15} {'gold':>6} {'KL':>6} {'ppl':>7} "
        + " ".join(f"{dim:>8}" for dim in DIMS)
    )
    for r in rows:
        lo, hi = r["win_rate_ci"]
        print(
            f"{r[args.param]!s:>10} {r['win_rate']:>11.3f} [{lo:.3f}, {hi:.3f}] {r['gold_score']:>6.2f} "
            f"{r['kl_to_sft']:>6.2f} {r['pretrain_ppl']:>7.3f} "
            + " ".join(f"{r['gold_dims'][dim]:>8.2f}" for dim in DIMS)
        )
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(run),
        "base": args.base,
        "param": args.param,
        "fixed": fixed,
        "sft": {key: sft[key] for key in ("gold_score", "pretrain_ppl")}
        | {"gold_dims": {dim: sft["gold_dims"][dim] for dim in DIMS}},
        "n_prompts": report["n_prompts"],
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(out_path + ".json").write_text(json.dumps(result, indent=2))
    plot(rows, args.param, sft["pretrain_ppl"], out_path + ".png")
    print(f"wrote {out_path}.json and {out_path}.png")


def plot(rows: list[dict], param: str, sft_ppl: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = all(isinstance(r[param], (int, float)) for r in rows)
    xs = [float(r[param]) for r in rows] if numeric else list(range(len(rows)))  # paths: one tick each
    fig, (ax_ppl, ax_win) = plt.subplots(1, 2, figsize=(10, 4))
    ax_ppl.plot(xs, [r["pretrain_ppl"] for r in rows], "o-", label="policy")
    ax_ppl.axhline(sft_ppl, color="gray", linestyle="--", label="SFT")
    ax_ppl.set_ylabel("perplexity on held-out pretraining text")
    ax_win.errorbar(
        xs,
        [r["win_rate"] for r in rows],
        yerr=[
            [r["win_rate"] - r["win_rate_ci"][0] for r in rows],
            [r["win_rate_ci"][1] - r["win_rate"] for r in rows],
        ],
        fmt="o-",
        capsize=3,
    )
    ax_win.axhline(0.5, color="gray", linestyle="--")
    ax_win.set_ylabel("win rate vs SFT (95% CI)")
    positive = [x for x in xs if x > 0]
    for ax in (ax_ppl, ax_win):
        ax.set_xlabel(param)
        if not numeric:
            ax.set_xticks(xs, [str(r[param]) for r in rows], fontsize=7)
        elif positive and max(positive) / min(positive) >= 8:
            ax.set_xscale("symlog", linthresh=min(positive))
    ax_ppl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
