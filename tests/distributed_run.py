"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: every trainer in two CPU processes (gloo).

Each process trains on its own share of the data; DDP must average the gradients so that the two copies of every
trained model stay identical, and each stage's learning-rate schedule must advance once per optimizer step, as in
one process. Prints, on rank 0, one JSON line: per model, the parameter sum of each rank before and after
training; per stage, the last logged learning rate and the one its schedule gives after that many steps.

    torchrun --standalone --nproc_per_node 2 tests/distributed_run.py SFT_DIR REWARD_DIR COMPARISONS OUT
"""

import json
import sys

import torch
import torch.distributed as dist

from rlhfkit.config import DPOConfig, PPOConfig, RewardConfig, SFTConfig, preset_config
from rlhfkit.modeling import load_causal_lm, load_reward_model
from rlhfkit.stages import dpo, ppo, reward, sft
from rlhfkit.training import TrainingError, check_finite, cosine_schedule, make_accelerator


def parameter_sum(model) -> float:
    return sum(p.detach().double().sum().item() for p in model.parameters())


def seeded(load, *args):
    torch.manual_seed(0)  # the stages' default seed, set before they build a model
    return load(*args)


def every_rank(value: float) -> list[float]:
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def scheduled_lr(lr: float, warmup: int, total: int, steps: int) -> float:
    """The learning rate after `steps` optimizer steps of the stages' schedule, in a single process."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule = cosine_schedule(optimizer, warmup, total)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return schedule.get_last_lr()[0]


def last_lr(stage_dir: str) -> float:
    with open(f"{stage_dir}/metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f][-1]["lr"]


def stops_everywhere() -> bool:
    """A NaN loss on rank 1 only: does this process stop too (rather than wait for rank 1 in the next all-reduce)?"""
    accelerator = make_accelerator("no")
    try:
        check_finite(1, accelerator, loss=float("nan") if dist.get_rank() == 1 else 0.5)
    except TrainingError:
        return True
    return False


def main() -> None:
    sft_dir, reward_dir, comparisons, out = sys.argv[1:5]
    torch.manual_seed(0)
    common = dict(max_len=64, log_every=1, save_every=0)
    value_models = []  # the PPO value model: the loop trains it but does not return it
    make_value_model = ppo.make_value_model
    ppo.make_value_model = lambda *args: value_models.append(make_value_model(*args)) or value_models[-1]
    controllers = []  # and its KL controller, whose β each process keeps
    kl_controller = ppo.KLController
    ppo.KLController = lambda *args: controllers.append(kl_controller(*args)) or controllers[-1]

    sft_before = parameter_sum(load_causal_lm(sft_dir))
    trained = {
        "sft": (
            sft_before,
            sft.run(
                preset_config(SFTConfig, out=f"{out}/sft", model=sft_dir, max_steps=2, batch_size=4, **common)
            ),
        ),
        "reward": (
            parameter_sum(seeded(load_reward_model, sft_dir, 0)),  # the head starts as the stage's does
            reward.run(
                preset_config(
                    RewardConfig,
                    out=f"{out}/rm",
                    model=sft_dir,
                    data=comparisons,
                    max_steps=2,
                    batch_size=4,
                    **common,
                )
            ),
        ),
        "dpo": (
            sft_before,
            dpo.run(
                preset_config(
                    DPOConfig,
                    out=f"{out}/dpo",
                    policy=sft_dir,
                    data=comparisons,
                    max_steps=2,
                    batch_size=4,
                    lr=1e-3,
                    **common,
                )
            ),
        ),
    }
    ppo_config = preset_config(
        PPOConfig,
        out=f"{out}/ppo",
        policy=sft_dir,
        reward_model=reward_dir,
        iterations=2,
        batch_size=8,
        mini_batch_size=4,
        max_new_tokens=12,
        ptx_coef=1.0,
        ptx_batch_size=2,
        adaptive_kl=True,  # β must follow the KL of both processes' episodes, the same on each
        **common,
    )
    policy = ppo.run(ppo_config)
    trained["ppo_policy"] = (sft_before, policy)
    trained["ppo_value"] = (parameter_sum(load_reward_model(reward_dir, 0)), value_models[0])
    result = {
        name: {"before": every_rank(before), "after": every_rank(parameter_sum(model))}
        for name, (before, model) in trained.items()
    }
    sft_config, ppo_steps = (
        preset_config(SFTConfig),
        ppo_config.iterations * ppo_config.ppo_epochs * 2,
    )  # 2 minibatches
    result["lr"] = {
        "sft": [last_lr(f"{out}/sft"), scheduled_lr(sft_config.lr, sft_config.warmup_steps, 2, 2)],
        "ppo": [
            last_lr(f"{out}/ppo"),
            scheduled_lr(ppo_config.lr, ppo_config.warmup_steps, ppo_steps, ppo_steps),
        ],
    }
    result["kl_coef"] = {"start": ppo_config.kl_coef, "end": every_rank(controllers[0].value)}
    result["nan_on_one_process_stops_all"] = every_rank(stops_everywhere())
    result["epochs"] = epochs_seen(sft_dir, comparisons, out)
    result["world_size"] = dist.get_world_size()
    if dist.get_rank() == 0:
        print(json.dumps(result))
    # Tear the process group down before the interpreter does: left to exit, gloo's threads were once killed
    # mid-flight (SIGABRT, "terminate called without an active exception") after every check had passed.
    dist.barrier()
    dist.destroy_process_group()


def epochs_seen(sft_dir: str, comparisons: str, out: str) -> dict[str, list[int]]:
    """{stage: [rows it read (steps × batch × processes), epochs × rows]} of sft, reward and dpo given --epochs 1
    on 16 rows (issue #23: each process read every row once, so two processes made two epochs)."""
    rows = 16
    demos, ranked = f"{out}/demos.jsonl", f"{out}/ranked.jsonl"
    if dist.get_rank() == 0:
        with open(demos, "w", encoding="utf-8") as f:
            f.writelines(
                json.dumps({"prompt": f"问题{i}", "completion": "回答。"}) + "\n" for i in range(rows)
            )
        with open(comparisons, encoding="utf-8") as src, open(ranked, "w", encoding="utf-8") as f:
            f.writelines(src.readlines()[:rows])
    dist.barrier()
    common = dict(epochs=1.0, batch_size=4, max_len=64, log_every=1, save_every=0)
    sft.run(preset_config(SFTConfig, out=f"{out}/e_sft", model=sft_dir, data=demos, **common))
    reward.run(
        preset_config(
            RewardConfig,
            out=f"{out}/e_rm",
            model=sft_dir,
            data=ranked,
            val_fraction=0.0,
            demonstrations="",
            **common,
        )
    )
    dpo.run(preset_config(DPOConfig, out=f"{out}/e_dpo", policy=sft_dir, data=ranked, **common))
    read = {}
    for stage in ("e_sft", "e_rm", "e_dpo"):
        with open(f"{out}/{stage}/rlhfkit.json", encoding="utf-8") as f:
            steps = json.load(f)["steps"]
        read[stage] = [steps * common["batch_size"] * dist.get_world_size(), rows]
    return read


if __name__ == "__main__":
    main()
