"""Fault injection for tests of the rollout engine's fault handling (a test helper, not library code).

`FaultyEnv` wraps a real adapter and, when reset to a chosen state index, raises, hangs or crashes at
a chosen step. Pass ``functools.partial(faulty_env_factory, index=..., at_step=..., kind=...)`` as
the engine's ``env_factory``; it is picklable, and worker processes (spawned) import it from this
directory because they inherit the test process's ``sys.path``.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import numpy as np

from policytrim.envs.base import InitialState


class InjectedFault(RuntimeError):
    """The exception `FaultyEnv` raises."""


class FaultyEnv:
    """An adapter that misbehaves at step ``at_step`` of episodes from states with ``index``.

    kind="raise": raises `InjectedFault`; kind="hang": sleeps ``hang_s`` (a stalled MuJoCo step);
    kind="crash": ends the process at once (a segfaulting simulator; only inside worker processes);
    kind="bug": raises AttributeError (a programming error in an adapter, not a simulator fault).
    kind="input": raises InputError (the run's input is wrong, e.g. a missing package or setting).
    ``max_faults`` bounds how many times it fires in one process (None = always).
    """

    fired = 0  # per process

    def __init__(
        self,
        inner,
        index: int,
        at_step: int,
        kind: Literal["raise", "hang", "crash", "bug", "input"] = "raise",
        hang_s: float = 3600.0,
        max_faults: int | None = None,
    ) -> None:
        self._inner = inner
        self._index, self._at_step, self._kind, self._hang_s, self._max = index, at_step, kind, hang_s, max_faults
        self._armed = False
        self._t = 0
        for name in ("task", "instruction", "horizon", "action_dim", "observation_spec", "control_period_s"):
            setattr(self, name, getattr(inner, name))

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        self._armed = state.index == self._index
        self._t = 0
        return self._inner.reset(state)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        self._t += 1
        if self._armed and self._t == self._at_step and (self._max is None or FaultyEnv.fired < self._max):
            FaultyEnv.fired += 1
            if self._kind == "hang":
                time.sleep(self._hang_s)
            elif self._kind == "crash":
                os._exit(17)
            elif self._kind == "input":
                from policytrim.errors import InputError

                raise InputError("env.injected: an injected bad setting (accepted: none)")
            elif self._kind == "bug":
                raise AttributeError(
                    f"'FaultyEnv' object has no attribute 'injected_bug' (step {self._t} of state index {self._index})"
                )
            raise InjectedFault(f"injected fault at step {self._t} of state index {self._index}")
        return self._inner.step(action)

    def close(self) -> None:
        self._inner.close()


def faulty_env_factory(
    env_cfg,
    task: str,
    *,
    index: int,
    at_step: int,
    kind: str = "raise",
    hang_s: float = 3600.0,
    max_faults: int | None = None,
):
    """An env factory (as `policytrim.envs.make_env`) whose envs fault; see `FaultyEnv`."""
    from policytrim.envs import make_env

    return FaultyEnv(make_env(env_cfg, task), index, at_step, kind, hang_s, max_faults)
