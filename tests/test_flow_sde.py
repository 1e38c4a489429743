"""Flow-SDE (SPEC.md, "Log-probabilities by policy kind") on plain tensors and a toy velocity."""

import math

import pytest
import torch

from policytrim.policies import flow_sde

K, A_NOISE = 5, 0.5


def toy_velocity(seed: int = 0, dim: int = 3):
    """A smooth velocity v(x, t) = tanh(x W) + t b, non-linear in x, mixing action dims."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return lambda x, t: torch.tanh(x @ w.to(x.dtype)) + t.to(x.dtype).reshape(-1, 1, 1) * b.to(x.dtype)


def test_sigma_replaces_t_equal_one_by_one_minus_delta():
    t = torch.tensor([1.0, 0.8, 0.4], dtype=torch.float64)
    got = flow_sde.sigma_t(t, K, A_NOISE)
    want = [A_NOISE * math.sqrt(0.8 / 0.2), A_NOISE * math.sqrt(0.8 / 0.2), A_NOISE * math.sqrt(0.4 / 0.6)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", [1.0, 0.6, 0.4])
def test_transition_matches_spec_formula_by_hand(t):
    """Scalar case written out from SPEC.md: mean = x - Δ[v + σ²/(2t)(x + (1-t)v)], var = σ²Δ."""
    x, v = 0.3, -1.2
    delta = 1.0 / K
    tc = min(t, 1.0 - delta)
    sig = A_NOISE * math.sqrt(tc / (1.0 - tc))
    want_mean = x - delta * (v + sig**2 / (2 * t) * (x + (1 - t) * v))
    want_std = sig * math.sqrt(delta)
    mean, std = flow_sde.sde_step_moments(
        torch.tensor([[[x]]], dtype=torch.float64),
        torch.tensor([[[v]]], dtype=torch.float64),
        torch.tensor([t], dtype=torch.float64),
        K,
        A_NOISE,
    )
    assert mean.item() == pytest.approx(want_mean, rel=1e-12)
    assert std.item() == pytest.approx(want_std, rel=1e-12)
    # and its density
    x_next = 0.1
    lp = flow_sde.transition_log_prob(torch.tensor([[[x_next]]], dtype=torch.float64), mean, std)
    want_lp = -0.5 * ((x_next - want_mean) / want_std) ** 2 - math.log(want_std) - 0.5 * math.log(2 * math.pi)
    assert lp.item() == pytest.approx(want_lp, rel=1e-12)


def test_reduces_to_euler_as_sigma_goes_to_zero():
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    v = torch.randn(4, 6, 3, dtype=torch.float64)
    t = torch.tensor([1.0, 0.8, 0.6, 0.4], dtype=torch.float64)
    euler = flow_sde.euler_step(x, v, 1.0 / K)
    gaps = []
    for a in (1e-1, 1e-3, 1e-6):
        mean, std = flow_sde.sde_step_moments(x, v, t, K, a)
        gaps.append((mean - euler).abs().max().item())
        assert std.max().item() < 2 * a
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-10
    # whole chains: the SDE chain with σ -> 0 is the ODE chain
    vel = toy_velocity()
    noise = torch.randn(4, 6, 3, dtype=torch.float64)
    steps = torch.tensor([0, 1, 2, 3])
    ode = flow_sde.sample_ode(vel, noise, K)
    sde = flow_sde.sample_sde(vel, noise, steps, torch.randn_like(noise), K, 1e-9)
    assert torch.allclose(sde.action, ode, atol=1e-7)


def test_sample_sde_matches_a_plain_python_loop():
    """The vectorised chain equals one row at a time written out step by step."""
    vel = toy_velocity(1)
    b, h, a = 5, 4, 3
    noise = torch.randn(b, h, a, dtype=torch.float64)
    eps = torch.randn(b, h, a, dtype=torch.float64)
    steps = torch.tensor([0, 3, 1, 2, 0])
    out = flow_sde.sample_sde(vel, noise, steps, eps, K, A_NOISE)
    delta = 1.0 / K
    for i in range(b):
        x = noise[i : i + 1]
        for k in range(K):
            t = torch.tensor([1.0 - k * delta], dtype=torch.float64)
            v = vel(x, t)
            if k == steps[i]:
                mean, std = flow_sde.sde_step_moments(x, v, t, K, A_NOISE)
                assert torch.allclose(out.x_t[i : i + 1], x, atol=1e-12)
                x = mean + std * eps[i : i + 1]
                assert torch.allclose(out.x_next[i : i + 1], x, atol=1e-12)
                lp = flow_sde.transition_log_prob(x, mean, std)
                assert torch.allclose(out.logp[i : i + 1], lp, rtol=1e-12)
            else:
                x = x - delta * v
        assert torch.allclose(out.action[i : i + 1], x, atol=1e-12)


def test_recomputed_log_prob_equals_rollout_in_any_batching():
    vel = toy_velocity(2)
    b = 8
    noise = torch.randn(b, 4, 3, dtype=torch.float64)
    steps = torch.randint(0, K - 1, (b,))
    out = flow_sde.sample_sde(vel, noise, steps, torch.randn_like(noise), K, A_NOISE)
    perm = torch.randperm(b)
    for idx in (perm[:3], perm[3:]):
        lp = flow_sde.sde_log_prob(vel, out.x_t[idx], out.x_next[idx], steps[idx], K, A_NOISE)
        ratio = torch.exp(lp - out.logp[idx])
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-10)


def test_log_prob_masks_rows_and_padded_dims_and_their_gradients():
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    vel = lambda x, t: w * x  # noqa: E731
    x_t = torch.randn(2, 4, 3, dtype=torch.float64)
    x_next = torch.randn(2, 4, 3, dtype=torch.float64)
    steps = torch.tensor([0, 2])
    row_mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    dim_mask = torch.tensor([True, True, False])
    lp = flow_sde.sde_log_prob(vel, x_t, x_next, steps, K, A_NOISE, row_mask=row_mask, dim_mask=dim_mask)
    assert (lp[~row_mask] == 0).all()
    full = flow_sde.sde_log_prob(vel, x_t, x_next, steps, K, A_NOISE)
    only_real = flow_sde.sde_log_prob(vel, x_t[..., :2], x_next[..., :2], steps, K, A_NOISE)
    assert torch.allclose(lp[row_mask], only_real[row_mask])
    assert not torch.allclose(lp[row_mask], full[row_mask])
    # a padded dim's value changes nothing, neither the value nor the gradient
    x_next2 = x_next.clone()
    x_next2[..., 2] += 100.0
    lp2 = flow_sde.sde_log_prob(vel, x_t, x_next2, steps, K, A_NOISE, row_mask=row_mask, dim_mask=dim_mask)
    assert torch.equal(lp, lp2)
    # masked rows pass no gradient: a huge value there does not move dL/dw
    (g1,) = torch.autograd.grad(lp.sum(), w)
    x_next3 = x_next.clone()
    x_next3[~row_mask] = 1e6
    lp3 = flow_sde.sde_log_prob(vel, x_t, x_next3, steps, K, A_NOISE, row_mask=row_mask, dim_mask=dim_mask)
    (g3,) = torch.autograd.grad(lp3.sum(), w)
    assert torch.isfinite(g3) and torch.allclose(g1, g3)


def test_padded_dims_carry_no_noise_when_sampling():
    vel = toy_velocity(3)
    noise = torch.zeros(3, 4, 3, dtype=torch.float64)
    steps = torch.tensor([0, 1, 2])
    dim_mask = torch.tensor([True, True, False])
    out = flow_sde.sample_sde(vel, noise, steps, torch.randn_like(noise), K, A_NOISE, dim_mask=dim_mask)
    mean, _ = flow_sde.sde_step_moments(
        out.x_t, vel(out.x_t, 1.0 - steps.double() / K), 1.0 - steps.double() / K, K, A_NOISE
    )
    assert torch.allclose(out.x_next[..., 2], mean[..., 2])


def test_stochastic_step_is_uniform_over_first_k_minus_1_and_rows_are_independent():
    gens = [torch.Generator().manual_seed(s) for s in range(400)]
    _, steps, _ = flow_sde.draw_sde_noise(gens, 400, (2, 2), K, train=True)
    counts = torch.bincount(steps, minlength=K)
    assert counts[K - 1] == 0  # the last step is never stochastic
    assert (counts[: K - 1] > 400 / (K - 1) * 0.6).all()
    # a row's numbers do not depend on the batch it is drawn in
    alone = flow_sde.draw_sde_noise([torch.Generator().manual_seed(7)], 1, (2, 2), K, train=True)
    mixed = flow_sde.draw_sde_noise([torch.Generator().manual_seed(s) for s in (3, 7, 9)], 3, (2, 2), K, train=True)
    assert (
        torch.equal(alone[0][0], mixed[0][1]) and alone[1][0] == mixed[1][1] and torch.equal(alone[2][0], mixed[2][1])
    )


def test_bad_step_indices_are_refused():
    vel = toy_velocity()
    x = torch.zeros(2, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode='train'"):
        flow_sde.sde_log_prob(vel, x, x, torch.tensor([-1, 0]), K, A_NOISE)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        flow_sde.sample_sde(vel, x, torch.tensor([0, K - 1]), x, K, A_NOISE)
    with pytest.raises(ValueError, match="num_steps >= 2"):
        flow_sde.sample_sde(vel, x, torch.tensor([0, 0]), x, 1, A_NOISE)
