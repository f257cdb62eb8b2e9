"""The ptx coefficient γ: alignment tax (perplexity on held-out pretraining text) and win rate vs SFT.

    .venv/bin/python benchmarks/ptx_sweep.py --run runs/bench/seed0 --coefs 0 0.1 0.3 1

InstructGPT mixes pretraining gradients into PPO (PPO-ptx) to pay back the "alignment tax"; γ sets how hard.
This trains PPO-ptx for each γ with the run's own PPO-ptx settings (its config.yaml; γ = 0 is plain PPO), reusing
the run's `ppo` / `ppo_ptx` models where γ matches, and evaluates them all against the run's SFT model with the
run's eval settings (held-out panel, same prompts and seed). Writes benchmarks/results/ptx_sweep.{json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from rlhfkit.config import EvalConfig, PPOConfig
from rlhfkit.evaluate import run as evaluate
from rlhfkit.stages import ppo
from rlhfkit.training import quiet_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench/seed0", help="a finished `rlhfkit pipeline` directory")
    parser.add_argument("--coefs", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0])
    parser.add_argument("--out", default="benchmarks/results/ptx_sweep")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    settings = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    base = PPOConfig(**settings["ppo_ptx"])

    models, seconds = {}, {}
    for coef in args.coefs:
        name = f"ptx_{coef:g}"
        reuse = run / ("ppo" if coef == 0 else "ppo_ptx")
        if (coef == 0 or coef == base.ptx_coef) and (reuse / "model.safetensors").exists():
            models[name] = reuse
            continue
        out = run / "ptx_sweep" / name
        start = time.time()
        ppo.run(dataclasses.replace(base, ptx_coef=coef, out=str(out), resume=True))
        seconds[name] = round(time.time() - start, 1)
        models[name] = out

    eval_cfg = EvalConfig(**settings["eval"])
    eval_cfg = dataclasses.replace(
        eval_cfg,
        out=str(run / "ptx_sweep" / "eval"),
        models=[f"sft={run / 'sft'}"] + [f"{name}={path}" for name, path in models.items()],
        reference="sft",
        best_of_n=[],
        curves=[],
    )
    report = evaluate(eval_cfg)
    rows = []
    for coef, name in zip(args.coefs, models):
        m = report["models"][name]
        rows.append(
            {
                "ptx_coef": coef,
                "model": str(models[name]),
                "win_rate": m["win_rate"],
                "win_rate_ci": m["win_rate_ci"],
                "gold_score": m["gold_score"],
                "kl_to_sft": m["kl_to_sft"],
                "pretrain_ppl": m["pretrain_ppl"],
                "train_seconds": seconds.get(name),
            }
        )
    sft_ppl = report["models"]["sft"]["pretrain_ppl"]
    print(f"SFT pretraining perplexity {sft_ppl:.3f}")
    print(f"{'γ':>5} {'win vs SFT':>11} {'95% CI':>15} {'gold':>6} {'KL':>6} {'ppl':>7}")
    for r in rows:
        lo, hi = r["win_rate_ci"]
        print(
            f"{r['ptx_coef']:>5g} {r['win_rate']:>11.3f} [{lo:.3f}, {hi:.3f}] {r['gold_score']:>6.2f} "
            f"{r['kl_to_sft']:>6.2f} {r['pretrain_ppl']:>7.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run), "sft_pretrain_ppl": sft_ppl, "n_prompts": report["n_prompts"], "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    plot(rows, sft_ppl, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


def plot(rows: list[dict], sft_ppl: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coefs = [r["ptx_coef"] for r in rows]
    fig, (ax_ppl, ax_win) = plt.subplots(1, 2, figsize=(10, 4))
    ax_ppl.plot(coefs, [r["pretrain_ppl"] for r in rows], "o-", label="PPO-ptx")
    ax_ppl.axhline(sft_ppl, color="gray", linestyle="--", label="SFT")
    ax_ppl.set_ylabel("perplexity on held-out pretraining text")
    ax_win.errorbar(
        coefs,
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
    for ax in (ax_ppl, ax_win):
        ax.set_xlabel("ptx coefficient γ (0 = PPO)")
        ax.set_xscale("symlog", linthresh=0.1)
    ax_ppl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
