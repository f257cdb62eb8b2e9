"""Step2 data — comparison data as InstructGPT collects it.

For each RM prompt (disjoint from the SFT prompts) the SFT model samples K answers; one labeler ranks them best
to worst. Here the labelers are simulated by the embedded world (the gold scorer with per-labeler weight
perturbation, judgement noise, and a `label_noise` rate of swapped neighbours), so the data is only as good as
real labelers would be: the reward model never sees the gold score, only noisy rankings.

The labelers' settings go next to the comparisons (`comparisons.labelers.json`), so the reward model's evaluation
can measure the agreement ceiling of the very labelers its data came from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.batching import encode_prompts
from rlhfkit.config import LabelConfig
from rlhfkit.data import write_jsonl
from rlhfkit.errors import UsageError
from rlhfkit.labelers import labeler_settings, simulated_labelers, write_settings
from rlhfkit.modeling import check_vocab, for_inference, load_causal_lm
from rlhfkit.rollout import decode_responses, sample
from rlhfkit.rundir import check_out
from rlhfkit.sources import WORLD, prompt_texts
from rlhfkit.tokenizer import control_tokens, load_tokenizer
from rlhfkit.training import console, seed_everything
from rlhfkit.world import parse_prompt
from rlhfkit.world.oracle import PANEL_SEEDS


def run(cfg: LabelConfig) -> Path:
    check_out(cfg.out, "label --out", is_file=True)  # before sampling, not after
    shared = sorted(set(range(cfg.seed, cfg.seed + cfg.n_labelers)) & set(PANEL_SEEDS))
    if shared:
        raise UsageError(
            f"label --seed {cfg.seed}: its labelers {cfg.seed}..{cfg.seed + cfg.n_labelers - 1} would include "
            f"{shared}, people of the held-out evaluation panel ({PANEL_SEEDS.start}..{PANEL_SEEDS.stop - 1}), "
            "which would then judge its own rankings; pick a seed outside that range"
        )
    seed_everything(cfg.seed)
    # Each round samples K fresh answers for every prompt and gives them to the next labeler in turn.
    tokenizer = load_tokenizer(cfg.model)
    base = prompt_texts(cfg.prompts, "rm", control_tokens(tokenizer))
    if cfg.prompts != WORLD:
        foreign = [n for n, p in enumerate(base, start=1) if parse_prompt(p) is None]
        if foreign:
            raise UsageError(
                f"label --prompts {cfg.prompts}: {len(foreign)} of {len(base)} prompts (the first: prompt "
                f"{foreign[0]}, {base[foreign[0] - 1][:40]!r}) are not the embedded world's, and its simulated labelers can rank answers "
                "only to those. Rank your own answers (K-wise or pairwise JSONL) and give them to rlhfkit reward --data"
            )
    prompts = [p for _ in range(cfg.rounds) for p in base]
    model = for_inference(load_causal_lm(cfg.model))
    check_vocab(model, tokenizer, f"label --model {cfg.model}")
    settings = labeler_settings(cfg)
    labelers = simulated_labelers(settings)

    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    rows, identical = [], 0
    with console.status(f"[label] sampling {cfg.k} answers for {len(prompts)} prompts and ranking them"):
        per_batch = max(1, 128 // cfg.k)
        for start in range(0, len(prompts), per_batch):
            chunk = prompts[start : start + per_batch]
            repeated = [p for p in chunk for _ in range(cfg.k)]  # K consecutive samples per prompt
            batch = sample(
                model,
                encode_prompts(tokenizer, repeated, chat=True),
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                cfg.max_new_tokens,
                cfg.temperature,
                cfg.top_p,
                generator,
                compiled=cfg.compile_sampler,
            )
            texts, ended = decode_responses(tokenizer, batch), batch.ended.tolist()
            for j, prompt in enumerate(chunk):
                responses = texts[j * cfg.k : (j + 1) * cfg.k]
                flags = ended[j * cfg.k : (j + 1) * cfg.k]
                index = start + j
                who = (index + index // len(base)) % len(labelers)  # rounds shift the labeler
                labeler = labelers[who]
                if len(set(zip(responses, flags))) == 1:
                    identical += 1  # K copies of one answer: nothing to compare
                    continue
                order = ranks_with_ties(labeler.rank(prompt, responses, flags), responses, flags)
                rows.append(
                    {
                        "prompt": prompt,
                        "responses": responses,
                        **order,
                        "ended": flags,
                        "labeler": who,
                    }
                )
    write_settings(cfg.out, settings)
    n = write_jsonl(cfg.out, rows)  # last: the comparisons file is what says the step is done
    console.print(
        f"[label] wrote {n} rankings of K={cfg.k} ({cfg.rounds} per prompt) to {cfg.out}"
        + (
            f"; {identical} prompts whose {cfg.k} answers were all identical gave no comparison"
            if identical
            else ""
        )
    )
    return Path(cfg.out)


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
