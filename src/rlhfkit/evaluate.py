"""Evaluation of the policies (`rlhfkit eval`): each model's answers against the reference model's (SFT) answers
to the same held-out prompts, judged by the held-out panel; gold score, KL to SFT, pretraining perplexity.

The panel is a set of simulated labelers with seeds no training step ever used, so a model is never graded by the
labelers its reward model learned from (InstructGPT's held-out labelers). The reward model's own evaluation is
the reward stage's (reward/eval.json). With `--human labels.sqlite` the verdicts are people's instead, the blind
A/B comparisons collected by the label server (`human_win_rates`): nothing is sampled or judged.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.batching import collate, encode_prompts, fit_prompts, pack, score_responses
from rlhfkit.config import EvalConfig
from rlhfkit.console import console
from rlhfkit.data import Ranked, load_prompts, write_jsonl
from rlhfkit.ensemble import load_judge
from rlhfkit.errors import UsageError
from rlhfkit.labelserver.export import verdicts
from rlhfkit.losses import best_of_n_kl, lm_loss
from rlhfkit.modeling import (
    check_vocab,
    context_length,
    for_inference,
    is_chat_model,
    load_causal_lm,
    read_meta,
    same_tokenizer,
    use_load_options,
)
from rlhfkit.report import write_figures, write_markdown
from rlhfkit.rollout import generate_answers, response_logprobs, sample
from rlhfkit.rundir import write_json
from rlhfkit.sources import WORLD, heldout_texts
from rlhfkit.tokenizer import control_tokens, end_of_turn_id, load_tokenizer, writes_the_world
from rlhfkit.world import SEED_PROMPTS, eval_panel, parse_prompt, score, split_prompts
from rlhfkit.world.facts import ATTRACTION_CITY
from rlhfkit.world.oracle import find_attractions


def run(cfg: EvalConfig) -> dict:
    """`rlhfkit eval`: sample, judge, measure; write report.json, report.md, answers.jsonl and the figures."""
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    if cfg.human:  # people's verdicts from the label server: nothing to sample or judge
        return human_win_rates(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = parse_named(cfg.models)
    if cfg.reference not in models:
        raise UsageError(f"eval --reference {cfg.reference!r} is not one of --models {list(models)}")
    if cfg.best_of_n and not cfg.reward_model:
        raise UsageError("eval --best-of-n needs --reward-model DIR to pick the best answer")
    prompts, families, judge = load_eval_prompts(cfg)
    if cfg.headroom and any(parse_prompt(p) is None for p in prompts):
        raise UsageError(
            f"eval --headroom {' '.join(map(str, cfg.headroom))}: picks by the gold judge, which knows only the "
            f"embedded world's tasks, and --prompts {cfg.prompts} holds others; use --prompts world, or leave "
            "out --headroom"
        )
    n = cfg.samples_per_prompt
    repeated = [p for p in prompts for _ in range(n)]
    group = [i for i in range(len(prompts)) for _ in range(n)]
    seed_prompts = list(SEED_PROMPTS) if cfg.prompts == WORLD else []
    tokenizer = load_tokenizer(models[cfg.reference])
    kl_ref = for_inference(load_causal_lm(cfg.kl_reference or models[cfg.reference]))
    check_vocab(
        kl_ref,
        tokenizer,
        f"eval --kl-reference {cfg.kl_reference or models[cfg.reference]}",
        cfg.kl_reference,
    )
    prompts = fit_prompts(
        tokenizer, prompts, True, cfg.max_prompt_length, cfg.max_new_tokens, context_length(kl_ref), "eval"
    )
    repeated = [p for p in prompts for _ in range(n)]
    heldout = heldout_texts(cfg.heldout_text)
    if heldout and cfg.heldout_text == WORLD and cfg.prompts != WORLD:
        console.print(
            "[eval] pretrain_ppl is measured on the embedded world's held-out text "
            "(--heldout-text FILE for your own pretraining text, --heldout-text '' to skip it)"
        )

    # 1. every model answers every prompt (and the seed's prompts); its KL to the reference and perplexity
    answers, seed_answers, report_models, seconds = {}, {}, {}, {}
    for name, path in models.items():
        start = time.time()
        with console.status(f"[eval] {name}: sampling {len(repeated)} answers"):
            answers[name], seed_answers[name], report_models[name] = sample_model(
                cfg, name, path, tokenizer, kl_ref, prompts, repeated, seed_prompts, heldout
            )
        seconds[name] = round(time.time() - start, 2)
    # 2. best-of-n from the reference model, picked by the reward model
    if cfg.best_of_n:
        ns = sorted(set(cfg.best_of_n))
        start = time.time()
        picked, seed_picked = sample_best_of_n(
            cfg, models[cfg.reference], tokenizer, ns, repeated, seed_prompts
        )
        for n_best in ns:
            name = f"best_of_{n_best}"
            answers[name], seed_answers[name] = picked[n_best], seed_picked[n_best]
            report_models[name] = {
                **length_and_eos(answers[name]),
                "kl_to_sft": best_of_n_kl(n_best),
                "kl_is_analytic": True,
                "pretrain_ppl": report_models[cfg.reference]["pretrain_ppl"],
                "chat": True,
                "path": f"{models[cfg.reference]} + {cfg.reward_model}",
            }
        # One set of samples serves every n: its time is that of the largest n.
        seconds[f"best_of_{max(ns)}"] = round(time.time() - start, 2)
        models = {**models, **{f"best_of_{n_best}": "" for n_best in ns}}

    # 3. the judge compares every answer with the reference's answer to the same prompt
    records = []  # answers.jsonl: every answer with its verdict, for reading what a number is made of
    for name, stats in report_models.items():
        records += judge_model(cfg, name, stats, judge, repeated, group, families, answers)

    headroom = None
    if cfg.headroom:  # 4. the most a reward could pick from the reference's own answers
        start = time.time()
        headroom = sample_headroom(
            cfg, models[cfg.reference], tokenizer, prompts, families, judge, repeated, group, answers
        )
        seconds["headroom"] = round(time.time() - start, 2)

    report = {
        "models": report_models,
        "reference": cfg.reference,
        # "kl_to_sft" is KL to this model: sampled at T = 1 for trained models; for best-of-n the analytic
        # log n − (n−1)/n against the reference's own answers at the eval temperature
        "kl_reference": cfg.kl_reference or cfg.reference,
        "n_prompts": len(prompts),
        "prompts": cfg.prompts,  # "world": the embedded world's held-out eval prompts, else the user's file
        "samples_per_prompt": n,
        "judge": "held-out panel (embedded world)" if cfg.judge is None else f"reward model {cfg.judge}",
        "seconds": seconds,
        **({"headroom": headroom} if headroom else {}),
        "seed_prompts": {
            p: {name: seed_answers[name][i][0] for name in models} for i, p in enumerate(seed_prompts)
        },
        "examples": [
            {"prompt": repeated[i], **{name: answers[name][i][0] for name in models}}
            for i in range(0, len(repeated), max(1, len(repeated) // 8))
        ],
    }
    # Each file whole (temp + fsync + rename), and report.json last: it is what says the evaluation is done.
    write_jsonl(out / "answers.jsonl", records)
    write_markdown(report, out / "report.md")
    write_figures(report, parse_named(cfg.curves) | models, out)
    write_json(out / "report.json", report)
    console.print(f"[eval] wrote {out}/report.json, report.md, answers.jsonl, winrate.png, curves.png")
    return report


def human_win_rates(cfg: EvalConfig) -> dict:
    """`eval --human labels.sqlite`: people's blind verdicts (label-server compare sets) as win rates, ties ½,
    with the panel's 95% bootstrap interval over prompts (`bootstrap_ci`; one prompt's verdicts, by every person
    who judged it, stay together). A pair that holds `--reference` is reported as the other model's win rate
    against it; writes human.json."""
    rows = verdicts(cfg.human)
    if not rows:
        raise UsageError(
            f"eval --human {cfg.human}: no compare labels yet (label-server tasks add --kind compare)"
        )
    pairs: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        model, opponent, score = row["model"], row["opponent"], row["score"]
        if model == cfg.reference:  # the reference is the one every other model is compared with
            model, opponent, score = opponent, model, 1.0 - score
        pairs.setdefault((model, opponent), []).append({**row, "score": score})
    comparisons = []
    for (model, opponent), group in pairs.items():
        wins = [r["score"] for r in group]
        prompts = {item: i for i, item in enumerate(dict.fromkeys(r["item"] for r in group))}
        stats = {
            "model": model,
            "opponent": opponent,
            "win_rate": sum(wins) / len(wins),
            "win_rate_ci": bootstrap_ci(wins, [prompts[r["item"]] for r in group], seed=cfg.seed),
            "ties": sum(w == 0.5 for w in wins),
            "n_verdicts": len(wins),
            "n_prompts": len(prompts),
            "labelers": sorted({r["labeler"] for r in group}),
            "task_sets": sorted({r["set"] for r in group}),
        }
        comparisons.append(stats)
        console.print(
            f"[eval] human: {model} vs {opponent} win rate {stats['win_rate']:.3f} "
            f"[{stats['win_rate_ci'][0]:.3f}, {stats['win_rate_ci'][1]:.3f}] ({len(wins)} verdicts on "
            f"{len(prompts)} prompts by {len(stats['labelers'])} people, {stats['ties']} ties)"
        )
    report = {"human": cfg.human, "reference": cfg.reference, "comparisons": comparisons}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "human.json", report)
    console.print(f"[eval] wrote {out}/human.json")
    return report


def sample_model(
    cfg: EvalConfig, name: str, path: str, tokenizer, kl_ref, prompts, repeated, seed_prompts, heldout
):
    """(answers to `repeated`, answers to the seed's prompts, stats) of the model at `path`."""
    model = for_inference(load_causal_lm(path))
    # A model with a tokenizer of its own samples with it: its answers are text to the judge, but its
    # KL to the reference (token by token) means nothing and is not reported.
    shared = same_tokenizer(tokenizer, path)
    own = tokenizer if shared else load_tokenizer(path)
    check_vocab(model, own, f"eval --models {name}={path}")
    if not shared:
        console.print(f"[eval] {name}: its tokenizer is not {cfg.reference}'s, so it has no KL to it")
    chat = is_chat_model(path)
    answer = functools.partial(
        generate_answers,
        model,
        own,
        chat=chat,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        compiled=cfg.compile_sampler,
    )
    answers = answer(repeated)
    seed_answers = answer(seed_prompts) if seed_prompts else []
    stats = {
        **length_and_eos(answers),
        "kl_to_sft": kl_to_reference(
            model, kl_ref, tokenizer, prompts, cfg.max_new_tokens, cfg.seed, cfg.compile_sampler
        )
        if chat and shared
        else None,
        "pretrain_ppl": perplexity(model, own, heldout) if heldout else None,
        "chat": chat,
        "path": path,
    }
    meta = read_meta(path) if Path(path).is_dir() else {}
    if meta.get("reward"):  # what an RL policy was trained to raise: "gold" marks the ceiling (report.py)
        stats.update(reward=meta["reward"], algo=meta.get("algo", "ppo"))
    return answers, seed_answers, stats


def sample_best_of_n(cfg: EvalConfig, reference: str, tokenizer, ns: list[int], repeated, seed_prompts):
    """({n: answers to `repeated`}, {n: answers to the seed's prompts}) of best-of-n from the model `reference`."""
    rm = for_inference(
        load_judge(cfg.reward_model, tokenizer.pad_token_id, cfg.ensemble_reduce, cfg.ensemble_lambda)
    )
    check_vocab(rm, tokenizer, f"eval --reward-model {cfg.reward_model}", cfg.reward_model)
    base = for_inference(load_causal_lm(reference))
    with console.status(f"[eval] best-of-n: sampling {max(ns)} × {len(repeated)} answers (n = {ns})"):
        pick = functools.partial(
            best_of_n,
            base,
            rm,
            tokenizer,
            n=ns,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed + 1,
            compiled=cfg.compile_sampler,
        )
        picked = pick(repeated)
        seed_picked = pick(seed_prompts) if seed_prompts else {k: [] for k in ns}
    return picked, seed_picked


def judge_model(
    cfg: EvalConfig, name: str, stats: dict, judge, repeated, group, families, answers
) -> list[dict]:
    """Win rate (with its interval), gold score and per-family figures of model `name` into `stats`; its rows of
    answers.jsonl."""
    reference = answers[cfg.reference]
    n = cfg.samples_per_prompt
    wins = [judge(p, a, reference[i]) for i, (p, a) in enumerate(zip(repeated, answers[name]))]
    stats["win_rate"] = sum(wins) / len(wins)
    stats["win_rate_ci"] = bootstrap_ci(wins, group, seed=cfg.seed)
    gold = gold_scores(repeated, answers[name])
    if gold:
        stats["gold_score"] = sum(g.total for g in gold) / len(gold)
        stats["gold_dims"] = {d: sum(g.dims[d] for g in gold) / len(gold) for d in gold[0].dims}
    stats["by_family"] = by_family(families, wins, gold, n)
    records = answer_records(name, repeated, group, families, answers[name], wins, gold)
    if gold and "travel" in stats["by_family"]:
        stats["by_family"]["travel"]["attractions_all_in_city"] = attractions_all_in_city(
            repeated, answers[name]
        )
    console.print(
        f"[eval] {name:<10} win rate vs {cfg.reference} {stats['win_rate']:.3f} "
        f"[{stats['win_rate_ci'][0]:.3f}, {stats['win_rate_ci'][1]:.3f}]"
        + (f"  gold {stats['gold_score']:.2f}" if gold else "")
    )
    return records


# ---------------------------------------------------------------------------------------------------------------
# Measures: win rate intervals, KL to the reference, pretraining perplexity (alignment tax), best-of-n.


def bootstrap_ci(values: list[float], groups: list[int], n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% interval of the mean, resampling prompts (a prompt's samples stay together)."""
    by_group: dict[int, list[float]] = {}
    for v, g in zip(values, groups):
        by_group.setdefault(g, []).append(v)
    sums = torch.tensor([sum(v) for v in by_group.values()], dtype=torch.float64)
    counts = torch.tensor([len(v) for v in by_group.values()], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(sums), (n_boot, len(sums)), generator=gen)
    means = sums[idx].sum(1) / counts[idx].sum(1)
    return [float(means.quantile(0.025)), float(means.quantile(0.975))]


@torch.no_grad()
def kl_to_reference(
    model, ref_model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int, compiled: bool = False
) -> float:
    """KL(π ‖ π_ref) per answer: mean over samples y ~ π (T = 1) of Σ_t log π(y_t) − log π_ref(y_t)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, len(prompts), 64):
        batch = sample(
            model,
            encode_prompts(tokenizer, prompts[i : i + 64], chat=True),
            end_of_turn_id(tokenizer),
            tokenizer.pad_token_id,
            max_new_tokens,
            1.0,
            1.0,
            generator,
            compiled=compiled,
        )
        logratio = (
            response_logprobs(model, batch) - response_logprobs(ref_model, batch)
        ) * batch.response_mask
        total += logratio.sum().item()
        n += len(batch.ended)
    return total / max(n, 1)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], block: int = 128, batch_size: int = 32) -> float:
    """exp(mean token cross-entropy) on held-out pretraining text: what RLHF costs the LM (alignment tax). The
    text is read in full blocks of `block` tokens (a tail shorter than a block is left out), or as one block when
    all of it is shorter than that."""
    blocks = pack(texts, tokenizer, block, "eval --heldout-text", whole_if_short=True)
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = {
            k: v.to(device) for k, v in collate(blocks[i : i + batch_size], tokenizer.pad_token_id).items()
        }
        loss = lm_loss(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(),
            batch["labels"],
        )
        k = len(blocks[i : i + batch_size])
        total, n = total + loss.item() * k, n + k
    return float(torch.exp(torch.tensor(total / n)))


@torch.no_grad()
def best_of_n(
    model,
    reward_model,
    tokenizer,
    prompts: list[str],
    n: int | list[int],
    chat: bool = True,
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    compiled: bool = False,
):
    """Sample n answers per prompt and keep the one the reward model scores highest (Stiennon et al. 2020).
    Its KL from the sampling policy is log n − (n−1)/n (`losses.best_of_n_kl`).

    Given a list of n, it samples max(n) answers once and best-of-n takes the first n of them, so best-of-4 and
    best-of-16 cost one set of samples; it then returns {n: answers}."""
    ns = [n] if isinstance(n, int) else list(n)
    most = max(ns)
    repeated = [p for p in prompts for _ in range(most)]
    answers = generate_answers(
        model, tokenizer, repeated, chat, max_new_tokens, temperature, top_p, seed, compiled=compiled
    )
    rewards = score_responses(
        reward_model, tokenizer, repeated, [a for a, _ in answers], [e for _, e in answers]
    ).view(len(prompts), most)
    picked = {}
    for k in ns:
        best = rewards[:, :k].argmax(1).tolist()
        picked[k] = [answers[i * most + b] for i, b in enumerate(best)]
    return picked[n] if isinstance(n, int) else picked


# ---------------------------------------------------------------------------------------------------------------
# Selectable headroom: how often the best of K of the reference's own answers, picked by the gold judge, beats the
# reference's answer — the most a reward (a perfect one) can select, so the room any reward-driven method has
# among answers the reference already writes.


def sample_headroom(
    cfg: EvalConfig, reference: str, tokenizer, prompts, families, judge, repeated, group, answers
) -> dict:
    """`eval --headroom K ...`: max(K) answers of the reference model per prompt (one draw; best of K takes the
    first K), each K's pick by gold against the reference's answers (`selectable_headroom`)."""
    ks, most = sorted(set(cfg.headroom)), max(cfg.headroom)
    model = for_inference(load_causal_lm(reference))
    with console.status(f"[eval] headroom: sampling {most} × {len(prompts)} answers of {cfg.reference}"):
        drawn = generate_answers(
            model,
            tokenizer,
            [p for p in prompts for _ in range(most)],
            is_chat_model(reference),
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_p,
            seed=cfg.seed + 2,  # not the draws of the reference's answers (seed) nor of best-of-n (seed + 1)
            compiled=cfg.compile_sampler,
        )
    draws = [drawn[i * most : (i + 1) * most] for i in range(len(prompts))]
    golds = [[score(p, a, e).total for a, e in row] for p, row in zip(prompts, draws)]
    result = selectable_headroom(
        draws, golds, ks, repeated, group, families, answers[cfg.reference], judge, cfg.seed
    )
    for k, entry in result["by_k"].items():
        lo, hi = entry["share_ci"]
        console.print(
            f"[eval] headroom: best of {k} {cfg.reference} answers by gold beats {cfg.reference}'s answer "
            f"{entry['share']:.3f} [{lo:.3f}, {hi:.3f}]  gold {entry['gold_score']:.2f}"
        )
    return result


def selectable_headroom(
    draws: list[list[tuple[str, bool]]],
    golds: list[list[float]],
    ks: list[int],
    repeated: list[str],
    group: list[int],
    families: list[str],
    reference: list[tuple[str, bool]],
    judge,
    seed: int = 0,
) -> dict:
    """Per K: the best of the first K `draws` of each prompt by gold (the first of equal golds), judged against
    each of the reference's answers to that prompt (`reference[j]`, prompt `group[j]`) by the eval's `judge`, ties
    ½ — its share with the win rates' bootstrap interval over prompts (`bootstrap_ci`), overall and per family."""
    by_k = {}
    for k in ks:
        best = [max(range(k), key=lambda i, g=g: (g[i], -i)) for g in golds]
        picked = [draws[i][b] for i, b in enumerate(best)]
        wins = [judge(p, picked[group[j]], reference[j]) for j, p in enumerate(repeated)]
        entry = {
            "share": sum(wins) / len(wins),
            "share_ci": bootstrap_ci(wins, group, seed=seed),
            "gold_score": sum(golds[i][b] for i, b in enumerate(best)) / len(best),
            "by_family": {},
        }
        for family in sorted(set(families)):
            rows = [j for j, g in enumerate(group) if families[g] == family]
            entry["by_family"][family] = {
                "share": sum(wins[j] for j in rows) / len(rows),
                "share_ci": bootstrap_ci([wins[j] for j in rows], [group[j] for j in rows], seed=seed),
                "n": len(rows),
            }
        by_k[str(k)] = entry
    return {"k": list(ks), "by_k": by_k, "n_prompts": len(draws), "samples_drawn": max(ks) * len(draws)}


# ---------------------------------------------------------------------------------------------------------------
# A reward model on a policy's answers (rounds): is it still right where PPO pushed? Its agreement with the held-out
# panel on rankings of the newest policy's answers (`reward/eval.json`'s accuracy_on_new_samples, the rounds
# benchmark).


@dataclass
class JudgedPair:
    """Two different answers to one prompt (flat indices into the answers of a list of rankings), with who
    prefers the first: the labels (None for a tie) and the held-out panel (None for a tie, or off the world)."""

    item: int
    a: int
    b: int
    labels_prefer_a: bool | None
    panel_prefers_a: bool | None
    writers: str | None  # "model A + model B" (sorted) when the rows say which model wrote each answer


def judged_pairs(items: list[Ranked], writers: list[list[str] | None] | None = None) -> list[JudgedPair]:
    """Every pair of answers of every ranking, judged by its labels and, on the embedded world, by the panel."""
    panel, pairs, offset = eval_panel(), [], 0
    for n, item in enumerate(items):
        K = len(item.responses)
        ended = item.ended or [True] * K
        world = parse_prompt(item.prompt) is not None
        who = (writers or [None] * len(items))[n]
        for a in range(K):
            for b in range(a + 1, K):
                if item.responses[a] == item.responses[b] and ended[a] == ended[b]:
                    continue  # one answer twice: nothing to order
                labels = None if item.ranks[a] == item.ranks[b] else item.ranks[a] < item.ranks[b]
                verdict = (
                    panel.compare(item.prompt, item.responses[a], ended[a], item.responses[b], ended[b])
                    if world
                    else 0.5
                )
                pairs.append(
                    JudgedPair(
                        n,
                        offset + a,
                        offset + b,
                        labels,
                        None if verdict == 0.5 else verdict == 1.0,
                        " + ".join(sorted((who[a], who[b]))) if who else None,
                    )
                )
        offset += K
    return pairs


def agreement(rewards: list[float], pairs: list[JudgedPair], keep: set[int] | None = None) -> dict:
    """Of the `pairs` (of the rankings in `keep`, all if None) that the labels / the panel order, the share the
    rewards order the same way, strictly (a tie in reward agrees with neither side); ties are left out."""
    pairs = [p for p in pairs if keep is None or p.item in keep]

    def share(judged: list[tuple[JudgedPair, bool]]) -> float | None:
        agree = sum(
            rewards[p.a] > rewards[p.b] if a_wins else rewards[p.b] > rewards[p.a] for p, a_wins in judged
        )
        return agree / len(judged) if judged else None

    by_labels = [(p, p.labels_prefer_a) for p in pairs if p.labels_prefer_a is not None]
    by_panel = [(p, p.panel_prefers_a) for p in pairs if p.panel_prefers_a is not None]
    report = {
        "panel_agreement": share(by_panel),
        "n_panel_pairs": len(by_panel),
        "label_accuracy": share(by_labels),
        "n_label_pairs": len(by_labels),
    }
    kinds = sorted({p.writers for p, _ in by_panel if p.writers})
    if kinds:  # e.g. the policy's answers among themselves, against SFT's, SFT's among themselves
        report["panel_agreement_by_writers"] = {
            kind: {
                "panel_agreement": share([(p, w) for p, w in by_panel if p.writers == kind]),
                "n_panel_pairs": sum(p.writers == kind for p, _ in by_panel),
            }
            for kind in kinds
        }
    return report


def answer_rewards(model, tokenizer, items: list[Ranked], max_len: int) -> list[float]:
    """The reward of every answer of every ranking, in order (the flat indices of `judged_pairs`)."""
    rows = [
        (item.context, r, e)
        for item in items
        for r, e in zip(item.responses, item.ended or [True] * len(item.responses))
    ]
    contexts, responses, ended = (list(column) for column in zip(*rows))
    return score_responses(model, tokenizer, contexts, responses, ended, max_len=max_len).tolist()


def accuracy_on_samples(
    model,
    tokenizer,
    items: list[Ranked],
    max_len: int,
    writers: list[list[str] | None] | None = None,
    keep: set[int] | None = None,
    pairs: list[JudgedPair] | None = None,
) -> dict:
    """A reward model (or ensemble, by its members' mean) on rankings of a policy's answers: its agreement with the
    held-out panel (embedded world; ties excluded) and with the rankings' own labels (ties excluded), pooled over
    pairs, and the panel agreement per pair of writers when `writers` says which model wrote each answer."""
    pairs = judged_pairs(items, writers) if pairs is None else pairs
    return agreement(answer_rewards(model, tokenizer, items, max_len), pairs, keep)


def parse_named(pairs: list[str]) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"eval: {pair!r} should be NAME=DIR, e.g. ppo=runs/demo/ppo")
        if name in named:
            raise UsageError(
                f"eval: two models are named {name!r} ({named[name]} and {path}); give each its own"
            )
        named[name] = path
    return named


def load_eval_prompts(cfg: EvalConfig):
    """(prompts, families, judge): the world's eval split and panel, or a user file judged by a reward model."""
    if cfg.prompts == WORLD and cfg.judge is not None:
        reference = parse_named(cfg.models)[cfg.reference]
        if not writes_the_world(load_tokenizer(reference)):
            raise UsageError(
                f"eval --judge {cfg.judge} without --prompts: the prompts would be the embedded world's (Chinese, "
                f"made for rlhfkit's own tokenizer), and {reference} has another tokenizer; give --prompts FILE.jsonl "
                "with your own eval prompts"
            )
    if cfg.prompts == WORLD:
        tasks = split_prompts()["eval"]
        prompts, families = [t.prompt for t in tasks], [t.family for t in tasks]
    elif cfg.judge is None:
        raise UsageError("eval: prompts outside the embedded world need --judge REWARD_MODEL_DIR")
    else:
        tokens = control_tokens(load_tokenizer(parse_named(cfg.models)[cfg.reference]))
        rows = list(load_prompts(cfg.prompts, tokens))
        prompts, families = [r.context for r in rows], [str(r.meta.get("family", "all")) for r in rows]
    if cfg.judge is None:
        panel = eval_panel()
        return prompts, families, lambda prompt, a, b: panel.compare(prompt, a[0], a[1], b[0], b[1])
    return prompts, families, reward_model_judge(cfg.judge, cfg.ensemble_reduce, cfg.ensemble_lambda)


def reward_model_judge(path: str, reduce: str = "mean", lam: float = 0.0):
    """judge(prompt, a, b) -> 1, ½ or 0 by the reward model (or ensemble, combined by `reduce`) at `path`; a, b are
    (answer, ended)."""
    tokenizer = load_tokenizer(path)
    model = for_inference(load_judge(path, tokenizer.pad_token_id, reduce, lam))
    check_vocab(model, tokenizer, f"eval --judge {path}")

    def judge(prompt, a, b):
        if a == b:  # the same answer: a tie, whatever float noise the two rows of one batch would show
            return 0.5
        ra, rb = score_responses(model, tokenizer, [prompt, prompt], [a[0], b[0]], [a[1], b[1]]).tolist()
        return 0.5 if ra == rb else float(ra > rb)

    return judge


def length_and_eos(answers: list[tuple[str, bool]]) -> dict[str, float]:
    """Mean answer length in characters and the fraction of answers that ended with EOS."""
    return {
        "mean_length": sum(len(a) for a, _ in answers) / len(answers),
        "eos_fraction": sum(e for _, e in answers) / len(answers),
    }


def gold_scores(prompts: list[str], answers: list[tuple[str, bool]]):
    """Gold scores where the oracle knows every prompt (embedded world), else []."""
    if any(parse_prompt(p) is None for p in prompts):
        return []  # a user's prompts (or conversations), even some: the oracle knows only the world's
    return [score(p, a, e) for p, (a, e) in zip(prompts, answers)]


def attractions_all_in_city(prompts: list[str], answers: list[tuple[str, bool]]) -> float:
    """Of the travel answers, the fraction that name at least one attraction and only ones of the asked city."""
    ok = total = 0
    for prompt, (answer, _) in zip(prompts, answers):
        task = parse_prompt(prompt)
        if task is None or task.family != "travel":
            continue
        named = find_attractions(answer)
        total += 1
        ok += bool(named) and all(ATTRACTION_CITY.get(a) == task.subject for a in named)
    return ok / max(total, 1)


def answer_records(name, prompts, group, families, answers, wins, gold) -> list[dict]:
    """One row per answer: the model, prompt, answer, whether it ended, its verdict against the reference's
    answer to the same prompt (1 win, ½ tie, 0 loss) and, on the embedded world, its gold score by dimension."""
    rows = []
    for i, (prompt, (answer, ended)) in enumerate(zip(prompts, answers)):
        row = {
            "model": name,
            "prompt": prompt,
            "family": families[group[i]],
            "answer": answer,
            "ended": ended,
            "vs_reference": wins[i],
        }
        if gold:
            row["gold"] = round(gold[i].total, 4)
            row["gold_dims"] = {d: round(v, 4) for d, v in gold[i].dims.items()}
        rows.append(row)
    return rows


def by_family(families: list[str], wins: list[float], gold, n: int) -> dict:
    out: dict[str, dict] = {}
    for family in sorted(set(families)):
        idx = [i for i, f in enumerate(families) for _ in range(n)]
        rows = [j for j, i in enumerate(idx) if families[i] == family]
        entry = {"win_rate": sum(wins[j] for j in rows) / len(rows), "n": len(rows)}
        if gold:
            entry["gold_score"] = sum(gold[j].total for j in rows) / len(rows)
        out[family] = entry
    return out
