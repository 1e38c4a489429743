"""Before/after filmstrips (the paper's Fig. 3): the same initial state rolled out by several
policies, rendered from a Meta-World camera, a few frames per episode side by side.

The rollouts go through the rollout engine like every other evaluation (in-process, so that the
frames can be read back): a `RecordingEnv` wrapper renders every step into a registry keyed by
the initial state. Rendering works for state policies too (the camera image is added to the
observation and ignored by a policy without an image encoder). CPU rendering runs at ~100 frames/s
at 96 px, so a filmstrip of two policies costs a few seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim.envs import initial_states, split_seed
from policytrim.envs.base import OBS_IMAGE, InitialState

_FRAMES: dict[tuple[str, int, int], list[np.ndarray]] = {}


class RecordingEnv:
    """Keeps every rendered frame of the current episode in the module registry."""

    # It records every frame, so the workers must not skip rendering mid-chunk (the inner Meta-World
    # env has observes_on_demand = True, which __getattr__ would otherwise pass on).
    observes_on_demand = False

    def __init__(self, env: Any) -> None:
        self.env = env
        self._key: tuple[str, int, int] | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("env", "_key"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        obs = self.env.reset(state)
        self._key = (state.task, state.seed, state.index)
        _FRAMES[self._key] = [obs[OBS_IMAGE].copy()]
        return obs

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        obs, success = self.env.step(action)
        _FRAMES[self._key].append(obs[OBS_IMAGE].copy())
        return obs, success

    def close(self) -> None:
        self.env.close()


@dataclasses.dataclass(frozen=True)
class RecordingEnvFactory:
    """``env_factory`` rendering ``size`` px images from ``camera`` for every env."""

    size: int = 96
    camera: str = "corner2"

    def __call__(self, env_cfg: Any, task: str) -> RecordingEnv:
        from policytrim.envs import make_env

        cfg = dataclasses.replace(env_cfg, image=True, image_size=self.size, camera=self.camera)
        return RecordingEnv(make_env(cfg, task))


def record_rollouts(
    policies: dict[str, tuple[Any, int]],
    env_cfg: Any,
    task: str,
    index: int,
    mode: str,
    seed: int,
    split: str = "test",
    size: int = 96,
    camera: str = "corner2",
) -> dict[str, dict[str, Any]]:
    """Roll out each ``{label: (policy, window)}`` once from test state ``index`` of ``task`` with
    the same random numbers; returns ``{label: {"frames": [T+1 images], "success", "steps", "calls"}}``."""
    from policytrim.rollout.engine import RolloutEngine

    state = initial_states(task, split_seed(env_cfg, split), 1, start=index)
    out = {}
    with RolloutEngine(env_cfg, num_workers=0, env_factory=RecordingEnvFactory(size, camera)) as engine:
        for label, (policy, window) in policies.items():
            traj = engine.run(policy, state, 1, torch.tensor([[int(window)]]), mode, seed, record_chunks=False)
            frames = _FRAMES.pop((state[0].task, state[0].seed, state[0].index), [])
            out[label] = {
                "frames": frames,
                "success": bool(traj.success[0]),
                "steps": int(traj.steps[0]),
                "calls": int(traj.calls[0]),
                "window": int(window),
            }
    return out


def pick_frames(frames: Sequence[np.ndarray], count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` frames evenly spaced from the first to the last (step numbers kept)."""
    if not frames:
        return []
    idx = sorted(set(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int).tolist()))
    return [(i, frames[i]) for i in idx]


def filmstrip(
    policies: dict[str, tuple[Any, int]],
    env_cfg: Any,
    task: str,
    index: int,
    mode: str,
    seed: int,
    path: Path,
    frames: int = 8,
    horizon_aligned: bool = True,
) -> dict[str, Any]:
    """Render a filmstrip PNG at ``path``: one row per policy. With ``horizon_aligned`` every row
    samples the same step numbers (spaced over the longest episode), so a shorter episode shows
    its final frame early and ends sooner. Returns what each rollout did."""
    from policytrim.eval.plots import filmstrip_figure

    runs = record_rollouts(policies, env_cfg, task, index, mode, seed)
    longest = max(len(r["frames"]) for r in runs.values())
    strips = {}
    for label, r in runs.items():
        if horizon_aligned:
            steps = sorted(set(np.linspace(0, longest - 1, num=frames).round().astype(int).tolist()))
            chosen = [(t, r["frames"][t]) for t in steps if t < len(r["frames"])]
            if chosen and chosen[-1][0] != len(r["frames"]) - 1:
                chosen.append((len(r["frames"]) - 1, r["frames"][-1]))
        else:
            chosen = pick_frames(r["frames"], frames)
        status = "success" if r["success"] else "failure"
        strips[f"{label}: k={r['window']}, T={r['steps']}, C={r['calls']} ({status})"] = chosen
    filmstrip_figure(strips, path, title=f"{task}, test state {index}, {mode} mode (same random numbers)")
    return {label: {k: v for k, v in r.items() if k != "frames"} for label, r in runs.items()}


def representative_state(outcomes: dict[str, dict[str, list]], base: str, new: str, task: str) -> int | None:
    """A test state of ``task`` where both policies succeeded and whose step difference is the
    median of such states (a typical pair, not the best one); None when there is none."""
    b, n = outcomes[base], outcomes[new]
    new_by_key = {(t, i): (s, T) for t, i, s, T in zip(n["task"], n["index"], n["success"], n["steps"], strict=True)}
    pairs = []
    for t, i, s, T in zip(b["task"], b["index"], b["success"], b["steps"], strict=True):
        other = new_by_key.get((t, i))
        if t == task and s and other and other[0]:
            pairs.append((T - other[1], i))
    if not pairs:
        return None
    pairs.sort()
    return pairs[len(pairs) // 2][1]
