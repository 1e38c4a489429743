"""Simulator adapters behind one protocol (`policytrim.envs.base.EnvAdapter`).

- `make_env(env_cfg, task)`: an adapter for one task (Meta-World by default, any gymnasium env, or
  LIBERO with the extra ``policytrim[libero]``, or ManiSkill3 with ``policytrim[maniskill]``).
- `worker_env_cap(env_cfg, num_workers)`: how many envs one worker may keep (memory-bound for LIBERO).
- `initial_states(task, seed, count, start)`: explicit (task, seed, index) addresses; the same
  address always resets to the bit-identical state.
- `split_seed(env_cfg, split)`: the seed of the train / val / test split (disjoint by construction).
"""

from __future__ import annotations

from typing import Literal

from policytrim.envs.base import OBS_IMAGE, OBS_STATE, EnvAdapter, EnvSettings, InitialState, ObsSpec
from policytrim.envs.tasks import ALL_TASKS, INSTRUCTIONS, TASK_SETS, resolve_tasks
from policytrim.errors import InputError

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

__all__ = [
    "ALL_TASKS",
    "INSTRUCTIONS",
    "OBS_IMAGE",
    "OBS_STATE",
    "SPLITS",
    "TASK_SETS",
    "EnvAdapter",
    "EnvSettings",
    "InitialState",
    "ObsSpec",
    "check_episodes",
    "env_tasks",
    "initial_states",
    "make_env",
    "resolve_tasks",
    "split_seed",
    "worker_env_cap",
]


def make_env(env_cfg: EnvSettings, task: str) -> EnvAdapter:
    """An adapter for ``task`` with the config's horizon (and camera settings)."""
    if env_cfg.suite == "metaworld":
        from policytrim.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, env_cfg.horizon, env_cfg.image, env_cfg.image_size, env_cfg.camera)
    if env_cfg.suite == "gym":
        if task != env_cfg.gym_id:
            raise InputError(f"env.suite=gym runs one task, the env id {env_cfg.gym_id!r}; got task {task!r}")
        from policytrim.envs.gym import GymEnv

        return GymEnv(env_cfg.gym_id, env_cfg.horizon)
    if env_cfg.suite == "libero":
        from policytrim.envs.libero import LiberoEnv

        return LiberoEnv(task, env_cfg)
    if env_cfg.suite == "maniskill":
        from policytrim.envs.maniskill import ManiSkillEnv

        return ManiSkillEnv(task, env_cfg.horizon)
    raise InputError(f"unknown env.suite {env_cfg.suite!r}; known: metaworld, gym, libero, maniskill")


def worker_env_cap(env_cfg: EnvSettings, num_workers: int) -> int | None:
    """Envs one worker may keep, running and idle: ``env.max_envs_per_worker`` when set; for LIBERO
    (hundreds of MB per env) as many as fit in half of the memory available now, split over the
    workers (at least 1, at most 32), and the same for ManiSkill; None (the engine's defaults) otherwise."""
    fixed = int(getattr(env_cfg, "max_envs_per_worker", 0))  # engines also run with stand-in configs
    if fixed:
        return fixed
    suite = getattr(env_cfg, "suite", None)
    if suite not in ("libero", "maniskill"):
        return None
    from policytrim.machine import available_memory_mb

    if suite == "libero":
        from policytrim.envs.libero import env_memory_mb

        env_mb = env_memory_mb(env_cfg)
    else:
        from policytrim.envs.maniskill import ENV_MB as env_mb
    budget = 0.5 * available_memory_mb() / max(1, num_workers)
    return max(1, min(32, int(budget // env_mb)))


def env_tasks(env_cfg: EnvSettings) -> tuple[str, ...]:
    """The tasks a config runs: its Meta-World tasks, or the gym env id for suite=gym."""
    return (env_cfg.gym_id,) if env_cfg.suite == "gym" else tuple(env_cfg.tasks)


def task_instruction(env_cfg: EnvSettings, task: str) -> str:
    """The language instruction of ``task`` (from the suite's task table; no simulator is built)."""
    if env_cfg.suite == "libero":
        from policytrim.envs.libero import task_info

        return task_info(task).instruction
    if env_cfg.suite == "maniskill":
        from policytrim.envs.maniskill import TASKS

        return TASKS[task]
    if env_cfg.suite == "gym":
        return str(env_cfg.gym_id)
    from policytrim.envs.tasks import INSTRUCTIONS

    return INSTRUCTIONS[task]


def split_seed(env_cfg: EnvSettings, split: Split) -> int:
    """Seed of the initial states of a split: train_seed, val_seed or test_seed."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return int(getattr(env_cfg, f"{split}_seed"))


def check_episodes(env_cfg: EnvSettings, split: Split, episodes: int) -> None:
    """Raise InputError when a split cannot give ``episodes`` distinct initial states per task
    (LIBERO: 10 per task in validation and test; the other suites have no limit)."""
    if env_cfg.suite == "libero":
        from policytrim.envs.libero import split_range

        size = split_range(env_cfg, split)[1]
        if episodes > size:
            raise InputError(
                f"env.suite=libero: the {split} split has {size} init states per task, asked for "
                f"{episodes} episodes per task (--preset libero sets 10)"
            )


def initial_states(task: str, seed: int, count: int, start: int = 0) -> list[InitialState]:
    """Addresses (task, seed, start), ..., (task, seed, start + count - 1)."""
    if count < 0 or start < 0:
        raise ValueError(f"count and start must be >= 0, got count={count}, start={start}")
    if not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise InputError(f"initial-state seed must be an integer in [0, 2**31), got {seed!r}")
    return [InitialState(task, int(seed), start + i) for i in range(count)]
