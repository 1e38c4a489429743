"""The rollout engine (`RolloutEngine`) and what it returns (`Trajectories`).

Imports are lazy so that env worker processes, which import `policytrim.rollout.workers`, do not
pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RolloutEngine", "Trajectories", "stable_seed", "trajectory_seed"]


def __getattr__(name: str) -> Any:
    if name in ("RolloutEngine", "stable_seed", "trajectory_seed"):
        from policytrim.rollout import engine

        return getattr(engine, name)
    if name == "Trajectories":
        from policytrim.rollout.types import Trajectories

        return Trajectories
    raise AttributeError(f"module 'policytrim.rollout' has no attribute {name!r}")
