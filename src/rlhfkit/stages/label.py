"""Step2 data — comparison data as InstructGPT collects it.

For each RM prompt (disjoint from the SFT prompts) the SFT model samples K answers; one labeler ranks them best
to worst. Here the labelers are simulated by the embedded world (the gold scorer with per-labeler weight
perturbation, judgement noise, and a `label_noise` rate of swapped neighbours), so the data is only as good as
real labelers would be: the reward model never sees the gold score, only noisy rankings.

The labelers' settings go next to the comparisons (`comparisons.labelers.json`), so the reward model's evaluation
can measure the agreement ceiling of the very labelers its data came from.

Iterated rounds (Bai et al. 2022's online RLHF, Llama 2's five rounds) rank the newest policy's answers: `--model`
the round's PPO policy, `--mix-model` the SFT model writing a share of each prompt's K answers (every row records
which model wrote each answer, "models"), `--prompt-part R/N` the R-th of N disjoint parts of the prompts, so no
round ranks a prompt an earlier one ranked. The labelers are the same people with the same noise in every round
(their seed is --seed). `--no-rank` writes the answers unranked, for people to rank in `rlhfkit label-server`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.batching import encode_prompts, fit_prompts
from rlhfkit.config import LabelConfig
from rlhfkit.data import write_jsonl
from rlhfkit.errors import UsageError
from rlhfkit.labelers import labeler_settings, simulated_labelers, write_settings
from rlhfkit.modeling import check_vocab, context_length, for_inference, load_causal_lm, use_load_options
from rlhfkit.rollout import decode_responses, sample
from rlhfkit.rundir import check_out
from rlhfkit.sources import WORLD, prompt_texts
from rlhfkit.tokenizer import control_tokens, end_of_turn_id, load_tokenizer
from rlhfkit.training import console, seed_everything
from rlhfkit.world import parse_prompt
from rlhfkit.world.oracle import PANEL_SEEDS


def run(cfg: LabelConfig) -> Path:
    use_load_options(cfg)  # --dtype, --attn-implementation, ... for every model it loads
    check_out(cfg.out, "label --out", is_file=True)  # before sampling, not after
    shared = sorted(set(range(cfg.seed, cfg.seed + cfg.n_labelers)) & set(PANEL_SEEDS))
    if cfg.rank and shared:
        raise UsageError(
            f"label --seed {cfg.seed}: its labelers {cfg.seed}..{cfg.seed + cfg.n_labelers - 1} would include "
            f"{shared}, people of the held-out evaluation panel ({PANEL_SEEDS.start}..{PANEL_SEEDS.stop - 1}), "
            "which would then judge its own rankings; pick a seed outside that range"
        )
    seed_everything(cfg.seed)
    # Each round samples K fresh answers for every prompt and gives them to the next labeler in turn.
    tokenizer = load_tokenizer(cfg.model)
    base = prompt_part(prompt_texts(cfg.prompts, "rm", control_tokens(tokenizer)), cfg)
    if cfg.prompts != WORLD and cfg.rank:
        foreign = [n for n, p in enumerate(base, start=1) if parse_prompt(p) is None]
        if foreign:
            raise UsageError(
                f"label --prompts {cfg.prompts}: {len(foreign)} of {len(base)} prompts (the first: prompt "
                f"{foreign[0]}, {base[foreign[0] - 1][:40]!r}) are not the embedded world's, and its simulated labelers can rank answers "
                "only to those. Rank your own answers (K-wise or pairwise JSONL) and give them to rlhfkit reward "
                "--data, or write the answers for people to rank with --no-rank"
            )
    writers = answer_writers(cfg, tokenizer)
    context = min(filter(None, [context_length(w.model) for w, _ in writers]), default=None)
    base = fit_prompts(tokenizer, base, True, cfg.max_prompt_length, cfg.max_new_tokens, context, "label")
    prompts = [p for _ in range(cfg.rounds) for p in base]
    settings = labeler_settings(cfg)
    labelers = simulated_labelers(settings) if cfg.rank else []

    rows, identical = [], 0
    what = "ranking them" if cfg.rank else "writing them unranked"
    with console.status(f"[label] sampling {cfg.k} answers for {len(prompts)} prompts and {what}"):
        per_batch = max(1, 128 // cfg.k)
        for start in range(0, len(prompts), per_batch):
            chunk = prompts[start : start + per_batch]
            answers = [
                sample_answers(writer, tokenizer, chunk, n, cfg) for writer, n in writers
            ]  # per writer: n answers per prompt, prompt by prompt
            for j, prompt in enumerate(chunk):
                index = start + j
                written = [
                    (text, ended, writer.path)
                    for (writer, n), (texts, flags) in zip(writers, answers)
                    for text, ended in zip(texts[j * n : (j + 1) * n], flags[j * n : (j + 1) * n])
                ]
                if len(writers) > 1:  # the two models' answers in an order drawn per ranking, not by model
                    random.Random(cfg.seed * 1_000_003 + index).shuffle(written)
                responses, flags, models = (list(column) for column in zip(*written))
                if len(set(zip(responses, flags))) == 1:
                    identical += 1  # K copies of one answer: nothing to compare
                    continue
                if not cfg.rank:
                    rows.append({"prompt": prompt, "responses": responses, "ended": flags, "models": models})
                    continue
                who = (index + index // len(base)) % len(labelers)  # rounds shift the labeler
                order = ranks_with_ties(labelers[who].rank(prompt, responses, flags), responses, flags)
                rows.append(
                    {
                        "prompt": prompt,
                        "responses": responses,
                        **order,
                        "ended": flags,
                        "labeler": who,
                        "models": models,
                    }
                )
    if cfg.rank:
        write_settings(cfg.out, settings)
    n = write_jsonl(cfg.out, rows)  # last: the comparisons file is what says the step is done
    part = f" of prompt part {cfg.prompt_part} ({len(base)} prompts)" if cfg.prompt_part else ""
    mixed = f", {cfg.mixed()} of each K by {cfg.mix_model}" if cfg.mix_model else ""
    console.print(
        f"[label] wrote {n} {'rankings' if cfg.rank else 'unranked answer sets'} of K={cfg.k} ({cfg.rounds} per "
        f"prompt{part}{mixed}) to {cfg.out}"
        + (
            f"; {identical} prompts whose {cfg.k} answers were all identical gave no comparison"
            if identical
            else ""
        )
    )
    return Path(cfg.out)


def prompt_part(prompts: list, cfg: LabelConfig) -> list:
    """--prompt-part R/N: every N-th prompt from the R-th (1-based) on, so the N parts are disjoint, cover every
    prompt and each keeps the file's mix of prompt families; all prompts for ''."""
    part = cfg.part()
    if part is None:
        return prompts
    r, n = part
    chosen = prompts[r - 1 :: n]
    if not chosen:
        raise UsageError(
            f"label --prompt-part {cfg.prompt_part}: {len(prompts)} prompts make no part {r} of {n}; give fewer "
            "parts or more prompts"
        )
    return chosen


@dataclass
class Writer:
    """A model that writes answers, with the path that names it in the rows and its own sampling noise."""

    path: str
    model: object
    generator: torch.Generator


def answer_writers(cfg: LabelConfig, tokenizer) -> list[tuple[Writer, int]]:
    """(writer, answers per prompt): --model writes K (K − mixed with --mix-model), --mix-model the rest."""
    writers = []
    for offset, (path, n) in enumerate([(cfg.model, cfg.k - cfg.mixed()), (cfg.mix_model, cfg.mixed())]):
        if path is None:
            continue
        flag = "--model" if offset == 0 else "--mix-model"
        model = for_inference(load_causal_lm(path))
        # one tokenizer for both: the labelers read text, but the ids must mean the same in each model
        check_vocab(model, tokenizer, f"label {flag} {path}", path if offset else None)
        generator = torch.Generator(device=model.device).manual_seed(cfg.seed + offset)
        writers.append((Writer(str(path), model, generator), n))
    return writers


def sample_answers(writer: Writer, tokenizer, prompts: list, n: int, cfg: LabelConfig):
    """(texts, ended) of n consecutive samples per prompt from `writer`."""
    batch = sample(
        writer.model,
        encode_prompts(tokenizer, [p for p in prompts for _ in range(n)], chat=True),
        end_of_turn_id(tokenizer),
        tokenizer.pad_token_id,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.top_p,
        writer.generator,
        compiled=cfg.compile_sampler,
    )
    return decode_responses(tokenizer, batch), batch.ended.tolist()


def ranks_with_ties(ranking: list[int], responses: list[str], ended: list[bool]) -> dict:
    """A labeler cannot prefer one of two identical answers: copies share the rank of the best-placed copy, and
    ranks stay consecutive ([1, 2, 1], not [1, 3, 1]) so a rank difference counts the distinct answers between.

    Returns {"ranking": [...]} when all answers differ, else {"ranks": [...]} (ties give no pair).
    """
    dense: dict[tuple[str, bool], int] = {}
    for index in ranking:
        dense.setdefault((responses[index], ended[index]), len(dense) + 1)
    ranks = [dense[(r, e)] for r, e in zip(responses, ended)]
    return {"ranking": ranking} if len(set(ranks)) == len(ranks) else {"ranks": ranks}
