"""Paired comparison of two policies evaluated on the same states with the same random numbers.

The success-rate difference gets Newcombe's hybrid score interval for paired proportions
(Newcombe 1998, method 10): it uses the correlation of the paired outcomes, so two policies that
fail on the same hard states get a tight interval, and it stays sensible near 0 and 1.
"""

from __future__ import annotations

import math

import numpy as np

from policytrim.eval.metrics import wilson_interval


def paired_difference(base_success, new_success, z: float = 1.96) -> dict[str, float]:
    """Difference new − base of paired binary outcomes, with its 95% interval.

    Returns ``{"diff", "lo", "hi", "n", "both", "only_new", "only_base", "neither"}``; the
    success-rate *drop* of the new policy is −diff with interval [−hi, −lo].
    """
    a = np.asarray(base_success, dtype=bool).ravel()
    b = np.asarray(new_success, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have the same length, got {a.size} and {b.size}")
    n = a.size
    if n == 0:
        raise ValueError("paired outcomes are empty")
    e = int(np.sum(a & b))  # both succeed
    f = int(np.sum(b & ~a))  # only the new policy
    g = int(np.sum(a & ~b))  # only the baseline
    h = n - e - f - g
    p_new, p_base = (e + f) / n, (e + g) / n
    l_new, u_new = wilson_interval(e + f, n, z)
    l_base, u_base = wilson_interval(e + g, n, z)
    denom = (e + f) * (g + h) * (e + g) * (f + h)
    phi = (e * h - f * g) / math.sqrt(denom) if denom > 0 else 0.0
    diff = p_new - p_base
    delta = math.sqrt(
        max(0.0, (p_new - l_new) ** 2 - 2 * phi * (p_new - l_new) * (u_base - p_base) + (u_base - p_base) ** 2)
    )
    eps = math.sqrt(
        max(0.0, (u_new - p_new) ** 2 - 2 * phi * (u_new - p_new) * (p_base - l_base) + (p_base - l_base) ** 2)
    )
    return {
        "diff": diff,
        "lo": max(-1.0, diff - delta),
        "hi": min(1.0, diff + eps),
        "n": n,
        "both": e,
        "only_new": f,
        "only_base": g,
        "neither": h,
    }


def relation_in_points(value: float, reference: float, tolerance_points: float) -> str:
    """How a success rate stands against a reference, in words a report can print: ``"13.0 points
    above"``, ``"within 2 points of"`` or ``"5.0 points below"`` (rates in [0, 1], tolerance in points)."""
    diff = 100.0 * (float(value) - float(reference))
    if abs(diff) <= tolerance_points + 1e-9:
        return f"within {tolerance_points:g} points of"
    return f"{abs(diff):.1f} points {'above' if diff > 0 else 'below'}"
