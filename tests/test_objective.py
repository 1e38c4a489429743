"""Tests for policytrim.objective: hand-computed values for every SPEC.md equation, each vectorised
function against a plain-Python loop on random groups, edge cases, loss gradients, validation."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import pytest
import torch

from policytrim.objective import (
    TrimReward,
    assign_windows,
    calls_speedup,
    extension_reward,
    group_advantages,
    grpo_loss,
    reduce_grpo_loss,
    speedup,
    stability_penalty,
    step_budget,
    step_saving_reward,
    trim_reward,
    trim_reward_terms,
)

SEEDS = [0, 1, 2, 3, 4]
GROUP_SIZES = [2, 3, 8, 16]


def _random_groups(seed: int, group_size: int, horizon: int = 150):
    g = torch.Generator().manual_seed(seed)
    num_groups = int(torch.randint(1, 7, (1,), generator=g))
    success = torch.rand(num_groups, group_size, generator=g) < 0.6
    if seed % 2:  # clustered steps, so both sides of sigma_floor are exercised
        centre = torch.randint(30, 100, (num_groups, 1), generator=g)
        steps = centre + torch.randint(-4, 5, (num_groups, group_size), generator=g)
    else:
        steps = torch.randint(1, horizon + 1, (num_groups, group_size), generator=g)
    steps = torch.where(success, steps, torch.full_like(steps, horizon))
    return success, steps


# ---------------------------------------------------------------------------------------------
# plain-Python references


def _ref_stability(success, steps, floor, mode):
    out = []
    for s_row, t_row in zip(success.tolist(), steps.tolist(), strict=True):
        ts = [t for s, t in zip(s_row, t_row, strict=True) if s]
        row = []
        for s, t in zip(s_row, t_row, strict=True):
            if not s or len(ts) < 2:
                row.append(0.0)
                continue
            mu = sum(ts) / len(ts)
            sigma = math.sqrt(sum((x - mu) ** 2 for x in ts) / len(ts))
            if mode == "clamp":
                d = max(sigma, floor)
            else:
                if sigma < floor:
                    row.append(0.0)
                    continue
                d = sigma
            row.append(math.tanh(abs(t - mu) / d) if d > 0 else 0.0)
        out.append(row)
    return out


def _ref_trim(success, steps, budget, le, ls, floor, mode):
    p = _ref_stability(success, steps, floor, mode)
    out = []
    for s_row, t_row, p_row in zip(success.tolist(), steps.tolist(), p, strict=True):
        row = []
        for s, t, pi in zip(s_row, t_row, p_row, strict=True):
            e = max(0.0, (budget - t) / budget) if s else 0.0
            row.append((1 + le * e - ls * pi) / (1 + le) if s else 0.0)
        out.append(row)
    return out


def _ref_advantages(rewards, eps, scale=True):
    adv, valid = [], []
    for row in rewards.tolist():
        if all(r == row[0] for r in row):
            adv.append([0.0] * len(row))
            valid.append(False)
            continue
        mu, sd = statistics.mean(row), statistics.stdev(row)
        adv.append([(r - mu) / (sd + eps) if scale else r - mu for r in row])
        valid.append(True)
    return adv, valid


def _ref_grpo_loss(logp, old, adv, mask, ref, cl, ch, beta, n):
    """Eq 4 with Python floats, trajectory by trajectory, chunk by chunk, row by row."""
    total_pg, total_kl = 0.0, 0.0
    for i in range(len(logp)):
        terms = []
        kl_rows = []
        for c in range(len(logp[i])):
            rows = [r for r in range(len(logp[i][c])) if mask[i][c][r]]
            if not rows:
                continue
            rho = math.exp(sum(logp[i][c][r] - old[i][c][r] for r in rows))
            clipped = min(max(rho, 1 - cl), 1 + ch)
            terms.append(-min(rho * adv[i], clipped * adv[i]))
            if ref is not None:
                for r in rows:
                    d = ref[i][c][r] - logp[i][c][r]
                    kl_rows.append(math.exp(d) - d - 1)
        total_pg += sum(terms) / len(terms)
        if ref is not None:
            total_kl += sum(kl_rows) / len(kl_rows)
    return total_pg / n + beta * total_kl / n


def _random_loss_inputs(seed, num=5, chunks=4, rows=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(num, chunks, rows, generator=g, dtype=dtype) * 0.3 - 2.0
    old = logp + torch.randn(num, chunks, rows, generator=g, dtype=dtype) * 0.15
    ref = logp + torch.randn(num, chunks, rows, generator=g, dtype=dtype) * 0.2
    adv = torch.randn(num, generator=g, dtype=dtype)
    # executed rows: chunk c of trajectory i runs n_ic <= rows rows; some trailing chunks are padding
    n_rows = torch.randint(1, rows + 1, (num, chunks), generator=g)
    n_chunks = torch.randint(1, chunks + 1, (num,), generator=g)
    n_rows = torch.where(torch.arange(chunks)[None] < n_chunks[:, None], n_rows, 0)
    mask = torch.arange(rows)[None, None] < n_rows[..., None]
    return logp, old, ref, adv, mask


# ---------------------------------------------------------------------------------------------
# Stage 1: windows and eq 2


def test_assign_windows_cycles_slots():
    w = assign_windows(2, 8, [5, 10, 15])
    assert w.dtype == torch.long
    assert w.tolist() == [[5, 10, 15, 5, 10, 15, 5, 10]] * 2
    assert assign_windows(0, 3, (4,)).shape == (0, 3)


def test_assign_windows_matches_loop():
    for num_groups, group_size, windows in [(3, 2, [5, 10, 15]), (1, 7, [10, 15]), (4, 16, [1, 2, 3, 4, 5])]:
        w = assign_windows(num_groups, group_size, windows)
        assert w.tolist() == [[windows[j % len(windows)] for j in range(group_size)] for _ in range(num_groups)]


def test_extension_reward_hand_values():
    success = torch.tensor([[True, True, False], [False, False, False]])
    window = torch.tensor([[5, 10, 15], [5, 10, 15]])
    r = extension_reward(success, window, chunk_size=15)
    expected = torch.tensor([[1 + 5 / 15, 1 + 10 / 15, 0.0], [0.0, 0.0, 0.0]])
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, expected)
    # lambda_h scales only the horizon term; a failure is exactly 0 whatever its window
    r2 = extension_reward(success, window, chunk_size=15, horizon_coef=0.5)
    assert r2[0, 1].item() == pytest.approx(1 + 0.5 * 10 / 15)
    assert (r2[1] == 0).all()
    # one int window for every rollout, 0/1 float success
    r3 = extension_reward(torch.tensor([[1.0, 0.0]]), 10, chunk_size=10)
    assert r3.tolist() == [[2.0, 0.0]]


@pytest.mark.parametrize("seed", SEEDS)
def test_extension_reward_matches_loop(seed):
    for group_size in GROUP_SIZES:
        success, _ = _random_groups(seed, group_size)
        window = assign_windows(success.shape[0], group_size, [5, 10, 15])
        r = extension_reward(success, window, 15, horizon_coef=0.7)
        ref = [
            [(1 + 0.7 * k / 15) if s else 0.0 for s, k in zip(sr, kr, strict=True)]
            for sr, kr in zip(success.tolist(), window.tolist(), strict=True)
        ]
        torch.testing.assert_close(r, torch.tensor(ref, dtype=torch.float32))


def test_extension_reward_zero_in_all_failure_group_is_no_signal():
    success = torch.zeros(1, 6, dtype=torch.bool)
    window = assign_windows(1, 6, [5, 10, 15])
    adv, valid = group_advantages(extension_reward(success, window, 15))
    assert not valid.any() and (adv == 0).all()


# ---------------------------------------------------------------------------------------------
# Stage 2: budget, eq 5, eq 6, eq 7


def test_step_budget_is_the_exact_ceiling_despite_float_noise():
    """B = ceil(multiplier x mean T) against exact rational arithmetic, for multipliers as configs
    write them (two decimals) and up to 10 episodes. The sample holds products whose float value
    lies just above an integer (1.1 x 100 = 110.00000000000001), where a plain float ceiling would
    add a step: the implementation must not."""
    rng = random.Random(0)
    traps = 0
    for _ in range(3000):
        multiplier = rng.randint(101, 300) / 100
        steps = [rng.randint(1, 500) for _ in range(rng.randint(1, 10))]
        exact = math.ceil(Fraction(str(multiplier)) * Fraction(sum(steps), len(steps)))
        assert step_budget(steps, multiplier) == exact, (steps, multiplier)
        traps += math.ceil(multiplier * (sum(steps) / len(steps))) != exact
    assert traps > 0, "no input where float noise crosses an integer: the check above proves nothing"


def test_step_budget_hand_values():
    assert step_budget([100], 1.1) == 110  # 110.00000000000001
    assert step_budget([170], 1.1) == 187  # 187.00000000000003
    assert step_budget([50, 50], 1.1) == 55  # 55.00000000000001
    assert step_budget([100], 1.3) == 130
    assert step_budget(torch.tensor([100, 100, 100]), 1.3) == 130
    assert step_budget([10, 11], 1.3) == 14  # ceil(13.65)
    assert step_budget([64.3]) == 84  # ceil(83.59)
    assert step_budget([50], 2.0) == 100
    assert isinstance(step_budget([7]), int)


def test_step_saving_reward_hand_values():
    success = torch.tensor([[1, 1, 1, 0]])
    steps = torch.tensor([[40, 100, 130, 20]])
    e = step_saving_reward(success, steps, budget=100)
    torch.testing.assert_close(e, torch.tensor([[0.6, 0.0, 0.0, 0.0]]))
    assert e.dtype == torch.float32
    e64 = step_saving_reward(success, steps.double(), budget=100)
    assert e64.dtype == torch.float64


def test_stability_penalty_hand_values():
    # successes 40, 50, 60 (failure at 100 ignored): mu = 50, sigma = sqrt(200/3) = 8.165 > floor
    success = torch.tensor([[True, True, True, False]])
    steps = torch.tensor([[40, 50, 60, 100]])
    sigma = math.sqrt(200 / 3)
    p = stability_penalty(success, steps)
    expected = [[math.tanh(10 / sigma), 0.0, math.tanh(10 / sigma), 0.0]]
    torch.testing.assert_close(p, torch.tensor(expected))
    # sigma below the floor: clamp divides by the floor
    p = stability_penalty(torch.tensor([[True, True]]), torch.tensor([[48, 52]]), sigma_floor=5.0)
    torch.testing.assert_close(p, torch.tensor([[math.tanh(2 / 5)] * 2]))


def test_trim_reward_hand_values():
    # B = 100; successes at 40 and 60: mu = 50, sigma = 10 (population), E = 0.6 / 0.4
    success = torch.tensor([[True, True, False]])
    steps = torch.tensor([[40, 60, 100]])
    terms = trim_reward_terms(success, steps, budget=100)
    assert isinstance(terms, TrimReward)
    p = math.tanh(1.0)
    torch.testing.assert_close(terms.step_saving, torch.tensor([[0.6, 0.4, 0.0]]))
    torch.testing.assert_close(terms.stability, torch.tensor([[p, p, 0.0]]))
    expected = [[(1 + 0.8 * 0.6 - 0.2 * p) / 1.8, (1 + 0.8 * 0.4 - 0.2 * p) / 1.8, 0.0]]
    torch.testing.assert_close(terms.reward, torch.tensor(expected))
    torch.testing.assert_close(trim_reward(success, steps, 100), terms.reward)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["clamp", "gate"])
def test_stage2_rewards_match_loop(seed, mode):
    for group_size in GROUP_SIZES:
        success, steps = _random_groups(seed, group_size)
        budget = 97
        terms = trim_reward_terms(success, steps, budget, 0.7, 0.3, sigma_floor=3.0, floor_mode=mode)
        ref_p = _ref_stability(success, steps, 3.0, mode)
        ref_r = _ref_trim(success, steps, budget, 0.7, 0.3, 3.0, mode)
        ref_e = [
            [max(0.0, (budget - t) / budget) if s else 0.0 for s, t in zip(sr, tr, strict=True)]
            for sr, tr in zip(success.tolist(), steps.tolist(), strict=True)
        ]
        torch.testing.assert_close(terms.stability, torch.tensor(ref_p, dtype=torch.float32))
        torch.testing.assert_close(terms.step_saving, torch.tensor(ref_e, dtype=torch.float32))
        torch.testing.assert_close(terms.reward, torch.tensor(ref_r, dtype=torch.float32))
        # float64 in, float64 out, same values
        r64 = trim_reward(success.double(), steps, budget, 0.7, 0.3, 3.0, mode)
        assert r64.dtype == torch.float64
        torch.testing.assert_close(r64, torch.tensor(ref_r, dtype=torch.float64))


def test_all_fail_group_gets_zero_everything():
    success = torch.zeros(2, 4, dtype=torch.bool)
    steps = torch.full((2, 4), 200)
    terms = trim_reward_terms(success, steps, budget=100)
    for t in terms:
        assert (t == 0).all()
    _, valid = group_advantages(terms.reward)
    assert not valid.any()


def test_single_success_has_no_anchor():
    success = torch.tensor([[True, False, False, False]])
    steps = torch.tensor([[30, 200, 200, 200]])
    terms = trim_reward_terms(success, steps, budget=100)
    assert (terms.stability == 0).all()
    assert terms.reward[0, 0].item() == pytest.approx((1 + 0.8 * 0.7) / 1.8)


def test_zero_sigma_gives_zero_penalty_even_without_floor():
    success = torch.tensor([[True, True, True, False]])
    steps = torch.tensor([[50, 50, 50, 9]])
    for floor in (5.0, 0.0):
        for mode in ("clamp", "gate"):
            p = stability_penalty(success, steps, sigma_floor=floor, floor_mode=mode)
            assert torch.isfinite(p).all() and (p == 0).all()


def test_budget_exceeded_keeps_reward_above_lower_bound():
    success = torch.tensor([[True, True, True, True]])
    steps = torch.tensor([[10, 150, 160, 400]])  # three successes beyond B = 100
    terms = trim_reward_terms(success, steps, budget=100)
    assert (terms.step_saving[0, 1:] == 0).all()
    lower = (1 - 0.2) / (1 + 0.8)
    assert (terms.reward >= lower - 1e-7).all()
    assert (terms.reward < 1).all()


def test_all_equal_rewards_are_invalid():
    success = torch.tensor([[True, True, True]])
    steps = torch.tensor([[60, 60, 60]])
    adv, valid = group_advantages(trim_reward(success, steps, 100))
    assert valid.tolist() == [False] and (adv == 0).all()


def test_clamp_vs_gate():
    success = torch.ones(1, 4, dtype=torch.bool)
    # tight group: sigma = sqrt(5) = 2.24 < floor 5
    tight = torch.tensor([[50, 52, 54, 56]])
    clamp = stability_penalty(success, tight, 5.0, "clamp")
    gate = stability_penalty(success, tight, 5.0, "gate")
    torch.testing.assert_close(
        clamp, torch.tensor([[math.tanh(3 / 5), math.tanh(1 / 5), math.tanh(1 / 5), math.tanh(3 / 5)]])
    )
    assert (gate == 0).all()  # the authors' code: no penalty while sigma_g < floor
    # spread group: sigma = sqrt(125) = 11.18 >= floor, both modes divide by sigma_g
    spread = torch.tensor([[40, 50, 60, 70]])
    torch.testing.assert_close(
        stability_penalty(success, spread, 5.0, "clamp"), stability_penalty(success, spread, 5.0, "gate")
    )
    # gate is active at exactly sigma_g == floor
    p = stability_penalty(torch.ones(1, 2, dtype=torch.bool), torch.tensor([[45, 55]]), 5.0, "gate")
    torch.testing.assert_close(p, torch.tensor([[math.tanh(1.0)] * 2]))


def test_stability_tradeoff_shortcut_net_penalised_or_rewarded():
    """A success d steps below the mean gains lambda_e*d/B but pays lambda_s*tanh(d/sigma).

    Group [mu - d, mu, mu, mu + d] (all successes), B = 100, defaults lambda_e = 0.8,
    lambda_s = 0.2, floor 5. Compare the shortcut (T = mu - d) with a member at the mean (P = 0).
    """
    budget, le, ls = 100, 0.8, 0.2
    success = torch.ones(1, 4, dtype=torch.bool)

    def margin(d):
        steps = torch.tensor([[60 - d, 60, 60, 60 + d]])
        r = trim_reward(success, steps, budget)
        sigma = max(math.sqrt(2 * d * d / 4), 5.0)
        by_hand = (le * d / budget - ls * math.tanh(d / sigma)) / (1 + le)
        assert (r[0, 0] - r[0, 1]).item() == pytest.approx(by_hand, abs=1e-6)
        return by_hand

    # d = 5: sigma clamps to 5, gain 0.04 < loss 0.2 tanh(1) = 0.152 -> the lucky shortcut loses
    assert margin(5) == pytest.approx((0.04 - 0.2 * math.tanh(1.0)) / 1.8)
    assert margin(5) < 0
    # d = 30: sigma = 21.2, gain 0.24 > loss 0.2 tanh(sqrt 2) = 0.178 -> a big saving still wins
    assert margin(30) > 0
    # beyond lambda_s * B / lambda_e = 25 steps the saving always wins (tanh <= 1)
    assert all(margin(d) > 0 for d in (26, 35, 50))


# ---------------------------------------------------------------------------------------------
# eq 3: group advantages


def test_group_advantages_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv, valid = group_advantages(rewards)
    sd = statistics.stdev([1, 0, 0, 1])  # unbiased: 0.5774
    torch.testing.assert_close(adv[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (sd + 1e-6))
    assert valid.tolist() == [True, False]
    assert (adv[1] == 0).all()


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_group_advantages_match_loop(seed, scale):
    for group_size in GROUP_SIZES:
        success, steps = _random_groups(seed, group_size)
        rewards = trim_reward(success, steps, 100).double()
        adv, valid = group_advantages(rewards, eps=1e-6, scale=scale)
        ref_adv, ref_valid = _ref_advantages(rewards, 1e-6, scale)
        assert valid.tolist() == ref_valid
        torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))


def test_unscaled_advantages_keep_small_reward_differences_small():
    """An all-success group that differs only in calls saved, beside a group that differs in success:
    scaled, both get unit-variance advantages; unscaled, the first weighs by its small differences."""
    rewards = torch.tensor([[0.70, 0.72, 0.74, 0.76], [0.0, 0.7, 0.0, 0.7]], dtype=torch.float64)
    scaled, _ = group_advantages(rewards)
    unscaled, valid = group_advantages(rewards, scale=False)
    assert valid.tolist() == [True, True]
    torch.testing.assert_close(scaled[0].std(), scaled[1].std(), atol=1e-4, rtol=0)  # the same weight, any spread
    torch.testing.assert_close(unscaled[0], torch.tensor([-0.03, -0.01, 0.01, 0.03], dtype=torch.float64))
    torch.testing.assert_close(unscaled[1], torch.tensor([-0.35, 0.35, -0.35, 0.35], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# eq 4: the loss


def _loss(
    logp, old_logp, advantages, mask, ref_logp=None, clip_low=0.2, clip_high=0.2, kl_coef=0.0, num_trajectories=None
):
    """Eq 4's scalar the way the trainer makes it: per-trajectory terms, then the reduction."""
    terms = grpo_loss(logp, old_logp, advantages, mask, ref_logp=ref_logp, clip_low=clip_low, clip_high=clip_high)
    return reduce_grpo_loss(terms, kl_coef, num_trajectories)


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_loss_terms_are_per_trajectory(seed):
    logp, old, ref, adv, mask = _random_loss_inputs(seed)
    terms = grpo_loss(logp, old, adv, mask, ref_logp=ref)
    assert terms.policy.shape == terms.kl.shape == adv.shape
    for i in range(adv.shape[0]):  # trajectory i's terms depend on trajectory i alone
        alone = grpo_loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], ref_logp=ref[i : i + 1])
        torch.testing.assert_close(alone.policy[0], terms.policy[i])
        torch.testing.assert_close(alone.kl[0], terms.kl[i])
    loss, diag = reduce_grpo_loss(terms, 0.1, num_trajectories=9)
    assert loss.item() == pytest.approx((terms.policy.sum() + 0.1 * terms.kl.sum()).item() / 9)
    assert diag["policy_loss"].item() == pytest.approx(terms.policy.sum().item() / 9)
    assert grpo_loss(logp, old, adv, mask).kl is None


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_loss_matches_loop(seed):
    logp, old, ref, adv, mask = _random_loss_inputs(seed)
    for ref_arg, beta, cl, ch, n in [(None, 0.0, 0.2, 0.2, None), (ref, 0.05, 0.1, 0.28, 9)]:
        loss, _ = _loss(
            logp, old, adv, mask, ref_logp=ref_arg, clip_low=cl, clip_high=ch, kl_coef=beta, num_trajectories=n
        )
        expected = _ref_grpo_loss(
            logp.tolist(),
            old.tolist(),
            adv.tolist(),
            mask.tolist(),
            None if ref_arg is None else ref.tolist(),
            cl,
            ch,
            beta,
            logp.shape[0] if n is None else n,
        )
        assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_grpo_loss_hand_values_clipping_and_trajectory_weights():
    # trajectory 0: one chunk of one row, ratio e^{ln 1.5} = 1.5, A = +1 -> clipped at 1.2: -1.2
    # trajectory 1: two chunks (one row each), ratios 0.5 and 1.0, A = -1:
    #   chunk 0: -min(-0.5, -0.8) = 0.8 (clipped); chunk 1: 1.0 -> mean 0.9
    # trajectory 1 weighs the same as trajectory 0 despite two chunks: L = (-1.2 + 0.9) / 2
    logp = torch.zeros(2, 2, 1, dtype=torch.float64)
    old = torch.tensor([[[-math.log(1.5)], [0.0]], [[math.log(2.0)], [0.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True], [False]], [[True], [True]]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, diag = _loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx((-1.2 + 0.9) / 2)
    assert diag["ratio_max"].item() == pytest.approx(1.5)
    assert diag["ratio_min"].item() == pytest.approx(0.5)
    assert diag["clip_frac"].item() == pytest.approx(2 / 3)  # 3 executed chunks, 2 outside
    approx = ((0.5 - math.log(1.5)) + (-0.5 + math.log(2.0)) + 0.0) / 3
    assert diag["approx_kl"].item() == pytest.approx(approx)
    assert diag["policy_loss"].item() == pytest.approx(loss.item())
    assert "kl_ref" not in diag  # reported only against a reference
    assert not any(v.requires_grad for v in diag.values())


def test_grpo_loss_row_sum_makes_the_chunk_ratio():
    # two executed rows with log-ratio 0.1 each and one padded row: rho = e^{0.2}
    logp = torch.tensor([[[0.1, 0.1, 7.0]]], dtype=torch.float64)
    old = torch.zeros_like(logp)
    mask = torch.tensor([[[True, True, False]]])
    loss, diag = _loss(logp, old, torch.tensor([0.5], dtype=torch.float64), mask, clip_high=1.0)
    assert loss.item() == pytest.approx(-math.exp(0.2) * 0.5)
    assert diag["ratio_max"].item() == pytest.approx(math.exp(0.2))


def test_grpo_loss_at_ratio_one_is_minus_mean_advantage():
    logp, _, _, adv, mask = _random_loss_inputs(3)
    loss, diag = _loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert diag["clip_frac"].item() == 0.0 and diag["approx_kl"].item() == 0.0
    loss, _ = _loss(logp, logp.clone(), adv, mask, num_trajectories=20)
    assert loss.item() == pytest.approx(-adv.sum().item() / 20)


def _grad(logp, old, adv, mask, **kw):
    x = logp.clone().requires_grad_(True)
    loss, _ = _loss(x, old, adv, mask, **kw)
    loss.backward()
    return x.grad


def test_grpo_loss_gradient_follows_advantage_sign():
    logp = torch.full((2, 1, 2), -1.0, dtype=torch.float64)
    mask = torch.ones(2, 1, 2, dtype=torch.bool)
    g = _grad(logp, logp.clone(), torch.tensor([2.0, -3.0], dtype=torch.float64), mask)
    # descent on L raises log-probs of a positive-advantage chunk, lowers a negative one
    assert (g[0] < 0).all() and (g[1] > 0).all()
    # at ratio 1 dL/dlogp_row = -A / (N C_i)
    torch.testing.assert_close(g, torch.tensor([[[-1.0, -1.0]], [[1.5, 1.5]]], dtype=torch.float64))


def test_grpo_loss_clipped_side_has_zero_gradient():
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    logp = torch.zeros(1, 1, 1, dtype=torch.float64)
    pos, neg = torch.tensor([1.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    high = torch.full_like(logp, -math.log(1.5))  # ratio 1.5
    low = torch.full_like(logp, math.log(2.0))  # ratio 0.5
    assert (_grad(logp, high, pos, mask) == 0).all()  # A > 0 above 1 + eps: clipped
    assert (_grad(logp, low, neg, mask) == 0).all()  # A < 0 below 1 - eps: clipped
    # the other side keeps its gradient (pessimistic bound is the unclipped term)
    assert (_grad(logp, high, neg, mask) > 0).all()
    assert (_grad(logp, low, pos, mask) < 0).all()


def test_grpo_loss_masked_rows_get_exactly_zero_gradient():
    logp, old, ref, adv, mask = _random_loss_inputs(7)
    junk = ~mask
    # garbage in unexecuted rows that would overflow exp() if it were ever used
    logp = torch.where(junk, torch.full_like(logp, -1e4), logp)
    old = torch.where(junk, torch.full_like(old, 1e4), old)
    ref = torch.where(junk, torch.full_like(ref, 1e4), ref)
    x = logp.clone().requires_grad_(True)
    loss, diag = _loss(x, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in diag.values())
    assert torch.isfinite(x.grad).all()
    assert (x.grad[junk] == 0).all()
    assert (x.grad[mask] != 0).any()
    # and the garbage does not change the value
    clean, _ = _loss(
        torch.where(junk, 0.0, logp),
        torch.where(junk, 0.0, old),
        adv,
        mask,
        ref_logp=torch.where(junk, 0.0, ref),
        kl_coef=0.1,
    )
    assert loss.item() == pytest.approx(clean.item())


def test_grpo_loss_minibatch_gradients_add_up():
    logp, old, ref, adv, mask = _random_loss_inputs(11, num=6)
    kw = dict(ref_logp=ref, kl_coef=0.1)
    full = _grad(logp, old, adv, mask, **kw)
    parts = torch.zeros_like(full)
    for idx in (torch.tensor([0, 4]), torch.tensor([1, 2, 5]), torch.tensor([3])):
        kw_mb = dict(ref_logp=ref[idx], kl_coef=0.1, num_trajectories=6)
        parts[idx] = _grad(logp[idx], old[idx], adv[idx], mask[idx], **kw_mb)
    torch.testing.assert_close(parts, full)


def test_k3_kl_zero_at_reference_and_positive_otherwise():
    logp, old, ref, adv, mask = _random_loss_inputs(5)
    _, diag = _loss(logp, old, adv, mask, ref_logp=logp.clone())
    assert diag["kl_ref"].item() == 0.0
    _, diag = _loss(logp, old, adv, mask, ref_logp=ref)
    assert diag["kl_ref"].item() > 0
    # by hand: one trajectory, rows with r = 0.5 and r = -0.5 (a third row unexecuted)
    lp = torch.zeros(1, 1, 3, dtype=torch.float64)
    r = torch.tensor([[[0.5, -0.5, 9.0]]], dtype=torch.float64)
    m = torch.tensor([[[True, True, False]]])
    a = torch.zeros(1, dtype=torch.float64)
    loss, diag = _loss(lp, lp, a, m, ref_logp=r, kl_coef=0.5)
    k3 = ((math.exp(0.5) - 1.5) + (math.exp(-0.5) - 0.5)) / 2
    assert diag["kl_ref"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.5 * k3)


# ---------------------------------------------------------------------------------------------
# speedups


def test_speedup_paper_example():
    assert round(speedup(125.0, 5, 64.3, 15), 2) == 5.83
    assert speedup(100, 5, 100, 5) == 1.0


def test_calls_speedup_hand_value():
    assert calls_speedup([20, 20, 26], [5, 7]) == pytest.approx(22 / 6)
    assert calls_speedup(torch.tensor([10]), torch.tensor([10])) == 1.0


# ---------------------------------------------------------------------------------------------
# validation


def _ok():
    return torch.ones(2, 3, dtype=torch.bool), torch.full((2, 3), 50)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: assign_windows(2, 1, [5]), "group_size"),
        (lambda: assign_windows(2, 4, []), "windows"),
        (lambda: assign_windows(2, 4, [0, 5]), "windows"),
        (lambda: assign_windows(-1, 4, [5]), "num_groups"),
        (lambda: extension_reward(torch.ones(3, 1, dtype=torch.bool), 5, 15), "success"),
        (lambda: extension_reward(torch.ones(6, dtype=torch.bool), 5, 15), "success"),
        (lambda: extension_reward(_ok()[0], 16, 15), "window"),
        (lambda: extension_reward(_ok()[0], 0, 15), "window"),
        (lambda: extension_reward(_ok()[0], torch.full((2, 2), 5), 15), "window"),
        (lambda: extension_reward(_ok()[0], 5, 0), "chunk_size"),
        (lambda: extension_reward(_ok()[0], 5, 15, horizon_coef=-1), "horizon_coef"),
        (lambda: extension_reward(torch.full((2, 3), 0.5), 5, 15), "success"),
        (lambda: step_budget([]), "successful_steps"),
        (lambda: step_budget(torch.zeros(0)), "successful_steps"),
        (lambda: step_budget([0, 10]), "successful_steps"),
        (lambda: step_budget([10], multiplier=0), "multiplier"),
        (lambda: step_saving_reward(*_ok(), budget=0), "budget"),
        (lambda: step_saving_reward(*_ok(), budget=-5), "budget"),
        (lambda: step_saving_reward(_ok()[0], torch.full((2, 4), 50), 100), "steps"),
        (lambda: step_saving_reward(_ok()[0], torch.full((2, 3), -1), 100), "steps"),
        (lambda: stability_penalty(*_ok(), floor_mode="soft"), "floor_mode"),
        (lambda: stability_penalty(*_ok(), sigma_floor=-1.0), "sigma_floor"),
        (lambda: stability_penalty(torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1)), "group size"),
        (lambda: trim_reward(*_ok(), budget=0), "budget"),
        (lambda: trim_reward(*_ok(), budget=100, floor_mode="x"), "floor_mode"),
        (lambda: trim_reward(*_ok(), budget=100, step_coef=-0.1), "step_coef"),
        (lambda: trim_reward(*_ok(), budget=100, stability_coef=-0.1), "stability_coef"),
        (lambda: trim_reward_terms(_ok()[0], torch.full((3, 2), 50), 100), "steps"),
        (lambda: group_advantages(torch.ones(4, 1)), "rewards"),
        (lambda: group_advantages(torch.ones(4)), "rewards"),
        (lambda: group_advantages(torch.tensor([[1.0, float("nan")]])), "rewards"),
        (lambda: speedup(0, 5, 64.3, 15), "steps_base"),
        (lambda: speedup(125, 0, 64.3, 15), "window_base"),
        (lambda: speedup(125, 5, 0, 15), "steps"),
        (lambda: speedup(125, 5, 64.3, -1), "window"),
        (lambda: calls_speedup([], [5]), "calls_base"),
        (lambda: calls_speedup([5], []), "calls"),
        (lambda: calls_speedup([5], [0, 3]), "calls"),
    ],
)
def test_value_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(old_logp=torch.zeros(2, 3, 5)), "old_logp"),
        (dict(mask=torch.ones(2, 3, 5, dtype=torch.bool)), "mask"),
        (dict(ref_logp=torch.zeros(2, 2, 4)), "ref_logp"),
        (dict(advantages=torch.zeros(3)), "advantages"),
        (dict(logp=torch.zeros(2, 3)), "logp"),
        (dict(kl_coef=0.1), "ref_logp"),
        (dict(kl_coef=-0.1), "kl_coef"),
        (dict(clip_low=1.0), "clip_low"),
        (dict(clip_high=-0.1), "clip_high"),
        (dict(num_trajectories=1), "num_trajectories"),
        (dict(mask=torch.tensor([[[True] * 4] * 3, [[False] * 4] * 3])), "mask"),
    ],
)
def test_grpo_loss_value_errors(kwargs, match):
    args = dict(
        logp=torch.zeros(2, 3, 4),
        old_logp=torch.zeros(2, 3, 4),
        advantages=torch.zeros(2),
        mask=torch.ones(2, 3, 4, dtype=torch.bool),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _loss(**args)
