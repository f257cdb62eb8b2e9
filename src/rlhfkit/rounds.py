"""Iterated RLHF rounds (Bai et al. 2022's online RLHF, Llama 2's rounds) as stage settings: what `label`, `reward`
and `ppo` are given in each round, so a pipeline (or `benchmarks/rlhf_rounds.py`) runs them as steps of a DAG.

Round r of N (PPO iterations T in all, T/N a round), under a directory `out`:

    round 1   ppo     SFT → round_1/ppo against reward_0 (the run's reward model, or an ensemble trained anew)
    round r   label   round_{r-1}/ppo's answers beside SFT's, on part r-1 of N of the label prompts, ranked by the
                      run's labelers → round_r/comparisons.jsonl
              reward  continue: from reward_{r-1} on them (--rm-data all: and on every earlier round's);
                      retrain: from SFT on all comparisons → round_r/reward (its eval.json: the previous reward
                      model's accuracy on these answers, the policy's that it was optimised into, and its own)
              ppo     round_{r-1}/ppo → round_r/ppo against round_r/reward, KL still to SFT, the value model and
                      the rollout numbering carried on (`stages.ppo.continued_from`)
    then      label   round_N/ppo's answers on part N of N → round_{N+1}/comparisons.jsonl: the last reward model
                      graded on the last policy (`measure_config`; nothing trains on them)

Every round's prompts are a disjoint part of the label prompts (`label --prompt-part`), so no prompt is ranked twice
across rounds. The run's own Step2 ranked the RM split; on a finished run the rounds therefore rank the RL split
(`label_prompts`), which Step2 never saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LabelConfig, PPOConfig, RewardConfig
from rlhfkit.errors import UsageError

RM_UPDATES = ("continue", "retrain")
RM_DATA = ("new", "all")


@dataclass
class RoundPlan:
    """How the rounds run (`benchmarks/rlhf_rounds.py`'s flags; a pipeline's `--rlhf-rounds` settings)."""

    rounds: int  # N: PPO rounds, each of iterations_total / N iterations
    iterations_total: int  # T: PPO iterations over all rounds
    label_prompts: str  # prompts the rounds rank, in N disjoint parts ('world' = the RM split, or a file)
    rm_update: str = (
        "continue"  # continue the previous reward model | retrain one from SFT on all comparisons
    )
    rm_data: str = "new"  # continue on this round's comparisons only | on all of them (retrain: always all)
    mix_share: float = 0.5  # of each prompt's K answers, the share SFT writes beside the round's policy
    ensemble: int = 1  # M reward models per reward step (reward --ensemble)
    ensemble_bootstrap: bool = False
    # The label prompts come in `label_parts` parts (default N); round r ranks part r − 1 + `label_part_offset`.
    # A pipeline whose Step2 ranks part 1 of N + 1 of the RM split gives label_parts N + 1 and offset 1.
    label_parts: int | None = None
    label_part_offset: int = 0

    def __post_init__(self):
        if self.rounds < 1 or self.iterations_total < self.rounds or self.iterations_total % self.rounds:
            raise UsageError(
                f"rounds: {self.iterations_total} PPO iterations in all do not make {self.rounds} rounds of equal "
                "length; give --iterations-total a multiple of --rounds"
            )
        for name, value, choices in (
            ("rm_update", self.rm_update, RM_UPDATES),
            ("rm_data", self.rm_data, RM_DATA),
        ):
            if value not in choices:
                raise UsageError(f"rounds: {name} = {value!r}: use one of {', '.join(choices)}")
        if self.label_part_offset < 0 or self.rounds + self.label_part_offset > self.parts:
            raise UsageError(
                f"rounds: {self.rounds} rounds rank {self.rounds} parts of the label prompts from part "
                f"{1 + self.label_part_offset}, but there are {self.parts} (label_parts)"
            )

    @property
    def parts(self) -> int:
        return self.label_parts or self.rounds

    @property
    def iterations(self) -> int:
        return self.iterations_total // self.rounds


def round_dir(out: str | Path, r: int) -> Path:
    return Path(out) / f"round_{r}"


def reward_0_config(steps: dict, plan: RoundPlan, out: str | Path) -> RewardConfig | None:
    """The first round's reward model when the plan needs its own (an ensemble, from SFT on the run's
    comparisons, with the run's reward settings), None when the run's reward model serves."""
    if plan.ensemble == 1:
        return None
    return dataclasses.replace(
        steps["reward"],
        out=str(Path(out) / "reward_0"),
        ensemble=plan.ensemble,
        ensemble_bootstrap=plan.ensemble_bootstrap,
    )


def reward_model_of(steps: dict, plan: RoundPlan, out: str | Path, r: int) -> str:
    """The reward model round r's PPO optimises: reward_0 for the first round, round_r/reward after."""
    if r > 1:
        return str(round_dir(out, r) / "reward")
    first = reward_0_config(steps, plan, out)
    return first.out if first is not None else str(steps["ppo"].reward_model)


def comparisons_of(out: str | Path, r: int) -> str:
    """The rankings of round r−1's policy's answers (r ≥ 2)."""
    return str(round_dir(out, r) / "comparisons.jsonl")


def label_config(steps: dict, plan: RoundPlan, out: str | Path, r: int) -> LabelConfig:
    """Round r's rankings (2 ≤ r ≤ N + 1): round r−1's policy and SFT answer part r−1 of N of the label prompts;
    the run's labelers (its seed and noise) rank them."""
    sft = str(steps["ppo"].policy)
    return dataclasses.replace(
        steps["label"],
        out=comparisons_of(out, r),
        model=str(round_dir(out, r - 1) / "ppo"),
        mix_model=sft if plan.mix_share > 0 else None,
        mix_share=plan.mix_share,
        prompts=plan.label_prompts,
        prompt_part=f"{r - 1 + plan.label_part_offset}/{plan.parts}",
    )


def reward_config(steps: dict, plan: RoundPlan, out: str | Path, r: int) -> RewardConfig:
    """Round r's reward model (r ≥ 2): continue the previous one, or retrain from SFT on every comparison."""
    earlier = [str(steps["reward"].data)] + [comparisons_of(out, q) for q in range(2, r)]
    previous = reward_model_of(steps, plan, out, r - 1)
    continuing = plan.rm_update == "continue"
    return dataclasses.replace(
        steps["reward"],
        out=str(round_dir(out, r) / "reward"),
        model=previous if continuing else str(steps["reward"].model),
        data=comparisons_of(out, r),
        earlier_data=earlier if not continuing or plan.rm_data == "all" else [],
        previous_reward_model=previous,
        ensemble=plan.ensemble,
        ensemble_bootstrap=plan.ensemble_bootstrap,
    )


def ppo_config(steps: dict, plan: RoundPlan, out: str | Path, r: int) -> PPOConfig:
    """Round r's PPO: from SFT (r = 1) or round r−1's policy and value model, against round r's reward model,
    T/N iterations, the KL to SFT."""
    base: PPOConfig = steps["ppo"]
    sft = str(base.policy)
    previous = round_dir(out, r - 1) / "ppo"
    return dataclasses.replace(
        base,
        out=str(round_dir(out, r) / "ppo"),
        iterations=plan.iterations,
        policy=sft if r == 1 else str(previous),
        ref_policy=sft if base.lora_r == 0 else None,
        value_model=base.value_model if r == 1 else str(previous / "value_model"),
        reward_model=reward_model_of(steps, plan, out, r),
    )


def round_configs(steps: dict, plan: RoundPlan, out: str | Path, r: int) -> dict[str, object]:
    """The steps of round r in the order they run: {"ppo"} for the first, {"label", "reward", "ppo"} after."""
    if r == 1:
        return {"ppo": ppo_config(steps, plan, out, 1)}
    return {
        "label": label_config(steps, plan, out, r),
        "reward": reward_config(steps, plan, out, r),
        "ppo": ppo_config(steps, plan, out, r),
    }


def measure_config(steps: dict, plan: RoundPlan, out: str | Path) -> LabelConfig:
    """Rankings of the last round's policy's answers (part N of N): how right the last reward model is there."""
    return label_config(steps, plan, out, plan.rounds + 1)
