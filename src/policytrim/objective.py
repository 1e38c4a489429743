"""The PolicyTrim objective: rewards, group advantages and the clipped GRPO loss (``SPEC.md``).

Pure functions over tensors; only torch is imported. Reward inputs are shaped
``[num_groups, group_size]`` (one row per GRPO group, G >= 2 members); the loss takes per-row
log-probs shaped ``[trajectories, chunks, rows]``.

Where each SPEC.md equation lives:

====================================  =====================================================
SPEC.md                               function
====================================  =====================================================
Stage 1 window per group slot         `assign_windows`
eq 2  R = S (1 + lambda_h k / H)      `extension_reward`
eq 3  A = (R - mean) / (std + eps)    `group_advantages` (scale=False: R - mean)
eq 4  clipped GRPO loss + beta k3 KL  `grpo_loss` (per-trajectory terms), `reduce_grpo_loss`
Stage 2 budget B = ceil(beta_B T)     `step_budget`
eq 5  E = S max(0, (B - T) / B)       `step_saving_reward`
eq 6  P = S tanh(|T - mu| / sigma)    `stability_penalty`
eq 7  R = S (1 + le E - ls P)/(1+le)  `trim_reward` (`trim_reward_terms` also returns E, P)
adaptive windows: call budget B_C     `call_budget`
eq 8  E_C = S max(0, (B_C - C) / B_C) `call_saving_reward`
eq 9  joint reward of the adaptor     `adapt_reward_terms` (R, E_C, E, P)
eq 4 with a window log-prob per call  `grpo_loss(..., window_logp=, old_window_logp=)`
speedups (evaluation)                 `calls_speedup` (headline), `speedup` (paper's)
====================================  =====================================================

Bad arguments raise ``ValueError`` with a message that names the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch

__all__ = [
    "AdaptReward",
    "TrimReward",
    "adapt_reward_terms",
    "call_budget",
    "call_saving_reward",
    "assign_windows",
    "calls_speedup",
    "extension_reward",
    "group_advantages",
    "GRPOLossTerms",
    "grpo_loss",
    "reduce_grpo_loss",
    "speedup",
    "stability_penalty",
    "step_budget",
    "step_saving_reward",
    "trim_reward",
    "trim_reward_terms",
]

FloorMode = Literal["clamp", "gate"]
_FLOOR_MODES = ("clamp", "gate")


# ---------------------------------------------------------------------------------------------
# validation helpers


def _groups(name: str, x: torch.Tensor | Sequence) -> torch.Tensor:
    """``x`` as a tensor shaped [num_groups, group_size] with group_size >= 2."""
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be shaped [num_groups, group_size], got shape {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"group size of {name} must be >= 2 (GRPO compares members of a group), got {x.shape[1]}")
    return x


def _same_shape(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")


def _success(success: torch.Tensor | Sequence) -> torch.Tensor:
    """Success as a bool tensor [num_groups, group_size]; accepts bool or 0/1 numbers."""
    s = _groups("success", success)
    if s.dtype == torch.bool:
        return s
    if s.numel() and not bool(((s == 0) | (s == 1)).all()):
        raise ValueError("success must be bool or 0/1 values, got other values")
    return s != 0


def _steps(steps: torch.Tensor | Sequence, success: torch.Tensor, name: str = "steps") -> torch.Tensor:
    """Per-episode counts (steps T, calls C) shaped like ``success``, finite and >= 0."""
    t = _groups(name, steps)
    _same_shape(name, t, "success", success)
    if t.numel() and not bool(torch.isfinite(t.double()).all()):
        raise ValueError(f"{name} must be finite")
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0, got min {t.min().item()}")
    return t


def _float_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _positive_number(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def _non_negative_number(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _floor_mode(floor_mode: str) -> str:
    if floor_mode not in _FLOOR_MODES:
        raise ValueError(f"floor_mode must be one of {_FLOOR_MODES}, got {floor_mode!r}")
    return floor_mode


# ---------------------------------------------------------------------------------------------
# Stage 1: reliable chunk extension


def assign_windows(num_groups: int, group_size: int, windows: Sequence[int]) -> torch.Tensor:
    """Execution window of every rollout: slot j of every group gets ``windows[j % len(windows)]``.

    Returns a LongTensor [num_groups, group_size]. With G = 8 and windows (5, 10, 15) each group
    runs windows 5, 10, 15, 5, 10, 15, 5, 10.
    """
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 0:
        raise ValueError(f"num_groups must be an integer >= 0, got {num_groups!r}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2 (GRPO compares members of a group), got {group_size!r}")
    ws = [int(w) for w in windows]
    if not ws:
        raise ValueError("windows must hold at least one window, got an empty sequence")
    if any(w < 1 for w in ws):
        raise ValueError(f"windows must all be >= 1, got {tuple(ws)}")
    slot = torch.tensor([ws[j % len(ws)] for j in range(group_size)], dtype=torch.long)
    return slot.expand(num_groups, group_size).clone()


def extension_reward(
    success: torch.Tensor,
    window: torch.Tensor | int,
    chunk_size: int,
    horizon_coef: float = 1.0,
) -> torch.Tensor:
    """Stage 1 reward (eq 2): ``R = S * (1 + horizon_coef * k / H)`` with H = ``chunk_size``.

    A failure gets exactly 0, so the horizon term only pays in groups that hold a success: a long
    window is rewarded only when it was executed reliably enough to succeed.

    Args:
        success: bool or 0/1 [num_groups, group_size].
        window: execution window k of each rollout, [num_groups, group_size] (or one int for all),
            each in [1, chunk_size].
        chunk_size: H, actions predicted per inference call.
        horizon_coef: lambda_h >= 0.
    """
    s = _success(success)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    lam = _non_negative_number("horizon_coef", horizon_coef)
    k = torch.as_tensor(window, device=s.device)
    if k.dim() == 0:
        k = k.expand(s.shape)
    _same_shape("window", k, "success", s)
    if k.numel() and (bool((k < 1).any()) or bool((k > chunk_size).any())):
        raise ValueError(
            f"window must be in [1, chunk_size={chunk_size}], got values in [{k.min().item()}, {k.max().item()}]"
        )
    dtype = _float_dtype(torch.as_tensor(success), k)
    reward = 1.0 + lam * k.to(dtype) / chunk_size
    return torch.where(s, reward, torch.zeros((), dtype=dtype, device=s.device))


# ---------------------------------------------------------------------------------------------
# Stage 2: redundancy-aware step reduction


def _budget(name: str, what: str, values: torch.Tensor | Sequence[float], multiplier: float) -> int:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(
            f"{name} must hold at least one successful episode; "
            f"no success means no {what} budget can be calibrated (give the budget explicitly)"
        )
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"{name} must all be finite and > 0, got min {t.min().item()}")
    m = _positive_number("multiplier", multiplier)
    return int(math.ceil(round(m * t.mean().item(), 6)))


def step_budget(successful_steps: torch.Tensor | Sequence[float], multiplier: float = 1.3) -> int:
    """Step budget ``B = ceil(multiplier * mean T)`` over successful episodes (SPEC Stage 2).

    The product is rounded to 6 decimals before the ceiling, so float noise cannot add a step:
    ``1.3 * 100 = 130.00000000000003`` gives 130, not 131.

    Raises ValueError when there is no successful episode (no budget can be calibrated).
    """
    return _budget("successful_steps", "step", successful_steps, multiplier)


def _saving(success: torch.Tensor, counts: torch.Tensor, budget: float, name: str, budget_name: str) -> torch.Tensor:
    """``S * max(0, (B - X) / B)`` for counts X (steps: eq 5; calls: eq 8)."""
    s = _success(success)
    t = _steps(counts, s, name)
    b = _positive_number(budget_name, budget)
    dtype = _float_dtype(torch.as_tensor(success), t)
    e = ((b - t.to(dtype)) / b).clamp(min=0.0)
    return torch.where(s, e, torch.zeros((), dtype=dtype, device=s.device))


def step_saving_reward(success: torch.Tensor, steps: torch.Tensor, budget: float) -> torch.Tensor:
    """Step-saving reward (eq 5): ``E = S * max(0, (B - T) / B)``, in [0, 1].

    A success that overruns the budget gets E = 0 (not negative); a failure gets 0.
    """
    return _saving(success, steps, budget, "steps", "budget")


def stability_penalty(
    success: torch.Tensor,
    steps: torch.Tensor,
    sigma_floor: float = 5.0,
    floor_mode: FloorMode = "clamp",
) -> torch.Tensor:
    """Group-anchored stability penalty (eq 6): ``P = S * tanh(|T - mu_g| / sigma)``, in [0, 1).

    mu_g and sigma_g are the mean and *population* std of T over the successful members of group g.
    A group with fewer than two successes has no anchor: P = 0 for all its members.

    - ``floor_mode="clamp"`` (the paper, our default): sigma = max(sigma_g, sigma_floor).
    - ``floor_mode="gate"`` (the authors' code): P = 0 in groups with sigma_g < sigma_floor, and
      sigma = sigma_g otherwise.

    The penalty is two-sided, and that is what stops lucky shortcuts. In the joint reward (eq 7) a
    success d steps *shorter* than its group's mean (within the budget) gains ``lambda_e * d / B``
    of step saving relative to a member at the mean, but pays ``lambda_s * tanh(d / sigma)``.
    Since tanh is steep near 0 and saturates, the penalty wins for small-to-moderate shortcuts in
    tightly clustered groups (e.g. B = 100, sigma = 5, d = 5: gain 0.8 * 0.05 = 0.04 < loss
    0.2 * tanh(1) = 0.152) and the saving wins only for large, consistent reductions (d = 30: gain
    0.24 > loss 0.2 * tanh(6) = 0.19998). Roughly, the shortcut is net-rewarded once
    ``lambda_e * d / B > lambda_s * tanh(d / sigma)``; since tanh <= 1, always for
    ``d > lambda_s * B / lambda_e`` (25 steps at the defaults with B = 100). So the policy is
    pushed to shorten T for the whole group together rather than by rare lucky outliers.
    """
    s = _success(success)
    t = _steps(steps, s)
    floor = _non_negative_number("sigma_floor", sigma_floor)
    mode = _floor_mode(floor_mode)
    dtype = _float_dtype(torch.as_tensor(success), t)
    zero = torch.zeros((), dtype=dtype, device=s.device)

    tf = t.to(dtype)
    n = s.sum(dim=1, keepdim=True).to(dtype)
    n_safe = n.clamp(min=1.0)
    mu = torch.where(s, tf, zero).sum(dim=1, keepdim=True) / n_safe
    dev = torch.where(s, tf - mu, zero)
    sigma = (dev.square().sum(dim=1, keepdim=True) / n_safe).sqrt()

    if mode == "clamp":
        denom = sigma.clamp(min=floor)
        active = n >= 2
    else:
        denom = sigma
        active = (n >= 2) & (sigma >= floor)
    # denom == 0 only when every success sits exactly at mu, so z = 0 there for the successes.
    denom = torch.where(denom > 0, denom, torch.ones((), dtype=dtype, device=s.device))
    z = (tf - mu).abs() / denom
    return torch.where(s & active, torch.tanh(z), zero)


class TrimReward(NamedTuple):
    """The Stage 2 reward and its terms, all [num_groups, group_size] (log E and P beside R)."""

    reward: torch.Tensor
    """R (eq 7): 0 on failure, in [(1 - lambda_s) / (1 + lambda_e), 1) on success."""
    step_saving: torch.Tensor
    """E (eq 5), in [0, 1]."""
    stability: torch.Tensor
    """P (eq 6), in [0, 1)."""


def trim_reward_terms(
    success: torch.Tensor,
    steps: torch.Tensor,
    budget: float,
    step_coef: float = 0.8,
    stability_coef: float = 0.2,
    sigma_floor: float = 5.0,
    floor_mode: FloorMode = "clamp",
) -> TrimReward:
    """Stage 2 joint reward (eq 7) with its terms: ``R = S (1 + le E - ls P) / (1 + le)``.

    ``le`` = ``step_coef`` (lambda_e), ``ls`` = ``stability_coef`` (lambda_s). Failures get exactly
    0; see `stability_penalty` for the trade-off between the two terms.
    """
    s = _success(success)
    le = _non_negative_number("step_coef", step_coef)
    ls = _non_negative_number("stability_coef", stability_coef)
    e = step_saving_reward(success, steps, budget)
    p = stability_penalty(success, steps, sigma_floor, floor_mode)
    r = (1.0 + le * e - ls * p) / (1.0 + le)
    r = torch.where(s, r, torch.zeros((), dtype=r.dtype, device=r.device))
    return TrimReward(reward=r, step_saving=e, stability=p)


def trim_reward(
    success: torch.Tensor,
    steps: torch.Tensor,
    budget: float,
    step_coef: float = 0.8,
    stability_coef: float = 0.2,
    sigma_floor: float = 5.0,
    floor_mode: FloorMode = "clamp",
) -> torch.Tensor:
    """Stage 2 joint reward R (eq 7) only; `trim_reward_terms` also returns E and P."""
    return trim_reward_terms(success, steps, budget, step_coef, stability_coef, sigma_floor, floor_mode).reward


# ---------------------------------------------------------------------------------------------
# Adaptive windows: the window adaptor's call-saving reward (SPEC "Adaptive windows")


def call_budget(successful_calls: torch.Tensor | Sequence[float], multiplier: float = 1.3) -> int:
    """Call budget ``B_C = ceil(multiplier * mean C)`` over successful episodes, calibrated like
    Stage 2's step budget (from the policy entering the stage, on validation states)."""
    return _budget("successful_calls", "call", successful_calls, multiplier)


def call_saving_reward(success: torch.Tensor, calls: torch.Tensor, budget: float) -> torch.Tensor:
    """Call-saving reward (eq 8): ``E_C = S * max(0, (B_C - C) / B_C)``, in [0, 1].

    A success that overruns the call budget gets 0 (not negative); a failure gets 0.
    """
    return _saving(success, calls, budget, "calls", "call_budget")


class AdaptReward(NamedTuple):
    """The window adaptor's reward and its terms, all [num_groups, group_size]."""

    reward: torch.Tensor
    """R (eq 9): 0 on failure, in [(1 - lambda_s) / (1 + lambda_c + lambda_e), 1) on success."""
    call_saving: torch.Tensor
    """E_C (eq 8), in [0, 1]."""
    step_saving: torch.Tensor
    """E (eq 5) against the step budget, in [0, 1]; zeros when ``step_coef`` is 0."""
    stability: torch.Tensor
    """P (eq 6) on steps, unchanged from Stage 2, in [0, 1)."""


def adapt_reward_terms(
    success: torch.Tensor,
    calls: torch.Tensor,
    steps: torch.Tensor,
    call_budget: float,
    step_budget: float | None = None,
    call_coef: float = 0.8,
    step_coef: float = 0.0,
    stability_coef: float = 0.2,
    sigma_floor: float = 5.0,
    floor_mode: FloorMode = "clamp",
) -> AdaptReward:
    """The adaptor's joint reward (eq 9): ``R = S (1 + lc E_C + le E - ls P) / (1 + lc + le)``.

    ``lc`` = ``call_coef`` (lambda_c) rewards calls saved against ``call_budget``; ``le`` =
    ``step_coef`` (lambda_e, default 0) optionally keeps Stage 2's step saving against
    ``step_budget`` (required when ``step_coef`` > 0); ``ls`` = ``stability_coef`` is Stage 2's
    group-anchored penalty on steps, unchanged, so that long windows which make an episode's length
    erratic (a lucky long window in one member, a detour in another) do not pay. With ``lc = 0`` it
    is exactly Stage 2's reward (eq 7). Failures get exactly 0.
    """
    s = _success(success)
    lc = _non_negative_number("call_coef", call_coef)
    le = _non_negative_number("step_coef", step_coef)
    ls = _non_negative_number("stability_coef", stability_coef)
    ec = call_saving_reward(success, calls, call_budget)
    if le > 0:
        if step_budget is None:
            raise ValueError("step_budget is required when step_coef > 0")
        e = step_saving_reward(success, steps, step_budget)
    else:
        _steps(steps, s)
        e = torch.zeros_like(ec)
    p = stability_penalty(success, steps, sigma_floor, floor_mode)
    r = (1.0 + lc * ec + le * e - ls * p.to(ec.dtype)) / (1.0 + lc + le)
    r = torch.where(s, r, torch.zeros((), dtype=r.dtype, device=r.device))
    return AdaptReward(reward=r, call_saving=ec, step_saving=e, stability=p)


# ---------------------------------------------------------------------------------------------
# GRPO: advantages and loss


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (eq 3): ``A = (R - mean_g R) / (std_g R + eps)``.

    std is the unbiased std over the group's G rewards. A group whose rewards are all exactly equal
    (all failures included) carries no signal: its advantages are 0 and it is marked invalid.
    ``scale`` false: ``A = R - mean_g R`` (no division by std, as Dr. GRPO), so a group whose rewards
    differ a little weighs a little, instead of as much as one that differs in success.

    Returns:
        advantages: [num_groups, group_size], float.
        valid_groups: bool [num_groups]; drop invalid groups from the loss (and from its N).
    """
    r = _groups("rewards", rewards)
    if not r.is_floating_point():
        r = r.to(torch.float32)
    if r.numel() and not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    _non_negative_number("eps", eps)
    valid = (r != r[:, :1]).any(dim=1)
    a = r - r.mean(dim=1, keepdim=True)
    if scale:
        a = a / (r.std(dim=1, keepdim=True, unbiased=True) + eps)
    a = torch.where(valid[:, None], a, torch.zeros((), dtype=a.dtype, device=a.device))
    return a, valid


class GRPOLossTerms(NamedTuple):
    """What `grpo_loss` returns: per-trajectory differentiable terms and detached diagnostics.

    policy: [trajectories] ``(1/C_i) sum_c -min(rho_ic A_i, clip(rho_ic) A_i)``, differentiable.
    kl: [trajectories] the k3 KL to the reference, averaged over the trajectory's executed rows
        (differentiable), or None without a reference.
    diagnostics: detached 0-d tensors over the executed chunks: ``clip_frac`` (fraction whose
        ratio is outside the clip range), ``approx_kl`` (mean of (rho - 1) - log rho, old vs new),
        ``ratio_min``, ``ratio_max``, ``ratio_mean``.
    """

    policy: torch.Tensor
    kl: torch.Tensor | None
    diagnostics: dict[str, torch.Tensor]


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    window_logp: torch.Tensor | None = None,
    old_window_logp: torch.Tensor | None = None,
    chunk_norm: float | None = None,
) -> GRPOLossTerms:
    """Per-trajectory terms of the clipped GRPO loss over chunks (eq 4) and of the k3 KL to a
    reference; `reduce_grpo_loss` (or the caller) sums them into
    ``L = (1/N) sum_i (policy_i + kl_coef * kl_i)``, with the chunk ratio
    ``rho_ic = exp(sum_r mask * (logp - old_logp))``.

    Args:
        logp: [trajectories, chunks, rows] log-prob of each executed row under the learner (a row's
            log-prob sums over action dimensions); differentiable.
        old_logp: same shape, recorded by the rollout.
        advantages: [trajectories], applied to every chunk the trajectory executed.
        mask: bool or 0/1, same shape: the executed rows. A chunk with no executed row is padding
            and not counted in C_i; every trajectory must execute at least one row.
        ref_logp: same shape, under the frozen reference policy, or None (no KL term).
        clip_low, clip_high: epsilon_low in [0, 1), epsilon_high >= 0.
        window_logp, old_window_logp: [trajectories, chunks], or both None: the log-prob of the
            window a window adaptor chose at each call (learner, differentiable / recorded). The
            window is part of the call's action, so its log-ratio joins the chunk's:
            ``rho_ic = exp(sum_r mask * (logp - old_logp) + window_logp - old_window_logp)``.
            With the policy frozen, pass ``logp = old_logp``: only the window moves the ratio.
            Padding chunks (no executed row) ignore them. The KL term covers action rows only.
        chunk_norm: None: each trajectory's chunk terms are averaged (eq 4's 1/C_i). A number: they
            are summed and divided by it, the same for every trajectory (Dr. GRPO's constant), so
            each call weighs the same whatever its episode's length -- with 1/C_i a failure, which
            runs to the horizon and makes the most calls, pushes each of its calls back the least.

    KL: the k3 estimator ``exp(r) - r - 1``, ``r = ref_logp - logp``, per executed row, averaged
    per trajectory over its executed rows. Unexecuted rows are selected out with ``torch.where``
    before any nonlinearity, so whatever they hold, they get exactly zero gradient.
    """
    if logp.dim() != 3:
        raise ValueError(f"logp must be shaped [trajectories, chunks, rows], got shape {tuple(logp.shape)}")
    _same_shape("old_logp", old_logp, "logp", logp)
    _same_shape("mask", mask, "logp", logp)
    if ref_logp is not None:
        _same_shape("ref_logp", ref_logp, "logp", logp)
    if (window_logp is None) != (old_window_logp is None):
        raise ValueError("window_logp and old_window_logp must be given together (or neither)")
    if window_logp is not None:
        if window_logp.shape != logp.shape[:2]:
            raise ValueError(
                f"window_logp must be shaped [trajectories, chunks] = {tuple(logp.shape[:2])}, "
                f"got {tuple(window_logp.shape)}"
            )
        _same_shape("old_window_logp", old_window_logp, "window_logp", window_logp)
    num = logp.shape[0]
    if advantages.shape != (num,):
        raise ValueError(f"advantages must be shaped [trajectories] = ({num},), got {tuple(advantages.shape)}")
    if not (0.0 <= float(clip_low) < 1.0):
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low!r}")
    _non_negative_number("clip_high", clip_high)
    m = mask if mask.dtype == torch.bool else mask != 0
    chunk_valid = m.any(dim=2)  # [B, C]
    chunks = chunk_valid.sum(dim=1)  # C_i
    rows = m.sum(dim=(1, 2))
    if num and bool((chunks == 0).any()):
        bad = int(torch.nonzero(chunks == 0)[0, 0])
        raise ValueError(f"mask must mark at least one executed row per trajectory; trajectory {bad} has none")

    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = advantages.to(logp.dtype)[:, None]
    log_ratio = torch.where(m, logp - old_logp.to(logp.dtype), zero).sum(dim=2)  # [B, C]
    if window_logp is not None:
        window_log_ratio = window_logp.to(logp.dtype) - old_window_logp.to(logp.dtype)
        log_ratio = log_ratio + torch.where(chunk_valid, window_log_ratio, zero)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_chunk = -torch.minimum(ratio * adv, clipped * adv)
    per_chunk = torch.where(chunk_valid, per_chunk, zero)
    if chunk_norm is None:
        policy = per_chunk.sum(dim=1) / chunks.clamp(min=1).to(logp.dtype)  # [B]
    else:
        if not (isinstance(chunk_norm, (int, float)) and math.isfinite(chunk_norm) and chunk_norm > 0):
            raise ValueError(f"chunk_norm must be a positive number (or None), got {chunk_norm!r}")
        policy = per_chunk.sum(dim=1) / float(chunk_norm)

    kl = None
    if ref_logp is not None:
        r = torch.where(m, ref_logp.to(logp.dtype) - logp, zero)
        k3 = torch.where(m, torch.exp(r) - r - 1.0, zero)
        kl = k3.sum(dim=(1, 2)) / rows.clamp(min=1).to(logp.dtype)  # [B]

    with torch.no_grad():
        ex_ratio = ratio[chunk_valid]
        ex_log_ratio = log_ratio[chunk_valid]
        if ex_ratio.numel():
            out = (ex_ratio < 1.0 - clip_low) | (ex_ratio > 1.0 + clip_high)
            diagnostics = {
                "clip_frac": out.to(logp.dtype).mean(),
                "approx_kl": ((ex_ratio - 1.0) - ex_log_ratio).mean(),
                "ratio_min": ex_ratio.min(),
                "ratio_max": ex_ratio.max(),
                "ratio_mean": ex_ratio.mean(),
            }
        else:
            diagnostics = {k: zero.clone() for k in ("clip_frac", "approx_kl", "ratio_min", "ratio_max", "ratio_mean")}
    return GRPOLossTerms(policy, kl, diagnostics)


def reduce_grpo_loss(
    terms: GRPOLossTerms, kl_coef: float = 0.0, num_trajectories: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq 4's scalar from `grpo_loss`'s terms: ``L = (1/N) sum_i (policy_i + kl_coef * kl_i)``.

    ``num_trajectories`` is N of the whole batch when the terms cover a minibatch, so that
    minibatch gradients add up to the batch gradient (default: the trajectories in ``terms``).
    Returns the loss (scalar, differentiable) and the terms' diagnostics plus ``policy_loss`` and
    ``kl_ref`` (the two sums divided by N; ``kl_ref`` only with a KL term), detached.
    """
    num = terms.policy.shape[0]
    beta = _non_negative_number("kl_coef", kl_coef)
    if beta > 0 and terms.kl is None:
        raise ValueError(f"ref_logp is required when kl_coef > 0, got kl_coef={kl_coef!r}")
    n_total = num if num_trajectories is None else num_trajectories
    if not isinstance(n_total, int) or isinstance(n_total, bool) or n_total < max(num, 1):
        raise ValueError(
            f"num_trajectories must be an integer >= the trajectories passed ({num}) and >= 1, got {num_trajectories!r}"
        )
    policy_loss = terms.policy.sum() / n_total
    kl = terms.kl.sum() / n_total if terms.kl is not None else None
    loss = policy_loss + beta * kl if beta > 0 else policy_loss
    diagnostics = dict(terms.diagnostics, policy_loss=policy_loss.detach())
    if kl is not None:
        diagnostics["kl_ref"] = kl.detach()
    return loss, diagnostics


# ---------------------------------------------------------------------------------------------
# speedups (evaluation)


def speedup(steps_base: float, window_base: float, steps: float, window: float) -> float:
    """The paper's speedup ``(T_base / k_base) / (T / k)``.

    Arguments are mean physical steps T over successful episodes and execution windows k. Check
    against the paper (LIBERO-Object, pi0.5): ``speedup(125.0, 5, 64.3, 15)`` = 5.83.
    """
    tb = _positive_number("steps_base", steps_base)
    kb = _positive_number("window_base", window_base)
    t = _positive_number("steps", steps)
    k = _positive_number("window", window)
    return (tb / kb) / (t / k)


def calls_speedup(calls_base: torch.Tensor | Sequence[float], calls: torch.Tensor | Sequence[float]) -> float:
    """Headline speedup: mean inference calls C of the baseline / mean C of the policy.

    Both arguments hold the calls of *successful* episodes only, as measured.
    """
    means = []
    for name, c in (("calls_base", calls_base), ("calls", calls)):
        x = torch.as_tensor(c, dtype=torch.float64).flatten()
        if x.numel() == 0:
            raise ValueError(f"{name} must hold at least one successful episode, got none")
        if not bool(torch.isfinite(x).all()) or bool((x <= 0).any()):
            raise ValueError(f"{name} must all be finite and > 0, got min {x.min().item()}")
        means.append(x.mean().item())
    return means[0] / means[1]
