"""Flow-SDE: exploration and exact log-probs for any flow-matching action expert (SPEC.md,
"Log-probabilities by policy kind").

A flow head predicts a velocity ``v(x_t, t) ≈ noise − action`` along the straight path
``x_t = t·noise + (1 − t)·action``; sampling integrates from t = 1 (noise) to t = 0 (action) in K
Euler steps of size Δ = 1/K. For RL we make exactly one of the first K − 1 steps stochastic:

    x_{t−Δ} ~ N( x_t − Δ·[ v + σ_t²/(2t) · (x_t + (1 − t)·v) ],  σ_t²·Δ ),
    σ_t = a·sqrt(t' / (1 − t')),   t' = min(t, 1 − Δ)

and score the chunk by the Gaussian density of that one transition, which the learner recomputes
differentiably from the stored chain (x_t, x_{t−Δ}, step index). The last step stays deterministic.

Everything here is generic: a *velocity function* is any callable ``(x [B, H, A], t [B]) -> v
[B, H, A]`` (close over the observation context). Random numbers are passed in, never drawn here,
so a caller can draw each batch row from its own generator (`draw_sde_noise`). Later adapters
(π0.5, GR00T) reuse these functions with their own velocity networks and padded action dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "VelocityFn",
    "FlowSDESample",
    "sigma_t",
    "step_times",
    "euler_step",
    "sde_step_moments",
    "transition_log_prob",
    "sample_ode",
    "sample_sde",
    "sde_log_prob",
    "draw_sde_noise",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_t [B, H, A], t [B]) -> v [B, H, A]``: the flow head's velocity at time t."""

_LOG_2PI = math.log(2.0 * math.pi)


def step_times(num_steps: int, step: torch.Tensor | int) -> torch.Tensor | float:
    """Time t at the start of denoising step ``step`` (0 = pure noise at t = 1): t = 1 − step/K."""
    return 1.0 - step / num_steps if isinstance(step, int) else 1.0 - step.to(torch.float64) / num_steps


def sigma_t(t: torch.Tensor, num_steps: int, noise_scale: float) -> torch.Tensor:
    """σ_t = a·sqrt(t' / (1 − t')) with t' = min(t, 1 − Δ), so that σ stays finite at t = 1."""
    delta = 1.0 / num_steps
    tc = t.clamp(max=1.0 - delta)
    return noise_scale * torch.sqrt(tc / (1.0 - tc))


def euler_step(x_t: torch.Tensor, v: torch.Tensor, delta: float) -> torch.Tensor:
    """The plain ODE step from t to t − Δ: x_t − Δ·v."""
    return x_t - delta * v


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row time [B] broadcast against a chunk [B, H, A]."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def sde_step_moments(
    x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, num_steps: int, noise_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [B, H, A] and std [B, 1, 1] of x_{t−Δ} given x_t (the SDE transition above).

    ``t`` is per row [B] and must be > 0 (the step to t = 0 is never stochastic).
    """
    delta = 1.0 / num_steps
    tb = _bcast(t, x_t)
    sig = sigma_t(tb, num_steps, noise_scale)
    mean = x_t - delta * (v + sig.pow(2) / (2.0 * tb) * (x_t + (1.0 - tb) * v))
    std = sig * math.sqrt(delta)
    return mean, std


def transition_log_prob(
    x_next: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    row_mask: torch.Tensor | None = None,
    dim_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row Gaussian log-density [B, H] of ``x_next`` under N(mean, std²), summed over the real
    action dims (``dim_mask`` bool [A] or [B, A]; padded dims count 0). Rows where ``row_mask``
    (bool [B, H]) is False are exactly 0 and pass no gradient."""
    z = (x_next - mean) / std
    per_dim = -0.5 * z.pow(2) - torch.log(std) - 0.5 * _LOG_2PI
    if dim_mask is not None:
        dm = dim_mask.to(torch.bool)
        dm = dm.reshape(1, 1, -1) if dm.dim() == 1 else dm.unsqueeze(1)
        per_dim = torch.where(dm, per_dim, torch.zeros((), dtype=per_dim.dtype))
    logp = per_dim.sum(-1)
    if row_mask is not None:
        logp = torch.where(row_mask.to(torch.bool), logp, torch.zeros((), dtype=logp.dtype))
    return logp


def sample_ode(velocity: VelocityFn, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Integrate the plain ODE from ``noise`` (t = 1) to the action (t = 0) in K Euler steps.
    Sampled mode passes Gaussian noise, deterministic mode zeros."""
    x = noise
    delta = 1.0 / num_steps
    for k in range(num_steps):
        t = torch.full((x.shape[0],), step_times(num_steps, k), dtype=x.dtype, device=x.device)
        x = euler_step(x, velocity(x, t), delta)
    return x


@dataclass
class FlowSDESample:
    """One Flow-SDE chain per row: the final action and the recorded stochastic transition."""

    action: torch.Tensor  # [B, H, A] x_0 (unclipped)
    x_t: torch.Tensor  # [B, H, A] state before the stochastic step
    x_next: torch.Tensor  # [B, H, A] state after it
    step: torch.Tensor  # long [B] index of the stochastic step, in [0, K − 2]
    logp: torch.Tensor  # [B, H] log-density of the transition (rollout's value)


def sample_sde(
    velocity: VelocityFn,
    noise: torch.Tensor,
    step: torch.Tensor,
    step_noise: torch.Tensor,
    num_steps: int,
    noise_scale: float,
    dim_mask: torch.Tensor | None = None,
) -> FlowSDESample:
    """Integrate K steps from ``noise``; step ``step[b]`` of row b is the SDE transition driven by
    ``step_noise[b]`` (standard normal [B, H, A]), every other step is Euler.

    Padded action dims (``dim_mask`` False) take the deterministic mean, so they carry no noise.
    """
    if num_steps < 2:
        raise ValueError(f"Flow-SDE needs num_steps >= 2 (the last step is deterministic), got {num_steps}")
    step = step.to(device=noise.device, dtype=torch.long)
    if step.shape != (noise.shape[0],) or bool(((step < 0) | (step > num_steps - 2)).any()):
        raise ValueError(f"step must be long [B] with values in [0, {num_steps - 2}], got {step.tolist()}")
    delta = 1.0 / num_steps
    x = noise
    x_t = torch.zeros_like(noise)
    x_next = torch.zeros_like(noise)
    logp = noise.new_zeros(noise.shape[:2])
    for k in range(num_steps):
        t = torch.full((x.shape[0],), step_times(num_steps, k), dtype=x.dtype, device=x.device)
        v = velocity(x, t)
        chosen = step == k
        if k <= num_steps - 2 and bool(chosen.any()):
            mean, std = sde_step_moments(x, v, t, num_steps, noise_scale)
            eps = step_noise
            if dim_mask is not None:
                dm = dim_mask.to(torch.bool)
                dm = dm.reshape(1, 1, -1) if dm.dim() == 1 else dm.unsqueeze(1)
                eps = torch.where(dm, eps, torch.zeros((), dtype=eps.dtype))
            stochastic = mean + std * eps
            c = chosen.reshape(-1, 1, 1)
            x_t = torch.where(c, x, x_t)
            x_next = torch.where(c, stochastic, x_next)
            logp = torch.where(
                chosen.reshape(-1, 1), transition_log_prob(stochastic, mean, std, dim_mask=dim_mask), logp
            )
            x = torch.where(c, stochastic, euler_step(x, v, delta))
        else:
            x = euler_step(x, v, delta)
    return FlowSDESample(action=x, x_t=x_t, x_next=x_next, step=step, logp=logp)


def sde_log_prob(
    velocity: VelocityFn,
    x_t: torch.Tensor,
    x_next: torch.Tensor,
    step: torch.Tensor,
    num_steps: int,
    noise_scale: float,
    row_mask: torch.Tensor | None = None,
    dim_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Recompute, differentiably, the per-row log-prob [B, H] of recorded transitions
    x_t → x_next at step index ``step`` [B] (one velocity evaluation per row)."""
    step = step.to(device=x_t.device, dtype=torch.long)
    if bool(((step < 0) | (step > num_steps - 2)).any()):
        raise ValueError(
            f"recorded Flow-SDE step indices must lie in [0, {num_steps - 2}], got {sorted(set(step.tolist()))}; "
            "only chunks sampled in mode='train' carry a transition with a density"
        )
    t = 1.0 - step.to(x_t.dtype) / num_steps
    mean, std = sde_step_moments(x_t, velocity(x_t, t), t, num_steps, noise_scale)
    return transition_log_prob(x_next, mean, std, row_mask=row_mask, dim_mask=dim_mask)


def draw_sde_noise(
    generators: Sequence[torch.Generator] | None,
    batch: int,
    shape: tuple[int, ...],
    num_steps: int,
    train: bool,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Random numbers for a batch, each row from its own generator (CPU) in a fixed order:
    initial noise ``shape``; then, when ``train``, the stochastic step index (uniform in
    [0, K − 2]) and the transition noise ``shape``. Batch composition never changes a row's
    numbers. ``generators=None`` uses torch's global generator."""
    gens = list(generators) if generators is not None else [None] * batch
    if len(gens) != batch:
        raise ValueError(f"need one generator per batch row: got {len(gens)} for batch {batch}")
    noise, steps, eps = [], [], []
    for g in gens:
        noise.append(torch.randn(shape, generator=g, dtype=torch.float64))
        if train:
            steps.append(int(torch.randint(0, num_steps - 1, (1,), generator=g)))
            eps.append(torch.randn(shape, generator=g, dtype=torch.float64))
    n = torch.stack(noise).to(dtype)
    if not train:
        return n, None, None
    return n, torch.tensor(steps, dtype=torch.long), torch.stack(eps).to(dtype)
