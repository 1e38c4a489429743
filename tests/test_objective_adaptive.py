"""The adaptive-window terms of policytrim.objective (SPEC "Adaptive windows"): the call budget,
eq 8 (call saving), eq 9 (the adaptor's joint reward) and the window log-prob in eq 4's ratio —
hand values, plain-Python loop references on random groups, gradients and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from policytrim.objective import (
    adapt_reward_terms,
    call_budget,
    call_saving_reward,
    grpo_loss,
    reduce_grpo_loss,
    stability_penalty,
    trim_reward,
)
from test_objective import GROUP_SIZES, SEEDS, _random_groups, _random_loss_inputs, _ref_stability


def _random_calls(seed, success, steps, max_window=15):
    g = torch.Generator().manual_seed(1000 + seed)
    # calls <= steps (at least one action per call) and >= ceil(T / H)
    low = torch.div(steps + max_window - 1, max_window, rounding_mode="floor")
    return torch.minimum(low + (torch.rand(steps.shape, generator=g) * (steps - low + 1).float()).long(), steps)


def _ref_adapt(success, calls, steps, bc, bs, lc, le, ls, floor, mode):
    p = _ref_stability(success, steps, floor, mode)
    out = []
    for s_row, c_row, t_row, p_row in zip(success.tolist(), calls.tolist(), steps.tolist(), p, strict=True):
        row = []
        for s, c, t, pi in zip(s_row, c_row, t_row, p_row, strict=True):
            if not s:
                row.append(0.0)
                continue
            ec = max(0.0, (bc - c) / bc)
            e = max(0.0, (bs - t) / bs) if le > 0 else 0.0
            row.append((1 + lc * ec + le * e - ls * pi) / (1 + lc + le))
        out.append(row)
    return out


def test_call_budget_hand_values():
    assert call_budget([4, 5, 6]) == 7  # ceil(1.3 * 5) = ceil(6.5)
    assert call_budget([10, 10], multiplier=1.3) == 13  # 13.000000000000002 would give 14 without rounding
    with pytest.raises(ValueError, match="successful_calls must hold at least one successful episode"):
        call_budget([])
    with pytest.raises(ValueError, match="successful_calls must all be finite and > 0"):
        call_budget([3, 0])


def test_call_saving_reward_hand_values():
    success = torch.tensor([[True, True, False, True]])
    calls = torch.tensor([[2, 8, 3, 10]])
    e = call_saving_reward(success, calls, budget=8)
    torch.testing.assert_close(e, torch.tensor([[0.75, 0.0, 0.0, 0.0]]))


def test_adapt_reward_hand_values():
    # group of 3 successes with T = 40, 50, 60 (mu 50, population sigma 8.165) and one failure
    success = torch.tensor([[True, True, True, False]])
    steps = torch.tensor([[40, 50, 60, 200]])
    calls = torch.tensor([[3, 4, 4, 14]])
    out = adapt_reward_terms(success, calls, steps, call_budget=6, call_coef=0.8, stability_coef=0.2)
    sigma = math.sqrt(200 / 3)
    p0 = math.tanh(10 / sigma)
    expected = [(1 + 0.8 * 0.5 - 0.2 * p0) / 1.8, (1 + 0.8 * (2 / 6)) / 1.8, (1 + 0.8 * (2 / 6) - 0.2 * p0) / 1.8, 0.0]
    torch.testing.assert_close(out.reward, torch.tensor([expected]))
    torch.testing.assert_close(out.call_saving, torch.tensor([[0.5, 2 / 6, 2 / 6, 0.0]]))
    assert not out.step_saving.any()


def test_adapt_reward_without_call_term_is_stage2_reward():
    success, steps = _random_groups(3, 8)
    calls = _random_calls(3, success, steps)
    out = adapt_reward_terms(success, calls, steps, call_budget=10, step_budget=120, call_coef=0.0, step_coef=0.8)
    torch.testing.assert_close(out.reward, trim_reward(success, steps, 120, 0.8, 0.2))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("mode", ["clamp", "gate"])
def test_adapt_reward_matches_loop(seed, group_size, mode):
    success, steps = _random_groups(seed, group_size)
    calls = _random_calls(seed, success, steps)
    for lc, le in [(0.8, 0.0), (0.5, 0.3)]:
        out = adapt_reward_terms(
            success,
            calls,
            steps,
            call_budget=9,
            step_budget=110,
            call_coef=lc,
            step_coef=le,
            sigma_floor=5.0,
            floor_mode=mode,
        )
        expected = _ref_adapt(success, calls, steps, 9, 110, lc, le, 0.2, 5.0, mode)
        torch.testing.assert_close(out.reward, torch.tensor(expected, dtype=out.reward.dtype), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out.stability, stability_penalty(success, steps, 5.0, mode))


def test_fewer_calls_at_equal_steps_earn_more():
    success = torch.tensor([[True, True]])
    steps = torch.tensor([[60, 60]])
    r = adapt_reward_terms(success, torch.tensor([[4, 6]]), steps, call_budget=8).reward
    assert r[0, 0] > r[0, 1]


def _ref_loss_with_windows(logp, old, wl, wo, adv, mask, cl, ch, n):
    total = 0.0
    for i in range(len(logp)):
        terms = []
        for c in range(len(logp[i])):
            rows = [r for r in range(len(logp[i][c])) if mask[i][c][r]]
            if not rows:
                continue
            rho = math.exp(sum(logp[i][c][r] - old[i][c][r] for r in rows) + wl[i][c] - wo[i][c])
            clipped = min(max(rho, 1 - cl), 1 + ch)
            terms.append(-min(rho * adv[i], clipped * adv[i]))
        total += sum(terms) / len(terms)
    return total / n


def _window_logps(seed, num, chunks, dtype=torch.float64):
    g = torch.Generator().manual_seed(500 + seed)
    wl = torch.log_softmax(torch.randn(num, chunks, 3, generator=g, dtype=dtype), dim=-1)[..., 0]
    wo = wl + torch.randn(num, chunks, generator=g, dtype=dtype) * 0.2
    return wl, wo


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_loss_with_window_logp_matches_loop(seed):
    logp, old, _, adv, mask = _random_loss_inputs(seed)
    wl, wo = _window_logps(seed, *logp.shape[:2])
    terms = grpo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, window_logp=wl, old_window_logp=wo)
    loss, _ = reduce_grpo_loss(terms, 0.0, num_trajectories=7)
    expected = _ref_loss_with_windows(
        logp.tolist(), old.tolist(), wl.tolist(), wo.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, 7
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frozen_policy_window_gradient_follows_advantage_and_padding_is_ignored():
    logp, _, _, adv, mask = _random_loss_inputs(1)
    wl, _ = _window_logps(1, *logp.shape[:2])
    wl = wl.clone().requires_grad_(True)
    frozen = logp.detach()
    terms = grpo_loss(frozen, frozen, adv, mask, window_logp=wl, old_window_logp=wl.detach())
    loss, diag = reduce_grpo_loss(terms)
    loss.backward()
    chunk_valid = mask.any(dim=2)
    # at ratio 1 the gradient of -rho*A/(N C_i) w.r.t. the window log-prob is -A_i/(N C_i) on executed chunks
    expected = torch.where(
        chunk_valid, -adv[:, None] / (logp.shape[0] * chunk_valid.sum(1, keepdim=True)), torch.zeros(())
    )
    torch.testing.assert_close(wl.grad, expected.to(wl.grad.dtype))
    assert diag["approx_kl"].item() == pytest.approx(0.0, abs=1e-12)


def test_window_logp_argument_errors():
    logp, old, _, adv, mask = _random_loss_inputs(0)
    wl, wo = _window_logps(0, *logp.shape[:2])
    with pytest.raises(ValueError, match="window_logp and old_window_logp must be given together"):
        grpo_loss(logp, old, adv, mask, window_logp=wl)
    with pytest.raises(ValueError, match=r"window_logp must be shaped \[trajectories, chunks\]"):
        grpo_loss(logp, old, adv, mask, window_logp=wl[:, :1], old_window_logp=wo[:, :1])
    with pytest.raises(ValueError, match="old_window_logp must have the shape of window_logp"):
        grpo_loss(logp, old, adv, mask, window_logp=wl, old_window_logp=wo[:1])


def test_adapt_reward_argument_errors():
    success, steps = _random_groups(0, 4)
    calls = _random_calls(0, success, steps)
    with pytest.raises(ValueError, match="step_budget is required when step_coef > 0"):
        adapt_reward_terms(success, calls, steps, call_budget=5, step_coef=0.5)
    with pytest.raises(ValueError, match="call_budget must be"):
        adapt_reward_terms(success, calls, steps, call_budget=0)
    with pytest.raises(ValueError, match="calls must have the shape of success"):
        adapt_reward_terms(success, calls[:, :2], steps, call_budget=5)
    with pytest.raises(ValueError, match="call_coef"):
        adapt_reward_terms(success, calls, steps, call_budget=5, call_coef=-1)


def _ref_loss_summed(logp, old, wl, wo, adv, mask, cl, ch, n, norm):
    """As `_ref_loss_with_windows` with each trajectory's chunk terms summed over ``norm``."""
    total = 0.0
    for i in range(len(logp)):
        for c in range(len(logp[i])):
            rows = [r for r in range(len(logp[i][c])) if mask[i][c][r]]
            if rows:
                rho = math.exp(sum(logp[i][c][r] - old[i][c][r] for r in rows) + wl[i][c] - wo[i][c])
                clipped = min(max(rho, 1 - cl), 1 + ch)
                total += -min(rho * adv[i], clipped * adv[i]) / norm
    return total / n


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_loss_with_a_constant_chunk_norm_matches_loop(seed):
    logp, old, _, adv, mask = _random_loss_inputs(seed)
    wl, wo = _window_logps(seed, *logp.shape[:2])
    terms = grpo_loss(logp, old, adv, mask, window_logp=wl, old_window_logp=wo, chunk_norm=9.0)
    loss, _ = reduce_grpo_loss(terms, 0.0, num_trajectories=7)
    expected = _ref_loss_summed(
        logp.tolist(), old.tolist(), wl.tolist(), wo.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.2, 7, 9.0
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_a_constant_chunk_norm_lets_a_long_failure_push_its_calls_back_as_hard():
    """Two members, advantages +1 (a success in 2 calls) and -1 (a failure in 8 calls): with 1/C_i
    each call of the failure gets a quarter of the success's gradient; with a constant the same."""
    mask = torch.zeros(2, 8, 1, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :] = True
    frozen = torch.zeros(2, 8, 1, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    grads = {}
    for norm in (None, 8.0):
        wl = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)
        terms = grpo_loss(frozen, frozen, adv, mask, window_logp=wl, old_window_logp=wl.detach(), chunk_norm=norm)
        reduce_grpo_loss(terms, 0.0)[0].backward()
        grads[norm] = wl.grad
    assert grads[None][1, 0].abs().item() == pytest.approx(grads[None][0, 0].abs().item() / 4)
    assert grads[8.0][1, 0].abs().item() == pytest.approx(grads[8.0][0, 0].abs().item())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="chunk_norm must be a positive number"):
            grpo_loss(frozen, frozen, adv, mask, chunk_norm=bad)
