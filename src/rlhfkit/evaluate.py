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


def reward_model_vs_gold(model, tokenizer, items: list[Ranked], max_len: int) -> dict:
    """Compare the reward model with the held-out gold panel on held-out comparisons (embedded world only)."""
    from rlhfkit.stages.reward import score_responses
    from rlhfkit.world import DIMENSIONS, eval_panel, inter_labeler_agreement, labelers, parse_prompt, score
    from rlhfkit.world.oracle import WEIGHTS

    items = [i for i in items if parse_prompt(i.prompt) is not None]
    if not items:
        return {}
    prompts, responses, ended = [], [], []
    for item in items:
        for k, response in enumerate(item.responses):
            prompts.append(item.prompt)
            responses.append(response)
            ended.append(item.ended[k] if item.ended else True)
    rewards = score_responses(model, tokenizer, prompts, responses, ended, max_len=max_len).tolist()
    golds = [score(p, r, e) for p, r, e in zip(prompts, responses, ended)]

    panel = eval_panel()
    agree_panel = agree_data = n_pairs = 0
    by_dim: dict[str, list[int]] = {d: [0, 0] for d in DIMENSIONS}
    offset = 0
    for item in items:
        K = len(item.responses)
        for a in range(K):
            for b in range(a + 1, K):
                ia, ib = offset + a, offset + b
                verdict = panel.compare(item.prompt, responses[ia], ended[ia], responses[ib], ended[ib])
                if verdict == 0.5:
                    continue
                panel_prefers_a = verdict == 1.0
                n_pairs += 1
                agree_panel += (rewards[ia] > rewards[ib]) == panel_prefers_a
                if item.ranks[a] != item.ranks[b]:
                    agree_data += (item.ranks[a] < item.ranks[b]) == panel_prefers_a
                # The dimension that separates the pair most: does the RM catch that kind of mistake?
                gaps = {d: WEIGHTS[d] * (golds[ia].dims[d] - golds[ib].dims[d]) for d in DIMENSIONS}
                dim = max(gaps, key=lambda d: abs(gaps[d]))
                if abs(gaps[dim]) > 1e-6:
                    gold_prefers_a = golds[ia].total > golds[ib].total
                    by_dim[dim][0] += (rewards[ia] > rewards[ib]) == gold_prefers_a
                    by_dim[dim][1] += 1
        offset += K
    labeler_items = [(i.prompt, i.responses, i.ended or [True] * len(i.responses)) for i in items]
    return {
        "panel_agreement": agree_panel / max(n_pairs, 1),
        "labels_vs_panel_agreement": agree_data / max(n_pairs, 1),
        "inter_labeler_agreement": inter_labeler_agreement(labelers(), labeler_items),
        "spearman_reward_vs_gold": spearman(rewards, [g.total for g in golds]),
        "accuracy_by_dimension": {d: {"accuracy": c / n, "pairs": n} for d, (c, n) in by_dim.items() if n},
        "n_panel_pairs": n_pairs,
    }
