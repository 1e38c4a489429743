"""Demonstrations for ManiSkill3 tasks from ManiSkill's own motion planners, in the adapter's control mode.

ManiSkill's motion-planning solutions (``mani_skill.examples.motionplanning.panda.solutions``) plan
with mplib and act in ``pd_joint_pos`` (absolute joint targets). The policy acts in
``pd_ee_delta_pose`` (`policytrim.envs.maniskill`), so each plan is converted the way ManiSkill's
trajectory tool converts ``pd_joint_pos`` to an end-effector delta mode
(``mani_skill.trajectory.utils.actions.conversion.from_pd_joint_pos_to_ee``): the plan is replayed
in a ``pd_joint_pos`` env reset to the same seed; after each of its steps the end-effector pose of
its *target* joint positions (forward kinematics) becomes the target of one delta action in our
adapter, repeated (up to 4 steps) while that delta had to be clipped to the action bounds. The
conversion runs through `ManiSkillEnv` itself, so what is recorded is exactly what our adapter
observed and executed; it stops at the first success (as the rollout engine does).

A demonstration is kept only if (1) the planner reported success, (2) the conversion reached
success in our adapter, and (3) replaying the recorded actions open loop from a new reset of the
same address, in the same adapter right after the conversion episode (as an env the rollout engine
reuses), succeeds too. Whether that replay was bit-identical is recorded (``replay_identical``):
after other episodes PhysX drifts slightly once objects touch (`policytrim.envs.maniskill`, Replays).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from policytrim.envs.base import OBS_STATE, InitialState
from policytrim.envs.maniskill import (
    ManiSkillEnv,
    StateLayout,
    check_task,
    make_raw_env,
    maniskill_seed,
    rebuild_scene,
)
from policytrim.errors import InputError

MAX_INNER_STEPS = 4  # ManiSkill's converter: up to 4 delta steps per joint-target step while clipped
SOLUTIONS: dict[str, str] = {  # task -> solve function in mani_skill.examples.motionplanning.panda.solutions
    "PickCube-v1": "solvePickCube",
    "PushCube-v1": "solvePushCube",
    "PullCube-v1": "solvePullCube",
    "StackCube-v1": "solveStackCube",
    "PegInsertionSide-v1": "solvePegInsertionSide",
    "PlugCharger-v1": "solvePlugCharger",
}


@dataclass
class Demonstration:
    """One converted demonstration: ``states[t]`` is the observation before ``actions[t]``."""

    state: InitialState
    states: np.ndarray  # float32 [T, D]
    actions: np.ndarray  # float32 [T, 7]
    success: bool  # all three checks of the module docstring passed
    planned: bool  # the motion planner reported success
    converted: bool  # the converted actions succeeded in our adapter
    replayed: bool  # an open-loop replay of the actions from a new reset succeeded
    replay_identical: bool  # ... and observed exactly the recorded observations
    plan_steps: int  # pd_joint_pos steps of the plan
    plan_seconds: float
    convert_seconds: float
    layout: StateLayout | None = None  # where each named part of ``states`` lies (the task's layout)


class _Recorder:
    """Records the actions a motion-planning solution sends to its env (what RecordEpisode keeps)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.actions: list[np.ndarray] = []

    @property
    def unwrapped(self) -> Any:
        return self.env

    def reset(self, **kwargs: Any) -> Any:
        self.actions = []
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        self.actions.append(np.asarray(action, dtype=np.float64).copy())
        return self.env.step(action)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def _solver(task: str) -> Any:
    if task not in SOLUTIONS:
        known = ", ".join(SOLUTIONS)
        raise InputError(f"ManiSkill has no motion-planning solution for {task!r}; tasks with one: {known}")
    from mani_skill.examples.motionplanning.panda import solutions

    return getattr(solutions, SOLUTIONS[task])


class MotionPlanDemonstrator:
    """Plans, converts and checks demonstrations of one task (one planning env + one adapter)."""

    def __init__(self, task: str, horizon: int = 400) -> None:
        check_task(task)
        self.task = task
        self.env = ManiSkillEnv(task, horizon)  # builds after the no-render-device workaround
        self._plan_env = make_raw_env(task, control_mode="pd_joint_pos")
        self._solve = _solver(task)

    def close(self) -> None:
        self.env.close()
        self._plan_env.close()

    def plan(self, state: InitialState) -> tuple[np.ndarray, bool]:
        """The planner's ``pd_joint_pos`` actions [T, 8] for ``state`` and whether it succeeded."""
        import contextlib
        import io

        recorder = _Recorder(self._plan_env)
        with contextlib.redirect_stdout(io.StringIO()):  # planners print on failure ("screw plan failed")
            try:
                result = self._solve(recorder, seed=maniskill_seed(state.seed, state.index), debug=False, vis=False)
            except Exception:  # noqa: BLE001 - a planner that raises has failed on this state
                result = -1
        actions = np.stack(recorder.actions) if recorder.actions else np.zeros((0, 8))
        ok = not (isinstance(result, int) and result == -1) and _success(result[-1])
        return actions, bool(ok)

    def convert(self, state: InitialState, plan: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Our adapter's (observations [T, D], actions [T, 7], success) for a ``pd_joint_pos`` plan."""
        import sapien
        import torch
        from mani_skill.trajectory.utils.actions.conversion import delta_pose_to_pd_ee_delta
        from mani_skill.utils import common
        from mani_skill.utils.structs.pose import Pose

        ori_env, env = self._plan_env, self.env.unwrapped
        ori_env.reset(seed=maniskill_seed(state.seed, state.index))
        obs = self.env.reset(state)
        ori_controller, controller = ori_env.agent.controller, env.agent.controller
        ori_arm, arm = ori_controller.controllers["arm"], controller.controllers["arm"]
        pin_model = ori_controller.articulation.create_pinocchio_model()
        ee_link = arm.ee_link
        states, actions = [], []
        for ori_action in plan:
            if len(actions) >= self.env.horizon:
                break
            action_dict = ori_controller.to_action_dict(common.to_tensor(ori_action))
            ori_env.step(common.to_tensor(ori_action))
            full_qpos = ori_controller.articulation.get_qpos()
            full_qpos[:, ori_arm.active_joint_indices] = ori_arm._target_qpos
            pin_model.compute_forward_kinematics(full_qpos.cpu().numpy()[0])
            target = Pose.create(ori_controller.articulation.pose.sp * pin_model.get_link_pose(ee_link.index))
            for _ in range(MAX_INNER_STEPS):
                delta = sapien.Pose((target.p - ee_link.pose.p).cpu().numpy()[0], (ee_link.pose.sp * target.sp.inv()).q)
                arm_action = np.asarray(delta_pose_to_pd_ee_delta(arm, delta), dtype=np.float64)
                clipped = np.abs(arm_action[:3]).max() > 1 or np.linalg.norm(arm_action[3:]) > 1
                arm_action[:3] = np.clip(arm_action[:3], -1, 1)
                if np.linalg.norm(arm_action[3:]) > 1:
                    arm_action[3:] /= np.linalg.norm(arm_action[3:])
                out = dict(action_dict, arm=torch.as_tensor(arm_action, dtype=torch.float32))
                action = common.to_numpy(controller.from_action_dict(common.to_tensor(out)))
                action = action.reshape(-1).astype(np.float32)
                states.append(obs[OBS_STATE])
                actions.append(action)
                obs, success = self.env.step(action)
                if success:
                    return np.stack(states), np.stack(actions), True
                if not clipped or len(actions) >= self.env.horizon:
                    break
        empty = (np.zeros((0, self.env.observation_spec[OBS_STATE].shape[0]), np.float32), np.zeros((0, 7), np.float32))
        return (np.stack(states), np.stack(actions), False) if actions else (*empty, False)

    def replay(self, state: InitialState, states: np.ndarray, actions: np.ndarray) -> tuple[bool, bool]:
        """(success, bit-identical): the actions replayed open loop from a new reset of ``state``."""
        obs = self.env.reset(state)
        success, identical = False, True
        for t, action in enumerate(actions):
            identical = identical and np.array_equal(obs[OBS_STATE], states[t])
            obs, success = self.env.step(action)
            if success:
                break
        return success, identical

    def demonstrate(self, state: InitialState) -> Demonstration:
        if state.task != self.task:
            raise ValueError(f"this demonstrator runs {self.task!r}, asked for a {state.task!r} state")
        t0 = time.perf_counter()
        # fresh scenes: the demonstration depends on its address only, not on the states planned before
        rebuild_scene(self._plan_env)
        self.env.rebuild()
        plan, planned = self.plan(state)
        t1 = time.perf_counter()
        if planned:
            states, actions, converted = self.convert(state, plan)
        else:
            states, actions, converted = np.zeros((0, 0), np.float32), np.zeros((0, 7), np.float32), False
        replayed, identical = self.replay(state, states, actions) if converted else (False, False)
        t2 = time.perf_counter()
        return Demonstration(
            state,
            states,
            actions,
            replayed and planned,
            planned,
            converted,
            replayed,
            identical,
            len(plan),
            t1 - t0,
            t2 - t1,
            self.env.layout,
        )


_WORKER_DEMONSTRATORS: dict[str, MotionPlanDemonstrator] = {}  # a planning worker's demonstrators


def _demonstrate_in_worker(state: InitialState) -> Demonstration:
    """One address, in a planning worker process (its demonstrator per task kept for later ones)."""
    demonstrator = _WORKER_DEMONSTRATORS.get(state.task)
    if demonstrator is None:
        demonstrator = _WORKER_DEMONSTRATORS[state.task] = MotionPlanDemonstrator(state.task)
    return demonstrator.demonstrate(state)


def _planning_worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the collecting process's to handle
    import torch

    torch.set_num_threads(1)


class PlanningPool:
    """``workers`` processes (spawn, one thread each) that plan, convert and check demonstrations
    in parallel; `demonstrate` returns them in the order of the addresses. Each demonstration is
    made in freshly rebuilt scenes (`MotionPlanDemonstrator.demonstrate`), so the results do not
    depend on the worker count or on which worker made which."""

    def __init__(self, workers: int) -> None:
        import concurrent.futures
        import multiprocessing as mp

        from policytrim.runtime import single_thread_environment

        if workers < 1:
            raise ValueError(f"a planning pool needs at least one worker, got {workers}")
        self.workers = int(workers)
        with single_thread_environment():  # the spawned workers inherit the environment when they start
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp.get_context("spawn"), initializer=_planning_worker_init
            )
            # start every worker now, while the environment says one thread
            list(self._executor.map(abs, range(self.workers)))

    def demonstrate(self, states: list[InitialState]) -> list[Demonstration]:
        return list(self._executor.map(_demonstrate_in_worker, states))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PlanningPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _success(info: Any) -> bool:
    value = info.get("success", False)
    return bool(np.asarray(value.cpu() if hasattr(value, "cpu") else value).reshape(-1)[0])


def demonstrations(task: str, seed: int, count: int, start: int = 0, horizon: int = 400) -> list[Demonstration]:
    """Planned, converted and checked demonstrations for addresses (task, seed, start..start+count-1)
    (failures included, with their flags)."""
    demo = MotionPlanDemonstrator(task, horizon)
    try:
        return [demo.demonstrate(InitialState(task, int(seed), start + i)) for i in range(count)]
    finally:
        demo.close()
