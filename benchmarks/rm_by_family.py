"""Where does the reward model fall short, and does the policy gain where it does not? Per prompt family.

    .venv/bin/python benchmarks/rm_by_family.py --runs runs/bench20k/seed0 runs/bench20k/seed1 runs/bench20k/seed2

For each finished `rlhfkit pipeline` directory: the reward model's agreement with the held-out panel on the
run's validation rankings, per family (travel, naming, explain, news), beside the agreement of the labels it was
trained on (its data's ceiling as the panel sees it) — the same figures as `reward/eval.json`'s
"panel_agreement_by_family", read from there or, for runs made before that field existed, recomputed; and
each trained policy's win rate against SFT per family, from the run's `eval/report.json` (`--eval-dir` names
another evaluation inside the run); where that evaluation wrote `answers.jsonl`, also each model's gold
on_topic and correct per family (is the answer about the asked city / concept / topic, and right about it);
and the RM's scores of the seed's own ranked answers (重庆 2-1 > 2-2 > 2-3, the punctuated 北京 answer first),
from eval.json's "seed_rankings" or scored anew. Writes benchmarks/results/rm_by_family.json (or --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rlhfkit.config import RewardConfig
from rlhfkit.labelers import read_settings
from rlhfkit.modeling import for_inference, load_reward_model
from rlhfkit.stages.reward import load_comparisons, reward_model_vs_gold, seed_rankings, split_by_prompt
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.training import quiet_libraries

FAMILIES = ("travel", "naming", "explain", "news")


def reward_by_family(run: Path) -> dict:
    """The run's RM against the panel on its own validation rankings (the split `rlhfkit reward` held out): read
    from its reward/eval.json, or computed as `rlhfkit reward` computes it for runs older than that field."""
    cfg = RewardConfig(**yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["reward"])
    report = json.loads((Path(cfg.out) / "eval.json").read_text(encoding="utf-8"))
    if "panel_agreement_by_family" not in report or "seed_rankings" not in report:
        tokenizer = load_tokenizer(cfg.out)
        model = for_inference(load_reward_model(cfg.out, tokenizer.pad_token_id, trained=True))
        if "panel_agreement_by_family" not in report:
            _, val = split_by_prompt(load_comparisons(cfg), cfg.val_fraction, cfg.seed)
            report.update(reward_model_vs_gold(model, tokenizer, val, cfg.max_len, read_settings(cfg.data)))
        report["seed_rankings"] = seed_rankings(model, tokenizer, cfg.max_len)
    return {
        "panel_agreement": report["panel_agreement"],
        "by_family": report["panel_agreement_by_family"],
        "seed_rankings": report["seed_rankings"],
    }


def policy_by_family(eval_dir: Path) -> dict:
    report = json.loads((eval_dir / "report.json").read_text())
    return {
        name: {f: m["by_family"][f]["win_rate"] for f in FAMILIES if f in m["by_family"]}
        for name, m in report["models"].items()
        if name not in ("gpt", report["reference"])
    }


def topic_by_family(eval_dir: Path) -> dict:
    """From eval/answers.jsonl (evals since it existed): each model's mean gold on_topic and correct per family."""
    path = eval_dir / "answers.jsonl"
    if not path.exists():
        return {}
    sums: dict = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["model"] == "gpt" or "gold_dims" not in row:
            continue
        cell = sums.setdefault(row["model"], {}).setdefault(row["family"], [0.0, 0.0, 0])
        cell[0] += row["gold_dims"]["on_topic"]
        cell[1] += row["gold_dims"]["correct"]
        cell[2] += 1
    return {
        model: {f: {"on_topic": t / n, "correct": c / n} for f, (t, c, n) in cells.items()}
        for model, cells in sums.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished `rlhfkit pipeline` directories")
    parser.add_argument("--eval-dir", default="eval", help="the evaluation inside each run to read")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rm_by_family.json"))
    args = parser.parse_args()
    quiet_libraries()

    results = {}
    for run in map(Path, args.runs):
        results[str(run)] = {
            "reward_model": reward_by_family(run),
            "win_rate_vs_sft": policy_by_family(run / args.eval_dir),
            "gold_by_family": topic_by_family(run / args.eval_dir),
        }

    print("reward model vs the held-out panel (labels vs the panel), per family")
    print(f"{'run':<28}" + "".join(f"{f:>16}" for f in FAMILIES) + f"{'all':>8}")
    for run, r in results.items():
        rm = r["reward_model"]
        cells = [rm["by_family"].get(f) for f in FAMILIES]
        print(
            f"{run:<28}"
            + "".join(f"{c['reward_model']:>8.3f} ({c['labels']:.3f})" if c else f"{'—':>16}" for c in cells)
            + f"{rm['panel_agreement']:>8.3f}"
        )
    print("\nthe seed's ranked answers, best first: the reward model's scores")
    for run, r in results.items():
        for ranking in r["reward_model"]["seed_rankings"]:
            scores = " / ".join(f"{x:+.2f}" for x in ranking["rewards"])
            verdict = "in order" if ranking["in_seed_order"] else "NOT in order"
            print(f"{run:<28}{ranking['prompt']:<20}{scores}  ({verdict})")
    print("\nwin rate vs SFT, per family")
    print(f"{'run':<28}{'model':<12}" + "".join(f"{f:>9}" for f in FAMILIES))
    for run, r in results.items():
        for name, wins in r["win_rate_vs_sft"].items():
            print(f"{run:<28}{name:<12}" + "".join(f"{wins.get(f, float('nan')):>9.3f}" for f in FAMILIES))

    if any(r["gold_by_family"] for r in results.values()):
        print("\ngold on_topic / correct per family (from answers.jsonl)")
        print(f"{'run':<28}{'model':<12}" + "".join(f"{f:>14}" for f in FAMILIES))
        for run, r in results.items():
            for name, cells in r["gold_by_family"].items():
                row = [cells.get(f) for f in FAMILIES]
                print(
                    f"{run:<28}{name:<12}"
                    + "".join(
                        f"{c['on_topic']:>7.2f} / {c['correct']:.2f}" if c else f"{'—':>14}" for c in row
                    )
                )

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
