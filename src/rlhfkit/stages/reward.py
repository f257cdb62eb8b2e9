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

Rounds (iterated RLHF: the reward model shown what the newest policy writes). `--data` is the round's new
rankings, `--earlier-data` earlier rounds'. *Continue*: `--model PREV_RM` starts from the previous reward model,
its head included, and trains on --data (or, with --earlier-data, on everything); *retrain*: `--model SFT` with
--earlier-data trains a new one on everything. Either way the new model is centred and scaled again. Before it
trains, the previous reward model (--model, or --previous-reward-model) scores --data's answers: eval.json's
`accuracy_on_new_samples` has its agreement with the held-out panel there — is the reward model still right where
PPO pushed? — beside the new model's on the rankings it held out.

Ensembles (Coste et al. 2023): `--ensemble M` trains M reward models that differ in their seed (head
initialisation and data order; `--ensemble-bootstrap` also resamples the rankings), on one validation split, each
saved as a stock directory `member_m/` of --out; `ensemble.load_judge` reads the directory as one reward model.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoConfig

from rlhfkit.batching import (
    NARROW_REWARD_STD,
    check_conversations,
    encode_items,
    narrow_rewards,
    pad,
    score_responses,
    warn_if_cut,
)
from rlhfkit.config import RewardConfig
from rlhfkit.data import DataError, Ranked, load_preferences, load_sft, read_records
from rlhfkit.ensemble import RewardEnsemble, load_judge, members
from rlhfkit.errors import UsageError
from rlhfkit.evaluate import agreement, answer_rewards, judged_pairs
from rlhfkit.labelers import default_settings, read_settings, simulated_labelers
from rlhfkit.losses import ranking_accuracy, ranking_loss
from rlhfkit.modeling import (
    RLHFKIT_META,
    TokenScores,
    check_vocab,
    fit_vocab,
    for_inference,
    from_pretrained,
    last_token_scores,
    load_reward_model,
    read_meta,
    save_model,
    use_load_options,
)
from rlhfkit.rundir import write_json
from rlhfkit.sources import WORLD
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
from rlhfkit.world import (
    DIMENSIONS,
    SEED_RANKINGS,
    WEIGHTS,
    demonstrations,
    eval_panel,
    inter_labeler_agreement,
    parse_prompt,
    score,
)


def run(cfg: RewardConfig):
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    if finished_earlier(cfg, "reward"):
        return None
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    give_own_pad_token(tokenizer, "reward")
    data = load_rounds(cfg, control_tokens(tokenizer))
    if not data.val:
        console.print(
            f"[reward] warning: --val-fraction {cfg.val_fraction} of {len({i.prompt for i in data.items})} "
            "prompts holds out none, so no validation accuracy will be measured; give more rankings or a larger "
            "--val-fraction"
        )
    # before training: a bad file must not cost a trained model
    demos = load_demonstrations(cfg, data.train, control_tokens(tokenizer))
    sources = initial_models(cfg)
    check_conversations(tokenizer, data.items, f"reward --data {cfg.data}")
    warn_if_truncated(tokenizer, data.items, cfg.max_len)
    # The reward model this one replaces, on the newest answers, before anything trains on them (rounds).
    previous = previous_reward_model(cfg)
    before = None  # the previous reward model's rewards of --data's answers
    if previous is not None:
        judge = for_inference(load_judge(previous, tokenizer.pad_token_id))
        check_vocab(judge, tokenizer, f"reward --previous-reward-model {previous}", previous)
        before = answer_rewards(judge, tokenizer, data.new, cfg.max_len)
        del judge
    if cfg.ensemble == 1:
        return train_reward_model(cfg, cfg.seed, tokenizer, data, data.train, demos, before)
    return train_ensemble(cfg, tokenizer, data, demos, sources, before)


def train_reward_model(
    cfg: RewardConfig,
    seed: int,
    tokenizer,
    data: Comparisons,
    train_items: list[Ranked],
    demos: list[Demo] | None,
    before: list[float] | None,
    member: int | None = None,
):
    """Train, centre, evaluate and save one reward model from cfg.model into cfg.out. `seed` draws its head and
    its data order (an ensemble member's own); the validation split is cfg.seed's, the same for every member."""
    out = Path(cfg.out)
    if member is not None and finished_earlier(cfg, f"reward member {member}"):
        return None
    elements = train_items if cfg.kwise else as_independent_pairs(train_items, seed)
    steps = cfg.max_steps or steps_for_epochs(cfg.epochs, len(elements), cfg.batch_size, cfg.grad_accum)
    console.print(
        f"[reward] {'' if member is None else f'member {member} (seed {seed}): '}{len(train_items)} train / "
        f"{len(data.val)} val rankings ({sum(len(i.pairs()) for i in train_items)} train pairs), "
        f"{'K-wise elements' if cfg.kwise else 'independent pairs'}, {steps} steps"
    )

    seed_everything(seed)  # the head's initialisation
    model = fit_vocab(load_reward_model(cfg.model, tokenizer.pad_token_id), tokenizer)
    check_vocab(model, tokenizer, f"reward --model {cfg.model}")
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
    train_probe = data.train_probe()

    model.train()
    with Tracker(out, "reward", steps, start, enabled=accelerator.is_main_process) as tracker:
        for step in range(start, steps):
            numbers = microbatch_numbers(step, cfg.grad_accum, accelerator)
            step_loss, step_acc = 0.0, 0.0
            for m, number in enumerate(numbers):
                batch = [elements[i] for i in batch_indices(len(elements), cfg.batch_size, number, seed)]
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
            if data.val and (done % cfg.eval_every == 0 or done == steps):
                metrics["val_accuracy"], metrics["val_loss"] = accuracy(
                    model, tokenizer, data.val, cfg.max_len, accelerator
                )
                metrics["train_accuracy"], metrics["train_loss"] = accuracy(
                    model, tokenizer, train_probe, cfg.max_len, accelerator
                )
            if done % cfg.log_every == 0 or "val_accuracy" in metrics:
                tracker.log(done, metrics, show=("loss", "accuracy", "val_accuracy"))
            tracker.advance(done)
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                check_weights(accelerator.unwrap_model(model), done, "reward model")
                save_checkpoint(accelerator, out, done, settings=settings_of(cfg))

    final = accelerator.unwrap_model(model).model.eval()
    check_weights(final, steps, "reward model")
    bias, scale = centre_on_demonstrations(final, tokenizer, cfg, train_items, demos)
    final.config.reward_bias, final.config.reward_std = bias, scale
    if scale < NARROW_REWARD_STD:
        console.print(f"[reward] warning: {narrow_rewards(scale)}")
    if accelerator.is_main_process:
        report = evaluate_reward_model(final, tokenizer, data.val, train_probe, cfg)
        if member is None:
            report.update(new_samples_report(final, tokenizer, data, before, cfg))
        write_json(out / "eval.json", report)  # before the model: its save marks the stage done
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
            **({} if member is None else {"member": member, "member_seed": seed}),
            **provenance(cfg, changed),
        )
        remove_checkpoint(out)
        print_report(report, cfg, len(data.items))
    return final


# ---------------------------------------------------------------------------------------------------------------
# An ensemble of reward models (Coste et al. 2023): M members that differ in their seed — the head's
# initialisation and the order of the data — and, with --ensemble-bootstrap, in a resample of the rankings.


def train_ensemble(
    cfg: RewardConfig, tokenizer, data: Comparisons, demos, sources: list[str], before: list[float] | None
) -> RewardEnsemble:
    """Members member_0..member_{M-1} of cfg.out, each a stock reward model directory (`ensemble.py`), then the
    ensemble's own eval.json and rlhfkit.json, the latter last: it is what says the ensemble is finished."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for m, source in enumerate(sources):
        seed = cfg.seed + m
        member_cfg = replace(cfg, out=str(out / member_name(m)), model=source, ensemble=1)
        train_items = data.train
        if cfg.ensemble_bootstrap:  # as many rankings as there are, drawn with replacement
            train_items = random.Random(seed).choices(data.train, k=len(data.train))
        began = time.time()
        train_reward_model(member_cfg, seed, tokenizer, data, train_items, demos, None, member=m)
        seconds.append(round(time.time() - began, 2))
    names = [member_name(m) for m in range(cfg.ensemble)]
    ensemble = RewardEnsemble(
        [load_reward_model(out / name, tokenizer.pad_token_id, trained=True).eval() for name in names]
    )
    report = evaluate_reward_model(ensemble, tokenizer, data.val, data.train_probe(), cfg)
    report["ensemble"] = {
        "members": names,
        "combined_by": "mean of the members' (r + bias) / std (what ppo --ensemble-reduce mean gives)",
        "bootstrap": cfg.ensemble_bootstrap,
        "seconds": seconds,  # each member costs one reward model's training: M× Step2
        "member_val_accuracy": [read_eval(out / name).get("val_accuracy") for name in names],
        "member_panel_agreement": [read_eval(out / name).get("panel_agreement") for name in names],
    }
    report.update(new_samples_report(ensemble, tokenizer, data, before, cfg))
    for stale in MODEL_FILES_AT_TOP:  # a single reward model saved here before: it must not load as this one
        for path in out.glob(stale):
            path.unlink()
    tokenizer.save_pretrained(out)
    write_json(out / "eval.json", report)
    write_json(
        out / RLHFKIT_META,
        {
            "stage": "reward",
            "chat": True,
            "complete": True,
            "ensemble": cfg.ensemble,
            "members": names,
            "bootstrap": cfg.ensemble_bootstrap,
            "kwise": cfg.kwise,
            **provenance(cfg, {}),
        },
    )  # last
    print_report(report, cfg, len(data.items))
    console.print(
        f"[reward] an ensemble of {cfg.ensemble} in {out} (member val accuracy "
        + ", ".join(f"{a:.3f}" for a in report["ensemble"]["member_val_accuracy"] if a is not None)
        + f"; {sum(seconds):.0f} s of training, {cfg.ensemble}× one reward model's)"
    )
    return ensemble


MODEL_FILES_AT_TOP = ("*.safetensors", "config.json")


def member_name(m: int) -> str:
    return f"member_{m}"


def read_eval(path: Path) -> dict:
    file = Path(path) / "eval.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def initial_models(cfg: RewardConfig) -> list[str]:
    """The model each of the --ensemble M reward models starts from: --model for all (the SFT model, or one reward
    model to continue), or, for --model an ensemble, its own members in turn (continuing each)."""
    previous = members(cfg.model)
    if not previous:
        return [cfg.model] * cfg.ensemble
    if len(previous) != cfg.ensemble:
        raise UsageError(
            f"reward --model {cfg.model} is an ensemble of {len(previous)} reward models, and --ensemble is "
            f"{cfg.ensemble}: continuing one continues each of its members; give --ensemble {len(previous)} (or "
            "--model the SFT model, to train a new ensemble)"
        )
    return [str(p) for p in previous]


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_comparisons(cfg: RewardConfig, control_tokens: list[str] | tuple = ()) -> list[Ranked]:
    """The rankings of --data. Writing them is `label`'s job, and running label then reward the pipeline's."""
    if cfg.data == WORLD:
        raise UsageError(
            "reward --data world: the reward model trains on a comparisons file; write one with `rlhfkit label "
            "--model SFT_DIR --out FILE.jsonl` and give --data FILE.jsonl (`rlhfkit pipeline` runs both)"
        )
    return list(load_preferences(cfg.data, control_tokens))


@dataclass
class Comparisons:
    """The rankings a reward model trains on: --data (this round's, `new`) and --earlier-data, split by prompt
    into train and val (`split_by_prompt`, the same split for every member of an ensemble)."""

    items: list[Ranked]
    train: list[Ranked]
    val: list[Ranked]
    new: list[Ranked]  # --data's rankings, in its order
    new_writers: list[
        list[str] | None
    ]  # per ranking of `new`: which model wrote each answer ("models"), if known
    new_val: list[int]  # the indices in `new` of its rankings held out for validation
    seed: int

    def train_probe(self) -> list[Ranked]:
        """A fixed train subset as large as the val set: the train/val accuracy gap measures over-fitting."""
        return random.Random(self.seed).sample(self.train, min(len(self.train), max(len(self.val), 1)))


def load_rounds(cfg: RewardConfig, control_tokens: list[str] | tuple = ()) -> Comparisons:
    """--data and every --earlier-data file, split by prompt; which rankings are --data's is kept."""
    new = load_comparisons(cfg, control_tokens)
    items = list(new)
    for path in cfg.earlier_data:
        items += load_preferences(path, control_tokens)
    train, val = split_by_prompt(items, cfg.val_fraction, cfg.seed)
    held_out = {id(item) for item in val}
    writers = [record.get("models") for _, record in read_records(cfg.data)]  # aligned: one per ranking
    if cfg.earlier_data:
        console.print(
            f"[reward] {len(new)} rankings of --data {cfg.data} and {len(items) - len(new)} of --earlier-data "
            f"({len(cfg.earlier_data)} files)"
        )
    return Comparisons(
        items=items,
        train=train,
        val=val,
        new=new,
        new_writers=[
            w if isinstance(w, list) and len(w) == len(i.responses) else None for w, i in zip(writers, new)
        ],
        new_val=[n for n, item in enumerate(new) if id(item) in held_out],
        seed=cfg.seed,
    )


def previous_reward_model(cfg: RewardConfig) -> str | None:
    """The reward model this one replaces (--previous-reward-model, or --model when that is a reward model or an
    ensemble: continuing it), None for a first reward model."""
    if cfg.previous_reward_model:
        return cfg.previous_reward_model
    if members(cfg.model):
        return cfg.model
    architectures = from_pretrained(AutoConfig, cfg.model, "reward --model").architectures or []
    return cfg.model if any(a.endswith("ForSequenceClassification") for a in architectures) else None


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


def warn_if_truncated(tokenizer, items: list[Ranked], max_len: int) -> None:
    """Say how many responses lose their prompt's start to --max-len (`encode_response` keeps the last tokens)."""
    # Encoded to max_len + 1 tokens, a row is too long exactly when it keeps all of them: one pass, no second count.
    rows = encode_items(tokenizer, items, max_len + 1)
    warn_if_cut("reward", sum(len(row) > max_len for row in rows), len(rows), max_len)


def batch_rewards(model, tokenizer, items: list[Ranked], max_len: int, device):
    """Score every response of every item in one forward; returns rewards, ranks and mask, each (P, K_max)."""
    where = [(p, k) for p, item in enumerate(items) for k in range(len(item.responses))]
    rows = encode_items(tokenizer, items, max_len)  # in the order of `where`
    ids, mask = pad(rows, tokenizer.pad_token_id)
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


Demo = tuple[str | list[dict], str, bool]  # (prompt or conversation, completion, ended)


def load_demonstrations(
    cfg: RewardConfig, items: list[Ranked], control_tokens: list[str] | tuple = ()
) -> list[Demo] | None:
    """The demonstrations the reward is centred on, read before any training step so that a bad
    --demonstrations FILE stops the run at once: the embedded world's ('world'), the rows of FILE, or None when
    there are none ('') or the comparisons are not the world's (their best-ranked answers stand in, see
    `centre_on_demonstrations`)."""
    if not cfg.demonstrations:
        return None
    if cfg.demonstrations != WORLD:
        try:
            rows = load_sft(cfg.demonstrations, control_tokens)
        except DataError as err:
            raise DataError(f"reward --demonstrations {cfg.demonstrations}: {err}") from None
        return [(row.messages[:-1] if row.messages else row.prompt, row.completion, True) for row in rows]
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


# ---------------------------------------------------------------------------------------------------------------
# Evaluation (reward/eval.json): accuracy, and on the embedded world the reward model against the held-out panel.
# The panel is a set of simulated labelers with seeds no training step ever used, so a reward model is never
# graded by the labelers it learned from (InstructGPT's held-out labelers).


def evaluate_reward_model(model, tokenizer, val_items, train_probe, cfg: RewardConfig) -> dict:
    """reward/eval.json: accuracy, over-fitting gap and — on the embedded world — agreement with the held-out
    gold panel, the labelers' own agreement (the ceiling), accuracy per oracle dimension, Spearman vs gold."""
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
    vs_gold = reward_model_vs_gold(model, tokenizer, val_items, cfg.max_len, read_settings(cfg.data))
    report.update(vs_gold)
    if vs_gold:  # the embedded world's comparisons: the seed's own examples mean something to this RM
        report["seed_rankings"] = seed_rankings(model, tokenizer, cfg.max_len)
    meta = read_meta(cfg.model)
    report["initialised_from"] = {"path": cfg.model, "stage": meta.get("stage")}
    return report


def print_report(report: dict, cfg: RewardConfig, n_items: int) -> None:
    val = (
        f"val accuracy {report['val_accuracy']:.3f}"
        if report["n_val_rankings"]
        else f"no validation rankings (--val-fraction {cfg.val_fraction} of {n_items} rankings' prompts)"
    )
    console.print(f"[reward] {val} (train {report['train_accuracy']:.3f}); saved to {Path(cfg.out)}")
    new = report.get("accuracy_on_new_samples")
    if new:
        key = "panel_agreement" if new["new_on_val"]["n_panel_pairs"] else "label_accuracy"
        what = "agrees with the held-out panel" if key == "panel_agreement" else "orders the labels' pairs"

        def shown(stats: dict | None) -> str:
            return "—" if stats is None or stats[key] is None else f"{stats[key]:.3f}"

        console.print(
            f"[reward] on --data's {new['n_rankings']} rankings (the newest answers): the previous reward model "
            f"{what} {shown(new['previous'])} (all), {shown(new['previous_on_val'])} (the "
            f"{new['n_val_rankings']} held out); this one {shown(new['new_on_val'])} (held out)"
        )
    for ranking in report.get("seed_rankings", []):
        scores = " / ".join(f"{r:+.2f}" for r in ranking["rewards"])
        verdict = "in the seed's order" if ranking["in_seed_order"] else "NOT in the seed's order"
        console.print(f"[reward] the seed's answers to {ranking['prompt']} best first: {scores} ({verdict})")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in t.unique():  # ties share their mean rank
            same = t == value
            r[same] = r[same].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum().item() / denom) if denom > 0 else float("nan")


def reward_model_vs_gold(
    model, tokenizer, items: list[Ranked], max_len: int, label_settings: dict | None = None
) -> dict:
    """Compare the reward model with the held-out gold panel on held-out comparisons (embedded world only).

    `label_settings` are those of the labelers that wrote the comparisons (`labelers.read_settings`), for their
    agreement ceiling; None means LabelConfig's defaults, and the report's "labelers" says which were used."""
    items = [i for i in items if parse_prompt(i.prompt) is not None]
    if not items:
        return {}
    label_settings = label_settings or default_settings()
    contexts, prompts, responses, ended = [], [], [], []
    for item in items:
        for k, response in enumerate(item.responses):
            contexts.append(item.context)  # what the RM was trained on: system prompt and earlier turns too
            prompts.append(item.prompt)  # what the oracle and the panel read
            responses.append(response)
            ended.append(item.ended[k] if item.ended else True)
    rewards = score_responses(model, tokenizer, contexts, responses, ended, max_len=max_len).tolist()
    golds = [score(p, r, e) for p, r, e in zip(prompts, responses, ended)]

    def orders_like(ia: int, ib: int, prefers_a: bool) -> bool:
        """Does the RM strictly prefer the same response? An RM tie agrees with neither side."""
        return rewards[ia] > rewards[ib] if prefers_a else rewards[ib] > rewards[ia]

    panel = eval_panel()
    agree_panel = agree_data = n_pairs = n_labelled = 0
    by_dim: dict[str, list[int]] = {d: [0, 0] for d in DIMENSIONS}
    per_family: dict[str, list[int]] = {}  # family: [RM agrees, labels agree, pairs, labelled pairs]
    offset = 0
    for item in items:
        K = len(item.responses)
        family = per_family.setdefault(parse_prompt(item.prompt).family, [0, 0, 0, 0])
        for a in range(K):
            for b in range(a + 1, K):
                ia, ib = offset + a, offset + b
                verdict = panel.compare(item.prompt, responses[ia], ended[ia], responses[ib], ended[ib])
                if verdict == 0.5:
                    continue
                panel_prefers_a = verdict == 1.0
                rm_agrees = orders_like(ia, ib, panel_prefers_a)
                n_pairs += 1
                agree_panel += rm_agrees
                family[0] += rm_agrees
                family[2] += 1
                if item.ranks[a] != item.ranks[b]:  # a pair the labels tie says nothing either way
                    labels_agree = (item.ranks[a] < item.ranks[b]) == panel_prefers_a
                    n_labelled += 1
                    agree_data += labels_agree
                    family[1] += labels_agree
                    family[3] += 1
                # The dimension that separates the pair most: does the RM catch that kind of mistake?
                gaps = {d: WEIGHTS[d] * (golds[ia].dims[d] - golds[ib].dims[d]) for d in DIMENSIONS}
                dim = max(gaps, key=lambda d: abs(gaps[d]))
                if abs(gaps[dim]) > 1e-6 and golds[ia].total != golds[ib].total:  # gold ties have no answer
                    by_dim[dim][0] += orders_like(ia, ib, golds[ia].total > golds[ib].total)
                    by_dim[dim][1] += 1
        offset += K
    labeler_items = [(i.prompt, i.responses, i.ended or [True] * len(i.responses)) for i in items]
    return {
        "panel_agreement": agree_panel / max(n_pairs, 1),
        "labels_vs_panel_agreement": agree_data / max(n_labelled, 1),
        "inter_labeler_agreement": inter_labeler_agreement(simulated_labelers(label_settings), labeler_items),
        "labelers": label_settings,
        "spearman_reward_vs_gold": spearman(rewards, [g.total for g in golds]),
        "accuracy_by_dimension": {d: {"accuracy": c / n, "pairs": n} for d, (c, n) in by_dim.items() if n},
        # Where the RM falls short of its data: agreement with the panel per prompt family, the labels' beside it
        "panel_agreement_by_family": {
            f: {"reward_model": rm / max(n, 1), "labels": lab / max(nl, 1), "pairs": n}
            for f, (rm, lab, n, nl) in sorted(per_family.items())
        },
        "n_panel_pairs": n_pairs,
        "n_labelled_panel_pairs": n_labelled,
    }


# ---------------------------------------------------------------------------------------------------------------
# Rounds: is the reward model still right where PPO pushed? Its agreement on the newest policy's answers, measured
# before it is updated (the reward model PPO just optimised) and after (on the new rankings it did not train on).


def new_samples_report(
    model, tokenizer, data: Comparisons, before: list[float] | None, cfg: RewardConfig
) -> dict:
    """eval.json's "accuracy_on_new_samples" for a round's reward model, on --data (the newest policy's answers):
    the previous reward model (`before`: its rewards of those answers) on every ranking — none of them was trained
    on — and on the held-out ones, and this model on the held-out ones. {} for a first reward model (no previous
    one, no --earlier-data)."""
    if before is None and not cfg.earlier_data:
        return {}
    pairs = judged_pairs(data.new, data.new_writers)
    val = set(data.new_val)
    both = [p for p in pairs if p.labels_prefer_a is not None and p.panel_prefers_a is not None]
    report = {
        "data": cfg.data,
        "n_rankings": len(data.new),
        "n_val_rankings": len(val),
        "labels_vs_panel_agreement": (
            sum(p.labels_prefer_a == p.panel_prefers_a for p in both) / len(both) if both else None
        ),
        "previous_reward_model": previous_reward_model(cfg),
        "previous": agreement(before, pairs) if before is not None else None,
        "previous_on_val": agreement(before, pairs, val) if before is not None else None,
        "new_on_val": agreement(answer_rewards(model, tokenizer, data.new, cfg.max_len), pairs, val),
    }
    return {"accuracy_on_new_samples": report}


def seed_rankings(model, tokenizer, max_len: int) -> list[dict]:
    """The reward model's scores of the seed's own ranked answers (`world.SEED_RANKINGS`: 重庆 2-1 > 2-2 > 2-3,
    the punctuated 北京 answer over the unpunctuated one), and whether it orders them as the seed does."""
    out = []
    for prompt, answers in SEED_RANKINGS:
        rewards = score_responses(
            model, tokenizer, [prompt] * len(answers), answers, max_len=max_len
        ).tolist()
        in_order = all(a > b for a, b in zip(rewards, rewards[1:]))
        out.append({"prompt": prompt, "answers": answers, "rewards": rewards, "in_seed_order": in_order})
    return out
