"""ManiSkill3 adapter (extra ``policytrim[maniskill]``, ManiSkill 3.0.1), state observations only.

Tasks: the Panda table-top tasks that ManiSkill's motion planners solve (`TASKS`): PickCube-v1,
PushCube-v1, StackCube-v1, PullCube-v1, PegInsertionSide-v1, PlugCharger-v1. The instruction of a
task is a sentence from `TASKS` (ManiSkill has none for these tasks).

Simulation: ``sim_backend="physx_cpu"``, ``num_envs=1``, ``obs_mode="state"``,
``render_backend="none"``: 100 Hz physics, 20 Hz control (``control_period_s = 0.05``). ManiSkill's
own time limit is not applied; only the rollout engine's horizon ends episodes.

Control mode: ``pd_ee_delta_pose``, 7-D in [-1, 1]: end-effector translation (3, x 0.1 m) and
rotation (3, axis-angle, x 0.1 rad) relative to the current pose in the robot's root frame, and the
gripper (-1 closed, 1 open). It is the action space of LIBERO's OSC_POSE and of the VLAs trained on
them (xyz first, then rotation, then the gripper), so a policy and the demonstrations'
suboptimality model (`policytrim.data.demos`, which scales and pauses the xyz part) read it the
same way on every simulator. ``pd_joint_delta_pos`` steps 2-3x faster on one core (no IK) but
its 8 numbers are joint offsets, which neither the pretrained VLAs nor the suboptimality model know.

Initial states: an address (task, seed, index) is ManiSkill's ``reset(seed=s)`` with ``s`` =
`maniskill_seed` (a stable hash of (seed, index) into [0, 2**31)). A seeded reset sets ManiSkill's
episode RNG, so the same address is bit-identical whatever ran before (PegInsertionSide rebuilds
its scene at every reset, ~140 ms; the others do not need to). A reset alone leaves the previous
episode's contacts in the contact queries (PickCube's ``is_grasped`` read 1 after a reset that
followed a grasp), so the adapter takes one physics substep from the reset state and restores the
state exactly before it observes. tests/with_maniskill checks the bit-identity after a grasp.

Replays. The same actions from the same address give the same trajectory bit for bit in envs with
the same history (two fresh envs, say). An env that ran other episodes first agrees until objects
come into contact and then drifts slightly: PhysX keeps solver state across a reset (PhysX's
enhanced-determinism flag does not change this; rebuilding the scene at every reset does, at ~40
times a reset's cost (~160 ms), so it is done only where identity matters: ``ManiSkillEnv(...,
fresh_scenes=True)`` and `ManiSkillEnv.rebuild`, which collection uses (its demonstrations are the
same whatever the worker count); PegInsertionSide rebuilds anyway and replays bit-identically).

Observation: ``"state"`` float32 [`STATE_WIDTH`], ManiSkill's flattened state observation (35-48
entries by task: the robot's joint positions and velocities (9 + 9), then the task's extras (TCP
pose, object poses, goal)) followed by zeros up to `STATE_WIDTH`, so that one multi-task policy
reads every task's state (the instruction says which task's layout it is). `layout` says where
each named part lies; `proprio_dims` names the entries a robot knows about itself (joints and TCP
pose).

Success: ``info["success"]``. A task that can fail (``info["fail"]``) sets ``terminated``.

No rendering device. SAPIEN needs a Vulkan device even with ``render_backend="none"``: ManiSkill's
actor builders create ``sapien.render.RenderMaterial`` objects for visual shapes, and without a
device that constructor raises "failed to find a rendering device". `patch_render_material_if_no_device`
(called before ManiSkill is imported) probes once and, only when no device exists, replaces that class
by `InertRenderMaterial`, which takes the same arguments and does nothing; state observations, physics
and success never read a render material. With a device (a GPU, or Mesa >= 25's lavapipe on the CPU:
docs/simulators.md, "Real CPU rendering") nothing is replaced.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from policytrim.envs.base import OBS_STATE, InitialState, ObsSpec, close_quietly
from policytrim.errors import InputError

INSTALL_HINT = (
    "install ManiSkill3 in its own environment: bash scripts/run.sh setup-maniskill "
    "(pip install 'policytrim[maniskill]')"
)
CONTROL_MODE = "pd_ee_delta_pose"
ACTION_DIM = 7
MAX_SPLIT_SEED = 2**31  # ManiSkill draws and accepts episode seeds in [0, 2**31)

# Task id -> instruction (ManiSkill's task descriptions, as one imperative sentence).
TASKS: dict[str, str] = {
    "PickCube-v1": "pick up the red cube and move it to the goal position",
    "PushCube-v1": "push the cube to the red and white target on the table",
    "PullCube-v1": "pull the cube back to the red and white target on the table",
    "StackCube-v1": "pick up the red cube and stack it on the green cube",
    "PegInsertionSide-v1": "pick up the peg and insert it sideways into the hole of the box",
    "PlugCharger-v1": "pick up the charger and plug it into the receptacle on the wall",
}

# Every task's state is padded with zeros to this width (the widest task's, StackCube-v1: 48).
STATE_WIDTH = 48

# Resident memory to budget per env (state observations, the first env's libraries included); the
# worker cap divides free memory by it.
ENV_MB = 400


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown ManiSkill task {task!r}; tasks: {', '.join(TASKS)}")


def resolve_maniskill_tasks(names: Any) -> tuple[str, ...]:
    """Unique task ids in order from names (comma-separated strings accepted)."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in (part.strip() for item in names for part in item.split(",")):
        if name:
            check_task(name)
            if name not in out:
                out.append(name)
    if not out:
        raise InputError(f"tasks: at least one ManiSkill task is needed, e.g. PickCube-v1 (tasks: {', '.join(TASKS)})")
    return tuple(out)


def maniskill_seed(seed: int, index: int) -> int:
    """ManiSkill's reset seed of the address (seed, index): a stable hash into [0, 2**31)."""
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < MAX_SPLIT_SEED):
        raise InputError(f"initial-state seed must be an integer in [0, 2**31), got {seed!r}")
    if not (isinstance(index, (int, np.integer)) and index >= 0):
        raise InputError(f"initial-state index must be >= 0, got {index!r}")
    digest = hashlib.blake2b(f"policytrim-maniskill|{int(seed)}|{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % MAX_SPLIT_SEED


class InertRenderMaterial:
    """Stand-in for ``sapien.render.RenderMaterial`` where no render device exists: accepts the
    constructor's keywords, attribute writes and ``set_*`` calls, and renders nothing."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("set_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def render_device_available() -> bool:
    """Whether SAPIEN finds a render device (a RenderMaterial can be created)."""
    import sapien

    try:
        sapien.render.RenderMaterial()
    except RuntimeError:
        return False
    return True


@functools.cache
def patch_render_material_if_no_device() -> bool:
    """Replace ``sapien.render.RenderMaterial`` by `InertRenderMaterial` if, and only if, SAPIEN
    finds no render device (module docstring); call before importing ``mani_skill``. Returns
    whether it replaced it. Once per process."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Failed to find system libvulkan": the probe's answer says it
        import sapien

        if render_device_available():
            return False
    # sapien.render re-exports sapien.pysapien.render; its own wrappers look the class up in either
    sapien.render.RenderMaterial = InertRenderMaterial
    sapien.pysapien.render.RenderMaterial = InertRenderMaterial
    return True


def import_maniskill() -> Any:
    """``mani_skill.envs`` (registers the tasks), after the no-render-device workaround."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Failed to find system libvulkan" (SAPIEN then uses its own)
            import sapien  # noqa: F401
    except ImportError:
        raise InputError(f"env.suite=maniskill: {INSTALL_HINT}") from None
    patch_render_material_if_no_device()
    import mani_skill.envs

    return mani_skill.envs


def make_raw_env(task: str, control_mode: str = CONTROL_MODE, obs_mode: str = "state") -> Any:
    """ManiSkill's env for ``task`` on the CPU physics backend, one env, no renderer, no time limit
    (the unwrapped ``BaseEnv``)."""
    check_task(task)
    import_maniskill()
    import gymnasium as gym

    env = gym.make(
        task,
        obs_mode=obs_mode,
        control_mode=control_mode,
        render_mode=None,
        sim_backend="physx_cpu",
        render_backend="none",
        num_envs=1,
    )
    return env.unwrapped


def rebuild_scene(raw_env: Any) -> None:
    """Rebuild ``raw_env``'s scene (ManiSkill's reconfiguring reset): a new PhysX scene, so no solver
    state of earlier episodes remains (module docstring, Replays)."""
    raw_env.reset(seed=0, options={"reconfigure": True})


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


@dataclass(frozen=True)
class StateLayout:
    """Where each named part of the flattened state observation lies: name -> (start, stop)."""

    parts: dict[str, tuple[int, int]]

    @property
    def size(self) -> int:
        return max(stop for _start, stop in self.parts.values())

    def dims(self, *names: str) -> tuple[int, ...]:
        return tuple(i for n in names if n in self.parts for i in range(*self.parts[n]))


def state_layout(raw_env: Any) -> StateLayout:
    """The layout of ``raw_env``'s state observation, from its state dict in ManiSkill's flattening
    order (dict order, depth first)."""
    state = raw_env._get_obs_state_dict(raw_env.get_info())
    parts: dict[str, tuple[int, int]] = {}
    offset = 0

    def walk(prefix: str, value: Any) -> None:
        nonlocal offset
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}." if isinstance(sub, dict) else f"{prefix}{key}", sub)
            return
        width = int(np.prod(_numpy(value).shape[1:])) if _numpy(value).ndim > 1 else 1
        parts[prefix] = (offset, offset + width)
        offset += width

    walk("", state)
    return StateLayout(parts)


class ManiSkillEnv:
    """One ManiSkill3 task (implements `policytrim.envs.base.EnvAdapter`); observation ``"state"``."""

    def __init__(self, task: str, horizon: int = 80, fresh_scenes: bool = False) -> None:
        """``fresh_scenes``: every reset rebuilds the scene (`rebuild`), so an episode depends only
        on its address and actions, never on what this env ran before (collection: the same
        demonstrations whatever the worker count); ~160 ms a reset instead of ~4 ms."""
        check_task(task)
        self.task = task
        self.fresh_scenes = bool(fresh_scenes)
        self.instruction = TASKS[task]
        self.horizon = int(horizon)
        self.action_dim = ACTION_DIM
        self.terminated = False
        self._env = make_raw_env(task)
        self.control_period_s = 1.0 / float(self._env.control_freq)
        obs, _ = self._env.reset(seed=0)
        self.layout = state_layout(self._env)
        if self.layout.size != _numpy(obs).shape[-1]:
            size = _numpy(obs).shape[-1]
            raise RuntimeError(f"{task}: the state layout covers {self.layout.size} entries, the observation {size}")
        if self.layout.size > STATE_WIDTH:
            raise RuntimeError(f"{task}: its state has {self.layout.size} entries, more than STATE_WIDTH={STATE_WIDTH}")
        self.observation_spec = {OBS_STATE: ObsSpec((STATE_WIDTH,), "float32")}
        self.proprio_dims: tuple[int, ...] = self.layout.dims("agent.qpos", "agent.qvel", "extra.tcp_pose")
        self._ready = False

    # -- EnvAdapter ---------------------------------------------------------------------------

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        if state.task != self.task:
            raise ValueError(f"this adapter runs {self.task!r}, asked to reset to a {state.task!r} state")
        options = {"reconfigure": True} if self.fresh_scenes else None
        self._env.reset(seed=maniskill_seed(state.seed, state.index), options=options)
        obs = self._fresh_contacts_observation()
        self._ready = True
        self.terminated = False
        return self._observation(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        if not self._ready:
            raise RuntimeError("reset() must be called before step()")
        import torch

        a = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, ACTION_DIM))
        obs, _reward, _terminated, _truncated, info = self._env.step(a)
        if "fail" in info:
            self.terminated = bool(_numpy(info["fail"]).reshape(-1)[0])
        return self._observation(obs), bool(_numpy(info["success"]).reshape(-1)[0])

    def rebuild(self) -> None:
        """Rebuild the scene (a new PhysX scene): what runs next no longer depends on what ran
        before in this env (module docstring, Replays). Call `reset` before stepping again."""
        rebuild_scene(self._env)
        self._ready = False

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        close_quietly(env)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> Any:
        """ManiSkill's BaseEnv (for the demonstration converter, tests and debugging)."""
        return self._env

    def _fresh_contacts_observation(self) -> Any:
        """The observation of the state just reset, with contacts of that state, not the last episode's.

        A reset sets poses without a simulation step, so contact queries (PickCube's ``is_grasped``)
        still report the previous episode's last step: a reset after a grasp observed
        ``is_grasped = 1``. One physics substep from the reset state refreshes the contacts; the
        state (poses, velocities, controller targets) is then restored exactly."""
        saved = self._env.get_state_dict()
        self._env.scene.px.step()
        self._env.set_state_dict(saved)
        return self._env.get_obs(self._env.get_info())

    def _observation(self, obs: Any) -> dict[str, np.ndarray]:
        state = np.zeros(STATE_WIDTH, np.float32)
        flat = np.asarray(_numpy(obs).reshape(-1), dtype=np.float32)
        state[: len(flat)] = flat
        return {OBS_STATE: state}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
