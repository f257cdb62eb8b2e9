"""Math tier: every function of rlhfkit.losses against small numbers worked out by hand with `math`."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.losses import (
    best_of_n_kl,
    dpo_loss,
    ensemble_reward,
    entropy_from_logits,
    gae,
    kl_penalty,
    lm_loss,
    masked_mean,
    masked_var,
    ppo_policy_loss,
    ppo_value_loss,
    ranking_accuracy,
    ranking_loss,
    rloo_advantages,
    sequence_logprob,
    token_logprobs,
    whiten,
)

NAN = float("nan")


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def neg_logsig(x: float) -> float:
    """−log σ(x) written out: log(1 + e^(−x))."""
    return math.log(1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------------------------
# masked statistics

X = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_masked_mean_ignores_padding_even_nan():
    close(masked_mean(X, M), 7 / 3)
    close(masked_mean(X, M, dim=1), [1.5, 4.0])
    close(masked_mean(X, M.float()), 7 / 3)  # float masks work the same


def test_masked_mean_empty_mask_is_zero():
    close(masked_mean(torch.ones(2, 2), torch.zeros(2, 2)), 0.0)


def test_masked_var():
    # values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    close(masked_var(X, M), (42 / 9) / 2)
    close(masked_var(X, M, unbiased=False), (42 / 9) / 3)
    close(masked_var(torch.tensor([3.0, 9.0]), torch.tensor([1, 0])), 0.0)  # one entry: no Bessel blow-up


def test_whiten_standardises_masked_entries():
    mean, std = 7 / 3, math.sqrt(7 / 3 + 1e-8)
    out = whiten(X, M)
    close(out, [[(1 - mean) / std, (2 - mean) / std, 0.0], [(4 - mean) / std, 0.0, 0.0]])
    close(masked_mean(out, M), 0.0)
    close(masked_var(out, M), 1.0)


def test_whiten_shift_mean_false_keeps_mean():
    mean, std = 7 / 3, math.sqrt(7 / 3 + 1e-8)
    out = whiten(X, M, shift_mean=False)
    close(out, [[(1 - mean) / std + mean, (2 - mean) / std + mean, 0.0], [(4 - mean) / std + mean, 0.0, 0.0]])
    close(masked_mean(out, M), mean)
    close(masked_var(out, M), 1.0)


# --------------------------------------------------------------------------------------------------------------
# language modelling

LOGITS = torch.tensor([[[0.2, -1.0, 0.7], [1.0, 2.0, 0.5], [0.0, 0.3, -0.4]]])  # (1, 3, 3)


def test_lm_loss_one_target_with_ignored_position():
    # logits[:, 0] would predict labels[:, 1] = −100 (ignored); logits[:, 1] predicts labels[:, 2] = 0
    labels = torch.tensor([[2, -100, 0]])
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    close(lm_loss(LOGITS, labels), expected)
    close(lm_loss(LOGITS, labels), F.cross_entropy(LOGITS[0, 1:2], torch.tensor([0])))


def test_lm_loss_mean_over_targets():
    labels = torch.tensor([[1, 2, 1]])  # labels[:, 0] is never a target
    z0 = math.exp(0.2) + math.exp(-1.0) + math.exp(0.7)
    z1 = math.exp(1.0) + math.exp(2.0) + math.exp(0.5)
    expected = (-math.log(math.exp(0.7) / z0) - math.log(math.exp(2.0) / z1)) / 2
    close(lm_loss(LOGITS, labels), expected)


def test_lm_loss_all_ignored_is_zero():
    close(lm_loss(LOGITS, torch.full((1, 3), -100)), 0.0)


def test_token_logprobs():
    tokens = torch.tensor([[0, 2, 1]])
    z0 = math.exp(0.2) + math.exp(-1.0) + math.exp(0.7)
    z1 = math.exp(1.0) + math.exp(2.0) + math.exp(0.5)
    out = token_logprobs(LOGITS, tokens)
    assert out.shape == (1, 2)
    close(out, [[0.7 - math.log(z0), 2.0 - math.log(z1)]])
    # bf16 logits: float32 result, same values up to bf16 rounding of the inputs
    out16 = token_logprobs(LOGITS.bfloat16(), tokens)
    assert out16.dtype == torch.float32
    close(out16, [[0.7 - math.log(z0), 2.0 - math.log(z1)]], atol=2e-2)


def test_token_logprobs_gradient():
    logits = LOGITS.clone().requires_grad_()
    token_logprobs(logits, torch.tensor([[0, 2, 1]])).sum().backward()
    z0 = math.exp(0.2) + math.exp(-1.0) + math.exp(0.7)
    # d log p_2 / d z_v = 1[v = 2] − p_v for the first position; the last position has no target
    close(logits.grad[0, 0], [-math.exp(0.2) / z0, -math.exp(-1.0) / z0, 1 - math.exp(0.7) / z0])
    close(logits.grad[0, 2], [0.0, 0.0, 0.0])


def test_entropy_from_logits():
    p = [math.exp(v) / (math.exp(1) + math.exp(2) + math.exp(3)) for v in (1, 2, 3)]
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])  # (1, 2, 3)
    out = entropy_from_logits(logits)
    assert out.shape == (1, 2)
    close(out, [[math.log(3), -sum(q * math.log(q) for q in p)]])


def test_sequence_logprob():
    close(sequence_logprob(torch.tensor([[-1.0, -2.0, -3.0]]), torch.ones(1, 3)), [-6.0])
    close(sequence_logprob(torch.tensor([[-1.0, -2.0, NAN], [-0.5, NAN, NAN]]), M), [-3.0, -0.5])


# --------------------------------------------------------------------------------------------------------------
# Step2: ranking loss


def test_ranking_loss_pairwise_is_k2():
    rewards = torch.tensor([[1.5, 0.3]])
    close(ranking_loss(rewards, torch.tensor([[1, 2]])), neg_logsig(1.5 - 0.3))
    close(ranking_loss(rewards, torch.tensor([[2, 1]])), neg_logsig(0.3 - 1.5))


def test_ranking_loss_k3_one_batch_element():
    # the seed's 重庆 example: three responses ranked best → worst 0, 1, 2
    rewards, ranks = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[1, 2, 3]])
    expected = (neg_logsig(2.0 - 0.5) + neg_logsig(2.0 - (-1.0)) + neg_logsig(0.5 - (-1.0))) / 3
    close(ranking_loss(rewards, ranks), expected)
    # the same ranking given as a permutation of the responses
    close(ranking_loss(torch.tensor([[-1.0, 2.0, 0.5]]), torch.tensor([[3, 1, 2]])), expected)


def test_ranking_loss_ties_give_no_pair():
    rewards = torch.tensor([[2.0, 0.5, -1.0]])
    expected = (neg_logsig(2.0 - 0.5) + neg_logsig(2.0 - (-1.0))) / 2  # 2 pairs, (1, 2) is a tie
    close(ranking_loss(rewards, torch.tensor([[1, 2, 2]])), expected)


def test_ranking_loss_mixed_k_is_mean_of_prompts():
    rewards = torch.tensor([[1.0, 2.0, NAN, NAN], [0.5, -0.5, 1.0, 0.0]], requires_grad=True)
    ranks = torch.tensor([[1, 2, 0, 0], [2, 4, 1, 3]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    loss_a = neg_logsig(1.0 - 2.0)
    # prompt B best → worst: r=1.0, 0.5, 0.0, −0.5; its 6 pairs
    gaps_b = [1.0 - 0.5, 1.0 - 0.0, 1.0 - (-0.5), 0.5 - 0.0, 0.5 - (-0.5), 0.0 - (-0.5)]
    loss_b = sum(neg_logsig(g) for g in gaps_b) / 6
    loss = ranking_loss(rewards, ranks, mask)
    close(loss, (loss_a + loss_b) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    close(rewards.grad[0, 2:], [0.0, 0.0])


def test_ranking_loss_prompt_without_pairs_is_skipped():
    rewards = torch.tensor([[1.5, 0.3], [4.0, -4.0]])
    ranks = torch.tensor([[1, 2], [1, 1]])  # second prompt: a tie, no pair
    close(ranking_loss(rewards, ranks), neg_logsig(1.5 - 0.3))


def test_ranking_loss_large_gap_finite_gradient():
    rewards = torch.tensor([[0.0, 1e4], [1e4, 0.0]], requires_grad=True)
    loss = ranking_loss(rewards, torch.tensor([[1, 2], [1, 2]]))
    close(loss, (1e4 + 0.0) / 2)  # −log σ(−1e4) = 1e4, −log σ(1e4) = 0
    loss.backward()
    close(rewards.grad, [[-0.5, 0.5], [0.0, 0.0]])


def test_ranking_loss_margin():
    rewards, ranks = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[1, 2, 3]])
    margin = torch.zeros(1, 3, 3)
    margin[0, 0, 2] = 1.0
    expected = (neg_logsig(1.5) + neg_logsig(3.0 - 1.0) + neg_logsig(1.5)) / 3
    close(ranking_loss(rewards, ranks, margin=margin), expected)
    margin2 = torch.tensor([[[0.0, 0.5], [NAN, 0.0]]])  # only [w=0, l=1] is a pair
    close(
        ranking_loss(torch.tensor([[1.5, 0.3]]), torch.tensor([[1, 2]]), margin=margin2),
        neg_logsig(1.2 - 0.5),
    )


def test_ranking_loss_centering():
    rewards = torch.tensor([[1.5, 0.3, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    expected = neg_logsig(1.5 - 0.3) + 0.01 * (1.5**2 + 0.3**2) / 2
    close(ranking_loss(rewards, torch.tensor([[1, 2, 3]]), mask, center_rewards_coefficient=0.01), expected)


def test_ranking_accuracy():
    rewards = torch.tensor([[2.0, 0.5, -1.0]])
    # pairs: (0 over 1) right, (0 over 2) right, (2 over 1) wrong
    close(ranking_accuracy(rewards, torch.tensor([[1, 3, 2]])), 2 / 3)
    close(ranking_accuracy(rewards, torch.tensor([[1, 2, 2]])), 1.0)  # ties excluded
    rewards2 = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 5.0]])
    mask2 = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # pooled: 3 right of 3, then 0 right of 1 (response 2 of prompt 2 is padding)
    close(ranking_accuracy(rewards2, torch.tensor([[1, 2, 3], [1, 2, 3]]), mask2), 3 / 4)


# --------------------------------------------------------------------------------------------------------------
# Step3: KL, GAE, PPO


def test_kl_penalty_estimators():
    logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])  # logr = 0.5, −1.0
    close(kl_penalty(logprobs, ref_logprobs), [[0.5, -1.0]])
    close(kl_penalty(logprobs, ref_logprobs, "k1"), [[0.5, -1.0]])
    close(kl_penalty(logprobs, ref_logprobs, "k2"), [[0.5 * 0.25, 0.5 * 1.0]])
    close(kl_penalty(logprobs, ref_logprobs, "k3"), [[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]])
    close(kl_penalty(logprobs, ref_logprobs, "abs"), [[0.5, 1.0]])
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logprobs, ref_logprobs, "k4")


def test_kl_penalty_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logprobs, ref_logprobs = torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g) * 3
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()
    assert (kl_penalty(logprobs, ref_logprobs, "k2") >= 0).all()


def test_gae_rows_of_different_lengths():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.1, 1.0, 9.9], [2.0, 5.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.5, 0.7, 3.3], [0.5, NAN, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])  # full, masked tail, single token (all-EOS row)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: δ2 = 1 − 0.6, δ1 = 0 + 0.6 − 0.4, δ0 = 0 + 0.4 − 0.2
    a2 = 1.0 - 0.6
    a1 = (0.6 - 0.4) + 0.95 * a2
    a0 = (0.4 - 0.2) + 0.95 * a1
    # row 1: the episode ends after token 1 (V after it is 0); the garbage at t = 2 is ignored
    b1 = 1.0 + 0.0 - 0.7
    b0 = (0.1 + 0.7 - 0.5) + 0.95 * b1
    # row 2: one token, A = r − V
    c0 = 2.0 - 0.5
    close(advantages, [[a0, a1, a2], [b0, b1, 0.0], [c0, 0.0, 0.0]])
    close(returns, [[a0 + 0.2, a1 + 0.4, a2 + 0.6], [b0 + 0.5, b1 + 0.7, 0.0], [c0 + 0.5, 0.0, 0.0]])


def test_gae_single_token_sequence():
    advantages, returns = gae(torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.ones(1, 1), 1.0, 0.95)
    close(advantages, [[1.5]])
    close(returns, [[2.0]])


def test_gae_discounted():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.4, 0.6]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    a2 = 1.0 - 0.6
    a1 = (0.0 + 0.9 * 0.6 - 0.4) + 0.9 * 0.8 * a2
    a0 = (0.0 + 0.9 * 0.4 - 0.2) + 0.9 * 0.8 * a1
    close(advantages, [[a0, a1, a2]])
    close(returns, [[a0 + 0.2, a1 + 0.4, a2 + 0.6]])


def test_gae_lambda_one_returns_are_discounted_reward_to_go():
    rewards, values = torch.tensor([[0.5, 0.0, 1.0]]), torch.tensor([[0.2, 0.4, 0.6]])
    _, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    close(returns, [[0.5 + 0.9**2 * 1.0, 0.9 * 1.0, 1.0]])


def test_ppo_policy_loss_ratio_one_is_minus_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    pg_loss, stats = ppo_policy_loss(logprobs, logprobs, torch.tensor([[1.0, -2.0, 5.0]]), M[:1], 0.2)
    close(pg_loss, -(1.0 - 2.0) / 2)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio_mean"], 1.0)


def test_ppo_policy_loss_clipping():
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1, 1.0]
    advantages = torch.tensor([[1.0, -1.0, -2.0, 2.0, 1.0, 3.0]])
    old_logprobs = torch.full((1, 6), -2.0)
    logprobs = (old_logprobs + torch.tensor([[math.log(r) for r in ratios]])).requires_grad_()
    logprobs.data[0, 5] = float("inf")  # padding position: must not leak into loss or gradient
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    pg_loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange=0.2)
    # max(−A·r, −A·clip(r, 0.8, 1.2)) per token:
    #   A=+1 r=1.5: max(−1.5, −1.2) = −1.2 clipped | A=−1 r=1.5: max(1.5, 1.2) = 1.5
    #   A=−2 r=0.5: max(1.0, 1.6) = 1.6 clipped   | A=+2 r=0.5: max(−1.0, −1.6) = −1.0 | A=+1 r=1.1: −1.1
    close(pg_loss, (-1.2 + 1.5 + 1.6 - 1.0 - 1.1) / 5)
    close(stats["clipfrac"], 2 / 5)
    close(stats["ratio_mean"], (1.5 + 1.5 + 0.5 + 0.5 + 1.1) / 5)
    close(stats["approx_kl"], sum((r - 1) - math.log(r) for r in ratios[:5]) / 5)
    assert not stats["clipfrac"].requires_grad
    pg_loss.backward()
    # clipped tokens get no gradient; the others −A·r/5
    close(logprobs.grad, [[0.0, 1.5 / 5, 0.0, -2 * 0.5 / 5, -1.1 / 5, 0.0]])


def test_ppo_value_loss_clipped_and_unclipped():
    values = torch.tensor([[1.0, 0.6, 0.0, 1.0, NAN]])
    old_values = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[1.2, 2.0, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    v_loss, stats = ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # v_clipped = 0.7, 0.6, 0.3, 0.7; errors (unclipped, clipped) = (0.04, 0.25) (1.96, 1.96) (0.01, 0.04) (1.0, 0.49)
    close(v_loss, 0.5 * (0.25 + 1.96 + 0.04 + 1.0) / 4)
    close(stats["vf_clipfrac"], 2 / 4)
    v_loss, stats = ppo_value_loss(values, old_values, returns, mask, cliprange_value=10.0)
    close(v_loss, 0.5 * (0.04 + 1.96 + 0.01 + 1.0) / 4)
    close(stats["vf_clipfrac"], 0.0)


# --------------------------------------------------------------------------------------------------------------
# RLOO, best-of-n, DPO


def test_rloo_advantages_k2():
    # layout (k, P): prompt 0 owns indices 0 and 2, prompt 1 owns 1 and 3
    close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), k=2), [1 - 3, 2 - 5, 3 - 1, 5 - 2])


def test_rloo_advantages_k3_layout():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0, 8.0])  # prompt 0: 1, 3, 6; prompt 1: 2, 4, 8
    expected = [
        1 - (3 + 6) / 2,
        2 - (4 + 8) / 2,
        3 - (1 + 6) / 2,
        4 - (2 + 8) / 2,
        6 - (1 + 3) / 2,
        8 - (2 + 4) / 2,
    ]
    advantages = rloo_advantages(rewards, k=3)
    close(advantages, expected)
    close(advantages.view(3, 2).sum(0), [0.0, 0.0])  # leave-one-out advantages of a prompt sum to 0
    with pytest.raises(AssertionError):
        rloo_advantages(rewards, k=4)
    with pytest.raises(AssertionError):
        rloo_advantages(rewards, k=1)


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-12)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75, abs=1e-12)


PC, PR = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])  # policy chosen / rejected log π(y|x)
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -1.5])  # reference
# logits = (π_c − ref_c) − (π_r − ref_r): row 0 (0.5) − (−0.5) = 1.0, row 1 (−1.0) − (0.5) = −1.5; β = 0.1


def test_dpo_sigmoid_and_rewards():
    loss, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, beta=0.1)
    close(loss, (neg_logsig(0.1 * 1.0) + neg_logsig(0.1 * -1.5)) / 2)
    close(chosen_rewards, [0.1 * 0.5, 0.1 * -1.0])
    close(rejected_rewards, [0.1 * -0.5, 0.1 * 0.5])
    assert not chosen_rewards.requires_grad


def test_dpo_weighted_pairs():
    # A K-wise ranking's pairs weighted 1/C(K,2) per ranking and averaged over rankings, as ranking_loss does.
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, weights=torch.tensor([0.25, 0.75]))
    close(loss, 0.25 * neg_logsig(0.1 * 1.0) + 0.75 * neg_logsig(0.1 * -1.5))


def test_dpo_label_smoothing():
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    rows = [0.9 * neg_logsig(0.1 * x) + 0.1 * neg_logsig(-0.1 * x) for x in (1.0, -1.5)]
    close(loss, sum(rows) / 2)


def test_dpo_ipo():
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    close(loss, ((1.0 - 5.0) ** 2 + (-1.5 - 5.0) ** 2) / 2)


def test_dpo_robust():
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="robust", label_smoothing=0.1)
    rows = [(0.9 * neg_logsig(0.1 * x) - 0.1 * neg_logsig(-0.1 * x)) / 0.8 for x in (1.0, -1.5)]
    close(loss, sum(rows) / 2)
    close(dpo_loss(PC, PR, RC, RR, loss_type="robust")[0], dpo_loss(PC, PR, RC, RR)[0])


def test_dpo_gradient_and_unknown_type():
    pc = PC.clone().requires_grad_()
    dpo_loss(pc, PR, RC, RR, beta=0.1)[0].backward()
    # d/dπ_c of −log σ(β·logits) / B = −β·σ(−β·logits) / B
    close(pc.grad, [-0.1 / (1 + math.exp(0.1 * 1.0)) / 2, -0.1 / (1 + math.exp(0.1 * -1.5)) / 2])
    with pytest.raises(ValueError, match="ipo"):
        dpo_loss(PC, PR, RC, RR, loss_type="hinge2")


# --------------------------------------------------------------------------------------------------------------
# RM ensembles (Coste et al. 2023)


def test_ensemble_reward_by_hand():
    # Three members' scores of two answers, (M, B) = (3, 2); answer 0: 1, 2, 6; answer 1: 0, 0, 0.
    scores = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 0.0]])
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3  # population variance 14/3
    torch.testing.assert_close(ensemble_reward(scores, "mean"), torch.tensor([mean, 0.0]))
    torch.testing.assert_close(
        ensemble_reward(scores, "mean_minus_std", 0.5), torch.tensor([mean - 0.5 * math.sqrt(var), 0.0])
    )
    torch.testing.assert_close(
        ensemble_reward(scores, "mean_minus_var", 0.1), torch.tensor([mean - 0.1 * var, 0.0])
    )
    torch.testing.assert_close(ensemble_reward(scores, "min"), torch.tensor([1.0, 0.0]))


def test_ensemble_of_two_with_lambda_one_is_its_minimum():
    # mean − 1·std of two values is (a + b)/2 − |a − b|/2 = min(a, b)
    scores = torch.tensor([[0.3, -1.0, 2.0], [-0.7, 4.0, 2.0]])
    torch.testing.assert_close(ensemble_reward(scores, "mean_minus_std", 1.0), ensemble_reward(scores, "min"))


def test_one_member_has_no_spread():
    scores = torch.tensor([[1.5, -2.0]])
    for reduce in ("mean", "mean_minus_std", "mean_minus_var", "min"):
        torch.testing.assert_close(ensemble_reward(scores, reduce, 3.0), scores[0])


def test_ensemble_reward_names_an_unknown_reduce():
    with pytest.raises(ValueError, match="'median'.*mean, mean_minus_std, mean_minus_var, min"):
        ensemble_reward(torch.zeros(2, 1), "median")
