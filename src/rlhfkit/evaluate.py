"""Evaluation: how good is a reward model, and how good is each policy — judged by the held-out panel.

The panel is a set of simulated labelers with seeds no training step ever used, so a reward model is never
graded by the labelers it learned from (InstructGPT's held-out labelers).
"""

from __future__ import annotations

import torch

from rlhfkit.data import Ranked


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

    `label_settings` are those of the labelers that wrote the comparisons (`label.read_settings`), for their
    agreement ceiling; None means LabelConfig's defaults, and the report's "labelers" says which were used."""
    from rlhfkit.stages.label import default_settings, simulated_labelers
    from rlhfkit.stages.reward import score_responses
    from rlhfkit.world import DIMENSIONS, eval_panel, inter_labeler_agreement, parse_prompt, score
    from rlhfkit.world.oracle import WEIGHTS

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


def seed_rankings(model, tokenizer, max_len: int) -> list[dict]:
    """The reward model's scores of the seed's own ranked answers (`world.SEED_RANKINGS`: 重庆 2-1 > 2-2 > 2-3,
    the punctuated 北京 answer over the unpunctuated one), and whether it orders them as the seed does."""
    from rlhfkit.stages.reward import score_responses
    from rlhfkit.world import SEED_RANKINGS

    out = []
    for prompt, answers in SEED_RANKINGS:
        rewards = score_responses(
            model, tokenizer, [prompt] * len(answers), answers, max_len=max_len
        ).tolist()
        in_order = all(a > b for a, b in zip(rewards, rewards[1:]))
        out.append({"prompt": prompt, "answers": answers, "rewards": rewards, "in_seed_order": in_order})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Policies: win rate against a reference model, gold score, KL to SFT, pretraining perplexity (alignment tax).


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
    from rlhfkit.rollout import encode_prompts, response_logprobs, sample

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, len(prompts), 64):
        batch = sample(
            model,
            encode_prompts(tokenizer, prompts[i : i + 64], chat=True),
            tokenizer.eos_token_id,
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
    from rlhfkit.losses import lm_loss
    from rlhfkit.stages.lm import collate
    from rlhfkit.stages.pretrain import pack

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
    from rlhfkit.rollout import generate_answers
    from rlhfkit.stages.reward import score_responses

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


def parse_named(pairs: list[str]) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"eval: {pair!r} should be NAME=DIR, e.g. ppo=runs/demo/ppo")
        if name in named:
            raise ValueError(
                f"eval: two models are named {name!r} ({named[name]} and {path}); give each its own"
            )
        named[name] = path
    return named


def run(cfg):
    """`rlhfkit eval`: sample, judge, measure; write report.json, report.md and the figures."""
    import functools
    import json
    import time
    from pathlib import Path

    from rlhfkit.console import console
    from rlhfkit.modeling import check_vocab, for_inference, is_chat_model, load_causal_lm, same_tokenizer
    from rlhfkit.rollout import generate_answers
    from rlhfkit.tokenizer import load_tokenizer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = parse_named(cfg.models)
    if cfg.reference not in models:
        raise ValueError(f"eval --reference {cfg.reference!r} is not one of --models {list(models)}")
    if cfg.best_of_n and not cfg.reward_model:
        raise ValueError("eval --best-of-n needs --reward-model DIR to pick the best answer")
    prompts, families, judge = load_eval_prompts(cfg)
    n = cfg.samples_per_prompt
    repeated = [p for p in prompts for _ in range(n)]
    group = [i for i in range(len(prompts)) for _ in range(n)]
    seed_prompts = seed_prompt_list(cfg)
    tokenizer = load_tokenizer(models[cfg.reference])
    kl_ref = for_inference(load_causal_lm(cfg.kl_reference or models[cfg.reference]))
    check_vocab(
        kl_ref,
        tokenizer,
        f"eval --kl-reference {cfg.kl_reference or models[cfg.reference]}",
        cfg.kl_reference,
    )
    heldout = heldout_texts(cfg.heldout_text)
    if heldout and cfg.heldout_text == "world" and cfg.prompts != "world":
        console.print(
            "[eval] pretrain_ppl is measured on the embedded world's held-out text "
            "(--heldout-text FILE for your own pretraining text, --heldout-text '' to skip it)"
        )

    answers, seed_answers, report_models, seconds = {}, {}, {}, {}
    for name, path in models.items():
        start = time.time()
        with console.status(f"[eval] {name}: sampling {len(repeated)} answers"):
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
            answers[name] = answer(repeated)
            seed_answers[name] = answer(seed_prompts) if seed_prompts else []
            stats = {
                **length_and_eos(answers[name]),
                "kl_to_sft": kl_to_reference(
                    model, kl_ref, tokenizer, prompts, cfg.max_new_tokens, cfg.seed, cfg.compile_sampler
                )
                if chat and shared
                else None,
                "pretrain_ppl": perplexity(model, own, heldout) if heldout else None,
                "chat": chat,
                "path": path,
            }
        report_models[name] = stats
        seconds[name] = round(time.time() - start, 2)

    if cfg.best_of_n:
        from rlhfkit.losses import best_of_n_kl
        from rlhfkit.modeling import load_reward_model

        rm = for_inference(load_reward_model(cfg.reward_model, tokenizer.pad_token_id, trained=True))
        check_vocab(rm, tokenizer, f"eval --reward-model {cfg.reward_model}", cfg.reward_model)
        base = for_inference(load_causal_lm(models[cfg.reference]))
        start, ns = time.time(), sorted(set(cfg.best_of_n))
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
        sft_stats = report_models[cfg.reference]
        for n_best in ns:
            name = f"best_of_{n_best}"
            answers[name], seed_answers[name] = picked[n_best], seed_picked[n_best]
            report_models[name] = {
                **length_and_eos(answers[name]),
                "kl_to_sft": best_of_n_kl(n_best),
                "kl_is_analytic": True,
                "pretrain_ppl": sft_stats["pretrain_ppl"],
                "chat": True,
                "path": f"{models[cfg.reference]} + {cfg.reward_model}",
            }
        # One set of samples serves every n: its time is that of the largest n.
        seconds[f"best_of_{max(ns)}"] = round(time.time() - start, 2)
        models = {**models, **{f"best_of_{n_best}": "" for n_best in ns}}

    reference = answers[cfg.reference]
    records = []  # answers.jsonl: every answer with its verdict, for reading what a number is made of
    for name, stats in report_models.items():
        wins = [judge(p, a, reference[i]) for i, (p, a) in enumerate(zip(repeated, answers[name]))]
        stats["win_rate"] = sum(wins) / len(wins)
        stats["win_rate_ci"] = bootstrap_ci(wins, group, seed=cfg.seed)
        gold = gold_scores(repeated, answers[name])
        if gold:
            stats["gold_score"] = sum(g.total for g in gold) / len(gold)
            stats["gold_dims"] = {d: sum(g.dims[d] for g in gold) / len(gold) for d in gold[0].dims}
        stats["by_family"] = by_family(families, wins, gold, n)
        records += answer_records(name, repeated, group, families, answers[name], wins, gold)
        if gold and "travel" in stats["by_family"]:
            stats["by_family"]["travel"]["attractions_all_in_city"] = attractions_all_in_city(
                repeated, answers[name]
            )
        console.print(
            f"[eval] {name:<10} win rate vs {cfg.reference} {stats['win_rate']:.3f} "
            f"[{stats['win_rate_ci'][0]:.3f}, {stats['win_rate_ci'][1]:.3f}]"
            + (f"  gold {stats['gold_score']:.2f}" if gold else "")
        )

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
        "seed_prompts": {
            p: {name: seed_answers[name][i][0] for name in models} for i, p in enumerate(seed_prompts)
        },
        "examples": [
            {"prompt": repeated[i], **{name: answers[name][i][0] for name in models}}
            for i in range(0, len(repeated), max(1, len(repeated) // 8))
        ],
    }
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    from rlhfkit.report import write_figures, write_markdown

    write_markdown(report, out / "report.md")
    write_figures(report, parse_named(cfg.curves) | models, out)
    console.print(f"[eval] wrote {out}/report.json, report.md, answers.jsonl, winrate.png, curves.png")
    return report


def load_eval_prompts(cfg):
    """(prompts, families, judge): the world's eval split and panel, or a user file judged by a reward model."""
    if cfg.prompts == "world" and cfg.judge is None:
        from rlhfkit.world import eval_panel, split_prompts

        tasks = split_prompts()["eval"]
        panel = eval_panel()

        def judge(prompt, a, b):
            return panel.compare(prompt, a[0], a[1], b[0], b[1])

        return [t.prompt for t in tasks], [t.family for t in tasks], judge
    if cfg.judge is None:
        raise ValueError("eval: prompts outside the embedded world need --judge REWARD_MODEL_DIR")
    from rlhfkit.data import load_prompts
    from rlhfkit.modeling import check_vocab, for_inference, load_reward_model
    from rlhfkit.stages.reward import score_responses
    from rlhfkit.tokenizer import load_tokenizer

    rows = list(load_prompts(cfg.prompts)) if cfg.prompts != "world" else None
    if rows is None:
        from rlhfkit.world import split_prompts

        prompts, families = (
            [t.prompt for t in split_prompts()["eval"]],
            [t.family for t in split_prompts()["eval"]],
        )
    else:
        prompts, families = [r.context for r in rows], [str(r.meta.get("family", "all")) for r in rows]
    judge_tokenizer = load_tokenizer(cfg.judge)
    judge_model = for_inference(load_reward_model(cfg.judge, judge_tokenizer.pad_token_id, trained=True))
    check_vocab(judge_model, judge_tokenizer, f"eval --judge {cfg.judge}")

    def judge(prompt, a, b):
        if a == b:  # the same answer: a tie, whatever float noise the two rows of one batch would show
            return 0.5
        ra, rb = score_responses(
            judge_model, judge_tokenizer, [prompt, prompt], [a[0], b[0]], [a[1], b[1]]
        ).tolist()
        return 0.5 if ra == rb else float(ra > rb)

    return prompts, families, judge


def seed_prompt_list(cfg) -> list[str]:
    if cfg.prompts != "world":
        return []
    from rlhfkit.world import SEED_PROMPTS

    return list(SEED_PROMPTS)


def heldout_texts(source: str) -> list[str]:
    if not source:
        return []
    if source == "world":
        from rlhfkit.world import heldout_corpus

        return heldout_corpus()
    from rlhfkit.data import load_pretrain

    return list(load_pretrain(source))


def length_and_eos(answers: list[tuple[str, bool]]) -> dict[str, float]:
    """Mean answer length in characters and the fraction of answers that ended with EOS."""
    return {
        "mean_length": sum(len(a) for a, _ in answers) / len(answers),
        "eos_fraction": sum(e for _, e in answers) / len(answers),
    }


def gold_scores(prompts: list[str], answers: list[tuple[str, bool]]):
    """Gold scores where the oracle knows every prompt (embedded world), else []."""
    from rlhfkit.world import parse_prompt, score

    if any(parse_prompt(p) is None for p in prompts):
        return []  # a user's prompts (or conversations), even some: the oracle knows only the world's
    return [score(p, a, e) for p, (a, e) in zip(prompts, answers)]


def attractions_all_in_city(prompts: list[str], answers: list[tuple[str, bool]]) -> float:
    """Of the travel answers, the fraction that name at least one attraction and only ones of the asked city."""
    from rlhfkit.world import parse_prompt
    from rlhfkit.world.facts import ATTRACTION_CITY
    from rlhfkit.world.oracle import find_attractions

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
