"""Shared by `benchmarks/ppo_throughput.py` and the TRL workers next to this file (which run in their own venvs,
without rlhfkit): the per-iteration clock, the summary of its timings, and the workers' command line.

Timing model, the same for every system: an iteration runs from the end of the previous one (the end of its last
optimizer step) to the end of its own last optimizer step. Its *rollout* is the time spent in the sampling call
(prompt ids in, response ids out); everything else — reward/value/reference/old-policy forwards, advantages, the
clipped updates, logging — is *score+update*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Rollout:
    start: float
    end: float
    episodes: int
    tokens: int


@dataclass
class PhaseClock:
    """Collects rollout intervals and iteration ends (time.perf_counter seconds)."""

    rollouts: list[Rollout] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def add_rollout(self, start: float, end: float, episodes: int, tokens: int) -> None:
        self.rollouts.append(Rollout(start, end, episodes, tokens))

    def end_iteration(self, when: float | None = None) -> None:
        self.ends.append(time.perf_counter() if when is None else when)

    def iterations(self) -> list[dict]:
        """One row per finished iteration; the first starts when its rollout starts (model loading excluded)."""
        if not self.rollouts:
            return []
        rows, previous = [], self.rollouts[0].start
        for end in self.ends:
            inside = [r for r in self.rollouts if previous <= r.start < end]
            rows.append(
                {
                    "total_s": end - previous,
                    "rollout_s": sum(r.end - r.start for r in inside),
                    "episodes": sum(r.episodes for r in inside),
                    "tokens": sum(r.tokens for r in inside),
                }
            )
            previous = end
        return rows


def summarize(iterations: list[dict], warmup: int) -> dict:
    """Rates over the iterations after `warmup`: episodes/s and generated tokens/s per phase.

    The headline rates use the median iteration (phase by phase), which a burst of load from another process
    moves least; the means are there too."""
    kept = iterations[warmup:]
    if not kept:
        raise ValueError(f"no timed iteration: {len(iterations)} finished, {warmup} of them warm-up")
    times = {
        "rollout": [r["rollout_s"] for r in kept],
        "update": [r["total_s"] - r["rollout_s"] for r in kept],
        "total": [r["total_s"] for r in kept],
    }
    episodes = sum(r["episodes"] for r in kept) / len(kept)  # per iteration
    tokens = sum(r["tokens"] for r in kept) / len(kept)
    median = {phase: statistics.median(t) for phase, t in times.items()}
    mean = {phase: statistics.mean(t) for phase, t in times.items()}
    return {
        "iterations_timed": len(kept),
        "warmup_iterations": warmup,
        "s_per_iteration": median,
        "episodes_per_s": {phase: episodes / t for phase, t in median.items()},
        "tokens_per_s": {phase: tokens / t for phase, t in median.items()},
        "mean_s_per_iteration": mean,
        "mean_episodes_per_s": {phase: episodes / t for phase, t in mean.items()},
        "episodes_per_iteration": episodes,
        "mean_response_tokens": tokens / episodes,
        "per_iteration": iterations,
    }


def response_tokens(responses, eos_id: int) -> int:
    """Generated tokens of a (B, R) response tensor: up to and including the first EOS, else the whole row."""
    is_eos = responses == eos_id
    width = responses.shape[1]
    lengths = (is_eos.int().argmax(1) + 1).where(is_eos.any(1), width)
    return int(lengths.sum())


def peer_args() -> argparse.ArgumentParser:
    """The command line every worker takes (ppo_throughput.py passes the same settings to all)."""
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True, help="causal LM dir (with its tokenizer)")
    p.add_argument("--reward", required=True, help="sequence-classification (num_labels=1) dir")
    p.add_argument("--prompts", required=True, help="JSONL of {'prompt'}")
    p.add_argument("--workdir", required=True, help="scratch output_dir for the trainer")
    p.add_argument("--result", required=True, help="JSON file to write")
    p.add_argument(
        "--iterations", type=int, required=True, help="rollout→update iterations, warm-up included"
    )
    p.add_argument("--batch-size", type=int, required=True, help="episodes per rollout")
    p.add_argument("--mini-batch-size", type=int, required=True, help="episodes per optimizer step")
    p.add_argument("--ppo-epochs", type=int, required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--temperature", type=float, required=True)
    p.add_argument("--kl-coef", type=float, required=True)
    p.add_argument("--vf-coef", type=float, required=True)
    p.add_argument("--cliprange", type=float, required=True)
    p.add_argument("--rloo-k", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--missing-eos-penalty", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    return p


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("trl", "transformers", "torch", "accelerate")}


def write_result(path: str, **payload) -> None:
    Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
