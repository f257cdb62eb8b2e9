"""Can the reward model learn "is this answer about the asked city" at all? A clean probe, not the pipeline.

    .venv/bin/python benchmarks/rm_city_probe.py --run runs/bench/seed0 --epochs 2 10

The pipeline's reward model is right on only ~0.65 of the ranked pairs that differ in topic, and it ranks the seed's
成都 answer (2-3) above the 重庆 ones. This separates "cannot" from "was not shown enough": for every travel prompt
of the RM and RL splits it writes pairs of world demonstrations, one about the asked city (chosen) and one about
another city (rejected), trains a reward model on them from the run's SFT model exactly as `rlhfkit reward` does
(pairwise rows, last-token head, same lr), and reports held-out accuracy (prompts unseen in training) and the
scores of the seed's 重庆 answers. No labeler noise, no other differences: the cleanest signal the world has.
Writes benchmarks/results/rm_city_probe.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from rlhfkit.batching import score_responses
from rlhfkit.config import RewardConfig, preset_config
from rlhfkit.modeling import load_reward_model
from rlhfkit.stages import reward
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.training import quiet_libraries
from rlhfkit.world import split_prompts
from rlhfkit.world.facts import CITIES
from rlhfkit.world.tasks import demonstration

CHONGQING = "我想去重庆玩，有哪些好玩的地点呢？"
SEED_ANSWERS = [  # the seed's 2-1, 2-2, 2-3: gold order 2-1 > 2-2 > 2-3
    "重庆是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：重庆洪崖洞、三峡博物馆、南山一棵树、解放碑步行街。",
    "重庆是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：重庆洪崖洞、都江堰水利工程、三峡大坝、解放碑步行街。",
    "成都是一个充满活力和美食的城市，有很多值得一去的地方。以下是一些推荐：春熙路步行街、都江堰水利工程、华美极乐世界、少林寺。",
]


def city_pairs(per_prompt: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    splits = split_prompts(seed)
    cities = list(CITIES)
    rows = []
    for task in splits["rm"] + splits["rl"]:
        if task.family != "travel":
            continue
        for _ in range(per_prompt):
            other = rng.choice([c for c in cities if c != task.subject])
            chosen = demonstration(task, rng)
            rejected = demonstration(dataclasses.replace(task, subject=other), rng)
            rows.append({"prompt": task.prompt, "chosen": chosen, "rejected": rejected})
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/bench/seed0", help="a finished pipeline run (its sft/ is used)"
    )
    parser.add_argument("--epochs", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--pairs-per-prompt", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/rm_city_probe.json")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    work = run / "rm_city_probe"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "pairs.jsonl"
    rows = city_pairs(args.pairs_per_prompt)
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    results = []
    for epochs in args.epochs:
        out = work / f"epochs_{epochs:g}"
        cfg = preset_config(
            RewardConfig,
            out=str(out),
            model=str(run / "sft"),
            data=str(data),
            demonstrations="",
            epochs=epochs,
            lr=1e-3,
            batch_size=32,
            warmup_steps=5,
            eval_every=50,
            save_every=0,
        )
        start = time.time()
        reward.run(cfg)
        seconds = time.time() - start
        report = json.loads((out / "eval.json").read_text())
        tokenizer = load_tokenizer(out)
        model = load_reward_model(out, tokenizer.pad_token_id).eval()
        with torch.no_grad():
            scores = score_responses(model, tokenizer, [CHONGQING] * 3, SEED_ANSWERS).tolist()
        results.append(
            {
                "epochs": epochs,
                "val_accuracy": report["val_accuracy"],
                "train_accuracy": report["train_accuracy"],
                "chongqing_scores": scores,
                "chongqing_ordered": scores[0] > scores[1] > scores[2],
                "seconds": round(seconds, 1),
            }
        )

    print(
        f"{len(rows)} pairs (right city vs another city) from the RM + RL travel prompts; lr 1e-3, batch 32"
    )
    print(
        f"{'epochs':>6} {'val acc':>8} {'train acc':>10} {'重庆 2-1 / 2-2 / 2-3':>26} {'ordered':>8} {'s':>6}"
    )
    for r in results:
        s = " / ".join(f"{x:+.2f}" for x in r["chongqing_scores"])
        print(
            f"{r['epochs']:>6g} {r['val_accuracy']:>8.3f} {r['train_accuracy']:>10.3f} {s:>26} "
            f"{'yes' if r['chongqing_ordered'] else 'no':>8} {r['seconds']:>6.0f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": str(run), "pairs": len(rows), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
