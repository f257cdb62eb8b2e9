"""More comparison data for the reward model: does a better RM make PPO better? One pipeline run, several settings.

    .venv/bin/python benchmarks/rm_data_scaling.py --run runs/bench/seed0 --settings 2:2 8:3

Each setting is ROUNDS:EPOCHS[:LR] — `rlhfkit label --rounds ROUNDS` (K fresh SFT answers per RM prompt per round,
the next labeler each time) and `rlhfkit reward --epochs EPOCHS [--lr LR]`; `--set KEY=VALUE` fixes any other
`rlhfkit reward` option for every setting (e.g. batch_size=4); everything else is the run's own config.yaml. The
run's own setting reuses its `reward/` and `ppo/`. Every reward model is then judged on one common test set —
fresh K-answer samples for the RL prompts, the prompts PPO trains on — against the held-out panel and the gold
judge, and PPO is trained with it (the run's PPO settings) and evaluated against the run's SFT model (the run's
eval settings; `--no-ppo` skips this). Writes benchmarks/results/rm_data_scaling.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml

from rlhfkit.config import EvalConfig, LabelConfig, PPOConfig, RewardConfig, key_values, parse_setting
from rlhfkit.data import load_preferences
from rlhfkit.evaluate import run as evaluate
from rlhfkit.modeling import load_reward_model
from rlhfkit.stages import label, ppo, reward
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.training import quiet_libraries

TEST_SEED = 7  # the test set's samples are drawn with a seed no training set uses


def two(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def timed(fn, *args) -> float:
    start = time.time()
    fn(*args)
    return round(time.time() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench/seed0", help="a finished `rlhfkit pipeline` directory")
    parser.add_argument("--settings", nargs="+", default=["2:2", "8:3"], help="ROUNDS:EPOCHS[:LR]")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other reward-model settings (`rlhfkit reward` options), the same for every setting",
    )
    parser.add_argument("--no-ppo", action="store_true", help="judge the reward models only, train no PPO")
    parser.add_argument("--out", default="benchmarks/results/rm_data_scaling.json")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    settings = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    label_cfg, run_reward = LabelConfig(**settings["label"]), RewardConfig(**settings["reward"])
    try:  # read before anything trains; a bad --set item is named
        fixed = key_values(args.set)
        reward_cfg = dataclasses.replace(
            run_reward, **{key: parse_setting(RewardConfig, key, text) for key, text in fixed.items()}
        )
    except ValueError as error:
        raise SystemExit(f"rm_data_scaling: {error}") from None
    ppo_cfg = PPOConfig(**settings["ppo"])
    work = run / "rm_data_scaling"

    test_file = work / "test_rl_prompts.jsonl"
    if not test_file.exists():
        rl_prompts = str(run / "data" / "rl_prompts.jsonl")
        label.run(
            dataclasses.replace(label_cfg, prompts=rl_prompts, rounds=1, seed=TEST_SEED, out=str(test_file))
        )
    test_items = list(load_preferences(test_file))

    rows, policies = [], {}
    for setting in args.settings:
        rounds, epochs, *lr = setting.split(":")
        rounds, epochs, lr = int(rounds), float(epochs), float(lr[0]) if lr else reward_cfg.lr
        row = {
            "rounds": rounds,
            "epochs": epochs,
            "lr": lr,
            **{key: getattr(reward_cfg, key) for key in fixed},
            "label_seconds": None,
            "reward_seconds": None,
        }
        if (rounds, epochs, lr) == (label_cfg.rounds, run_reward.epochs, run_reward.lr) and not fixed:
            rm_dir, policy_dir = run / "reward", run / "ppo"
        else:
            # the rounds' data is shared by every epochs/lr setting that uses it
            data = work / f"rounds{rounds}_epochs{epochs:g}" / "comparisons.jsonl"
            data = next(work.glob(f"rounds{rounds}_*/comparisons.jsonl"), data)
            if rounds == label_cfg.rounds:
                data = Path(label_cfg.out)
            here = work / "_".join(
                [f"rounds{rounds}_epochs{epochs:g}"]
                + ([f"lr{lr:g}"] if lr != run_reward.lr else [])
                # a path given as a value (model=runs/x/gpt) names one directory, not a tree of them
                + [f"{key}{text.replace('/', '_')}" for key, text in fixed.items()]
            )
            rm_dir, policy_dir = here / "reward", here / "ppo"
            if not data.exists():
                row["label_seconds"] = timed(
                    label.run, dataclasses.replace(label_cfg, rounds=rounds, out=str(data))
                )
            if not (rm_dir / "eval.json").exists():
                cfg = dataclasses.replace(reward_cfg, data=str(data), epochs=epochs, lr=lr, out=str(rm_dir))
                row["reward_seconds"] = timed(reward.run, cfg)
            if not args.no_ppo and not (policy_dir / "model.safetensors").exists():
                ppo.run(dataclasses.replace(ppo_cfg, reward_model=str(rm_dir), out=str(policy_dir)))
        own = json.loads((rm_dir / "eval.json").read_text())
        tokenizer = load_tokenizer(rm_dir)
        model = load_reward_model(rm_dir, tokenizer.pad_token_id).eval()
        with torch.no_grad():
            test = reward.reward_model_vs_gold(model, tokenizer, test_items, reward_cfg.max_len)
        row.update(
            {
                "val_accuracy": own["val_accuracy"],
                "train_accuracy": own["train_accuracy"],
                "test_panel_agreement": test["panel_agreement"],
                "test_spearman_vs_gold": test["spearman_reward_vs_gold"],
                # a dimension no test pair differs in (e.g. a tiny run) has no accuracy
                "test_accuracy_on_topic": test["accuracy_by_dimension"].get("on_topic", {}).get("accuracy"),
                "test_accuracy_correct": test["accuracy_by_dimension"].get("correct", {}).get("accuracy"),
            }
        )
        if not args.no_ppo:
            policies[f"ppo_{policy_dir.parent.name}"] = policy_dir
        rows.append(row)

    sft = None
    if policies:
        eval_cfg = dataclasses.replace(
            EvalConfig(**settings["eval"]),
            out=str(work / "eval"),
            models=[f"sft={run / 'sft'}"] + [f"{name}={path}" for name, path in policies.items()],
            best_of_n=[],
            curves=[],
        )
        report = evaluate(eval_cfg)
        sft = report["models"]["sft"]
        for row, name in zip(rows, policies):
            m = report["models"][name]
            row["ppo"] = {
                "win_rate": m["win_rate"],
                "win_rate_ci": m["win_rate_ci"],
                "gold_score": m["gold_score"],
                "kl_to_sft": m["kl_to_sft"],
                "on_topic": m["gold_dims"]["on_topic"],
            }
        print(f"SFT: gold {sft['gold_score']:.2f}, on topic {sft['gold_dims']['on_topic']:.2f}")
    print(f"test set: {len(test_items)} rankings of fresh SFT answers to the RL prompts (seed {TEST_SEED})")
    if fixed:
        print("reward settings for every row: " + " ".join(args.set))
    print(
        f"{'rounds':>6} {'epochs':>6} {'lr':>7} {'val acc':>7} {'panel':>6} {'spearman':>8} {'on_topic':>8} "
        + (f"{'PPO win':>7} {'95% CI':>15} {'gold':>5} {'KL':>5} {'on topic':>8}" if policies else "")
    )
    for r in rows:
        line = (
            f"{r['rounds']:>6} {r['epochs']:>6g} {r['lr']:>7g} {r['val_accuracy']:>7.3f} "
            f"{r['test_panel_agreement']:>6.3f} {r['test_spearman_vs_gold']:>8.3f} {two(r['test_accuracy_on_topic']):>8}"
        )
        if "ppo" in r:
            p = r["ppo"]
            lo, hi = p["win_rate_ci"]
            line += (
                f" {p['win_rate']:>7.3f} [{lo:.3f}, {hi:.3f}] {p['gold_score']:>5.2f} {p['kl_to_sft']:>5.2f} "
                f"{p['on_topic']:>8.2f}"
            )
        print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(run),
        "test_rankings": len(test_items),
        "sft": sft and {"gold_score": sft["gold_score"], "on_topic": sft["gold_dims"]["on_topic"]},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
