"""Meta-World v3 adapter: any of the 50 tasks, state (and optionally RGB image) observations.

Initial states. Meta-World's own reproducible states are the 50 ``MT1(task, seed=s).train_tasks``
of a seed. We address a state as (task, seed, index): index i uses MT1 block ``i // 50`` and entry
``i % 50`` of it. Block 0 of seed s is Meta-World's own ``MT1(task, seed=s)``, so the first 50
states of a seed are exactly the standard benchmark's; block b >= 1 uses an MT1 seed derived from
(s, b) by a stable hash into [2**31, 2**32), which never equals a block-0 seed (split seeds are
< 2**31), so splits with different seeds never share a block. The same address is bit-identical in
every process.

Horizon. Meta-World truncates at its own ``max_path_length`` (500) and then refuses to step; the
adapter lifts that limit so that only the rollout engine's horizon (``env.horizon``) ends episodes.

Images. ``env.image=True`` adds ``"image"``: uint8 [size, size, 3] from ``env.camera``, rendered
offscreen (MUJOCO_GL=egl unless set) with shadows and multisampling off (cheap on CPU). Several
Meta-World cameras (``corner``, ``corner2``, ...) are mounted rolled upside down; when the camera's
up axis points downwards in the world the image is rotated by 180 degrees (a rotation, not a
mirror flip, so left and right and the sense of rotations are preserved). Rendering costs far more
than a physics step (`benchmarks/rendering.py`), and a chunk policy only sees the observation a
chunk starts from: ``step(action, observe=False)`` skips the image (``observes_on_demand``), so the
env workers render once per chunk instead of once per step.

Proprioception. ``PROPRIO_DIMS`` are the entries of the 39-dim state a robot knows about itself
(hand position and gripper opening, now and one step before); an image policy reads those and
sees objects and goals only through the camera (`policytrim.policies.tinyvla.TinyVLA` state_dims).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import numpy as np

from policytrim.envs.base import OBS_IMAGE, OBS_STATE, InitialState, ObsSpec, close_quietly
from policytrim.envs.tasks import ALL_TASKS, INSTRUCTIONS
from policytrim.errors import InputError

STATES_PER_BLOCK = 50  # Meta-World's MT1 generates 50 states per seed
MAX_SPLIT_SEED = 2**31  # split seeds live in [0, 2**31); derived block seeds in [2**31, 2**32)
_NO_TRUNCATION = 10**9
# hand xyz, gripper opening (0:4) and the same one step earlier (18:22) in Meta-World's 39-dim state
PROPRIO_DIMS: tuple[int, ...] = (0, 1, 2, 3, 18, 19, 20, 21)


class SimulatorFault(RuntimeError):
    """The simulator became unusable (unstable physics, internal error); the episode is void."""


def _check_task(task: str) -> None:
    if task not in INSTRUCTIONS:
        raise InputError(f"unknown Meta-World task {task!r}; valid tasks are: {', '.join(ALL_TASKS)}")


def mt1_seed(seed: int, block: int) -> int:
    """The MT1 seed of block ``block`` (= index // 50) of split seed ``seed``."""
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < MAX_SPLIT_SEED):
        raise InputError(f"initial-state seed must be an integer in [0, 2**31), got {seed!r}")
    if block == 0:
        return int(seed)
    digest = hashlib.blake2b(f"policytrim-mt1-block|{seed}|{block}".encode(), digest_size=4).digest()
    return MAX_SPLIT_SEED + (int.from_bytes(digest, "little") % MAX_SPLIT_SEED)


@functools.lru_cache(maxsize=256)
def _mt1_tasks(task: str, seed: int) -> tuple[Any, ...]:
    """Meta-World's 50 task objects of MT1(task, seed), bit-identical to ``metaworld.MT1(task,
    seed=seed).train_tasks`` (cached per process).

    ``MT1`` builds a fresh env (a MuJoCo model compile) for every block and then draws the block's 50
    random vectors with 50 resets of it under ``np.random.seed(seed)``. Training draws states from
    thousands of blocks, so the build dominated: here one env per task and process (`_draw_env`)
    makes the same 50 draws with the same calls, in the same order, and the tasks are encoded as
    ``MT1`` encodes them. The identity with ``MT1`` is a test (tests/test_envs.py)."""
    import metaworld
    from metaworld.env_dict import ML1_ARGS_KWARGS

    env = _draw_env(task)
    kwargs = {k: v for k, v in ML1_ARGS_KWARGS[task]["kwargs"].items() if k != "task_id"}
    saved = np.random.get_state()
    np.random.seed(seed)
    try:  # the body of metaworld._make_tasks for one env, on a reused env instead of a new one
        env._freeze_rand_vec = False
        env._set_task_called = True
        env._set_task_inner(**kwargs)
        rand_vecs = []
        for _ in range(STATES_PER_BLOCK):
            env.reset()
            rand_vecs.append(env._last_rand_vec)
    finally:
        np.random.set_state(saved)
    if len(np.unique(np.array(rand_vecs), axis=0)) != STATES_PER_BLOCK:  # as MT1 asserts
        raise RuntimeError(f"MT1({task!r}, seed={seed}) drew duplicate initial states")
    return tuple(
        metaworld._encode_task(task, dict(kwargs, rand_vec=v, env_cls=_env_class(task), **metaworld._MT_OVERRIDE))
        for v in rand_vecs
    )


@functools.cache
def _draw_env(task: str) -> Any:
    """The env `_mt1_tasks` draws a task's initial states with (one per task and process; never
    stepped or rendered). Its hand settles in one simulation step instead of 50 at reset:
    ``_reset_hand`` runs 50 mocap steps per call, twice per reset (most of a reset's ~9 ms), and
    draws no random numbers, so the 50 draws of a block stay the same (checked against ``MT1`` on
    every Meta-World task: `benchmarks/results/profile_pipeline.md`)."""
    env = _env_class(task)()
    settle = env._reset_hand
    env._reset_hand = lambda *args, **kwargs: settle(steps=1)  # this env only draws random vectors
    return env


def _task_object(state: InitialState) -> Any:
    if state.index < 0:
        raise InputError(f"initial-state index must be >= 0, got {state.index}")
    block, entry = divmod(int(state.index), STATES_PER_BLOCK)
    return _mt1_tasks(state.task, mt1_seed(int(state.seed), block))[entry]


def _env_class(task: str) -> type:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS[task]


class MetaWorldEnv:
    """One Meta-World v3 task (implements `policytrim.envs.base.EnvAdapter`)."""

    observes_on_demand = True  # step(action, observe=False) skips rendering the image

    def __init__(
        self,
        task: str,
        horizon: int = 200,
        image: bool = False,
        image_size: int = 64,
        camera: str = "corner2",
    ) -> None:
        _check_task(task)
        self.task = task
        self.instruction = INSTRUCTIONS[task]
        self.horizon = int(horizon)
        self.image = bool(image)
        kwargs: dict[str, Any] = {}
        if self.image:
            if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
                os.environ["MUJOCO_GL"] = "egl"  # headless offscreen rendering
            kwargs = dict(render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size)
        try:
            self._env = _env_class(task)(**kwargs)
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot build Meta-World task {task!r} with camera {camera!r}: {exc}") from None
        self._env.max_path_length = _NO_TRUNCATION
        model = self._env.model
        self.control_period_s = float(self._env.frame_skip * model.opt.timestep)
        self.action_dim = int(self._env.action_space.shape[0])
        self.observation_spec = {OBS_STATE: ObsSpec((int(self._env.observation_space.shape[0]),), "float32")}
        self._rotate_image = False
        if self.image:
            import mujoco

            cameras = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            if camera not in cameras:
                self._env.close()
                raise InputError(f"unknown camera {camera!r} for {task}; cameras: {', '.join(c for c in cameras if c)}")
            # Cheap CPU rendering: these must be set before the renderer's context exists.
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
            self.observation_spec[OBS_IMAGE] = ObsSpec((image_size, image_size, 3), "uint8")
            self._camera = camera
        self._state: InitialState | None = None

    # -- EnvAdapter ---------------------------------------------------------------------------

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        if state.task != self.task:
            raise ValueError(f"this adapter runs {self.task!r}, asked to reset to a {state.task!r} state")
        self._env.set_task(_task_object(state))
        obs, _ = self._env.reset()
        self._env.max_path_length = _NO_TRUNCATION
        self._state = state
        if self.image:
            self._rotate_image = self._camera_is_upside_down()
        return self._observation(obs)

    def step(self, action: np.ndarray, observe: bool = True) -> tuple[dict[str, np.ndarray], bool]:
        """One action. ``observe=False``: the caller will not look at this observation, so the
        image (if any) is not rendered and the observation holds the state only."""
        if self._state is None:
            raise RuntimeError("reset() must be called before step()")
        obs, _reward, _terminated, _truncated, info = self._env.step(np.asarray(action, dtype=np.float64))
        if self._env._did_see_sim_exception or self._bad_physics():
            raise SimulatorFault(f"{self.task}: unstable simulation (MuJoCo reported a bad state)")
        return self._observation(obs, render=observe), bool(info["success"])

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        close_quietly(env)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> Any:
        """The Meta-World env (for tests and debugging)."""
        return self._env

    def _observation(self, obs: np.ndarray, render: bool = True) -> dict[str, np.ndarray]:
        out = {OBS_STATE: np.asarray(obs, dtype=np.float32)}
        if self.image and render:
            out[OBS_IMAGE] = self.render()
        return out

    def render(self) -> np.ndarray:
        """uint8 [h, w, 3], the right way up."""
        img = self._env.render()
        if self._rotate_image:
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img, dtype=np.uint8)

    def _camera_is_upside_down(self) -> bool:
        import mujoco

        cam = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_CAMERA, self._camera)
        if cam < 0:
            return False
        up_axis = self._env.data.cam_xmat[cam].reshape(3, 3)[:, 1]  # camera y axis = image up
        return bool(up_axis[2] < 0)

    def _bad_physics(self) -> bool:
        import mujoco

        warning = self._env.data.warning
        return bool(warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0)

    def __del__(self) -> None:  # renderer contexts must be freed before interpreter shutdown
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
