"""Step3 — PPO and PPO-ptx against the frozen reward model (InstructGPT §3.5; the seed's objective).

    objective(φ) = E_(x,y)~π_RL [ r(x,y) − β·log(π_RL(y|x) / π_SFT(y|x)) ] + γ·E_x~D_pretrain [ log π_RL(x) ]

One iteration:
  1. rollout   — sample one answer per RL prompt from the policy (KV cache, temperature T, stop at EOS);
  2. score     — reward model on prompt+answer (last token), minus `missing_eos_penalty` if no EOS;
                 log-probs of the policy (π_old) and reference (π_SFT) and the values, one forward each;
  3. rewards   — per token: −β·KL_t (k1 or k3 estimate); the RM score is added at the last token (EOS);
  4. advantages— GAE(γ_rl, λ) from the value model; returns = advantages + values; advantages whitened;
  5. update    — `ppo_epochs` passes over minibatches of the clipped surrogate L^CLIP + vf_coef · clipped value
                 loss, plus ptx_coef · LM loss on a batch of pretraining text in the same step (PPO-ptx;
                 ptx_coef = 0 is plain PPO);
  6. β update  — fixed, or adaptive towards target_kl (Ziegler et al. 2019).

Implementation details, each switchable in PPOConfig (names follow TRL):
  value model initialised from the reward model, in the rewards' units (InstructGPT) · RM scores divided by the
  RM's reward std (`scale_rewards`) · optional reward whitening · advantage whitening · clipped value loss ·
  gradient clipping ·
  KL estimator k1/k3 · fixed/adaptive KL · EMA of policy weights (0.992, InstructGPT) saved as the final model ·
  dropout off (the models stay in eval mode) · log-probs at the sampling temperature · separate value model or a
  value head on the policy trunk (`shared_trunk`) · LoRA policy whose reference is the same weights with the
  adapters disabled (one copy instead of two).
`--algo rloo` replaces the critic with RLOO's leave-one-out baseline over k samples per prompt (same rollout,
same clipped policy loss, same KL-shaped reward, summed per sequence).

`--reward-model gold` trains on the embedded world's gold judge instead of a reward model, (gold − 7) / 2 per
answer (`sources.gold_reward`; world prompts only): the reports' ceiling, where the gap to PPO on the RM is the
RM's alone. Its value model is the policy with a zero-initialised head.

The reward model may be an ensemble (`reward --ensemble M`, Coste et al. 2023): each member's score in its own
units, combined as mean − λ·std, mean − λ·variance or the minimum (`--ensemble-reduce`, `--ensemble-lambda`).

Rounds (iterated RLHF): `--policy ROUND_PPO --ref-policy SFT --value-model ROUND_PPO/value_model --reward-model
NEW_RM` continues a PPO policy against an updated reward model with the KL still to SFT (`continued_from`): its
rollouts are numbered on (no replay of the last round's prompts and noise), an adaptive β starts where it ended,
and the value model keeps the units it was trained in (`value_units`).

Deviations from InstructGPT: tiny models and minutes instead of 256k episodes; rewards are scaled by the RM's std;
the per-iteration RNG is derived from (seed, iteration) so that --resume continues exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from rlhfkit.batching import NARROW_REWARD_STD, collate, encode_prompts, fit_prompts, narrow_rewards, pack
from rlhfkit.config import PPOConfig
from rlhfkit.ensemble import RewardEnsemble, load_judge, members
from rlhfkit.errors import UsageError
from rlhfkit.losses import (
    entropy_from_logits,
    gae,
    kl_penalty,
    lm_loss,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    whiten,
    zero_masked,
)
from rlhfkit.modeling import (
    TokenScores,
    backbone,
    check_vocab,
    context_length,
    last_token_scores,
    load_causal_lm,
    load_reward_model,
    per_token_scores,
    position_ids,
    read_meta,
    save_model,
    scalar_head,
    use_load_options,
)
from rlhfkit.rollout import SampleBatch, decode_responses, response_logprobs, sample
from rlhfkit.sources import GOLD, GOLD_FORMULA, WORLD, gold_reward, pretrain_texts, prompt_texts
from rlhfkit.tokenizer import control_tokens, end_of_turn_id, load_tokenizer, writes_the_world
from rlhfkit.training import (
    Tracker,
    batch_indices,
    check_finite,
    check_weights,
    clip_gradients,
    console,
    cosine_schedule,
    finished_earlier,
    load_checkpoint,
    make_accelerator,
    parameter_groups,
    provenance,
    remove_checkpoint,
    save_checkpoint,
    seed_everything,
    settings_of,
)


def run(cfg: PPOConfig, reward_fn=None):
    """Train; `reward_fn(prompts, responses, ended) -> (B,) tensor` replaces the reward model (tests, toy rewards).
    `--reward-model gold` is the embedded world's gold judge as that reward_fn (`sources.gold_reward`)."""
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    out = Path(cfg.out)
    if finished_earlier(cfg, cfg.algo):
        return None
    check_settings(cfg)
    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.mixed_precision)
    device = accelerator.device
    reward_kind = "reward_fn" if reward_fn is not None else "reward_model"
    if (
        reward_fn is None and cfg.reward_model == GOLD
    ):  # first: what the judge cannot judge stops the run here
        reward_fn, reward_kind = gold_reward_of(cfg), GOLD
    models = build_models(cfg, reward_fn, device)
    tokenizer, ref_policy = models.tokenizer, models.ref_policy
    prompts, ptx_blocks = load_data(cfg, tokenizer)  # the RL prompts; pretraining blocks for PPO-ptx
    context = context_length(models.policy)
    prompts = fit_prompts(
        tokenizer, prompts, True, cfg.max_prompt_length, cfg.max_new_tokens, context, cfg.algo
    )
    policy, value_model, optimizer, scheduler, ema = prepare(cfg, accelerator, models)
    earlier = continued_from(cfg)  # a round after the first: rollouts numbered on, adaptive β where it was
    kl_ctl = KLController(earlier.kl_coef, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon)
    own_state = checkpointed_modules(cfg, ema, value_model)
    start, changed = resumed(cfg, accelerator, scheduler, kl_ctl, own_state)

    stage = "ppo_ptx" if cfg.ptx_coef > 0 else cfg.algo
    with Tracker(out, stage, cfg.iterations, start, enabled=accelerator.is_main_process) as tracker:
        for it in range(start, cfg.iterations):
            # 1. rollout (the RNG is a function of seed, iteration and process: --resume continues exactly, and a
            #    round continuing a PPO policy draws the prompts and noise a run that long would have drawn next)
            number = (earlier.rollouts + it) * accelerator.num_processes + accelerator.process_index
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + number)
            unwrapped = accelerator.unwrap_model(policy)
            batch_prompts, batch, texts = rollout(cfg, unwrapped, tokenizer, prompts, number, generator)
            mask = batch.response_mask.float()  # (B, R)

            # 2. score the episodes: one forward each, no grad
            with torch.no_grad(), accelerator.autocast():
                old_logprobs = response_logprobs(policy, batch, cfg.temperature)  # (B, R)
                ref_logprobs = reference_logprobs(unwrapped, ref_policy, batch, cfg.temperature)  # (B, R)
                old_values = values_of(value_model, policy, batch, cfg) if value_model is not None else None
                scores = score_episodes(
                    models.reward_model, models.reward_units, reward_fn, batch, batch_prompts, texts, cfg
                )  # (B,)

            # 3. rewards: −β·KL per token, the RM score at the last token
            kl = zero_masked(kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator), mask)  # (B, R)
            check_finite(
                it + 1,
                accelerator,
                "iteration",
                **{
                    "reward (reward model)": scores.mean().item(),
                    "KL (policy to reference)": kl.sum(1).mean().item(),
                    **({"values (value model)": old_values.mean().item()} if old_values is not None else {}),
                },
            )
            last = mask.sum(1).long() - 1  # (B,) index of EOS (or the last token)
            rewards = -kl_ctl.value * kl
            rewards[torch.arange(len(last)), last] += scores
            if cfg.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)

            # 4. advantages (and the value targets, for PPO)
            advantages, returns = advantages_and_returns(cfg, rewards, old_values, mask)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, mask)

            # 5. update: ppo_epochs passes over shuffled minibatches
            episodes = Episodes(batch, mask, old_logprobs, old_values, advantages, returns)
            trained = (policy, value_model, optimizer, scheduler, ema)
            stats = update(
                cfg,
                accelerator,
                trained,
                episodes,
                ptx_blocks,
                tokenizer,
                number,
                earlier.rollouts + it,
                it + 1,
            )

            # 6. β, metrics, samples, checkpoint
            non_score_reward = -kl_ctl.value * kl.sum(1).mean().item()  # the β of this rollout, not whitened
            # β follows the KL of every process's episodes, so all processes keep one β
            episode_kl = accelerator.reduce(kl.sum(1).mean(), "mean").item()
            kl_ctl.update(episode_kl, len(last) * accelerator.num_processes)
            done = it + 1
            metrics = {
                "reward": scores.mean().item(),
                "kl": episode_kl,
                "kl_coef": kl_ctl.value,
                "non_score_reward": non_score_reward,
                "response_length": mask.sum(1).mean().item(),
                "eos_fraction": batch.ended.float().mean().item(),
                "lr": scheduler.get_last_lr()[0],
                **{k: sum(v) / len(v) for k, v in stats.items()},
            }
            if done % cfg.log_every == 0 or done == cfg.iterations:
                tracker.log(done, metrics, show=("reward", "kl", "clipfrac", "response_length"))
            if cfg.sample_every and (done % cfg.sample_every == 0 or done == 1) and tracker.enabled:
                log_samples(out, tracker, done, batch_prompts, texts, scores)
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.iterations:
                check_models(accelerator, policy, value_model, done)
                tensors = {name: module.state_dict() for name, module in own_state.items()}
                save_checkpoint(accelerator, out, done, {"kl_coef": kl_ctl.value}, settings_of(cfg), tensors)

    meta = {"kl_coef": kl_ctl.value, "changed": changed, "earlier": earlier, "reward_kind": reward_kind}
    return save_final(cfg, accelerator, policy, value_model, ema, tokenizer, stage, **meta)


@dataclass
class Episodes:
    """One rollout, scored: what the update epochs read. (B, R) each but `batch`; old_values None for RLOO."""

    batch: SampleBatch
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor | None


def update(
    cfg: PPOConfig,
    accelerator,
    trained,
    episodes: Episodes,
    ptx_blocks,
    tokenizer,
    number,
    rollout,
    iteration,
) -> dict[str, list[float]]:
    """Step 5: `ppo_epochs` passes over shuffled minibatches of the episodes (the clipped policy loss, the clipped
    value loss, the ptx LM loss), one optimizer step each; returns every minibatch's statistics."""
    policy, value_model, optimizer, scheduler, ema = trained
    batch, mask, advantages, returns = episodes.batch, episodes.mask, episodes.advantages, episodes.returns
    old_logprobs, old_values, device = episodes.old_logprobs, episodes.old_values, accelerator.device
    stats: dict[str, list[float]] = {}
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(
            len(mask), generator=torch.Generator().manual_seed(cfg.seed + 7919 * rollout + epoch)
        )
        for mb in order.split(cfg.mini_batch_size):
            mb_batch = minibatch(batch, mb)
            w = mb_batch.response_mask.shape[1]  # response columns this minibatch uses
            mb_mask = mask[mb, :w]
            v_loss = ptx_loss = None
            with accelerator.autocast():
                logprobs, logits = response_logprobs(policy, mb_batch, cfg.temperature, return_logits=True)
                pg_loss, pg_stats = ppo_policy_loss(
                    logprobs, old_logprobs[mb, :w], advantages[mb, :w], mb_mask, cfg.cliprange
                )
                loss = pg_loss
                entropy = masked_mean(entropy_from_logits(logits), mb_mask)
                record(stats, pg_loss=pg_loss, entropy=entropy, **pg_stats)
                if value_model is not None:
                    values = values_of(value_model, policy, mb_batch, cfg)
                    v_loss, v_stats = ppo_value_loss(
                        values, old_values[mb, :w], returns[mb, :w], mb_mask, cfg.cliprange_value
                    )
                    loss = loss + cfg.vf_coef * v_loss
                    record(stats, v_loss=v_loss, **v_stats)
                if ptx_blocks is not None:
                    ptx_loss = ptx_lm_loss(policy, ptx_blocks, cfg, number, epoch, mb, tokenizer, device)
                    loss = loss + cfg.ptx_coef * ptx_loss  # the γ·E[log π(x)] term, as a loss
                    record(stats, ptx_loss=ptx_loss)
            check_finite(iteration, accelerator, "iteration", **named_losses(pg_loss, v_loss, ptx_loss))
            accelerator.backward(loss)
            clip_gradients(accelerator, optimizer_params(optimizer), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(policy))
    return stats


def resumed(
    cfg: PPOConfig, accelerator, scheduler, kl_ctl, own_state: dict[str, nn.Module]
) -> tuple[int, dict]:
    """(the iteration to start at, the settings changed since the checkpoint): 0, {} unless --resume finds one, whose
    β, EMA and shared-trunk head are loaded here (the models and optimizer by accelerate)."""
    out = Path(cfg.out)
    if not (cfg.resume and (state := load_checkpoint(accelerator, out, scheduler, settings_of(cfg)))):
        return 0, {}
    kl_ctl.value = state["kl_coef"]
    for name, module in own_state.items():
        module.load_state_dict(state["tensors"][name])
    console.print(f"[{cfg.algo}] resuming from {out}/checkpoint at iteration {state['step']}")
    return state["step"], state["changed"]


# ---------------------------------------------------------------------------------------------------------------
# PPO and RLOO: the only places where they differ. The rollout, the KL-shaped reward and the clipped policy loss
# are the same; PPO's baseline is a learned value model (GAE), RLOO's the other samples of the same prompt.


def samples_per_prompt(cfg: PPOConfig) -> int:
    """RLOO samples each prompt rloo_k times (its leave-one-out baseline needs them); PPO once."""
    return cfg.rloo_k if cfg.algo == "rloo" else 1


def has_value_model(cfg: PPOConfig) -> bool:
    return cfg.algo == "ppo"


def advantages_and_returns(
    cfg: PPOConfig, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages, returns), each (B, R): GAE(γ_rl, λ) on the value model's values for PPO; for RLOO one return
    per sequence, less the mean of the other k−1 samples of its prompt, on every token (and no value targets)."""
    if cfg.algo == "ppo":
        return gae(rewards, values, mask, cfg.gamma, cfg.lam)
    return rloo_advantages(rewards.sum(1), cfg.rloo_k).unsqueeze(1) * mask, None


# ---------------------------------------------------------------------------------------------------------------
# Setup: the settings only PPO has, the four models, the data, the optimizer.


def check_settings(cfg: PPOConfig) -> None:
    """What `config.LIMITS` cannot say about PPO's settings, since it takes them one at a time."""
    if cfg.algo == "rloo" and cfg.batch_size % cfg.rloo_k:
        raise UsageError(
            f"ppo --algo rloo: --batch-size {cfg.batch_size} must be a multiple of --rloo-k {cfg.rloo_k} (≥ 2): "
            "each prompt is sampled rloo_k times"
        )
    if cfg.grad_accum != 1:
        raise UsageError(
            f"ppo --grad-accum {cfg.grad_accum}: PPO takes one optimizer step per minibatch; "
            "set --mini-batch-size (episodes per step) instead"
        )
    if cfg.temperature <= 0:
        raise UsageError(
            f"ppo --temperature {cfg.temperature}: PPO needs the sampling distribution's log-probabilities; use > 0"
        )
    if cfg.lora_r > 0 and cfg.ref_policy:
        raise UsageError(
            f"ppo --lora-r {cfg.lora_r} --ref-policy {cfg.ref_policy}: with LoRA the reference is the policy with "
            "its adapters off (no second model is loaded); leave out --ref-policy, or train without --lora-r"
        )
    if cfg.ptx_coef > 0 and cfg.ptx_data == WORLD and not writes_the_world(load_tokenizer(cfg.policy)):
        raise UsageError(
            f"ppo --ptx-coef {cfg.ptx_coef} without --ptx-data: the ptx text would be the embedded world's (Chinese, "
            f"made for rlhfkit's own tokenizer), and {cfg.policy} has another tokenizer; give --ptx-data FILE.jsonl "
            "with {'text'} rows of your pretraining text"
        )


@dataclass
class Models:
    """The policy (trained), its reference π_SFT (frozen; None with LoRA: the policy with its adapters off), the
    reward model (frozen; None given a reward_fn) in PPO's units, and the value model (trained; None for RLOO)."""

    tokenizer: object
    policy: nn.Module
    ref_policy: nn.Module | None
    reward_model: nn.Module | None
    reward_units: tuple[float, float]  # (shift, scale): the RM's raw score r → (r + shift) / scale
    value_model: nn.Module | None


def build_models(cfg: PPOConfig, reward_fn, device) -> Models:
    tokenizer = load_tokenizer(cfg.policy)
    policy = load_causal_lm(cfg.policy)
    check_vocab(policy, tokenizer, f"ppo --policy {cfg.policy}")
    policy.eval()  # dropout off during RL: sampling and training see the same network
    ref_policy = None
    if cfg.lora_r > 0:
        policy = get_peft_model(
            policy, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear")
        )
        policy.eval()  # get_peft_model returns a model in train mode
    else:
        ref_policy = load_causal_lm(cfg.ref_policy or cfg.policy).eval().requires_grad_(False).to(device)
        check_vocab(ref_policy, tokenizer, f"ppo --ref-policy {cfg.ref_policy or cfg.policy}", cfg.ref_policy)
    reward_model, units = None, (0.0, 1.0)
    if reward_fn is None:
        judge = load_judge(cfg.reward_model, tokenizer.pad_token_id, cfg.ensemble_reduce, cfg.ensemble_lambda)
        reward_model = judge.eval().requires_grad_(False).to(device)
        check_vocab(reward_model, tokenizer, f"ppo --reward-model {cfg.reward_model}", cfg.reward_model)
        units = reward_units(
            reward_model.config, cfg
        )  # scale 1 without --scale-rewards; (0, 1) for an ensemble
        if isinstance(reward_model, RewardEnsemble):
            console.print(f"[{cfg.algo}] reward: {reward_model.describe()}")
        elif units[1] < NARROW_REWARD_STD:
            console.print(f"[{cfg.algo}] warning: {narrow_rewards(units[1])}")
    value_model = make_value_model(cfg, policy, tokenizer) if has_value_model(cfg) else None
    return Models(tokenizer, policy, ref_policy, reward_model, units, value_model)


def gold_reward_of(cfg: PPOConfig):
    """`--reward-model gold`: the embedded world's gold judge on the RL prompts, as a reward_fn (refused where it
    cannot judge: prompts that are not the world's tasks, a tokenizer that cannot write the world's text)."""
    tokenizer = load_tokenizer(cfg.policy)
    prompts = prompt_texts(cfg.prompts, "rl", control_tokens(tokenizer))
    reward_fn = gold_reward(prompts, tokenizer, f"ppo --prompts {cfg.prompts} --policy {cfg.policy}")
    console.print(f"[{cfg.algo}] reward: the embedded world's gold judge, {GOLD_FORMULA} (no reward model)")
    return reward_fn


def load_data(cfg: PPOConfig, tokenizer) -> tuple[list, list | None]:
    """The RL prompts, and the pretraining text of the ptx term in blocks of max_len tokens (None for plain PPO)."""
    prompts = prompt_texts(cfg.prompts, "rl", control_tokens(tokenizer))
    ptx_blocks = None
    if cfg.ptx_coef > 0:
        ptx_blocks = pack(
            pretrain_texts(cfg.ptx_data), tokenizer, cfg.max_len, f"ppo --ptx-data {cfg.ptx_data}"
        )
    # The defaults suit the pipeline; say so, lest a user's model train on the world's Chinese prompts or text.
    world = {
        name: flag
        for name, used, flag in (
            ("RL prompts", cfg.prompts, "--prompts"),
            ("ptx text", ptx_blocks and cfg.ptx_data, "--ptx-data"),
        )
        if used == WORLD
    }
    if world:
        console.print(
            f"[{cfg.algo}] {' and '.join(world)}: the embedded world's ({' / '.join(world.values())} FILE for yours)"
        )
    return prompts, ptx_blocks


def steps_per_iteration(cfg: PPOConfig) -> int:
    """Optimizer steps per rollout: ppo_epochs passes over its batch_size episodes in minibatches."""
    return cfg.ppo_epochs * -(-cfg.batch_size // cfg.mini_batch_size)


def prepare(cfg: PPOConfig, accelerator, models: Models):
    """(policy, value_model, optimizer, scheduler, ema), the trained ones placed and wrapped by accelerate."""
    policy, value_model = models.policy, models.value_model
    groups = parameter_groups(policy, cfg.lr, cfg.weight_decay)
    if value_model is not None:
        groups += parameter_groups(value_model, cfg.vf_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-5)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.iterations * steps_per_iteration(cfg))
    if value_model is not None and not cfg.shared_trunk:
        policy, value_model, optimizer, scheduler = accelerator.prepare(
            policy, value_model, optimizer, scheduler
        )
    else:
        if value_model is not None and accelerator.num_processes > 1:
            # its trunk would run outside the DDP-wrapped policy, whose gradients would then not be synchronised
            raise UsageError(
                "ppo --shared-trunk runs in one process only; drop it (a separate value model) to launch several"
            )
        policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
        value_model = value_model.to(accelerator.device) if value_model is not None else None
    # The EMA is built from the prepared policy, so that its shadow weights live where the policy's do (the GPU).
    ema = EMA(accelerator.unwrap_model(policy), cfg.ema_decay) if cfg.ema_decay > 0 else None
    return policy, value_model, optimizer, scheduler, ema


def checkpointed_modules(cfg: PPOConfig, ema, value_model) -> dict[str, nn.Module]:
    """What a checkpoint holds besides accelerate's prepared models and optimizer: the EMA and a shared-trunk
    value head, saved as NAME.safetensors (`save_checkpoint`'s tensors); β goes to trainer_state.json (its extra).
    Never as pickles: accelerate's register_for_checkpointing pickles them, and loads them with weights_only=False."""
    modules = {"ema": ema, "value_head": value_model if cfg.shared_trunk else None}
    return {name: module for name, module in modules.items() if module is not None}


def make_value_model(cfg: PPOConfig, policy, tokenizer):
    """A copy of the reward model (InstructGPT), or a scalar head on the policy trunk initialised from the RM's;
    a later round's PPO passes the previous round's value model (`--value-model ROUND_PPO/value_model`). With no
    reward model (`--reward-model gold`, a reward_fn) it is the policy with a zero-initialised head: every value
    starts at 0, the mean of the centred reward (a random head, measured, drives the policy randomly at first).

    Either starts out predicting in the units PPO's rewards are in (`value_units`): a reward model's score shifted
    so the demonstrations average 0 and, with `scale_rewards`, divided by its std; a trained value model's own."""
    rm_dir = "" if cfg.reward_model == GOLD else cfg.reward_model
    source = cfg.value_model or rm_dir or cfg.policy  # no RM (gold, a reward_fn): start from the policy
    if source and members(source):  # an ensemble: its first member, in that member's units
        source = str(members(source)[0])
    from_policy = not (cfg.value_model or rm_dir)
    if not cfg.shared_trunk:
        value_model = load_reward_model(source, tokenizer.pad_token_id).eval()
        check_vocab(value_model, tokenizer, f"ppo --value-model {source}", source)
        if from_policy:  # the head is new: zero, so every value starts at 0 (a random head steers the policy)
            nn.init.zeros_(scalar_head(value_model).weight)
        return ValueModel(value_model, *value_units(source, value_model.config, cfg))
    head = nn.Linear(policy.config.hidden_size, 1, bias=True)
    nn.init.zeros_(head.bias)
    if from_policy:
        nn.init.zeros_(head.weight)
    elif source and Path(source).exists():
        rm = load_reward_model(source, tokenizer.pad_token_id)
        rm_head = scalar_head(rm)
        if rm_head.weight.shape == head.weight.shape:
            shift, scale = value_units(source, rm.config, cfg)
            head.weight.data.copy_(rm_head.weight.data / scale)
            head.bias.data.fill_(shift / scale)
    return head


class ValueModel(TokenScores):
    """V(s_t) on every position: a scalar-head model's output in PPO's reward units, (head + shift) / scale.

    The affine map stays outside the weights (a sequence-classification head has no bias), so the saved value
    model, whose config keeps the RM's `reward_bias` / `reward_std`, scores in the same units when loaded."""

    def __init__(self, model, shift: float = 0.0, scale: float = 1.0):
        super().__init__(model)
        self.shift, self.scale = shift, scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (super().forward(input_ids, attention_mask) + self.shift) / self.scale


def reward_units(config, cfg: PPOConfig) -> tuple[float, float]:
    """(shift, scale) that take a scalar head's raw output to PPO's reward: (raw + shift) / scale."""
    shift = float(getattr(config, "reward_bias", 0.0) or 0.0)
    scale = float(getattr(config, "reward_std", 1.0) or 1.0) if cfg.scale_rewards else 1.0
    return shift, scale


def value_units(source: str, config, cfg: PPOConfig) -> tuple[float, float]:
    """(shift, scale) of a value model's raw head: those a value model PPO saved was trained in (its
    rlhfkit.json's "value_units", whatever this run's --scale-rewards or reward model), else `reward_units`.

    A round's new reward model is centred and scaled on the demonstrations again, as the last one was, so the
    previous round's values keep their meaning in its rewards; the new reward model's bias and std are never
    applied to them (they would shift every value by the difference between two reward models' biases)."""
    trained = read_meta(source).get("value_units") if Path(source).is_dir() else None
    return (float(trained[0]), float(trained[1])) if trained else reward_units(config, cfg)


@dataclass
class Continued:
    """What a PPO run takes over from the PPO run that wrote its --policy (a later round), else the defaults:
    the number of rollouts before it, and β — a fixed β is a setting, an adaptive one state."""

    rollouts: int
    kl_coef: float


def continued_from(cfg: PPOConfig) -> Continued:
    """--policy written by PPO: its rollouts are numbered on from where it stopped (a round does not replay the
    prompts and sampling noise of the one before it), and with --adaptive-kl β starts where it ended.

    The policy itself is the previous round's saved one (its EMA, the policy whose answers were ranked for the new
    reward model), with fresh optimizer moments, a fresh LR schedule and an EMA that starts from it; the
    reference stays --ref-policy (give the SFT model: without it the KL is to the previous round's policy)."""
    meta = read_meta(cfg.policy) if Path(cfg.policy).is_dir() else {}
    if meta.get("stage") not in ("ppo", "ppo_ptx", "rloo"):
        return Continued(0, cfg.kl_coef)
    rollouts = int(meta.get("rollouts_before", 0)) + int(meta.get("iterations", 0))
    kl_coef = float(meta.get("kl_coef", cfg.kl_coef)) if cfg.adaptive_kl else cfg.kl_coef
    console.print(
        f"[{cfg.algo}] --policy {cfg.policy} is a {meta['stage']} policy after {rollouts} rollouts: its rollouts "
        f"are numbered on from {rollouts}"
        + (f", and adaptive β starts at its {kl_coef:.4g}" if cfg.adaptive_kl else "")
    )
    if not cfg.ref_policy and cfg.lora_r == 0:
        console.print(
            f"[{cfg.algo}] warning: no --ref-policy, so the KL penalty is to {cfg.policy} itself, not to the SFT "
            "model; give --ref-policy SFT_DIR to keep it to SFT across rounds"
        )
    elif cfg.lora_r > 0:
        console.print(
            f"[{cfg.algo}] warning: with --lora-r the reference is {cfg.policy} with its adapters off (the "
            "previous round's merged policy), not the SFT model"
        )
    return Continued(rollouts, kl_coef)


# ---------------------------------------------------------------------------------------------------------------
# The loop's steps, in the order it takes them.


def rollout(cfg: PPOConfig, policy, tokenizer, prompts, number: int, generator):
    """(prompts, SampleBatch, response texts) of rollout `number`: batch_size episodes, samples_per_prompt of each
    prompt, laid out (k, P) as `losses.rloo_advantages` reads them."""
    k = samples_per_prompt(cfg)
    batch_prompts = [
        prompts[i] for i in batch_indices(len(prompts), cfg.batch_size // k, number, cfg.seed)
    ] * k
    batch = sample(
        policy,
        encode_prompts(tokenizer, batch_prompts, chat=True),
        end_of_turn_id(tokenizer),
        tokenizer.pad_token_id,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.top_p,
        generator,
        compiled=cfg.compile_sampler,
    )
    return batch_prompts, batch, decode_responses(tokenizer, batch)


def reference_logprobs(policy, ref_policy, batch: SampleBatch, temperature: float) -> torch.Tensor:
    """log π_SFT of the sampled tokens; with LoRA, the (unwrapped) policy with its adapters switched off."""
    if ref_policy is not None:
        return response_logprobs(ref_policy, batch, temperature)
    with policy.disable_adapter():
        return response_logprobs(policy, batch, temperature)


def values_of(value_model, policy, batch: SampleBatch, cfg: PPOConfig) -> torch.Tensor:
    """V(s_t) for each response token t: the head at the position just before the token. (B, R)"""
    P = batch.prompt_width
    if cfg.shared_trunk:
        trunk = backbone(policy.get_base_model() if hasattr(policy, "get_base_model") else policy)  # LoRA
        hidden = trunk(
            input_ids=batch.sequences,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),
        ).last_hidden_state
        return value_model(hidden.float()).squeeze(-1)[:, P - 1 : -1]
    return per_token_scores(value_model, batch.sequences, batch.attention_mask).float()[:, P - 1 : -1]


def score_episodes(
    reward_model, units: tuple[float, float], reward_fn, batch: SampleBatch, prompts, texts, cfg: PPOConfig
) -> torch.Tensor:
    """RM score of prompt+answer (shifted to demonstration mean 0, optionally divided by its std), EOS penalty."""
    if reward_fn is not None:
        scores = torch.as_tensor(reward_fn(prompts, texts, batch.ended.tolist()), dtype=torch.float32)
    else:
        shift, scale = units
        raw = last_token_scores(reward_model, batch.sequences, batch.attention_mask).float()
        scores = (raw + shift) / scale
    return scores.to(batch.sequences.device) - cfg.missing_eos_penalty * (~batch.ended).float()


def minibatch(batch: SampleBatch, index: torch.Tensor) -> SampleBatch:
    """Rows `index` of a rollout, with response columns nobody in the minibatch uses trimmed."""
    width = int(batch.response_mask[index].sum(1).max())
    P = batch.prompt_width
    return replace(
        batch,
        sequences=batch.sequences[index, : P + width],
        attention_mask=batch.attention_mask[index, : P + width],
        response_mask=batch.response_mask[index, :width],
        ended=batch.ended[index],
    )


def ptx_lm_loss(
    policy, blocks, cfg: PPOConfig, rollout: int, epoch: int, mb: torch.Tensor, tokenizer, device
):
    """The LM loss of the policy on the pretraining blocks of one minibatch, chosen as a function of (rollout
    number, epoch, minibatch), so each process and each step reads different text and --resume reads the same."""
    number = (rollout * cfg.ppo_epochs + epoch) * 1000 + int(mb[0])
    index = batch_indices(len(blocks), cfg.ptx_batch_size, number, cfg.seed + 1)
    ptx = {k: v.to(device) for k, v in collate([blocks[i] for i in index], tokenizer.pad_token_id).items()}
    logits = policy(input_ids=ptx["input_ids"], attention_mask=ptx["attention_mask"]).logits
    return lm_loss(logits.float(), ptx["labels"])


def save_final(
    cfg: PPOConfig,
    accelerator,
    policy,
    value_model,
    ema,
    tokenizer,
    stage: str,
    kl_coef: float,
    changed,
    earlier: Continued,
    reward_kind: str = "reward_model",
):
    """Save the policy (its EMA where there is one; LoRA merged) and the value model; the policy is returned."""
    final = accelerator.unwrap_model(policy)
    if ema is not None:
        ema.copy_to(final)
        # The average starts at the SFT weights: after n steps decay^n of it still is. Its KL to SFT (eval's) is
        # therefore below the live policy's in metrics.jsonl; --ema-decay 0 saves the live policy instead.
        n = cfg.iterations * steps_per_iteration(cfg)
        console.print(
            f"[{cfg.algo}] saved the EMA of the policy weights (decay {cfg.ema_decay} over {n} steps: "
            f"{cfg.ema_decay**n:.0%} of it is still the starting policy)"
        )
    if hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()
    check_models(accelerator, final, value_model, cfg.iterations)
    out = Path(cfg.out)
    if accelerator.is_main_process:
        if value_model is not None and not cfg.shared_trunk:  # first: the policy's save marks the stage done
            trained = accelerator.unwrap_model(value_model)
            # its config says the units its head was trained in, as its rlhfkit.json does (`value_units`)
            trained.model.config.reward_bias, trained.model.config.reward_std = trained.shift, trained.scale
            save_model(
                trained.model,
                None,
                out / "value_model",
                stage="value",
                complete=True,
                value_units=[trained.shift, trained.scale],
            )
        save_model(
            final,
            tokenizer,
            out,
            stage=stage,
            chat=True,
            complete=True,
            iterations=cfg.iterations,
            rollouts_before=earlier.rollouts,
            ptx_coef=cfg.ptx_coef,
            kl_coef=kl_coef,
            kl_coef_start=earlier.kl_coef,
            algo=cfg.algo,
            # what the policy was trained to raise: "reward_model" (--reward-model DIR), "gold" (the world's gold
            # judge: the reports' ceiling row) or "reward_fn" (a Python reward given to `run`)
            reward=reward_kind,
            **({"reward_formula": GOLD_FORMULA} if reward_kind == GOLD else {}),
            **provenance(cfg, changed),
        )
        remove_checkpoint(out)
    accelerator.wait_for_everyone()
    return final


def named_losses(pg_loss, v_loss, ptx_loss) -> dict[str, float]:
    """The terms of a minibatch's loss, each named with the model it comes from (for `check_finite`)."""
    named = {
        "policy loss (policy)": pg_loss,
        "value loss (value model)": v_loss,
        "ptx loss (policy on the pretraining text)": ptx_loss,
    }
    return {name: value.item() for name, value in named.items() if value is not None}


def check_models(accelerator, policy, value_model, iteration: int) -> None:
    """The weights of the trained models after the last update, before they are saved (`check_weights`)."""
    check_weights(accelerator.unwrap_model(policy), iteration, "policy", "iteration")
    if value_model is not None:
        check_weights(accelerator.unwrap_model(value_model), iteration, "value model", "iteration")


def optimizer_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def record(stats: dict[str, list[float]], **values) -> None:
    for key, value in values.items():
        stats.setdefault(key, []).append(float(value.detach()) if torch.is_tensor(value) else float(value))


def log_samples(out: Path, tracker: Tracker, step: int, prompts, texts, scores, n: int = 4) -> None:
    # samples.jsonl keeps a conversation whole (its messages); TensorBoard shows its last turn.
    rows = [
        {"step": step, "prompt": p, "response": t, "score": round(float(s), 4)}
        for p, t, s in zip(prompts[:n], texts[:n], scores[:n])
    ]
    with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    shown = [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"] for r in rows]
    tracker.text(
        step,
        "samples",
        "\n\n".join(f"**{p}** → {r['response']} ({r['score']})" for p, r in zip(shown, rows)),
    )


class KLController:
    """β: fixed, or adaptive (Ziegler et al. 2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    def __init__(self, value: float, adaptive: bool, target: float, horizon: int):
        self.value, self.adaptive, self.target, self.horizon = value, adaptive, target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if self.adaptive:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.value *= 1 + error * n_episodes / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class EMA:
    """Exponential moving average of the trainable policy weights (InstructGPT: decay 0.992)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.shadow.values())).device if self.shadow else None
        self.shadow = {k: v.to(device).clone() for k, v in state.items()}
