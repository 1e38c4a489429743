"""ManiSkill3's motion-planned demonstrations behind the chunk-policy contract (a window-1 expert).

ManiSkill's motion planners plan from the simulator's full state, not from an observation, and act
in joint targets; `policytrim.envs.maniskill_demos` turns their plans for chosen initial states into
``pd_ee_delta_pose`` demonstrations recorded through our adapter. This expert acts from those:
for an observation it finds the nearest demonstrated frame of the row's task (Euclidean distance
over the state without joint velocities, which change fastest and say least about where the task
stands) and answers that frame's action. On a demonstrated initial state it therefore replays its
demonstration in closed loop, and it tolerates the small drift of a reused env (PhysX,
`policytrim.envs.maniskill`) and small perturbations of the actions. It only knows the initial
states it was built for: an observation farther than ``max_distance`` from every frame (another
initial state, or a detour far off the path) is an error, not a guess.

It does not recover from perturbations: it answers the recorded action, which does not steer back
to the path, so demonstrations with the suboptimality model applied to its actions fail. Record it
clean (``data.no-suboptimal``).

Like Meta-World's experts it is deterministic (``mode`` and the generators are ignored), log-probs
are zero, and it cannot be trained or saved; its spec rebuilds it by planning again (plans are
deterministic per address).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim.envs.base import OBS_STATE
from policytrim.envs.maniskill import ACTION_DIM, TASKS
from policytrim.errors import InputError
from policytrim.policies.base import ChunkSample, Mode, Observation

DEFAULT_MAX_DISTANCE = 0.05  # state units (m, rad, quaternion parts); other PickCube starts lie 0.14-1.9 away
_TASK_OF_INSTRUCTION = {instruction: task for task, instruction in TASKS.items()}


class ManiSkillDemoExpert:
    """Nearest-frame closed-loop expert over converted motion-planner demonstrations (module docstring)."""

    chunk_size = 1
    default_window = 1
    max_window = 1
    action_dim = ACTION_DIM

    def __init__(
        self,
        frames: dict[str, tuple[np.ndarray, np.ndarray]],
        key_dims: dict[str, tuple[int, ...]],
        max_distance: float = DEFAULT_MAX_DISTANCE,
        origin: dict[str, Any] | None = None,
    ) -> None:
        """``frames[task] = (states [N, D], actions [N, 7])``; ``key_dims[task]``: the state
        entries distances are measured on."""
        if not frames:
            raise InputError("the ManiSkill expert needs at least one successful demonstration")
        self.tasks: tuple[str, ...] = tuple(frames)
        self.max_distance = float(max_distance)
        self._keys = {t: np.asarray(s, np.float64)[:, list(key_dims[t])] for t, (s, _a) in frames.items()}
        self._dims = {t: list(key_dims[t]) for t in frames}
        self._actions = {t: np.asarray(a, np.float32) for t, (_s, a) in frames.items()}
        self._origin = origin or {}

    @classmethod
    def plan(
        cls, tasks: Sequence[str], seed: int, count: int, max_distance: float = DEFAULT_MAX_DISTANCE
    ) -> ManiSkillDemoExpert:
        """Plan, convert and check demonstrations for addresses (task, seed, 0..count-1) of each
        task and keep the successful ones (needs ManiSkill; ~1-10 s per address on one core)."""
        from policytrim.envs.maniskill_demos import MotionPlanDemonstrator

        frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        key_dims: dict[str, tuple[int, ...]] = {}
        for task in tasks:
            demo = MotionPlanDemonstrator(task)
            try:
                kept = [d for d in (demo.demonstrate(_address(task, seed, i)) for i in range(count)) if d.success]
                layout = demo.env.layout
            finally:
                demo.close()
            if kept:
                frames[task] = (np.concatenate([d.states for d in kept]), np.concatenate([d.actions for d in kept]))
                key_dims[task] = tuple(i for i in range(layout.size) if i not in set(layout.dims("agent.qvel")))
        origin = {"tasks": list(tasks), "seed": int(seed), "count": int(count)}
        return cls(frames, key_dims, max_distance, origin)

    def _task_of(self, instruction: str) -> str:
        task = _TASK_OF_INSTRUCTION.get(instruction)
        if task is None or task not in self._keys:
            known = ", ".join(self.tasks)
            raise ValueError(f"the ManiSkill expert has demonstrations for {known} only; got {instruction!r}")
        return task

    def nearest(self, task: str, state: np.ndarray) -> tuple[int, float]:
        """(frame index, distance) of the demonstrated frame of ``task`` nearest to ``state``."""
        keys = self._keys[task]
        d = np.linalg.norm(keys - np.asarray(state, np.float64)[self._dims[task]], axis=1)
        i = int(np.argmin(d))
        return i, float(d[i])

    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode = "deterministic",
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        """Actions [B, 1, 7]: the action of each row's nearest demonstrated frame; logp zeros [B, 1]."""
        states = obs[OBS_STATE].detach().to("cpu", torch.float64).numpy()
        if len(instructions) != len(states):
            raise ValueError(f"got {len(states)} observations but {len(instructions)} instructions")
        rows = []
        for text, state in zip(instructions, states, strict=True):
            task = self._task_of(text)
            i, distance = self.nearest(task, state)
            if distance > self.max_distance:
                raise ValueError(
                    f"{task}: the observation is {distance:.3f} from every demonstrated frame "
                    f"(max {self.max_distance}); "
                    "the ManiSkill expert only acts from the initial states it planned for"
                )
            rows.append(self._actions[task][i])
        actions = np.stack(rows) if rows else np.zeros((0, ACTION_DIM), np.float32)
        return ChunkSample(actions=torch.from_numpy(actions).unsqueeze(1), logp=torch.zeros(len(states), 1))

    def log_prob(
        self, obs: Observation, instructions: Sequence[str], replay: dict[str, torch.Tensor], row_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("the ManiSkill expert has no action density; it cannot be trained with GRPO")

    def bc_loss(
        self, obs: Observation, instructions: Sequence[str], actions: torch.Tensor, row_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("the ManiSkill expert is not trainable")

    def spec(self) -> dict:
        return {"kind": "maniskill_expert", **self._origin, "max_distance": self.max_distance}

    @classmethod
    def from_spec(cls, spec: dict) -> ManiSkillDemoExpert:
        if spec.get("kind") != "maniskill_expert" or not {"tasks", "seed", "count"} <= set(spec):
            raise InputError(f"not a ManiSkill expert spec (kind maniskill_expert with tasks, seed, count): {spec!r}")
        max_distance = float(spec.get("max_distance", DEFAULT_MAX_DISTANCE))
        return cls.plan(spec["tasks"], int(spec["seed"]), int(spec["count"]), max_distance)

    def save_pretrained(self, directory: str | Path) -> None:
        raise InputError("the ManiSkill expert has no weights to save; rebuild it with ManiSkillDemoExpert.plan")

    def eval(self) -> ManiSkillDemoExpert:
        return self

    def train(self, mode: bool = True) -> ManiSkillDemoExpert:
        return self

    def parameters(self):
        return iter(())


def _address(task: str, seed: int, index: int) -> Any:
    from policytrim.envs.base import InitialState

    return InitialState(task, int(seed), int(index))
