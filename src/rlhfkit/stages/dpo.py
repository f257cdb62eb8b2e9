"""DPO — the answer to the seed's closing question: can the preference judgement be the loss, without RL?

Direct Preference Optimization (Rafailov et al. 2023) trains the policy on the Step2 comparisons directly:

    loss = −log σ( β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )   (`losses.dpo_loss`)

No reward model and no sampling: the policy is its own implicit reward model, r(x,y) = β·log π(y|x)/π_ref(y|x).
Every pair (w, l) of a K-wise ranking is a term (ties give none), and — as the reward model does with
InstructGPT's loss — a ranking is ONE batch element: its K responses get one forward each and all C(K,2) pairs
are taken from those K log-probs, weighted 1/C(K,2) (K=8: 8 forwards instead of 56). Pairwise files are the K=2
case. The reference log-probs never change, so they are computed once before training and cached — on the
training device, under the policy's autocast, so the log-ratios start at exactly 0. `loss_type` also offers
IPO (Azar et al. 2023) and robust DPO (Chowdhury et al. 2024); `label_smoothing` is the assumed label-noise rate.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from rlhfkit.batching import check_conversations, encode_prompt, encode_response, pad, warn_if_cut
from rlhfkit.config import DPOConfig
from rlhfkit.data import load_preferences
from rlhfkit.losses import dpo_loss, sequence_logprob, token_logprobs
from rlhfkit.modeling import check_vocab, fit_vocab, load_causal_lm, save_model, use_load_options
from rlhfkit.tokenizer import control_tokens, give_own_pad_token, load_tokenizer
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
    make_optimizer,
    microbatch_numbers,
    provenance,
    remove_checkpoint,
    save_checkpoint,
    seed_everything,
    settings_of,
    steps_for_epochs,
    sync_gradients_if,
)


def run(cfg: DPOConfig):
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    out = Path(cfg.out)
    if finished_earlier(cfg, "dpo"):
        return None
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    give_own_pad_token(tokenizer, "dpo")
    policy = fit_vocab(load_causal_lm(cfg.policy), tokenizer)
    check_vocab(policy, tokenizer, f"dpo --policy {cfg.policy}")
    policy.eval()  # no dropout: the same network as the cached reference computation
    rankings = encode_rankings(cfg, tokenizer)
    accelerator = make_accelerator(cfg.mixed_precision)
    ref_policy = fit_vocab(load_causal_lm(cfg.ref_policy or cfg.policy), tokenizer).eval()
    check_vocab(ref_policy, tokenizer, f"dpo --ref-policy {cfg.ref_policy or cfg.policy}", cfg.ref_policy)
    n_responses = sum(len(r.rows) for r in rankings)
    with console.status(f"[dpo] caching reference log-probs of {n_responses} responses"):
        ref_logps = cached_logprobs(
            ref_policy, rankings, tokenizer.pad_token_id, accelerator
        )  # one (K,) each
    del ref_policy

    steps = cfg.max_steps or steps_for_epochs(cfg.epochs, len(rankings), cfg.batch_size, cfg.grad_accum)
    optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    start, changed = 0, {}
    if cfg.resume and (state := load_checkpoint(accelerator, out, scheduler, settings_of(cfg))):
        start, changed = state["step"], state["changed"]
        console.print(f"[dpo] resuming from {out}/checkpoint at step {start}")
    n_pairs = sum(len(r.pairs) for r in rankings)
    console.print(
        f"[dpo] {len(rankings)} rankings, {n_pairs} preference pairs, β={cfg.beta}, {cfg.loss_type}, {steps} steps"
    )

    with Tracker(out, "dpo", steps, start, enabled=accelerator.is_main_process) as tracker:
        for step in range(start, steps):
            numbers = microbatch_numbers(step, cfg.grad_accum, accelerator)
            stats: dict[str, float] = {}
            for m, number in enumerate(numbers):
                index = batch_indices(len(rankings), cfg.batch_size, number, cfg.seed)
                batch = [rankings[i] for i in index]
                ref = torch.cat([ref_logps[i] for i in index]).to(accelerator.device)
                with sync_gradients_if(accelerator, policy, m == len(numbers) - 1):
                    with accelerator.autocast():
                        loss, chosen_rewards, rejected_rewards = batch_loss(
                            cfg, policy, batch, ref, tokenizer.pad_token_id, accelerator.device
                        )
                    accelerator.backward(loss / cfg.grad_accum)
                for name, value in pair_stats(loss, chosen_rewards, rejected_rewards).items():
                    stats[name] = stats.get(name, 0.0) + value / cfg.grad_accum
            check_finite(step + 1, accelerator, loss=stats["loss"])
            grad_norm = clip_gradients(accelerator, policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            if done % cfg.log_every == 0 or done == steps:
                metrics = {**stats, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                tracker.log(done, metrics, show=("loss", "reward_accuracy"))
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                check_weights(accelerator.unwrap_model(policy), done, "policy")
                save_checkpoint(accelerator, out, done, settings=settings_of(cfg))

    check_weights(accelerator.unwrap_model(policy), steps, "policy")
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
            **provenance(cfg, changed),
        )
        remove_checkpoint(out)
        console.print(f"[dpo] saved to {out}")
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(policy)


@dataclass
class EncodedRanking:
    """A ranking ready for the policy: token ids of each `chat(prompt) + response (+ EOS)`, how many of each row's
    tokens are prompt (fewer where a long row lost its first tokens to max_len), and the (winner, loser) pairs."""

    rows: list[list[int]]
    prompt_lens: list[int]
    pairs: list[tuple[int, int]]


def encode_rankings(cfg: DPOConfig, tokenizer) -> list[EncodedRanking]:
    """Every ranking of the file (the loader rejects, with file and line, a row whose responses all tie)."""
    rankings, items, n_cut = [], list(load_preferences(cfg.data, control_tokens(tokenizer))), 0
    check_conversations(tokenizer, items, f"dpo --data {cfg.data}")
    for item in items:
        prompt_ids = encode_prompt(tokenizer, item.context)
        prompt_len = len(prompt_ids)
        ended = item.ended or [True] * len(item.responses)
        rows, prompt_lens = [], []
        for response, e in zip(item.responses, ended):
            whole = encode_response(tokenizer, prompt_ids, response, e, max_len=sys.maxsize)
            row = whole[-cfg.max_len :]  # cut from the left to max_len, as the reward model's rows are
            rows.append(row)
            prompt_lens.append(max(prompt_len - (len(whole) - len(row)), 0))
            n_cut += len(row) < len(whole)
        rankings.append(EncodedRanking(rows, prompt_lens, item.pairs()))
    warn_if_cut("dpo", n_cut, sum(len(r.rows) for r in rankings), cfg.max_len)
    return rankings


def pair_index(batch: list[EncodedRanking], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of winner and loser of every pair in the batch's flat list of responses, and the weight of
    each pair: 1/(pairs of its ranking · rankings in the batch), so every ranking counts the same."""
    chosen, rejected, weights, offset = [], [], [], 0
    for ranking in batch:
        for w, lose in ranking.pairs:
            chosen.append(offset + w)
            rejected.append(offset + lose)
            weights.append(1.0 / (len(ranking.pairs) * len(batch)))
        offset += len(ranking.rows)
    as_tensor = partial(torch.tensor, device=device)
    return as_tensor(chosen), as_tensor(rejected), as_tensor(weights)


def batch_loss(
    cfg: DPOConfig, policy, batch: list[EncodedRanking], ref: torch.Tensor, pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`losses.dpo_loss` of a batch of rankings, given their cached reference log-probs `ref` (N,), and the
    implicit rewards of its pairs."""
    chosen, rejected, weights = pair_index(batch, device)
    logps = response_logprobs(policy, batch, pad_id, device)
    return dpo_loss(
        logps[chosen],
        logps[rejected],
        ref[chosen],
        ref[rejected],
        cfg.beta,
        cfg.loss_type,
        cfg.label_smoothing,
        weights,
    )


def pair_stats(loss: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """A batch's loss and implicit-reward statistics for metrics.jsonl, read from the device in one transfer."""
    margin = chosen_rewards - rejected_rewards
    stats = {
        "loss": loss,
        "reward_accuracy": (margin > 0).float().mean(),
        "reward_margin": margin.mean(),
        "chosen_reward": chosen_rewards.mean(),
        "rejected_reward": rejected_rewards.mean(),
    }
    return dict(zip(stats, torch.stack(list(stats.values())).detach().tolist()))


def response_logprobs(policy, batch: list[EncodedRanking], pad_id: int, device) -> torch.Tensor:
    """log π(y|x) of every response of every ranking, in one forward. (N,)"""
    rows = [row for ranking in batch for row in ranking.rows]
    prompt_lens = [n for ranking in batch for n in ranking.prompt_lens]
    ids, mask = pad(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    response = mask.clone()
    for i, prompt_len in enumerate(prompt_lens):
        response[i, :prompt_len] = 0  # only answer tokens count
    logits = policy(input_ids=ids, attention_mask=mask).logits
    return sequence_logprob(token_logprobs(logits, ids), response[:, 1:])


@torch.no_grad()
def cached_logprobs(
    model, rankings: list[EncodedRanking], pad_id: int, accelerator, batch_size: int = 8
) -> list[torch.Tensor]:
    """log π_ref(y|x) of every response, one (K,) per ranking, kept on the CPU. Computed on the device and
    under the autocast the policy's forward uses, so at step 0 (policy = reference) every log-ratio is 0."""
    model.to(accelerator.device)
    out = []
    for i in range(0, len(rankings), batch_size):
        chunk = rankings[i : i + batch_size]
        with accelerator.autocast():
            flat = response_logprobs(model, chunk, pad_id, accelerator.device)
        out.extend(flat.float().cpu().split([len(r.rows) for r in chunk]))
    return out
