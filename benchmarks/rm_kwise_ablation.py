"""InstructGPT's claim about Step2, measured: all C(K,2) pairs of a prompt in ONE batch element (K-wise) versus
the same pairs shuffled as independent elements. Same comparisons, same SFT init, same epochs and learning rate.

    .venv/bin/python benchmarks/rm_kwise_ablation.py --run runs/demo     # after `rlhfkit pipeline --out runs/demo`

Reports held-out pairwise accuracy, agreement with the held-out panel, the train/val accuracy gap (over-fitting),
the wall time of each, and writes benchmarks/results/rm_kwise_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlhfkit.config import RewardConfig, preset_config
from rlhfkit.data import load_preferences
from rlhfkit.stages import reward
from rlhfkit.training import quiet_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/demo", help="a finished pipeline run (its sft/ and comparisons)"
    )
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", default="runs/rm_ablation")
    parser.add_argument("--json", default="benchmarks/results/rm_kwise_ablation.json")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    items = load_preferences(run / "data" / "comparisons.jsonl")
    pairs_per_prompt = round(sum(len(i.pairs()) for i in items) / len(items))

    rows = []
    for epochs in args.epochs:
        for kwise in (True, False):
            out = Path(args.out) / f"{'kwise' if kwise else 'pairs'}_ep{epochs:g}"
            cfg = preset_config(
                RewardConfig,
                out=str(out),
                model=str(run / "sft"),
                data=str(run / "data" / "comparisons.jsonl"),
                kwise=kwise,
                epochs=epochs,
                lr=args.lr,
                batch_size=8 if kwise else 8 * pairs_per_prompt,
            )  # same pairs per step
            start = time.time()
            reward.run(cfg)
            seconds = time.time() - start
            ev = json.loads((out / "eval.json").read_text())
            rows.append(
                {
                    "mode": "K-wise" if kwise else "independent pairs",
                    "epochs": epochs,
                    "val_accuracy": ev["val_accuracy"],
                    "train_accuracy": ev["train_accuracy"],
                    "gap": ev["train_accuracy"] - ev["val_accuracy"],
                    "val_loss": ev["val_loss"],
                    "panel_agreement": ev.get("panel_agreement"),
                    "seconds": round(seconds, 1),
                }
            )

    print(
        f"\n{'mode':<18} {'epochs':>6} {'val acc':>8} {'train acc':>9} {'gap':>6} {'val loss':>8} {'panel':>6} {'sec':>6}"
    )
    for r in rows:
        print(
            f"{r['mode']:<18} {r['epochs']:>6g} {r['val_accuracy']:>8.3f} {r['train_accuracy']:>9.3f} "
            f"{r['gap']:>6.3f} {r['val_loss']:>8.3f} {r['panel_agreement'] or 0:>6.3f} {r['seconds']:>6.1f}"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"run": str(run), "lr": args.lr, "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
