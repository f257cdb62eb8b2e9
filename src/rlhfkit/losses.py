"""Every equation of rlhfkit, once, as a pure tensor function (no I/O, no models, no state).

Shapes are written in comments: B batch, T tokens, V vocabulary, P prompts, K responses per prompt.
Masks are float or bool tensors with the shape of the data they mask, 1 = real token / real response.
Values at masked positions never reach a result or a gradient, so padding may hold anything finite or not.

Conventions the stages rely on:
- ``token_logprobs(logits, tokens)`` is shifted: its column t scores ``tokens[:, t + 1]``, so its mask is
  ``mask[:, 1:]``.
- Losses are things to minimise. ``ppo_policy_loss`` is −L^CLIP; the PPO-ptx objective term γ·E[log π(x)]
  enters the loss as ``+ptx_coef * lm_loss(...)`` (there is no separate ``ptx_loss``).
- ``kl_penalty`` and ``ppo_policy_loss`` use log-ratios log π − log π_ref (resp. π_old), never the reverse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.config import DPO_LOSS_TYPES, ENSEMBLE_REDUCES, KL_ESTIMATORS

# --------------------------------------------------------------------------------------------------------------
# masked statistics


def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """x with masked entries set to 0 (torch.where, so NaN/inf padding and its gradient are dropped)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (over ``dim``, or all entries). An empty mask gives 0."""
    total = zero_masked(x, mask).sum() if dim is None else zero_masked(x, mask).sum(dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return total / count.clamp(min=1e-8)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked entries; ``unbiased`` applies Bessel's n/(n−1) (skipped when n ≤ 1)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Standardise ``x`` over the masked entries: (x − mean) / sqrt(var + 1e-8); masked entries become 0.

    ``shift_mean=False`` only rescales (the mean is kept), as TRL does when whitening rewards: the sign of a
    reward carries meaning (e.g. the EOS penalty), the sign of an advantage does not. Used for advantages
    (37 implementation details of PPO, #7) and optionally for rewards.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return zero_masked(whitened, mask)


# --------------------------------------------------------------------------------------------------------------
# language modelling (Step0 pretrain, Step1 SFT, the ptx term of PPO-ptx)


def lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean next-token cross-entropy −1/N Σ_t log p(labels[t+1] | ≤t) over the N positions not ignored.

    Step0 pretraining, Step1 SFT (prompt tokens set to ``ignore_index`` so that only the completion is learnt),
    and the pretraining term γ·E_{x~D_pretrain}[log π_RL(x)] of PPO-ptx (Ouyang et al. 2022, eq. 2) — the
    "ptx loss" is exactly this function, times ``ptx_coef``. The shift is done here: ``logits[:, t]`` predicts
    ``labels[:, t + 1]``, so pass the same ``input_ids`` (with ignored positions) as labels. Computed in
    float32; a batch with no target gives 0.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    n_targets = (targets != ignore_index).sum()
    return nll / n_targets.clamp(min=1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens[:, t+1] | tokens[:, ≤t]) for every position, shape (B, T−1), in float32.

    logit of the chosen token minus logsumexp over the vocabulary, one row at a time, so that no float32 copy
    of the full (B, T, V) log-softmax is ever held. ``tokens`` must be valid ids everywhere (pad with the pad
    token, not −100) and the result is masked with ``mask[:, 1:]``.
    """
    targets = tokens[:, 1:]  # (B, T-1)
    rows = []
    for row_logits, row_targets in zip(logits[:, :-1], targets):  # (T-1, V), (T-1,)
        row_logits = row_logits.float()
        chosen = row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)  # (T-1,)
        rows.append(chosen - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)  # (B, T-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H(p) = logsumexp(z) − Σ_v p_v z_v of the categorical softmax(z), over the last dim, in float32.

    Shape (...,) for logits (..., V); computed in chunks of rows to bound the float32 memory.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    chunks = []
    for z in flat.split(256):  # (≤256, V)
        z = z.float()
        chunks.append(torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(-1))
    return torch.cat(chunks).view(logits.shape[:-1])


def sequence_logprob(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the masked (response) tokens, shape (B,). Used by DPO."""
    return zero_masked(token_logprobs, mask).sum(-1)  # (B,)


# --------------------------------------------------------------------------------------------------------------
# Step2: reward model


def _better_pairs(ranks: Tensor, mask: Tensor) -> Tensor:
    """(P, K, K) bool: [p, w, l] is True when response w of prompt p is ranked strictly better than l."""
    real = mask.bool()
    return (ranks[:, :, None] < ranks[:, None, :]) & real[:, :, None] & real[:, None, :]


def ranking_loss(
    rewards: Tensor,
    ranks: Tensor,
    mask: Tensor | None = None,
    margin: Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> Tensor:
    """Reward-model loss of InstructGPT (Ouyang et al. 2022, eq. 1), K ranked responses per prompt.

    For each prompt p, every ordered pair (w, l) with ranks[p, w] < ranks[p, l] (smaller rank = better) is a
    term, and all pairs of a prompt form ONE batch element:
        loss_p = −1/N_p Σ_{(w,l)} log σ(r_w − r_l − margin[p, w, l]),   N_p = number of pairs (C(K,2) w/o ties)
        loss   = mean over prompts with N_p > 0  (+ center_rewards_coefficient · mean of r² over real responses)
    Equal ranks are a tie and give no pair; responses with mask 0 (K padded to a common size) give no pair.
    Pairwise {chosen, rejected} data is K = 2 with ranks [1, 2]. ``margin`` (P, K, K) is the Llama-2 style
    margin subtracted from the gap of the pair (w, l). The centering term is the auxiliary loss of
    Eisenstein et al. 2023; note TRL's pairwise version penalises mean((r_c + r_r)²) instead of mean(r²).
    """
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()  # (P, K)
    rewards = zero_masked(rewards, mask)  # (P, K)
    pairs = _better_pairs(ranks, mask)  # (P, K, K)
    gap = rewards[:, :, None] - rewards[:, None, :]  # (P, K, K) r_w − r_l
    if margin is not None:
        gap = gap - zero_masked(margin, pairs)
    n_pairs = pairs.sum(dim=(1, 2))  # (P,)
    loss_per_prompt = -zero_masked(F.logsigmoid(gap), pairs).sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # (P,)
    loss = masked_mean(loss_per_prompt, n_pairs > 0)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * masked_mean(rewards**2, mask)
    return loss


@torch.no_grad()
def ranking_accuracy(rewards: Tensor, ranks: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of all (non-tied, unmasked) pairs, pooled over prompts, with r_w > r_l strictly."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()  # (P, K)
    pairs = _better_pairs(ranks, mask)  # (P, K, K)
    correct = rewards[:, :, None] > rewards[:, None, :]  # (P, K, K)
    return masked_mean(correct.float(), pairs)


def ensemble_reward(scores: Tensor, reduce: str, lam: float = 0.0) -> Tensor:
    """One reward from the scores of M reward models, each already in its own units ((r + bias) / std), shape
    (M, ...) → (...) (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"):

      "mean":            (1/M) Σ_m r_m
      "mean_minus_std":  mean − λ·std,  std = sqrt((1/M) Σ_m (r_m − mean)²)
      "mean_minus_var":  mean − λ·var   (their uncertainty-weighted optimisation, UWO)
      "min":             min_m r_m      (their worst-case optimisation, WCO)

    The spread is the members' population spread (1/M, as UWO's intra-ensemble variance); one member has none.
    """
    mean = scores.mean(0)
    if reduce == "mean":
        return mean
    if reduce == "min":
        return scores.min(0).values
    var = scores.var(0, unbiased=False)
    if reduce == "mean_minus_std":
        return mean - lam * var.sqrt()
    if reduce == "mean_minus_var":
        return mean - lam * var
    raise ValueError(f"unknown ensemble reduce {reduce!r}; choose one of {', '.join(ENSEMBLE_REDUCES)}")


# --------------------------------------------------------------------------------------------------------------
# Step3: PPO


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π, shape (B, T).

    With logr = log π − log π_ref (Schulman 2020, "Approximating KL Divergence"):
      "k1":  logr                      unbiased, can be negative (InstructGPT's β·log(π_RL/π_SFT) term)
      "k2":  ½ logr²                   biased, low variance, ≥ 0
      "k3":  (exp(−logr) − 1) + logr   unbiased, low variance, ≥ 0
      "abs": |logr|                    ≥ 0
    """
    logr = logprobs - ref_logprobs  # (B, T)
    if estimator == "k1":
        return logr
    if estimator == "k2":
        return 0.5 * logr**2
    if estimator == "k3":
        return torch.expm1(-logr) + logr
    if estimator == "abs":
        return logr.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, eq. 16) over the response tokens.

        δ_t = r_t + γ V_{t+1} − V_t,    A_t = δ_t + γλ A_{t+1},    returns_t = A_t + V_t
    Each row is one episode: it ends after its last real token (V after it is 0, no bootstrap). Positions with
    mask 0 (right padding after EOS) have r = V = 0, contribute nothing and get A = returns = 0, so rows of
    different lengths (down to one token) share a batch. A zero inside a row would also end the episode there.
    Call under ``torch.no_grad()`` with detached rewards and values.
    """
    mask = mask.to(values.dtype)  # (B, T)
    rewards, values = zero_masked(rewards, mask), zero_masked(values, mask)  # (B, T)
    lastgaelam = torch.zeros_like(values[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(values.shape[1])):
        nextvalues = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(lastgaelam)  # (B,)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = (delta + gamma * lam * lastgaelam) * mask[:, t]
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = advantages + values  # (B, T), 0 where masked since both terms are
    return advantages, returns


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective L^CLIP (Schulman et al. 2017, eq. 7), negated into a loss to minimise.

        ratio = π/π_old,   pg_loss = masked_mean(max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)))
    Stats (detached): ``clipfrac`` = fraction of tokens where the clipped branch is the larger loss,
    ``approx_kl`` = mean((ratio − 1) − logratio) (k3 estimator of KL(π_old ‖ π)), ``ratio_mean``.
    All inputs are (B, T); ``logprobs`` carries the gradient.
    """
    logratio = zero_masked(logprobs - old_logprobs, mask)  # (B, T)
    advantages = zero_masked(advantages, mask)  # (B, T)
    ratio = torch.exp(logratio)  # (B, T)
    pg_losses = -advantages * ratio  # (B, T)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), mask),
            "approx_kl": masked_mean((ratio - 1) - logratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return pg_loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (PPO2 baselines; 37 implementation details of PPO, #9), shape (B, T) inputs.

        v_clipped = V_old + clamp(V − V_old, −c, c)
        v_loss = ½ masked_mean(max((V − returns)², (v_clipped − returns)²))
    Stats (detached): ``vf_clipfrac`` = fraction of tokens where the clipped error is the larger one.
    """
    values, old_values, returns = (zero_masked(x, mask) for x in (values, old_values, returns))  # (B, T)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # (B, T)
    vf_losses1 = (values - returns) ** 2  # (B, T)
    vf_losses2 = (v_clipped - returns) ** 2  # (B, T)
    v_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), mask)}
    return v_loss, stats


# --------------------------------------------------------------------------------------------------------------
# RL without a value model, best-of-n, DPO


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024), shape (B,).

    A_i = r_i − mean of the other k − 1 samples of the same prompt. Layout as TRL's RLOOTrainer: the batch is
    (k, P) flattened, i.e. sample j of prompt p sits at index j·P + p (k copies of the prompt batch, one after
    the other), not k consecutive samples per prompt.
    """
    assert k >= 2, f"RLOO needs k >= 2 samples per prompt, got k={k}"
    assert rewards.shape[0] % k == 0, f"batch of {rewards.shape[0]} rewards is not divisible by k={k}"
    grouped = rewards.view(k, -1)  # (k, P)
    baseline = (grouped.sum(0, keepdim=True) - grouped) / (k - 1)  # (k, P)
    return (grouped - baseline).reshape(-1)  # (B,)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n ‖ base policy) = log n − (n − 1)/n (Stiennon et al. 2020; Gao et al. 2022)."""
    assert n >= 1, f"best-of-n needs n >= 1, got {n}"
    return math.log(n) - (n - 1) / n


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimisation (Rafailov et al. 2023, eq. 7) and two variants; inputs are (B,) log π(y|x).

        logits = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
      "sigmoid": −(1 − ls)·log σ(β·logits) − ls·log σ(−β·logits)          (ls > 0: conservative DPO, cDPO)
      "ipo":     (logits − 1/(2β))²                                       (Azar et al. 2023, eq. 17)
      "robust":  (−(1 − ls)·log σ(β·logits) + ls·log σ(−β·logits)) / (1 − 2ls)   (Chowdhury et al. 2024)
    Returns the mean loss — or Σ weights·loss when `weights` (B,) are given, e.g. 1/C(K,2) per pair of a K-wise
    ranking divided by the number of rankings, as `ranking_loss` weighs them — and the detached implicit rewards
    β(log π − log π_ref) of chosen and rejected. TRL feeds IPO length-averaged log-probs; pass those for parity.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    logits = chosen_logratios - rejected_logratios  # (B,)
    ls = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - ls) * F.logsigmoid(beta * logits) - ls * F.logsigmoid(-beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        assert ls < 0.5, f"robust DPO needs label_smoothing < 0.5, got {ls}"
        losses = (-(1 - ls) * F.logsigmoid(beta * logits) + ls * F.logsigmoid(-beta * logits)) / (1 - 2 * ls)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    loss = losses.mean() if weights is None else (weights * losses).sum()
    return loss, chosen_rewards, rejected_rewards
