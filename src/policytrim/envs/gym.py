"""Generic adapter: any gymnasium env with a Box action space that reports success in ``info``.

Plug in your own simulator with ``--env.suite gym --env.gym-id my_package.envs:MyEnv-v0`` (the
``module:EnvId`` form makes every worker process import the module that registers the env).

- Success: ``info["success"]`` (Meta-World convention) or ``info["is_success"]`` (gymnasium-robotics).
- Initial state (task, seed, index): ``env.reset(seed=...)`` with a seed derived from the address by
  a stable hash, so the same address gives the same state if the env seeds all its randomness from
  ``reset(seed=...)`` as gymnasium requires.
- Observations: an array becomes ``"state"`` (float32, flattened); a dict keeps ``"image"`` (or
  ``"pixels"``) as the uint8 image and concatenates the other entries, in sorted key order, into
  ``"state"``.
- Instruction: the env's ``instruction`` attribute if it has one, else the ``instruction`` argument,
  else the env id.
- Episode end: the engine's horizon ends episodes (the env's own time limit is set to the horizon).
  An env that terminates without success ends its episode as a failure (``terminated`` becomes True).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from policytrim.envs.base import OBS_IMAGE, OBS_STATE, InitialState, ObsSpec
from policytrim.errors import InputError

_IMAGE_KEYS = (OBS_IMAGE, "pixels")


def address_seed(state: InitialState) -> int:
    """The ``reset(seed=...)`` of an initial-state address (stable across processes and runs)."""
    text = f"policytrim-gym|{state.task}|{state.seed}|{state.index}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


class GymEnv:
    """A gymnasium env behind the `policytrim.envs.base.EnvAdapter` protocol."""

    def __init__(self, gym_id: str, horizon: int = 200, instruction: str | None = None, **make_kwargs: Any) -> None:
        import gymnasium as gym

        try:
            self._env = gym.make(gym_id, max_episode_steps=int(horizon), disable_env_checker=True, **make_kwargs)
        except Exception as exc:  # noqa: BLE001 - unknown ids raise several error types
            raise InputError(f"cannot make gymnasium env {gym_id!r}: {exc}") from None
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise InputError(f"gymnasium env {gym_id!r} needs a 1-D Box action space, got {space}")
        self.task = gym_id
        self.horizon = int(horizon)
        self.action_dim = int(space.shape[0])
        self._action_dtype = space.dtype
        unwrapped = self._env.unwrapped
        own = getattr(unwrapped, "instruction", None)
        self.instruction = own if isinstance(own, str) and own else (instruction or gym_id)
        dt = getattr(unwrapped, "dt", None)
        fps = (getattr(unwrapped, "metadata", None) or {}).get("render_fps")
        self.control_period_s = float(dt) if dt else (1.0 / float(fps) if fps else 0.0)
        self.terminated = False
        first, _ = self._env.reset(seed=0)
        self.observation_spec = {k: ObsSpec(v.shape, v.dtype.name) for k, v in self._observation(first).items()}

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        if state.task != self.task:
            raise ValueError(f"this adapter runs {self.task!r}, asked to reset to a {state.task!r} state")
        obs, _ = self._env.reset(seed=address_seed(state))
        self.terminated = False
        return self._observation(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        if self.terminated:
            raise RuntimeError("the episode has ended; reset() first")
        obs, _reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=self._action_dtype))
        success = bool(info.get("success", info.get("is_success", False)))
        self.terminated = bool(terminated or truncated) and not success
        return self._observation(obs), success

    def close(self) -> None:
        self._env.close()

    @staticmethod
    def _observation(obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, dict):
            image = next((obs[k] for k in _IMAGE_KEYS if k in obs), None)
            rest = [np.asarray(obs[k], dtype=np.float32).ravel() for k in sorted(obs) if k not in _IMAGE_KEYS]
            out = {OBS_STATE: np.concatenate(rest) if rest else np.zeros(0, np.float32)}
            if image is not None:
                out[OBS_IMAGE] = np.ascontiguousarray(image, dtype=np.uint8)
            return out
        return {OBS_STATE: np.asarray(obs, dtype=np.float32).ravel()}
