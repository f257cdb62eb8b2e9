"""Iterated RLHF rounds on a finished run: does showing the reward model what the policy writes keep PPO honest?

    .venv/bin/python benchmarks/rlhf_rounds.py --run runs/demo --rounds 3 --iterations-total 60 \\
        --set ppo.kl_coef=0.05 [--rm-update continue|retrain] [--rm-data new|all] [--ensemble 3 \\
        --ensemble-reduce mean_minus_std --ensemble-lambda 1] [--name NAME]

Trains N PPO rounds of T/N iterations from the run's SFT model and reward model (`rlhfkit.rounds`: round r's
policy and SFT answer a fresh part of the label prompts, the run's labelers rank them, the reward model is updated —
continued or retrained — and PPO continues from round r's policy with the KL still to SFT), then evaluates every
round's policy with the run's eval settings (held-out panel, win rate vs SFT with its interval, gold, KL to SFT,
perplexity). `--rounds 1` is the baseline: PPO for T iterations on the run's reward model (or the ensemble).
Per round it also reports the accuracy (agreement with the held-out panel, ties excluded) of the reward model PPO
optimised on that round's policy's answers — measured before the reward model is updated — and of the updated
one on the held-out part of those answers.

The run's Step2 ranked every prompt of the RM split, so by default the rounds rank the RL split (`--label-prompts
rl`, disjoint parts per round: no prompt is ranked twice); `--label-prompts rm` ranks the RM split again (new
answers, prompts the run's reward model trained on). The figure puts gold against KL across the rounds, beside the
run's PPO and, when the run has one (`ppo_gold/`), the gold-reward PPO (its eval point, and its training curve where
its metrics.jsonl logs "gold").

Everything is written under RUN/rounds/NAME (each step resumes: a killed benchmark continues where it stopped);
results to benchmarks/results/NAME.{json,png}. Settings: `--set STEP.KEY=VALUE` for the label, reward, ppo or eval
step (a bare KEY is PPO's), on top of the run's config.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from rlhfkit import rounds
from rlhfkit.config import EvalConfig, LabelConfig, PPOConfig, RewardConfig, key_values, parse_setting
from rlhfkit.data import load_preferences, read_records
from rlhfkit.ensemble import load_judge
from rlhfkit.evaluate import accuracy_on_samples
from rlhfkit.evaluate import run as evaluate
from rlhfkit.modeling import for_inference
from rlhfkit.stages import label, ppo, reward
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.training import is_finished, quiet_libraries, read_metrics

STEPS = {"label": LabelConfig, "reward": RewardConfig, "ppo": PPOConfig, "eval": EvalConfig}
ROWS = ("win_rate", "win_rate_ci", "gold_score", "kl_to_sft", "pretrain_ppl", "mean_length", "eos_fraction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a finished `rlhfkit pipeline` directory")
    parser.add_argument("--rounds", type=int, default=3, help="N: PPO rounds (1 = no rounds, the baseline)")
    parser.add_argument("--iterations-total", type=int, default=60, help="T: PPO iterations over all rounds")
    parser.add_argument("--rm-update", default="continue", choices=rounds.RM_UPDATES)
    parser.add_argument(
        "--rm-data", default="new", choices=rounds.RM_DATA, help="continue on the new comparisons or on all"
    )
    parser.add_argument(
        "--mix-share", type=float, default=0.5, help="share of each prompt's K answers by SFT"
    )
    parser.add_argument(
        "--label-prompts", default="rl", choices=["rl", "rm"], help="the split the rounds rank"
    )
    parser.add_argument("--ensemble", type=int, default=1, help="M reward models per reward step")
    parser.add_argument(
        "--ensemble-bootstrap", action="store_true", help="members train on bootstrap resamples"
    )
    parser.add_argument("--ensemble-reduce", default=None, help="PPO's reduce (default: PPOConfig's)")
    parser.add_argument("--ensemble-lambda", type=float, default=None, help="PPO's λ (default: PPOConfig's)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="STEP.KEY=VALUE", help="settings on the run's"
    )
    parser.add_argument("--name", default=None, help="results name (default from the settings)")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    steps = run_steps(run, args)
    plan = rounds.RoundPlan(
        rounds=args.rounds,
        iterations_total=args.iterations_total,
        label_prompts=str(run / "data" / "rl_prompts.jsonl") if args.label_prompts == "rl" else "world",
        rm_update=args.rm_update,
        rm_data=args.rm_data,
        mix_share=args.mix_share,
        ensemble=args.ensemble,
        ensemble_bootstrap=args.ensemble_bootstrap,
    )
    name = args.name or default_name(args, steps["ppo"])
    work = run / "rounds" / name
    same_settings(work, plan, steps)
    seconds = read_json(work / "seconds.json")  # a resumed benchmark keeps the times of the steps it skips

    def timed(key: str, step: str, cfg) -> None:
        if finished(step, cfg):
            return
        began = time.time()
        run_step(step, cfg)
        seconds[key] = round(time.time() - began, 1)
        work.mkdir(parents=True, exist_ok=True)
        (work / "seconds.json").write_text(json.dumps(seconds, indent=2))

    first = rounds.reward_0_config(steps, plan, work)
    if first is not None:
        timed("reward_0", "reward", first)
    for r in range(1, plan.rounds + 1):
        for step, cfg in rounds.round_configs(steps, plan, work, r).items():
            timed(f"round_{r}/{step}", step, cfg)
    timed(f"round_{plan.rounds + 1}/label", "label", rounds.measure_config(steps, plan, work))

    # Every round's policy judged by the held-out panel against the run's SFT, as the run's eval judged its models.
    policies = {f"round_{r}": rounds.round_dir(work, r) / "ppo" for r in range(1, plan.rounds + 1)}
    others = {name: run / name for name in ("ppo", "ppo_gold") if is_finished(run / name)}
    eval_cfg = dataclasses.replace(
        steps["eval"],
        out=str(work / "eval"),
        models=[f"sft={steps['ppo'].policy}"]
        + [f"run_{n}={p}" for n, p in others.items()]
        + [f"{n}={p}" for n, p in policies.items()],
        reference="sft",
        best_of_n=[],
        curves=[],
    )
    timed("eval", "eval", eval_cfg)
    report = read_json(work / "eval" / "report.json")

    rows = [round_row(report, steps, plan, work, r) for r in range(1, plan.rounds + 1)]
    rows[-1]["rm_on_own_policy"] = last_rm_accuracy(steps, plan, work)
    sft = report["models"]["sft"]
    result = {
        "run": str(run),
        "work": str(work),
        "plan": dataclasses.asdict(plan),
        "settings": {key: value for key, value in key_values(args.set).items()},
        "ppo": {
            k: getattr(steps["ppo"], k)
            for k in ("kl_coef", "adaptive_kl", "ensemble_reduce", "ensemble_lambda")
        },
        "label": {
            k: getattr(steps["label"], k) for k in ("k", "rounds", "n_labelers", "label_noise", "seed")
        },
        "n_prompts": report["n_prompts"],
        "samples_per_prompt": report["samples_per_prompt"],
        "date": time.strftime("%Y-%m-%d"),
        "sft": {k: sft.get(k) for k in ("gold_score", "pretrain_ppl")},
        "others": {name: {k: report["models"][f"run_{name}"].get(k) for k in ROWS} for name in others},
        "gold_curve": gold_curve(run / "ppo_gold") if "ppo_gold" in others else [],
        "rounds": rows,
        "seconds": seconds,
        "run_seconds": read_json(run / "timings.json"),
    }
    print_table(result)
    out = Path("benchmarks/results") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    plot(result, f"{out}.png")
    print(f"wrote {out}.json and {out}.png")


# ---------------------------------------------------------------------------------------------------------------
# Settings: the run's, with --set on top.


def run_steps(run: Path, args) -> dict:
    """The run's label, reward, ppo and eval settings (its config.yaml), with --set STEP.KEY=VALUE applied and PPO's
    ensemble flags; every value checked before anything trains."""
    config = run / "config.yaml"
    if not config.is_file() or not is_finished(run / "reward"):
        raise SystemExit(
            f"rlhf_rounds: {run} is not a finished `rlhfkit pipeline` run (no config.yaml or reward/)"
        )
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    changes: dict[str, dict] = {step: {} for step in STEPS}
    try:
        for key, text in key_values(args.set).items():
            step, _, field = key.rpartition(".")
            step = step or "ppo"
            if step not in STEPS:
                raise ValueError(f"--set {key}: the step must be one of {', '.join(STEPS)}")
            changes[step][field] = parse_setting(STEPS[step], field, text)
        for flag in ("ensemble_reduce", "ensemble_lambda"):
            if getattr(args, flag) is not None:
                changes["ppo"][flag] = getattr(args, flag)
        return {
            step: dataclasses.replace(cls(**settings[step]), **changes[step]) for step, cls in STEPS.items()
        }
    except ValueError as error:
        raise SystemExit(f"rlhf_rounds: {error}") from None


def default_name(args, ppo_cfg: PPOConfig) -> str:
    ensemble = f"_ens{args.ensemble}{ppo_cfg.ensemble_reduce}" if args.ensemble > 1 else ""
    data = f"_{args.rm_data}" if args.rm_update == "continue" else ""
    return (
        f"rlhf_rounds_{args.rounds}x{args.iterations_total // max(args.rounds, 1)}_kl{ppo_cfg.kl_coef}"
        f"_{args.rm_update}{data}{ensemble}_seed{ppo_cfg.seed}"
    )


def same_settings(work: Path, plan: rounds.RoundPlan, steps: dict) -> None:
    """A benchmark resumed in `work` must have the settings its finished steps were made with: recorded there by
    its first run (settings.json), compared by every later one."""
    now = json.loads(
        json.dumps({"plan": dataclasses.asdict(plan), **{k: dataclasses.asdict(v) for k, v in steps.items()}})
    )
    path = work / "settings.json"
    if path.is_file():
        before = read_json(path)
        changed = sorted(
            f"{step}.{key}"
            for step in now
            for key in now[step]
            if isinstance(now[step], dict) and before.get(step, {}).get(key) != now[step][key]
        )
        if changed:
            raise SystemExit(
                f"rlhf_rounds: {work} was made with other settings ({', '.join(changed[:6])}); give another --name"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=2, ensure_ascii=False))


def finished(step: str, cfg) -> bool:
    """A step done earlier: its comparisons file, its finished model; the eval's report, when it judged the
    policies of this benchmark's last run (a round retrained since is newer than the report)."""
    if step == "label":
        return Path(cfg.out).is_file()
    if step == "eval":
        report = Path(cfg.out) / "report.json"
        models = [Path(pair.partition("=")[2]) / "rlhfkit.json" for pair in cfg.models]
        return report.is_file() and all(m.stat().st_mtime < report.stat().st_mtime for m in models)
    return is_finished(cfg.out)


def run_step(step: str, cfg) -> None:
    """One step; reward and ppo with --resume, so a killed one continues from its checkpoint."""
    if step == "label":
        label.run(cfg)
    elif step == "reward":
        reward.run(dataclasses.replace(cfg, resume=True))
    elif step == "ppo":
        ppo.run(dataclasses.replace(cfg, resume=True))
    else:
        evaluate(cfg)


# ---------------------------------------------------------------------------------------------------------------
# What each round measured.


def round_row(report: dict, steps: dict, plan: rounds.RoundPlan, work: Path, r: int) -> dict:
    """Round r's policy (eval) and its reward models: the one PPO optimised, graded on this policy's answers before
    it was updated (round r+1's reward eval.json), and the updated one on the held-out part of them."""
    model = report["models"][f"round_{r}"]
    row = {
        "round": r,
        "iterations": plan.iterations * r,
        "reward_model": rounds.reward_model_of(steps, plan, work, r),
        **{key: model.get(key) for key in ROWS},
        "gold_dims": model.get("gold_dims"),
    }
    after = read_json(rounds.round_dir(work, r + 1) / "reward" / "eval.json").get("accuracy_on_new_samples")
    if after:
        row["rm_on_own_policy"] = after["previous"]
        row["updated_rm_on_held_out"] = after["new_on_val"]
        row["labels_vs_panel_agreement"] = after["labels_vs_panel_agreement"]
    return row


def last_rm_accuracy(steps: dict, plan: rounds.RoundPlan, work: Path) -> dict:
    """The last reward model on the last policy's answers (the measurement rankings, which nothing trained on)."""
    path = rounds.comparisons_of(work, plan.rounds + 1)
    judge_dir = rounds.reward_model_of(steps, plan, work, plan.rounds)
    tokenizer = load_tokenizer(judge_dir)
    judge = for_inference(load_judge(judge_dir, tokenizer.pad_token_id))
    items = list(load_preferences(path))
    writers = [record.get("models") for _, record in read_records(path)]
    return accuracy_on_samples(judge, tokenizer, items, steps["reward"].max_len, writers)


def gold_curve(path: Path) -> list[dict]:
    """(step, kl, gold) of the gold-reward PPO's training rollouts, where its metrics.jsonl logs the gold score."""
    rows = read_metrics(path)
    key = next((k for k in ("gold", "gold_score") if rows and k in rows[0]), None)
    return [{"step": r["step"], "kl": r["kl"], "gold": r[key]} for r in rows if key and "kl" in r]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def print_table(result: dict) -> None:
    def acc(stats: dict | None) -> str:
        value = (stats or {}).get("panel_agreement")
        return f"{value:.3f}" if value is not None else "—"

    print(f"SFT gold {result['sft']['gold_score']:.2f}; plan {result['plan']}")
    print(
        f"{'model':>10} {'iters':>6} {'win vs SFT':>11} {'95% CI':>15} {'gold':>6} {'KL':>6} {'ppl':>7} "
        f"{'RM on own policy':>17} {'updated RM':>11}"
    )
    for name, m in result["others"].items():
        lo, hi = m["win_rate_ci"]
        print(
            f"{'run ' + name:>10} {'':>6} {m['win_rate']:>11.3f} [{lo:.3f}, {hi:.3f}] {m['gold_score']:>6.2f} "
            f"{m['kl_to_sft']:>6.2f} {m['pretrain_ppl']:>7.3f}"
        )
    for row in result["rounds"]:
        lo, hi = row["win_rate_ci"]
        print(
            f"{'round ' + str(row['round']):>10} {row['iterations']:>6} {row['win_rate']:>11.3f} [{lo:.3f}, "
            f"{hi:.3f}] {row['gold_score']:>6.2f} {row['kl_to_sft']:>6.2f} {row['pretrain_ppl']:>7.3f} "
            f"{acc(row.get('rm_on_own_policy')):>17} {acc(row.get('updated_rm_on_held_out')):>11}"
        )
    print("seconds:", json.dumps(result["seconds"]))


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rounds"]
    fig, (ax_gold, ax_win, ax_rm) = plt.subplots(1, 3, figsize=(15, 4.2))
    kl = [0.0] + [r["kl_to_sft"] for r in rows]
    gold = [result["sft"]["gold_score"]] + [r["gold_score"] for r in rows]
    ax_gold.plot(
        kl,
        gold,
        "o-",
        label=f"PPO, {len(rows)} round(s) of {result['plan']['iterations_total'] // len(rows)}",
    )
    for r, x, y in zip(rows, kl[1:], gold[1:]):
        ax_gold.annotate(f"r{r['round']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_gold.plot([0.0], [result["sft"]["gold_score"]], "ks", label="SFT")
    markers = {"ppo": ("^", "the run's PPO"), "ppo_gold": ("*", "gold-reward PPO (the run's)")}
    for name, m in result["others"].items():
        marker, what = markers.get(name, ("x", name))
        ax_gold.plot([m["kl_to_sft"]], [m["gold_score"]], marker, markersize=10, label=what)
    if result["gold_curve"]:
        curve = result["gold_curve"]
        ax_gold.plot(
            [c["kl"] for c in curve],
            [c["gold"] for c in curve],
            "--",
            alpha=0.6,
            label="gold PPO, training rollouts",
        )
    ax_gold.set_xlabel("KL to SFT (nats, eval)")
    ax_gold.set_ylabel("gold score (held-out eval prompts)")
    ax_gold.legend(fontsize=7)

    xs = [r["round"] for r in rows]
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
    ax_win.set_xlabel("round")
    ax_win.set_ylabel("win rate vs SFT (95% CI)")
    ax_win.set_xticks(xs)

    own = [(r["round"], r["rm_on_own_policy"]["panel_agreement"]) for r in rows if r.get("rm_on_own_policy")]
    updated = [
        (r["round"], r["updated_rm_on_held_out"]["panel_agreement"])
        for r in rows
        if r.get("updated_rm_on_held_out")
    ]
    if own:
        ax_rm.plot(*zip(*own), "o-", label="the RM PPO optimised, on its policy's answers")
    if updated:
        ax_rm.plot(*zip(*updated), "s--", label="the updated RM, on held-out ones of them")
    ax_rm.set_xlabel("round (its policy's answers)")
    ax_rm.set_ylabel("agreement with the held-out panel")
    ax_rm.set_xticks(xs)
    ax_rm.legend(fontsize=7)
    fig.suptitle(
        f"{Path(path).stem}: {result['plan']['rm_update']} reward model, ensemble {result['plan']['ensemble']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
