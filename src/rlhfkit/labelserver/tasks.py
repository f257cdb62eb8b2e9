"""Task sets — what people are asked to do (what a label of each kind is: `labels.py`).

    write     a prompt; the person writes the ideal answer (InstructGPT's demonstrations, Step1)
    rank      a prompt and K answers sampled from a model (or read from a file); the person orders them, ties
              allowed, and may flag answers as unacceptable (Step2's comparisons)
    compare   a prompt and two models' answers, order shuffled, names hidden: A better / tie / B better (the
              evaluation)

Prompts come through `rlhfkit.data.load_prompts`, answers to rank through `load_responses` (the stages' own
validation: a bad row stops with file:line; with --model / --models, text spelling one of their tokenizers'
control tokens too), and a model's answers through `rlhfkit.rollout.generate_answers` with the model's chat
template, as `rlhfkit generate` and `eval` sample them. This module loads torch; the server never imports it.

Answers that are the same text (and the same ended/cut-off state) are shown once: a person cannot prefer one of
two identical answers, and the preference loader refuses copies ranked differently. An item left with fewer than
two distinct answers to rank is not made; both are counted and printed.
"""

from __future__ import annotations

import random

from rlhfkit.console import console
from rlhfkit.data import load_prompts, load_responses
from rlhfkit.errors import UsageError
from rlhfkit.evaluate import parse_named
from rlhfkit.labelserver.db import Database, TaskSet
from rlhfkit.labelserver.settings import TasksAddConfig
from rlhfkit.modeling import check_vocab, for_inference, is_chat_model, load_causal_lm
from rlhfkit.rollout import generate_answers
from rlhfkit.tokenizer import control_tokens, load_tokenizer
from rlhfkit.training import quiet_libraries, seed_everything

# Guidelines shown above each item, unless the task set gives its own (--instructions); each page adds its keys.
INSTRUCTIONS = {
    "write": "Write the answer you would want the assistant to give: helpful, true and harmless, in the "
    "language of the prompt.",
    "rank": "Order the answers from best to worst: helpful, true and harmless first. Flag an answer that should "
    "never be given — harmful, false, or no answer at all — as unacceptable.",
    "compare": "Which answer is better: more helpful, true and harmless? The two come from different models, "
    "in random order, and you are not told which.",
}
# Sampling defaults as in the stage each kind feeds: rank as `rlhfkit label` (T = 1, the PPO rollout's), compare
# as `rlhfkit eval` (T = 0.7, top-p 0.9).
SAMPLING = {"rank": (1.0, 1.0), "compare": (0.7, 0.9)}


def add(cfg: TasksAddConfig) -> TaskSet:
    """`label-server tasks add`: build a task set from the config and store it."""
    db = Database(cfg.db)
    name = cfg.name or f"{cfg.kind}-{len(db.task_sets()) + 1}"
    if cfg.kind == "write":
        items, source, notes = write_items(cfg), {"prompts": cfg.prompts}, []
    elif cfg.kind == "rank":
        items, source, notes = rank_items(cfg)
    else:
        items, source, notes = compare_items(cfg)
    if not items:
        raise UsageError(f"tasks add --kind {cfg.kind}: no item to label ({'; '.join(notes)})")
    task_set = db.add_task_set(
        name, cfg.kind, cfg.labels_per_item, cfg.instructions or INSTRUCTIONS[cfg.kind], source, items
    )
    console.print(
        f"[label-server] task set {name!r} ({cfg.kind}): {len(items)} items, {cfg.labels_per_item} label(s) "
        f"each, in {cfg.db}" + "".join(f"; {note}" for note in notes)
    )
    return task_set


def write_items(cfg: TasksAddConfig) -> list[dict]:
    _refuse(cfg, ["responses", "model", "models"], "write")
    return [_prompt_item(p) for p in _prompts(cfg)]


def rank_items(cfg: TasksAddConfig) -> tuple[list[dict], dict, list[str]]:
    """Items of K answers: sampled from --model for every --prompts row, or read from --responses."""
    _refuse(cfg, ["models"], "rank")
    if bool(cfg.responses) == bool(cfg.model):
        raise UsageError(
            "tasks add --kind rank: give --prompts FILE --model DIR (sample K answers) or --responses FILE "
            "(answers to rank), one of the two"
        )
    if cfg.responses:
        _refuse(cfg, ["prompts"], "rank --responses")
        rows = load_responses(cfg.responses)
        groups = [
            (
                {"prompt": row.prompt, "context": row.prompt_messages},
                list(zip(row.responses, row.ended or [True] * len(row.responses))),
            )
            for row in rows
        ]
        source = {"responses": cfg.responses}
    else:
        prompts = [_prompt_item(p) for p in _prompts(cfg, [cfg.model])]
        temperature, top_p = _sampling(cfg)
        answers = sample_answers(
            cfg.model, [p for p in prompts for _ in range(cfg.k)], cfg, temperature, top_p
        )
        groups = [(p, answers[i * cfg.k : (i + 1) * cfg.k]) for i, p in enumerate(prompts)]
        source = {"prompts": cfg.prompts, "model": cfg.model, "k": cfg.k, "temperature": temperature}
        source.update({"top_p": top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed})
    items, merged, dropped = [], 0, 0
    for prompt, answers in groups:
        distinct = list(dict.fromkeys(answers))  # (text, ended), first appearance first
        merged += len(answers) - len(distinct)
        if len(distinct) < 2:
            dropped += 1
            continue
        items.append({**prompt, "responses": [{"text": t, "ended": e} for t, e in distinct]})
    notes = []
    if merged:
        notes.append(f"{merged} answer(s) repeated another answer to their prompt and are shown once")
    if dropped:
        notes.append(f"{dropped} prompt(s) had fewer than 2 distinct answers and were left out")
    return items, source, notes


def compare_items(cfg: TasksAddConfig) -> tuple[list[dict], dict, list[str]]:
    """Items of two models' answers to each prompt, in an order drawn per item (seeded), names hidden."""
    _refuse(cfg, ["responses", "model"], "compare")
    models = parse_named(cfg.models)
    if len(models) != 2:
        raise UsageError(
            f"tasks add --kind compare --models: give two NAME=DIR models (got {len(models)}), e.g. "
            "--models ppo=runs/demo/ppo sft=runs/demo/sft"
        )
    prompts = [_prompt_item(p) for p in _prompts(cfg, list(models.values()))]
    temperature, top_p = _sampling(cfg)
    answers = {name: sample_answers(path, prompts, cfg, temperature, top_p) for name, path in models.items()}
    rng = random.Random(cfg.seed)
    items = []
    for i, prompt in enumerate(prompts):
        shown = [
            {"model": name, "text": answers[name][i][0], "ended": answers[name][i][1]} for name in models
        ]
        rng.shuffle(shown)
        items.append({**prompt, "responses": shown})
    source = {"prompts": cfg.prompts, "models": models, "temperature": temperature, "top_p": top_p}
    source.update({"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed})
    first, second = models
    same = sum(x == y for x, y in zip(answers[first], answers[second]))
    notes = [f"{same} prompts got the same answer from both models (a tie, most likely)"] if same else []
    return items, source, notes


def sample_answers(
    model_dir: str, prompts: list[dict], cfg: TasksAddConfig, temperature: float, top_p: float
) -> list[tuple[str, bool]]:
    """(answer, ended with EOS) for each prompt item, sampled as `rlhfkit generate` does."""
    quiet_libraries()
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(model_dir)
    model = for_inference(load_causal_lm(model_dir))
    check_vocab(model, tokenizer, f"label-server tasks add --model {model_dir}")
    contexts = [p["context"] or p["prompt"] for p in prompts]
    with console.status(f"[label-server] {model_dir}: sampling {len(contexts)} answers"):
        return generate_answers(
            model,
            tokenizer,
            contexts,
            chat=is_chat_model(model_dir),
            max_new_tokens=cfg.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=cfg.seed,
        )


def _prompts(cfg: TasksAddConfig, model_dirs: tuple[str, ...] | list[str] = ()):
    """The --prompts rows; text that spells a control token of the tokenizer of one of `model_dirs` (the models
    that answer them) is refused, as `generate` and `eval` refuse it."""
    if not cfg.prompts:
        raise UsageError(
            f"tasks add --kind {cfg.kind}: give --prompts FILE ({{'prompt'}} or {{'messages'}} rows)"
        )
    tokens = {token for path in model_dirs for token in control_tokens(load_tokenizer(path))}
    return load_prompts(cfg.prompts, tokens)


def _prompt_item(prompt) -> dict:
    context = prompt.context
    return {"prompt": prompt.prompt, "context": context if isinstance(context, list) else None}


def _sampling(cfg: TasksAddConfig) -> tuple[float, float]:
    temperature, top_p = SAMPLING[cfg.kind]
    return (
        temperature if cfg.temperature is None else cfg.temperature,
        top_p if cfg.top_p is None else cfg.top_p,
    )


def _refuse(cfg: TasksAddConfig, names: list[str], kind: str) -> None:
    """A setting the kind does not use would be silently ignored: say so instead."""
    for name in names:
        if getattr(cfg, name):
            raise UsageError(f"tasks add --kind {kind} does not use --{name.replace('_', '-')}; leave it out")
