"""Evaluation metrics (SPEC.md, "Evaluation protocol"): pure functions of rollout results.

Per task and ``overall`` (all episodes pooled):

- ``episodes``: episodes evaluated; ``success_rate`` and ``success_ci95`` (95% Wilson interval);
- ``mean_steps``: mean T over successful episodes; ``calls_per_success``: mean C over successful
  episodes; ``window``: the execution window k (a list when trajectories used several);
- ``wall_clock_s``: mean over successful episodes of C x latency + T x control period.

Means over no successful episode are None (JSON null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from policytrim.rollout.types import Trajectories


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def _entry(
    success: torch.Tensor,
    steps: torch.Tensor,
    calls: torch.Tensor,
    window: torch.Tensor,
    period: torch.Tensor,
    latency_s: float,
    horizon: int,
) -> dict[str, Any]:
    n = int(success.numel())
    k = int(success.sum())
    ok = success.bool()
    windows = sorted(set(window.tolist()))
    wall = calls[ok].double() * latency_s + steps[ok].double() * period[ok]
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "success_rate": k / n if n else None,
        "success_ci95": [lo, hi],
        "mean_steps": _mean(steps[ok]),
        "window": windows[0] if len(windows) == 1 else windows,
        "calls_per_success": _mean(calls[ok]),
        "wall_clock_s": _mean(wall),
        "horizon": horizon,
    }


def summarize(
    trajectories: Trajectories, latency_s: float, control_period_s: float | Mapping[str, float]
) -> dict[str, Any]:
    """``{"tasks": {task: metrics}, "overall": metrics}`` (module docstring for the metrics).

    control_period_s: one value, or one per task.
    """
    tr = trajectories
    tasks = list(dict.fromkeys(tr.task))
    if isinstance(control_period_s, Mapping):
        missing = [t for t in tasks if t not in control_period_s]
        if missing:
            raise ValueError(f"no control period for task(s) {missing}")
        period = torch.tensor([float(control_period_s[t]) for t in tr.task], dtype=torch.float64)
    else:
        period = torch.full((tr.num_trajectories,), float(control_period_s), dtype=torch.float64)
    out: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        m = torch.tensor([t == task for t in tr.task], dtype=torch.bool)
        out["tasks"][task] = _entry(
            tr.success[m], tr.steps[m], tr.calls[m], tr.window[m], period[m], latency_s, tr.horizon
        )
    out["overall"] = _entry(tr.success, tr.steps, tr.calls, tr.window, period, latency_s, tr.horizon)
    return out
