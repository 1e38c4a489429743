"""The execution window k, resolved once per run (SPEC.md, "Stage 1" and "Evaluation protocol").

A run builds one `WindowPlan` from the loaded policy and the config, before anything is written,
and everything downstream reads it:

- Stage 1's windows: ``stage1.windows``, or k_1 = the config's ``policy.default_window`` (the
  behaviour-cloned window) and evenly spaced windows up to H (`default_windows`);
- Stage 2's window: ``stage2.window``, else Stage 1's choice, else the window the policy entering
  Stage 2 was trained for (its own default window);
- the evaluation window of a policy: the one asked for, else the policy's own default window.

`resolve` is the one place where "0 / unset" becomes a window and `check_window` the one bound
check (k in [1, min(max_window, H)] for a policy; a saved spec's window in [1, H]); the rollout
engine, the checkpoint spec and the serving broker call them too. This module imports nothing from
the rest of the library but its errors, so the light serving client can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policytrim.errors import InputError


def window_bound(policy: Any) -> int:
    """The longest window ``policy`` may execute: min(max_window, chunk_size)."""
    return min(int(policy.max_window), int(policy.chunk_size))


def check_window(window: int, top: int, name: str = "window", chunk_size: int | None = None) -> int:
    """``window`` if it lies in [1, ``top``], else an InputError naming ``name`` (the bound check
    of every window: a policy's, a saved spec's, a served one's)."""
    if not 1 <= int(window) <= int(top):
        extra = (
            "; the scripted experts act in closed loop with window 1"
            if top == 1
            else (f" (its chunk size is {chunk_size})" if chunk_size else "")
        )
        raise InputError(f"{name} must be in [1, {top}] for this policy{extra}, got {window}")
    return int(window)


def resolve(requested: int | None, default: int, top: int, name: str = "window", chunk_size: int | None = None) -> int:
    """The window to execute: ``requested``, or (0 / None: unset) ``default``; bound-checked."""
    return check_window(int(requested or 0) or int(default), top, name, chunk_size)


def resolve_window(policy: Any, window: int | None = 0, name: str = "window") -> int:
    """The window ``policy`` executes: ``window``, or (0) its own default window (the one it was
    trained for); ``name`` is what an error calls the value (e.g. ``--window``, ``stage2.window``)."""
    return resolve(window, policy.default_window, window_bound(policy), name, policy.chunk_size)


def default_windows(default_window: int, chunk_size: int, count: int = 3) -> tuple[int, ...]:
    """SPEC's Stage 1 windows: k_1 = the default window, the rest evenly spaced up to H
    (H = 15, k_1 = 5 gives 5, 10, 15)."""
    if default_window >= chunk_size:
        return (chunk_size,)
    return tuple(
        sorted({round(default_window + (chunk_size - default_window) * i / (count - 1)) for i in range(count)})
    )


@dataclass(frozen=True)
class WindowPlan:
    """Every window a run executes, resolved once from the loaded policy and the config.

    chunk_size: H. bound: the longest window the policy may execute (`window_bound`).
    policy_window: the loaded policy's own default window (what it was trained for): its
        evaluation window and Stage 2's window when neither the user nor Stage 1 chose one.
    stage1: Stage 1's windows k_1 < ... < k_M (k_1 from the config: the behaviour-cloned window,
        also for a policy PolicyTrim already trained); empty when Stage 1 does not run.
    stage2_given: ``stage2.window`` (0: Stage 1's choice, else ``policy_window``).
    """

    chunk_size: int
    bound: int
    policy_window: int
    stage1: tuple[int, ...] = ()
    stage2_given: int = 0

    @classmethod
    def for_policy(cls, policy: Any) -> WindowPlan:
        """The plan of a policy evaluated or served alone (no training stage)."""
        return cls(int(policy.chunk_size), window_bound(policy), int(policy.default_window))  # checked where it is used

    @classmethod
    def for_run(cls, policy: Any, cfg: Any, stages: Sequence[str] = ("extend", "trim")) -> WindowPlan:
        """The plan of a training run of ``stages`` from ``policy`` with config ``cfg``: InputError
        (one line, before anything is written) when a window the run would execute exceeds what the
        policy may execute."""
        plan = cls.for_policy(policy)
        stage1: tuple[int, ...] = ()
        if "extend" in stages:
            stage1 = tuple(cfg.stage1.windows) or default_windows(cfg.policy.default_window, cfg.policy.chunk_size)
            check_window(stage1[-1], plan.bound, f"stage1.windows {stage1}: the longest", plan.chunk_size)
        given = int(cfg.stage2.window or 0)
        if given:
            check_window(given, plan.bound, "stage2.window", plan.chunk_size)
        return cls(plan.chunk_size, plan.bound, plan.policy_window, stage1, given)

    def evaluation(self, requested: int | None = 0, name: str = "window") -> int:
        """The window an evaluation executes: ``requested``, or (0) the policy's own."""
        return resolve(requested, self.policy_window, self.bound, name, self.chunk_size)

    def stage2(self, stage1_choice: int | None = None) -> int:
        """Stage 2's window: ``stage2.window``, else Stage 1's choice, else the policy's own."""
        return resolve(
            self.stage2_given or stage1_choice, self.policy_window, self.bound, "stage2.window", self.chunk_size
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "bound": self.bound,
            "policy_window": self.policy_window,
            "stage1": list(self.stage1),
            "stage2_given": self.stage2_given,
        }
