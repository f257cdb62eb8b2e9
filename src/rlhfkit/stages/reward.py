"""Step2 — the reward model r(x, y), trained on rankings of K responses.

Objective (InstructGPT eq. 1; the seed's loss): for each prompt with K ranked responses, all C(K,2) pairs
(w better than l; ties give none) form ONE batch element,

    loss = −1/N · Σ_(w,l) log σ(r(x, y_w) − r(x, y_l)),   averaged over prompts  (`losses.ranking_loss`),

where N is the number of pairs the ranking forms: C(K,2) as in the paper when nothing ties, fewer with ties.

Putting a prompt's pairs in one element means each response gets one forward pass per step instead of K−1, and
the model does not over-fit to responses it sees K−1 times an epoch — InstructGPT's stated reason.
`--no-kwise` gives the ablation: the same pairs shuffled as independent elements (benchmarks/rm_kwise_ablation.py).

The model is the SFT model with a scalar head on the last non-pad token of `chat(prompt) + response (+ EOS)`,
saved as a stock `AutoModelForSequenceClassification` (num_labels=1). After training, rewards are shifted so that
the SFT demonstrations score 0 on average (InstructGPT). Llama-style heads have no bias, so the shift is stored as
`config.reward_bias` and added by `score_responses`/PPO; `config.reward_std` records the reward scale. A user's
comparisons given without demonstrations are centred on their best-ranked answers instead, and their scale is
measured over all the answers ranked (`centre_on_demonstrations`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import torch

from rlhfkit.config import LabelConfig, RewardConfig
from rlhfkit.data import DataError, Ranked, load_preferences, load_sft
from rlhfkit.losses import ranking_accuracy, ranking_loss
from rlhfkit.modeling import (
    TokenScores,
    check_vocab,
    last_token_scores,
    load_reward_model,
    read_meta,
    save_model,
)
from rlhfkit.stages.lm import finished_earlier, provenance, settings_of
from rlhfkit.tokenizer import format_prompt, load_tokenizer
from rlhfkit.training import (
    Tracker,
    batch_indices,
    check_finite,
    clip_gradients,
    console,
    cosine_schedule,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    microbatch_numbers,
    remove_checkpoint,
    save_checkpoint,
    seed_everything,
    sync_gradients_if,
)


def run(cfg: RewardConfig):
    out = Path(cfg.out)
    if finished_earlier(cfg, "reward"):
        return None
    seed_everything(cfg.seed)
    items = load_comparisons(cfg)
    train_items, val_items = split_by_prompt(items, cfg.val_fraction, cfg.seed)
    demos = load_demonstrations(cfg, train_items)  # before training: a bad file must not cost a trained model
    elements = train_items if cfg.kwise else as_independent_pairs(train_items, cfg.seed)
    steps = cfg.max_steps or math.ceil(cfg.epochs * len(elements) / (cfg.batch_size * cfg.grad_accum))
    console.print(
        f"[reward] {len(train_items)} train / {len(val_items)} val rankings "
        f"({sum(len(i.pairs()) for i in train_items)} train pairs), "
        f"{'K-wise elements' if cfg.kwise else 'independent pairs'}, {steps} steps"
    )

    tokenizer = load_tokenizer(cfg.model)
    model = load_reward_model(cfg.model, tokenizer.pad_token_id)
    check_vocab(model, tokenizer, f"reward --model {cfg.model}")
    check_conversations(tokenizer, items, f"reward --data {comparisons_path(cfg)}")
    warn_if_truncated(tokenizer, items, cfg.max_len)
    model = TokenScores(model)  # what DDP must wrap: the per-response scores, not HF's pooled forward
    accelerator = make_accelerator(cfg.mixed_precision)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start, changed = 0, {}
    if cfg.resume and (state := load_checkpoint(accelerator, out, scheduler, settings_of(cfg))):
        start, changed = state["step"], state["changed"]
        console.print(f"[reward] resuming from {out}/checkpoint at step {start}")
    # A fixed train subset as large as the val set: the train/val accuracy gap measures over-fitting.
    train_probe = random.Random(cfg.seed).sample(train_items, min(len(train_items), max(len(val_items), 1)))

    model.train()
    with Tracker(out, "reward", steps, start, enabled=accelerator.is_main_process) as tracker:
        for step in range(start, steps):
            numbers = microbatch_numbers(step, cfg.grad_accum, accelerator)
            step_loss, step_acc = 0.0, 0.0
            for m, number in enumerate(numbers):
                batch = [elements[i] for i in batch_indices(len(elements), cfg.batch_size, number, cfg.seed)]
                with sync_gradients_if(accelerator, model, m == len(numbers) - 1), accelerator.autocast():
                    rewards, ranks, mask = batch_rewards(
                        model, tokenizer, batch, cfg.max_len, accelerator.device
                    )
                    loss = ranking_loss(
                        rewards, ranks, mask, margins(ranks, cfg.margin), cfg.center_rewards_coefficient
                    )
                    accelerator.backward(loss / cfg.grad_accum)
                step_loss += loss.item() / cfg.grad_accum
                step_acc += ranking_accuracy(rewards.detach(), ranks, mask).item() / cfg.grad_accum
            check_finite(step + 1, accelerator, loss=step_loss)
            grad_norm = clip_gradients(accelerator, model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            metrics = {
                "loss": step_loss,
                "accuracy": step_acc,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
            }
            if val_items and (done % cfg.eval_every == 0 or done == steps):
                metrics["val_accuracy"], metrics["val_loss"] = accuracy(
                    model, tokenizer, val_items, cfg.max_len, accelerator
                )
                metrics["train_accuracy"], metrics["train_loss"] = accuracy(
                    model, tokenizer, train_probe, cfg.max_len, accelerator
                )
            if done % cfg.log_every == 0 or "val_accuracy" in metrics:
                tracker.log(done, metrics, show=("loss", "accuracy", "val_accuracy"))
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                save_checkpoint(accelerator, out, done, settings=settings_of(cfg))

    final = accelerator.unwrap_model(model).model.eval()
    bias, scale = centre_on_demonstrations(final, tokenizer, cfg, train_items, demos)
    final.config.reward_bias, final.config.reward_std = bias, scale
    if scale < NARROW_REWARD_STD:
        console.print(f"[reward] warning: {narrow_rewards(scale)}")
    if accelerator.is_main_process:
        save_model(
            final,
            tokenizer,
            out,
            stage="reward",
            chat=True,
            complete=True,
            steps=steps,
            reward_bias=bias,
            reward_std=scale,
            kwise=cfg.kwise,
            **provenance(cfg, changed),
        )
        remove_checkpoint(out)
        report = evaluate_reward_model(final, tokenizer, val_items, train_probe, cfg)
        (out / "eval.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
        val = (
            f"val accuracy {report['val_accuracy']:.3f}"
            if val_items
            else f"no validation rankings (--val-fraction {cfg.val_fraction} of {len(items)} rankings' prompts)"
        )
        console.print(f"[reward] {val} (train {report['train_accuracy']:.3f}); saved to {out}")
        for ranking in report.get("seed_rankings", []):
            scores = " / ".join(f"{r:+.2f}" for r in ranking["rewards"])
            verdict = "in the seed's order" if ranking["in_seed_order"] else "NOT in the seed's order"
            console.print(
                f"[reward] the seed's answers to {ranking['prompt']} best first: {scores} ({verdict})"
            )
    return final


# ---------------------------------------------------------------------------------------------------------------
# Data


def comparisons_path(cfg: RewardConfig) -> str:
    """The comparisons file: --data, or with 'world' the one `label` writes into the run's directory."""
    return str(Path(cfg.out) / "comparisons.jsonl") if cfg.data == "world" else cfg.data


def load_comparisons(cfg: RewardConfig) -> list[Ranked]:
    path = comparisons_path(cfg)
    if cfg.data == "world":
        if not (cfg.resume and Path(path).exists()):
            from rlhfkit.stages import label

            label.run(LabelConfig(out=path, model=cfg.model, seed=cfg.seed))
    return list(load_preferences(path))


def split_by_prompt(items: list[Ranked], val_fraction: float, seed: int) -> tuple[list[Ranked], list[Ranked]]:
    """Hold out whole prompts, so validation measures generalisation to prompts never trained on."""
    prompts = sorted({i.prompt for i in items})
    random.Random(seed).shuffle(prompts)
    val_prompts = set(prompts[: int(round(val_fraction * len(prompts)))])
    return [i for i in items if i.prompt not in val_prompts], [i for i in items if i.prompt in val_prompts]


def as_independent_pairs(items: list[Ranked], seed: int) -> list[Ranked]:
    """The ablation: every (w, l) pair its own K=2 element, shuffled."""
    pairs = []
    for item in items:
        for w, loser in item.pairs():
            ended = [item.ended[w], item.ended[loser]] if item.ended else None
            pairs.append(
                replace(item, responses=[item.responses[w], item.responses[loser]], ranks=[1, 2], ended=ended)
            )
    random.Random(seed).shuffle(pairs)
    return pairs


def check_conversations(tokenizer, items: list[Ranked], where: str) -> None:
    """A prompt given as a conversation needs the tokenizer's chat template: say so before any training step."""
    rows = [n for n, item in enumerate(items, 1) if item.prompt_messages]
    if rows and not tokenizer.chat_template:
        raise ValueError(
            f"{where}: {len(rows)} rows give the prompt as a conversation (the first is ranking {rows[0]}), but "
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; give plain-text prompts, or add a "
            "chat_template to the tokenizer"
        )


def warn_if_truncated(tokenizer, items: list[Ranked], max_len: int) -> None:
    """Say how many responses lose their prompt's start to --max-len (`encode_response` keeps the last tokens)."""
    # Encoded to max_len + 1 tokens, a row is too long exactly when it keeps all of them: one pass, no second count.
    rows = encode_items(tokenizer, items, max_len + 1)
    warn_if_cut("reward", sum(len(row) > max_len for row in rows), len(rows), max_len)


def warn_if_cut(stage: str, n_cut: int, n_responses: int, max_len: int) -> None:
    """The warning of a stage that cut `n_cut` rows to their last `max_len` tokens (reward, DPO)."""
    if n_cut:
        console.print(
            f"[{stage}] warning: {n_cut} of {n_responses} responses are longer than --max-len {max_len} with "
            f"their prompt; they keep their last {max_len} tokens (the prompt's start is cut)"
        )


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of chat(prompt); `prompt` may be a whole conversation (`Ranked.context`)."""
    return tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, prompt_ids: list[int], response: str, ended: bool, max_len: int) -> list[int]:
    """chat(prompt) + response (+ EOS when the answer ended): the same text PPO scores. The prompt comes encoded
    (`encode_prompt`), once for all of its K responses: rendering the chat template is the slow part."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids + ([tokenizer.eos_token_id] if ended else [])
    return ids[-max_len:] if len(ids) > max_len else ids


def encode_rows(
    tokenizer, prompts: list, responses: list[str], ended: list[bool], max_len: int
) -> list[list[int]]:
    """`encode_response` of each (prompt, response, ended); a prompt repeating the one before it (the K responses
    of a ranking, the n samples of best-of-n) reuses its ids instead of rendering the chat template again."""
    rows, previous, prompt_ids = [], None, []
    for prompt, response, e in zip(prompts, responses, ended):
        if prompt != previous:
            previous, prompt_ids = prompt, encode_prompt(tokenizer, prompt)
        rows.append(encode_response(tokenizer, prompt_ids, response, e, max_len))
    return rows


def encode_items(tokenizer, items: list[Ranked], max_len: int) -> list[list[int]]:
    """`encode_rows` of every response of every item, item by item, in the order of its responses."""
    return encode_rows(
        tokenizer,
        [item.context for item in items for _ in item.responses],
        [response for item in items for response in item.responses],
        [e for item in items for e in item.ended or [True] * len(item.responses)],
        max_len,
    )


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def batch_rewards(model, tokenizer, items: list[Ranked], max_len: int, device):
    """Score every response of every item in one forward; returns rewards, ranks and mask, each (P, K_max)."""
    where = [(p, k) for p, item in enumerate(items) for k in range(len(item.responses))]
    rows = encode_items(tokenizer, items, max_len)  # in the order of `where`
    ids, mask = right_pad(rows, tokenizer.pad_token_id)
    flat = last_token_scores(model, ids.to(device), mask.to(device)).float()  # (N,)
    k_max = max(len(i.responses) for i in items)
    rewards = torch.zeros(len(items), k_max, device=device)
    ranks = torch.zeros(len(items), k_max, dtype=torch.long, device=device)
    present = torch.zeros(len(items), k_max, dtype=torch.bool, device=device)
    p_idx = torch.tensor([p for p, _ in where], device=device)
    k_idx = torch.tensor([k for _, k in where], device=device)
    rewards = rewards.index_put((p_idx, k_idx), flat)
    ranks[p_idx, k_idx] = torch.tensor([items[p].ranks[k] for p, k in where], device=device)
    present[p_idx, k_idx] = True
    return rewards, ranks, present


def margins(ranks: torch.Tensor, margin: float) -> torch.Tensor | None:
    """margin · (rank_l − rank_w) for each (w, l), or None when unused. (P, K, K)"""
    if margin == 0.0:
        return None
    return margin * (ranks.unsqueeze(1) - ranks.unsqueeze(2)).clamp(min=0).float()


@torch.no_grad()
def accuracy(
    model, tokenizer, items: list[Ranked], max_len: int, accelerator, batch_size: int = 32
) -> tuple[float, float]:
    """Pairwise accuracy and ranking loss over `items` (ties excluded), pooled over pairs."""
    was_training = model.training
    model.eval()
    correct = total = 0.0
    loss_sum = 0.0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        with accelerator.autocast():
            rewards, ranks, mask = batch_rewards(model, tokenizer, chunk, max_len, accelerator.device)
        n_pairs = sum(len(item.pairs()) for item in chunk)
        correct += ranking_accuracy(rewards, ranks, mask).item() * n_pairs
        loss_sum += ranking_loss(rewards, ranks, mask).item() * len(chunk)
        total += n_pairs
    model.train(was_training)
    return correct / max(total, 1), loss_sum / max(len(items), 1)


@torch.no_grad()
def score_responses(
    model,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    ended: list[bool] | None = None,
    max_len: int = 256,
    batch_size: int = 64,
) -> torch.Tensor:
    """r(x, y) for each (prompt, response), including the stored demonstration-mean shift. (N,)"""
    ended = ended if ended is not None else [True] * len(prompts)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = slice(i, i + batch_size)
        rows = encode_rows(tokenizer, prompts[batch], responses[batch], ended[batch], max_len)
        ids, mask = right_pad(rows, tokenizer.pad_token_id)
        out.append(last_token_scores(model, ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) + float(getattr(model.config, "reward_bias", 0.0) or 0.0)


# Below this spread on the centring answers the reward model barely tells answers apart, and PPO's rewards,
# divided by it, grow by 1/std: both deserve a word.
NARROW_REWARD_STD = 0.05


def narrow_rewards(std: float) -> str:
    return (
        f"the reward model's scores of the centring answers spread by only {std:.4f}, so it barely tells answers "
        f"apart; PPO divides rewards by that spread (×{1 / max(std, 1e-12):.0f}) unless given --no-scale-rewards"
    )


Demo = tuple[str | list[dict], str, bool]  # (prompt or conversation, completion, ended)


def load_demonstrations(cfg: RewardConfig, items: list[Ranked]) -> list[Demo] | None:
    """The demonstrations the reward is centred on, read before any training step so that a bad
    --demonstrations FILE stops the run at once: the embedded world's ('world'), the rows of FILE, or None when
    there are none ('') or the comparisons are not the world's (their best-ranked answers stand in, see
    `centre_on_demonstrations`)."""
    if not cfg.demonstrations:
        return None
    if cfg.demonstrations != "world":
        try:
            rows = load_sft(cfg.demonstrations)
        except DataError as err:
            raise DataError(f"reward --demonstrations {cfg.demonstrations}: {err}") from None
        return [(row.messages[:-1] if row.messages else row.prompt, row.completion, True) for row in rows]
    from rlhfkit.world import demonstrations, parse_prompt

    if any(parse_prompt(item.prompt) is None for item in items):
        console.print(
            "[reward] these comparisons are not the embedded world's: the reward is centred on their best-ranked "
            "answers and scaled by the spread of all their answers (--demonstrations FILE centres it on your SFT "
            "data, --demonstrations '' not at all)"
        )
        return None
    return [(d["prompt"], d["completion"], True) for d in demonstrations()]


def centre_on_demonstrations(
    model, tokenizer, cfg: RewardConfig, items: list[Ranked], demos: list[Demo] | None
) -> tuple[float, float]:
    """Bias that gives the SFT demonstrations mean reward 0 (InstructGPT), and the reward std on them.

    `demos` comes from `load_demonstrations`. For comparisons that are not the embedded world's (a user's data,
    `demos` None) their own best-ranked answers stand in for demonstrations: they give the bias, but the std is
    taken over all the answers of those rankings — best answers may be near-identical, and their tiny spread,
    which PPO divides rewards by, would blow the rewards up; the spread between answers is the reward's scale."""
    if not cfg.demonstrations:
        return 0.0, 1.0
    model.config.reward_bias = 0.0
    if demos is None:
        return centre_on_best_answers(model, tokenizer, items, cfg.max_len)
    prompts, completions, ended = (list(column) for column in zip(*demos))
    scores = score_responses(model, tokenizer, prompts, completions, ended, max_len=cfg.max_len)
    return -float(scores.mean()), float(scores.std()) if len(scores) > 1 else 1.0


def centre_on_best_answers(model, tokenizer, items: list[Ranked], max_len: int) -> tuple[float, float]:
    """Bias from the best-ranked answers' mean, std over every answer of the rankings (one pass over them)."""
    rows: list[Demo] = []  # (prompt, answer, ended) of every answer
    best = []  # the index in `rows` of each ranking's best answer
    for item in items:
        best.append(len(rows) + item.ranks.index(min(item.ranks)))
        # an answer that was cut off is scored without the EOS it never had
        rows += [
            (item.context, r, e) for r, e in zip(item.responses, item.ended or [True] * len(item.responses))
        ]
    prompts, responses, ended = (list(column) for column in zip(*rows))
    scores = score_responses(model, tokenizer, prompts, responses, ended, max_len=max_len)
    return -float(scores[best].mean()), float(scores.std()) if len(scores) > 1 else 1.0


def evaluate_reward_model(model, tokenizer, val_items, train_probe, cfg: RewardConfig) -> dict:
    """reward/eval.json: accuracy, over-fitting gap and — on the embedded world — agreement with the held-out
    gold panel, the labelers' own agreement (the ceiling), accuracy per oracle dimension, Spearman vs gold."""
    from rlhfkit.training import make_accelerator

    accelerator = make_accelerator("no")
    val_acc, val_loss = (
        accuracy(model, tokenizer, val_items, cfg.max_len, accelerator) if val_items else (None, None)
    )
    train_acc, train_loss = accuracy(model, tokenizer, train_probe, cfg.max_len, accelerator)
    report = {
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "n_val_rankings": len(val_items),
        "n_val_pairs": sum(len(i.pairs()) for i in val_items),
        "kwise": cfg.kwise,
        "reward_bias": float(model.config.reward_bias),
        "reward_std": float(model.config.reward_std),
    }
    from rlhfkit.evaluate import reward_model_vs_gold, seed_rankings
    from rlhfkit.stages.label import read_settings

    vs_gold = reward_model_vs_gold(
        model, tokenizer, val_items, cfg.max_len, read_settings(comparisons_path(cfg))
    )
    report.update(vs_gold)
    if vs_gold:  # the embedded world's comparisons: the seed's own examples mean something to this RM
        report["seed_rankings"] = seed_rankings(model, tokenizer, cfg.max_len)
    meta = read_meta(cfg.model)
    report["initialised_from"] = {"path": cfg.model, "stage": meta.get("stage")}
    return report
