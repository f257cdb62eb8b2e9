"""DPO — the answer to the seed's closing question: can the preference judgement be the loss, without RL?

Direct Preference Optimization (Rafailov et al. 2023) trains the policy on the Step2 comparisons directly:

    loss = −log σ( β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )   (`losses.dpo_loss`)

No reward model and no sampling: the policy is its own implicit reward model, r(x,y) = β·log π(y|x)/π_ref(y|x).
Every pair (w, l) of a K-wise ranking is one example (ties give none); pairwise files are the K=2 case. The
reference log-probs never change, so they are computed once before training and cached. `loss_type` also offers
IPO (Azar et al. 2023) and robust DPO (Chowdhury et al. 2024); `label_smoothing` is the assumed label-noise rate.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhfkit.config import DPOConfig
from rlhfkit.data import load_preferences
from rlhfkit.losses import dpo_loss, sequence_logprob, token_logprobs
from rlhfkit.modeling import check_vocab, load_causal_lm, save_model
from rlhfkit.stages.lm import is_finished
from rlhfkit.stages.reward import encode_response, right_pad
from rlhfkit.tokenizer import format_prompt, load_tokenizer
from rlhfkit.training import (
    Tracker,
    batch_indices,
    check_finite,
    console,
    cosine_schedule,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    remove_checkpoint,
    save_checkpoint,
    seed_everything,
)


def run(cfg: DPOConfig):
    out = Path(cfg.out)
    if cfg.resume and is_finished(out):
        console.print(f"[dpo] {out} is already finished; nothing to do")
        return None
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    policy = load_causal_lm(cfg.policy)
    check_vocab(policy, tokenizer, f"dpo --policy {cfg.policy}")
    policy.eval()  # no dropout: the same network as the cached reference computation
    pairs = preference_pairs(cfg, tokenizer)
    ref_policy = load_causal_lm(cfg.ref_policy or cfg.policy).eval()
    with console.status(f"[dpo] caching reference log-probs of {len(pairs)} pairs"):
        ref_logps = cached_logprobs(ref_policy, pairs, tokenizer.pad_token_id)  # (N, 2): chosen, rejected
    del ref_policy

    steps = cfg.max_steps or math.ceil(cfg.epochs * len(pairs) / cfg.batch_size)
    accelerator = make_accelerator(cfg.mixed_precision)
    optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    start = 0
    if cfg.resume and (state := load_checkpoint(accelerator, out)):
        start = state["step"]
        console.print(f"[dpo] resuming from {out}/checkpoint at step {start}")
    console.print(f"[dpo] {len(pairs)} preference pairs, β={cfg.beta}, {cfg.loss_type}, {steps} steps")

    with Tracker(out, "dpo", steps, start, enabled=accelerator.is_main_process) as tracker:
        for step in range(start, steps):
            number = step * accelerator.num_processes + accelerator.process_index
            index = batch_indices(len(pairs), cfg.batch_size, number, cfg.seed)
            with accelerator.autocast():
                logps = pair_logprobs(
                    policy, [pairs[i] for i in index], tokenizer.pad_token_id, accelerator.device
                )
                ref = ref_logps[index].to(accelerator.device)
                loss, chosen_rewards, rejected_rewards = dpo_loss(
                    logps[:, 0],
                    logps[:, 1],
                    ref[:, 0],
                    ref[:, 1],
                    cfg.beta,
                    cfg.loss_type,
                    cfg.label_smoothing,
                )
            check_finite(step + 1, loss=loss.item())
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            if done % cfg.log_every == 0 or done == steps:
                margin = chosen_rewards - rejected_rewards
                tracker.log(
                    done,
                    {
                        "loss": loss.item(),
                        "reward_accuracy": (margin > 0).float().mean().item(),
                        "reward_margin": margin.mean().item(),
                        "chosen_reward": chosen_rewards.mean().item(),
                        "rejected_reward": rejected_rewards.mean().item(),
                        "grad_norm": float(grad_norm),
                        "lr": scheduler.get_last_lr()[0],
                    },
                    show=("loss", "reward_accuracy"),
                )
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                save_checkpoint(accelerator, out, done)

    if accelerator.is_main_process:
        save_model(
            accelerator.unwrap_model(policy),
            tokenizer,
            out,
            stage="dpo",
            chat=True,
            complete=True,
            steps=steps,
            beta=cfg.beta,
            loss_type=cfg.loss_type,
        )
        remove_checkpoint(out)
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(policy)


def preference_pairs(cfg: DPOConfig, tokenizer) -> list[tuple[list[int], list[int], int]]:
    """(chosen ids, rejected ids, prompt length) for every (w, l) pair of every ranking."""
    pairs = []
    for item in load_preferences(cfg.data):
        prompt_len = len(
            tokenizer(format_prompt(tokenizer, item.prompt), add_special_tokens=False)["input_ids"]
        )
        ended = item.ended or [True] * len(item.responses)
        encoded = [
            encode_response(tokenizer, item.prompt, r, e, cfg.max_len) for r, e in zip(item.responses, ended)
        ]
        pairs.extend((encoded[w], encoded[lose], prompt_len) for w, lose in item.pairs())
    if not pairs:
        raise ValueError(f"dpo --data {cfg.data}: no preference pairs (every ranking is a tie)")
    return pairs


def pair_logprobs(policy, pairs, pad_id: int, device) -> torch.Tensor:
    """log π(y|x) of chosen and rejected, one forward over both. (B, 2)"""
    rows = [ids for chosen, rejected, _ in pairs for ids in (chosen, rejected)]
    ids, mask = right_pad(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    response = mask.clone()
    for i, (_, _, prompt_len) in enumerate(p for p in pairs for _ in range(2)):
        response[i, :prompt_len] = 0  # only answer tokens count
    logits = policy(input_ids=ids, attention_mask=mask).logits
    logps = sequence_logprob(token_logprobs(logits, ids), response[:, 1:])  # (2B,)
    return logps.view(-1, 2)


@torch.no_grad()
def cached_logprobs(model, pairs, pad_id: int, batch_size: int = 32) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat(
        [
            pair_logprobs(model, pairs[i : i + batch_size], pad_id, device).float().cpu()
            for i in range(0, len(pairs), batch_size)
        ]
    )
