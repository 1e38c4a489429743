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

Given the engine's per-trajectory generators (as `policytrim collect` hands them), it tracks instead:
each trajectory follows the demonstration whose first frame is nearest to its first observation,
with a pointer to the frame it is at. While the TCP is within ``TRACK_TOLERANCE_M`` of that frame's
TCP position it answers the frame's action plus a correction of the remaining position error, and
the pointer moves on one frame; farther away it only steers the TCP back (rotation 0, the
previous gripper command) and waits. It therefore recovers from the suboptimality model's pauses,
slow-downs and detours (`policytrim.data.collect`), and a clean episode replays its demonstration
(the correction is zero on the path).

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

TRACK_TOLERANCE_M = 0.01  # the TCP within 1 cm of the tracked frame's: follow the demonstration
TRANSLATION_SCALE_M = 0.1  # pd_ee_delta_pose: one unit of translation action moves 0.1 m
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
        frames: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        key_dims: dict[str, tuple[int, ...]] | None = None,
        max_distance: float = DEFAULT_MAX_DISTANCE,
        origin: dict[str, Any] | None = None,
    ) -> None:
        """``frames[task] = (states [N, D], actions [N, 7])``; ``key_dims[task]``: the state
        entries distances are measured on. More frames join with `plan_states`."""
        self.max_distance = float(max_distance)
        self._keys: dict[str, np.ndarray] = {}
        self._dims: dict[str, list[int]] = {}
        self._actions: dict[str, np.ndarray] = {}
        self._origin = origin or {}
        self._planners: dict[str, Any] = {}
        self._demos: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # task -> [(TCP xyz [T, 3], actions)]
        self._firsts: dict[str, list[np.ndarray]] = {}  # task -> first frame of each demonstration (key dims)
        self._tracks: dict[int, list[Any]] = {}
        self._tcp_dims: dict[str, list[int]] = {}  # generator seed -> [task, demonstration index, frame pointer]
        for task, (states, actions) in (frames or {}).items():
            self._add_frames(task, states, actions, (key_dims or {})[task])

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks with at least one demonstrated frame."""
        return tuple(self._keys)

    def _add_frames(self, task: str, states: np.ndarray, actions: np.ndarray, dims: Sequence[int]) -> None:
        keys = np.asarray(states, np.float64)[:, list(dims)]
        if task in self._keys:
            keys = np.concatenate([self._keys[task], keys])
            actions = np.concatenate([self._actions[task], actions])
        self._keys[task], self._dims[task] = keys, list(dims)
        self._actions[task] = np.asarray(actions, np.float32)

    @classmethod
    def plan(
        cls, tasks: Sequence[str], seed: int, count: int, max_distance: float = DEFAULT_MAX_DISTANCE
    ) -> ManiSkillDemoExpert:
        """Plan, convert and check demonstrations for addresses (task, seed, 0..count-1) of each
        task and keep the successful ones (needs ManiSkill; ~1-10 s per address on one core)."""
        origin = {"tasks": list(tasks), "seed": int(seed), "count": int(count)}
        expert = cls(max_distance=max_distance, origin=origin)
        try:
            expert.plan_states([_address(task, seed, i) for task in tasks for i in range(count)])
        finally:
            expert.close()
        if not expert.tasks:
            raise InputError("the ManiSkill expert needs at least one successful demonstration")
        return expert

    def plan_states(self, states: Sequence[Any], pool: Any = None) -> list[Any]:
        """Plan, convert and check a demonstration for every address in ``states``
        (`policytrim.envs.maniskill_demos.MotionPlanDemonstrator.demonstrate`: in this process, one
        planner per task kept until `close`; or in the worker processes of ``pool``, a
        `policytrim.envs.maniskill_demos.PlanningPool`) and add the successful ones' frames, in the
        order of ``states``. Returns every Demonstration, in order, with its flags (failures included)."""
        from policytrim.envs.maniskill_demos import MotionPlanDemonstrator

        if pool is not None:
            demos = pool.demonstrate(list(states))
        else:
            demos = []
            for state in states:
                planner = self._planners.get(state.task)
                if planner is None:
                    planner = self._planners[state.task] = MotionPlanDemonstrator(state.task)
                demos.append(planner.demonstrate(state))
        for state, demo in zip(states, demos, strict=True):
            if demo.success:
                layout = demo.layout
                skip = set(layout.dims("agent.qvel"))
                dims = [i for i in range(layout.size) if i not in skip]
                self._add_frames(state.task, demo.states, demo.actions, dims)
                tcp = list(layout.dims("extra.tcp_pose"))[:3]
                self._demos.setdefault(state.task, []).append((demo.states[:, tcp].astype(np.float64), demo.actions))
                self._firsts.setdefault(state.task, []).append(np.asarray(demo.states[0, dims], np.float64))
                self._tcp_dims[state.task] = tcp
        return demos

    def begin(self) -> None:
        """Forget the trajectories tracked so far (a new engine run starts)."""
        self._tracks = {}

    def _track(self, task: str, state: np.ndarray, seed: int) -> np.ndarray:
        """The tracking action of trajectory ``seed`` (module docstring)."""
        track = self._tracks.get(seed)
        if track is None:
            firsts = np.stack(self._firsts[task])
            d = np.linalg.norm(firsts - state[self._dims[task]], axis=1)
            if float(d.min()) > self.max_distance:
                raise ValueError(
                    f"{task}: the first observation is {float(d.min()):.3f} from every demonstration's first frame "
                    f"(max {self.max_distance}); the ManiSkill expert only acts from the initial states it planned for"
                )
            track = self._tracks[seed] = [task, int(np.argmin(d)), 0]
        _task, k, i = track
        tcp_path, actions = self._demos[task][k]
        i = min(i, len(actions) - 1)
        tcp = state[self._tcp_dims[task]]
        error = (tcp_path[i] - tcp) / TRANSLATION_SCALE_M
        if np.linalg.norm(tcp_path[i] - tcp) > TRACK_TOLERANCE_M:
            action = np.zeros(ACTION_DIM, np.float64)
            action[:3] = error
            action[6] = actions[max(i - 1, 0), 6]
        else:
            action = actions[i].astype(np.float64)
            action[:3] += error
            track[2] = i + 1
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        """Close the planners' simulators (the frames stay)."""
        planners, self._planners = self._planners, {}
        for planner in planners.values():
            planner.close()

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
        """Actions [B, 1, 7]: with generators, each row's tracking action; without, the action of its
        nearest demonstrated frame (module docstring); logp zeros [B, 1]."""
        states = obs[OBS_STATE].detach().to("cpu", torch.float64).numpy()
        if len(instructions) != len(states):
            raise ValueError(f"got {len(states)} observations but {len(instructions)} instructions")
        rows = []
        for b, (text, state) in enumerate(zip(instructions, states, strict=True)):
            task = self._task_of(text)
            if generators is not None and task in self._demos:
                rows.append(self._track(task, state, generators[b].initial_seed()))
                continue
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
