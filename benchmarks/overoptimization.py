"""Reward over-optimisation (Gao et al. 2022): gold score and proxy (RM) reward against √KL from SFT.

    .venv/bin/python benchmarks/overoptimization.py --run runs/demo     # after `rlhfkit pipeline --out runs/demo`

Points: best-of-n from the SFT model for n = 1…64 (KL = log n − (n−1)/n, analytic), and every trained policy of the
run (PPO, PPO-ptx, DPO, RLOO: KL estimated from samples). Gold = the held-out oracle's score; proxy = the reward
model the methods optimised. Where the proxy keeps rising but gold flattens or falls, the RM is being exploited —
the figure tells a user how far to push β. Writes benchmarks/results/overoptimization.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from rlhfkit.batching import score_responses
from rlhfkit.evaluate import kl_to_reference
from rlhfkit.losses import best_of_n_kl
from rlhfkit.modeling import load_causal_lm, load_reward_model
from rlhfkit.rollout import generate_answers
from rlhfkit.tokenizer import load_tokenizer
from rlhfkit.training import quiet_libraries
from rlhfkit.world import score, split_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument(
        "--prompts", type=int, default=60, help="eval prompts used (the first N of the split)"
    )
    parser.add_argument("--out", default="benchmarks/results/overoptimization")
    args = parser.parse_args()
    quiet_libraries()
    run = Path(args.run)
    prompts = [t.prompt for t in split_prompts()["eval"][: args.prompts]]
    tokenizer = load_tokenizer(run / "sft")
    sft = load_causal_lm(run / "sft").eval()
    rm = load_reward_model(run / "reward", tokenizer.pad_token_id).eval()

    # Best-of-n: one pool of 64 samples per prompt at T = 1; best-of-n takes the RM's best of the first n.
    pool_n = max(args.n)
    repeated = [p for p in prompts for _ in range(pool_n)]
    answers = generate_answers(sft, tokenizer, repeated, True, 64, 1.0, 1.0, seed=0)
    proxy = score_responses(rm, tokenizer, repeated, [a for a, _ in answers], [e for _, e in answers])
    gold = torch.tensor([score(p, a, e).total for p, (a, e) in zip(repeated, answers)])
    proxy, gold = proxy.view(len(prompts), pool_n), gold.view(len(prompts), pool_n)
    points = []
    for n in args.n:
        best = proxy[:, :n].argmax(1)
        rows = torch.arange(len(prompts))
        points.append(
            {
                "method": f"best_of_{n}",
                "kind": "best_of_n",
                "kl": best_of_n_kl(n),
                "proxy": proxy[rows, best].mean().item(),
                "gold": gold[rows, best].mean().item(),
            }
        )

    for name in ("ppo", "ppo_ptx", "dpo", "rloo"):
        if not (run / name / "model.safetensors").exists():
            continue
        policy = load_causal_lm(run / name).eval()
        out = generate_answers(policy, tokenizer, prompts, True, 64, 1.0, 1.0, seed=1)
        r = score_responses(rm, tokenizer, prompts, [a for a, _ in out], [e for _, e in out])
        g = [score(p, a, e).total for p, (a, e) in zip(prompts, out)]
        kl = kl_to_reference(policy, sft, tokenizer, prompts, 64, seed=2)
        points.append(
            {"method": name, "kind": "trained", "kl": kl, "proxy": r.mean().item(), "gold": sum(g) / len(g)}
        )

    print(f"{'method':<12} {'KL':>7} {'√KL':>6} {'proxy (RM)':>11} {'gold':>6}")
    for p in points:
        print(
            f"{p['method']:<12} {p['kl']:>7.3f} {math.sqrt(max(p['kl'], 0)):>6.3f} {p['proxy']:>11.3f} {p['gold']:>6.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(
        json.dumps({"run": str(run), "prompts": len(prompts), "points": points}, indent=2)
    )
    plot(points, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


def plot(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(10, 4))
    bon = [p for p in points if p["kind"] == "best_of_n"]
    for ax, key, title in (
        (ax_gold, "gold", "gold score (held-out oracle)"),
        (ax_proxy, "proxy", "proxy reward (RM)"),
    ):
        ax.plot([math.sqrt(p["kl"]) for p in bon], [p[key] for p in bon], "o-", label="best-of-n")
        for p in points:
            if p["kind"] == "trained":
                ax.scatter(math.sqrt(max(p["kl"], 0)), p[key], marker="s", s=50, label=p["method"])
        ax.set_xlabel("√KL(π ‖ π_SFT)  (nats^½)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
