"""Perturbed evaluation (the paper's Table 10): the same paired comparison under degraded sensing
or actuation.

- ``obs_noise``: Gaussian noise (std, in the state's raw units) on the state vector fed to the
  policy; the simulator itself is untouched.
- ``act_noise``: Gaussian noise (std) added to every executed action, then clipped to [-1, 1].
- ``blur_sigma``: Gaussian blur of the image observation (std in pixels; kernel 2*ceil(3*sigma)+1).
- ``occlusion``: one grey rectangle covering this fraction of the image at a random place, redrawn
  every observation (the paper: 50 %).
- ``libero``: one of LIBERO-PRO's perturbed versions of a LIBERO suite (``swap``, ``object``,
  ``lan``, ``task``; `policytrim.envs.libero`): not a wrapper but another scene, so the engine of
  that comparison runs with ``env.libero_perturbation`` set (`env_config`).

It is an env adapter wrapper, installed through the rollout engine's ``env_factory``, so the
engine stays the one place that executes chunks. Its random numbers are a fixed stream per initial
state: (perturbation seed, task, state seed, index) seeds a generator at reset and step t always
draws in the same order, so every policy compared meets the same noise at the same step
(paired). This module imports no torch: it runs inside env worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policytrim.envs.base import OBS_IMAGE, OBS_STATE, InitialState
from policytrim.errors import InputError


@dataclass(frozen=True)
class Perturbation:
    """One perturbed condition; all zeros is the clean environment."""

    name: str = "clean"
    obs_noise: float = 0.0
    act_noise: float = 0.0
    blur_sigma: float = 0.0
    occlusion: float = 0.0
    libero: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("obs_noise", "act_noise", "blur_sigma"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"perturbation {key} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.occlusion, (int, float)) and 0 <= self.occlusion < 1):
            raise InputError(f"perturbation occlusion must be a fraction in [0, 1), got {self.occlusion!r}")
        if self.libero:
            from policytrim.envs.libero import PERTURBATIONS

            if self.libero not in PERTURBATIONS:
                raise InputError(
                    f"perturbation libero must be {', '.join(PERTURBATIONS)} (or empty), got {self.libero!r}"
                )

    @property
    def needs_image(self) -> bool:
        return self.blur_sigma > 0 or self.occlusion > 0

    @property
    def is_clean(self) -> bool:
        """Whether the env needs no wrapper (a LIBERO-PRO scene is set through the env config)."""
        return not (self.obs_noise or self.act_noise or self.blur_sigma or self.occlusion)

    def env_config(self, env_cfg: Any) -> Any:
        """The env config of this condition: ``env_cfg``, or with ``libero`` its LIBERO-PRO scene."""
        if not self.libero:
            return env_cfg
        if getattr(env_cfg, "suite", "") != "libero":
            raise InputError(f"perturbation {self.name!r} is a LIBERO-PRO scene: it needs env.suite=libero")
        from policytrim.envs.libero import check_perturbation

        check_perturbation(env_cfg.tasks, self.libero)
        return dataclasses.replace(env_cfg, libero_perturbation=self.libero)

    def describe(self) -> str:
        parts = []
        if self.obs_noise:
            parts.append(f"observation noise N(0, {self.obs_noise:g}²) on the state")
        if self.act_noise:
            parts.append(f"actuation noise N(0, {self.act_noise:g}²) on every executed action (clipped)")
        if self.blur_sigma:
            parts.append(f"Gaussian blur σ = {self.blur_sigma:g} px")
        if self.occlusion:
            parts.append(f"random occlusion of {100 * self.occlusion:g}% of the image")
        if self.libero:
            from policytrim.envs.libero import PERTURBATIONS

            parts.append(f"LIBERO-PRO {self.libero}: {PERTURBATIONS[self.libero]}")
        return ", ".join(parts) or "clean"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perturbation_from_dict(data: dict[str, Any]) -> Perturbation:
    unknown = set(data) - {"name", "obs_noise", "act_noise", "blur_sigma", "occlusion", "libero", "seed"}
    if unknown:
        raise InputError(
            f"unknown perturbation key(s) {sorted(unknown)}; known: name, obs_noise, act_noise, "
            "blur_sigma, occlusion, libero, seed"
        )
    return Perturbation(**data)


def _state_seed(seed: int, state: InitialState) -> int:
    text = f"policytrim-perturbation|{seed}|{state.task}|{state.seed}|{state.index}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of uint8 [h, w, c] (edges replicated)."""
    if sigma <= 0:
        return image
    radius = int(math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    img = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        img = sum(
            kernel[i] * np.take(padded, np.arange(i, i + image.shape[axis]), axis=axis) for i in range(kernel.size)
        )
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def occlude(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A grey rectangle of ``fraction`` of the image area (aspect ~1) at a random place."""
    if fraction <= 0:
        return image
    h, w = image.shape[:2]
    side = math.sqrt(fraction)
    oh, ow = max(1, round(h * side)), max(1, round(w * side))
    top, left = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    out = image.copy()
    out[top : top + oh, left : left + ow] = 127
    return out


class PerturbedEnv:
    """An `EnvAdapter` that perturbs what the policy sees and what the robot executes."""

    def __init__(self, env: Any, perturbation: Perturbation) -> None:
        self.env = env
        self.p = perturbation
        self._rng = np.random.default_rng(0)
        if perturbation.needs_image and OBS_IMAGE not in env.observation_spec:
            raise InputError(
                f"perturbation {perturbation.name!r} blurs or occludes images, but the env renders none "
                "(set env.image=true)"
            )

    def __getattr__(self, name: str) -> Any:  # task, instruction, horizon, spec, control period, terminated
        if name in ("env", "p"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        self._rng = np.random.default_rng(_state_seed(self.p.seed, state))
        return self._observe(self.env.reset(state))

    def step(self, action: np.ndarray, observe: bool = True) -> tuple[dict[str, np.ndarray], bool]:
        """``observe=False`` only reaches here when the inner env has ``observes_on_demand``."""
        action = np.asarray(action, dtype=np.float32)
        if self.p.act_noise:
            action = np.clip(action + self._rng.normal(0.0, self.p.act_noise, action.shape), -1.0, 1.0).astype(
                np.float32
            )
        obs, success = self.env.step(action) if observe else self.env.step(action, observe=False)
        return self._observe(obs), success

    def _observe(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = dict(obs)
        if self.p.obs_noise:
            state = obs[OBS_STATE]
            obs[OBS_STATE] = (state + self._rng.normal(0.0, self.p.obs_noise, state.shape)).astype(state.dtype)
        if OBS_IMAGE in obs and self.p.needs_image:
            image = gaussian_blur(obs[OBS_IMAGE], self.p.blur_sigma)
            obs[OBS_IMAGE] = occlude(image, self.p.occlusion, self._rng)
        return obs

    def close(self) -> None:
        self.env.close()


@dataclass(frozen=True)
class PerturbedEnvFactory:
    """Picklable ``env_factory`` for `policytrim.rollout.engine.RolloutEngine`."""

    perturbation: Perturbation
    inner: Any = None  # another factory (default `policytrim.envs.make_env`)

    def __call__(self, env_cfg: Any, task: str) -> Any:
        if self.inner is None:
            from policytrim.envs import make_env

            env = make_env(env_cfg, task)
        else:
            env = self.inner(env_cfg, task)
        return env if self.perturbation.is_clean else PerturbedEnv(env, self.perturbation)


DEFAULT_STATE_PERTURBATIONS = (
    Perturbation("obs_noise_0.01", obs_noise=0.01),
    Perturbation("act_noise_0.3", act_noise=0.3),
)
DEFAULT_IMAGE_PERTURBATIONS = (
    Perturbation("blur_sigma_2", blur_sigma=2.0),
    Perturbation("occlusion_0.5", occlusion=0.5),
)
