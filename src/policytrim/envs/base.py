"""The simulator adapter protocol.

An adapter translates one simulator to what the rollout engine needs: reset to an explicitly
addressed initial state, step one action, report success, expose the instruction, the observation
spec and the horizon. Adapters never execute chunks; the rollout engine does (`policytrim.rollout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Observation keys, kept in one place (LeRobot-style constants).
OBS_STATE = "state"  # float32 [D] proprioceptive / simulator state vector
OBS_IMAGE = "image"  # uint8 [h, w, 3], the right way up
OBS_WRIST_IMAGE = "wrist_image"  # uint8 [h, w, 3], a wrist camera (LIBERO), the right way up


@dataclass(frozen=True, order=True)
class InitialState:
    """Address of one reproducible initial state: (task, seed, index).

    The same address always gives the bit-identical initial state. Splits (train / validation /
    test) use disjoint seeds, so nothing reported is tuned on.
    """

    task: str
    seed: int
    index: int


@dataclass(frozen=True)
class ObsSpec:
    """Shape and dtype of one observation entry."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32", "uint8"


class EnvSettings(Protocol):
    """The env section of a run's settings, as the env layer reads it (`policytrim.config.EnvConfig`
    is the one the library builds). The envs sit below the config -- the config validates task
    names against their tables -- so they name this protocol, not the config class."""

    suite: str
    tasks: tuple[str, ...]
    gym_id: str
    horizon: int
    image: bool
    image_size: int
    camera: str
    train_seed: int
    val_seed: int
    test_seed: int
    libero_max_steps: str
    libero_published_test: bool
    max_envs_per_worker: int


@runtime_checkable
class EnvAdapter(Protocol):
    """One environment instance. Not thread-safe; one per worker slot.

    Optional: an adapter whose simulator can end an episode without success (a robot falling over)
    exposes ``terminated: bool``, True after such a step; the rollout engine then ends the
    trajectory as a failure (T = the horizon, as for every failure). An adapter whose observations
    are expensive (rendered images) may set ``observes_on_demand = True`` and accept
    ``step(action, observe=False)``: env workers then ask only for the observations a policy reads.
    """

    task: str
    instruction: str
    horizon: int
    action_dim: int
    observation_spec: dict[str, ObsSpec]
    control_period_s: float  # physical seconds per env step (Meta-World: 5 x 2.5 ms)

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        """Reset to the addressed initial state and return the first observation."""
        ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Apply one action (already within the action bounds). Returns (observation, success)."""
        ...

    def close(self) -> None: ...


def close_quietly(env: Any) -> None:
    """Close a simulator's env (None: nothing to close); an error while closing a broken renderer
    is swallowed so that it never masks the error that made the caller close it."""
    if env is not None:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - see the docstring
            pass
