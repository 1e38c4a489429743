"""Collecting demonstrations (`policytrim collect`): scripted experts run by the rollout engine.

The experts by ``env.suite``: Meta-World's own scripted policies; LIBERO's pick-and-place experts
(`policytrim.policies.libero_expert`); for ManiSkill3, ManiSkill's motion planners
(`policytrim.policies.maniskill_expert`): every training state is planned first (from the
simulator's full state, in ``rollout.num_workers`` planning processes,
`policytrim.envs.maniskill_demos.PlanningPool`; 0: in this process), and the engine then runs the
tracking expert built from the successful plans, in envs that rebuild their scene at every reset
(`fresh_scene_env`), so that the demonstrations are the same whatever the worker count. A state
whose plan, conversion or replay check failed is an attempt without a demonstration
(``collection.planner_failures``).

An expert is a window-1 chunk policy (`policytrim.policies.expert.ExpertPolicy`), so collection
goes through the one place that executes chunks (`policytrim.rollout.engine.RolloutEngine`) and
gets its worker pool, its hang timeout (``rollout.step_timeout_s``; a worker that hangs is killed
and replaced) and its fault accounting: an episode whose simulator raised, or whose worker was
lost, counts as an attempt that produced no demonstration, and the faults are recorded by kind in
the dataset's ``collection.faults``. `Demonstrator` wraps the expert and adds each episode's
suboptimality (`Suboptimality`, documented in `policytrim.data.demos`); the engine records the
observation every action was chosen from (state, and with ``env.image`` the image and, on LIBERO,
the wrist image) and, as replay data, the action itself. LIBERO's experts read the task's object
poses: a run whose state lacks them (images with ``env.libero_state`` auto or proprio) is collected
with the object-pose state and its dataset keeps the 8-D proprioception (`expert_env`).

Attempts (``data.max_attempts``). Unsuccessful demonstrations are dropped unless
``data.keep_failures``; then further training states are tried, at most ``data.max_attempts``
per task (0: 3 x ``data.episodes`` + 10), until each task has ``data.episodes`` successful
demonstrations. A task that still has fewer is a shortfall: ``data.on_shortfall=warn`` keeps
the smaller dataset (the per-task counts are in ``collection.collected`` and
``collection.short_of_requested``, which `policytrim collect`, `policytrim demo` and the report
print), ``error`` stops with an error before anything is written.

Determinism: an episode's actions depend only on its initial state and ``data.seed`` (its
suboptimality random numbers are seeded by `episode_seed`), never on the worker count or on which
other episodes ran beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim.config import RunConfig
from policytrim.data.demos import DemoDataset, save_demos
from policytrim.envs.base import OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, InitialState
from policytrim.errors import InputError
from policytrim.policies.base import ChunkSample, Mode, Observation
from policytrim.policies.expert import ExpertPolicy
from policytrim.progress import Progress
from policytrim.rollout.engine import RolloutEngine, trajectory_seed
from policytrim.rollout.types import Trajectories
from policytrim.rollout.workers import EnvFactory

log = logging.getLogger("policytrim.data")

DETOUR_LATEST_START = 40  # a detour starts at a step drawn from U{0..40}
DEFAULT_ATTEMPTS = (3, 10)  # data.max_attempts = 0: at most 3 * episodes + 10 states tried per task
ACTION_KEY = "action"  # the demonstrator's replay key: the action the dataset records (data.labels)
BATCH_EPISODES = 128  # episodes per engine run (bounds the recorded frames held twice in memory)
COLLECT_ENVS_PER_WORKER = 8
CONVERT_HINT = (  # where the simulator and LeRobot live in different environments (LIBERO: Python 3.11 here)
    "; or collect here without --format lerobot and convert where LeRobot is installed: "
    "policytrim convert DATA OUT --format lerobot"
)


EXPERTS = {  # env.suite -> the experts collect runs (as the dataset's collection.expert says)
    "metaworld": "metaworld scripted policies (metaworld.policies)",
    "libero": "policytrim's scripted LIBERO experts (policytrim.policies.libero_expert)",
    "maniskill": "ManiSkill3 motion planners, converted to pd_ee_delta_pose (policytrim.policies.maniskill_expert)",
}


def _expert(suite: str, tasks: list[str]) -> Any:
    """The window-1 expert policy for ``tasks`` of ``suite`` (ManiSkill's plans as states arrive)."""
    if suite == "maniskill":
        from policytrim.policies.maniskill_expert import ManiSkillDemoExpert

        return ManiSkillDemoExpert(origin={"tasks": list(tasks)})
    return ExpertPolicy(tasks)


def fresh_scene_env(env_cfg: Any, task: str) -> Any:
    """ManiSkill's adapter rebuilding its scene at every reset (`policytrim.envs.maniskill`,
    Replays): a collected episode then depends only on its address and ``data.seed``, not on which
    worker's env ran it after which episodes."""
    from policytrim.envs.maniskill import ManiSkillEnv

    return ManiSkillEnv(task, env_cfg.horizon, fresh_scenes=True)


def max_attempts(data: Any) -> int:
    """States tried per task: ``data.episodes`` with keep_failures (every attempt is kept), else
    ``data.max_attempts`` or (0) 3 x episodes + 10."""
    if data.keep_failures:
        return int(data.episodes)
    return int(data.max_attempts) or DEFAULT_ATTEMPTS[0] * int(data.episodes) + DEFAULT_ATTEMPTS[1]


def episode_seed(data_seed: int, state: InitialState) -> int:
    """Seed of an episode's suboptimality random numbers (stable across processes)."""
    text = f"policytrim-demo|{data_seed}|{state.task}|{state.seed}|{state.index}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Suboptimality:
    """Human-like redundancy added to one episode's expert actions (`policytrim.data.demos`)."""

    def __init__(self, data_cfg: Any, rng: np.random.Generator) -> None:
        self.cfg, self.rng = data_cfg, rng
        self.speed = float(rng.uniform(data_cfg.speed_min, data_cfg.speed_max))
        self.pause_left = 0
        self.detour = (0, 0, np.zeros(3))
        if rng.random() < data_cfg.detour_prob:
            start = int(rng.integers(0, DETOUR_LATEST_START + 1))
            length = int(rng.integers(data_cfg.detour_min, data_cfg.detour_max + 1))
            direction = rng.normal(size=3)
            direction /= max(np.linalg.norm(direction), 1e-9)
            self.detour = (start, start + length, direction)
        self.paused_steps = 0
        self.detour_steps = 0

    def __call__(self, action: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The action to execute at step ``t`` and the same action before its jitter (``data.labels``
        intended records the second)."""
        cfg = self.cfg
        a = np.array(action, dtype=np.float64)
        a[:3] *= self.speed
        starts_pause = self.rng.random() < cfg.pause_prob  # drawn every step: stable random streams
        pause_len = int(self.rng.integers(cfg.pause_min, cfg.pause_max + 1))
        jitter = self.rng.normal(0.0, cfg.jitter_std, size=a.shape) if cfg.jitter_std > 0 else 0.0
        d0, d1, direction = self.detour
        if d0 <= t < d1:
            a[:3] = self.speed * direction
            self.detour_steps += 1
        elif self.pause_left > 0 or (starts_pause and pause_len > 0):
            if self.pause_left == 0:
                self.pause_left = pause_len
            self.pause_left -= 1
            a[:3] = 0.0
            self.paused_steps += 1
        return np.clip(a + jitter, -1.0, 1.0).astype(np.float32), np.clip(a, -1.0, 1.0).astype(np.float32)


class Demonstrator:
    """The scripted experts plus each episode's suboptimality, as a window-1 chunk policy.

    The engine gives every trajectory a generator seeded by `trajectory_seed` of its initial state;
    `begin` registers the episodes of one engine run under those seeds, so `sample` finds an
    episode's perturbation (and its step count) from the generator it is handed, whatever the
    batching. Replay data holds the action the dataset records (``ACTION_KEY``, float32 [B, A]): the
    executed one, or with ``data.labels`` intended the same action before its jitter."""

    chunk_size = 1
    default_window = 1
    max_window = 1

    def __init__(self, expert: Any, data_cfg: Any, suboptimal: bool) -> None:
        self.expert, self.data_cfg, self.suboptimal = expert, data_cfg, suboptimal
        self.action_dim = int(expert.action_dim)
        self._episodes: dict[int, list[Any]] = {}  # generator seed -> [perturbation or None, step]

    def begin(self, states: Sequence[InitialState], run_seed: int) -> None:
        """The episodes of the next engine run (group size 1, ``seed=run_seed``)."""
        cfg = self.data_cfg
        if hasattr(self.expert, "begin"):
            self.expert.begin()  # an expert that tracks its episodes (ManiSkill's)
        self._episodes = {
            trajectory_seed(run_seed, s, 0): [
                Suboptimality(cfg, np.random.default_rng(episode_seed(cfg.seed, s))) if self.suboptimal else None,
                0,
            ]
            for s in states
        }

    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode = "deterministic",
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        chunk = self.expert.sample(obs, instructions, mode, generators)
        actions = chunk.actions[:, 0].numpy().copy()
        labels = actions.copy()
        if generators is None or len(generators) != len(actions):
            raise ValueError("the demonstrator needs the engine's generator of every row (one per trajectory)")
        for b, generator in enumerate(generators):
            episode = self._episodes[generator.initial_seed()]
            perturb, t = episode
            if perturb is not None:
                actions[b], labels[b] = perturb(actions[b], t)
            episode[1] = t + 1
        executed = torch.from_numpy(actions)
        recorded = executed if self.data_cfg.labels == "executed" else torch.from_numpy(labels)
        logp = torch.zeros(len(actions), 1)
        return ChunkSample(actions=executed.unsqueeze(1), logp=logp, replay={ACTION_KEY: recorded})


def _episodes_of(trajectories: Trajectories) -> list[dict[str, Any]]:
    """Per kept trajectory: its initial state, the observations and actions of its steps, success."""
    if trajectories.num_trajectories == 0:  # every episode faulted (perhaps before its first step)
        return []
    traj = trajectories.chunk_traj.numpy()
    order = np.argsort(traj, kind="stable")  # chunks are in (trajectory, position) order already
    bounds = np.searchsorted(traj[order], np.arange(trajectories.num_trajectories + 1))
    states = trajectories.obs[OBS_STATE].numpy()
    cameras = {k: trajectories.obs[k].numpy() for k in (OBS_IMAGE, OBS_WRIST_IMAGE) if k in trajectories.obs}
    actions = trajectories.replay[ACTION_KEY].numpy()
    out = []
    for i in range(trajectories.num_trajectories):
        rows = order[bounds[i] : bounds[i + 1]]
        state = InitialState(trajectories.task[i], int(trajectories.seed[i]), int(trajectories.index[i]))
        ep = {
            "state": state,
            "states": states[rows],
            "actions": actions[rows],
            "success": bool(trajectories.success[i]),
        }
        ep.update({key: images[rows] for key, images in cameras.items()})
        out.append(ep)
    return out


def expert_env(env_cfg: Any) -> tuple[Any, int | None]:
    """The env section collection runs, and how many leading state entries the dataset keeps (None:
    all). LIBERO's experts read the task's object poses from the state: a run whose state is openpi's
    8-D proprioception (``env.libero_state`` proprio, or auto with images) is collected with the
    object-pose state and its dataset keeps the proprioception, the state the run's env emits."""
    if env_cfg.suite != "libero":
        return env_cfg, None
    from policytrim.envs.libero import STATE_DIM, uses_object_state

    if uses_object_state(env_cfg):
        return env_cfg, None
    return dataclasses.replace(env_cfg, libero_state="objects"), STATE_DIM


def collect_demos(
    cfg: RunConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = False,
    fmt: str = "policytrim",
    env_factory: EnvFactory | None = None,
) -> DemoDataset:
    """Run the scripted experts on training-split states of ``cfg.env.tasks`` and save to ``out``.

    ``cfg`` is a `policytrim.config.RunConfig` (env, data and the rollout section's workers, step
    timeout and backend are used). ``fmt``: ``policytrim`` (`policytrim.data.demos`' format) or
    ``lerobot`` (a LeRobotDataset written by LeRobot's own writer, `policytrim.data.lerobot_dataset`).
    ``env_factory`` (picklable) replaces `policytrim.envs.make_env` in the engine's workers (tests
    inject faults with it).
    """
    if fmt not in ("policytrim", "lerobot"):
        raise InputError(f"dataset format must be policytrim or lerobot, got {fmt!r}")
    if fmt == "lerobot":
        from policytrim.data.lerobot_dataset import _require_lerobot

        _require_lerobot(CONVERT_HINT)  # before minutes of collection
    from policytrim import __version__
    from policytrim.envs import initial_states, split_seed
    from policytrim.preflight import check_preconditions

    out = Path(out)
    check_preconditions(cfg, out)
    if cfg.env.suite not in EXPERTS:
        raise InputError(f"collect runs scripted experts for env.suite {', '.join(EXPERTS)}, not {cfg.env.suite!r}")
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    data, env_cfg = cfg.data, cfg.env
    run_env, keep_state = expert_env(env_cfg)
    tasks = list(env_cfg.tasks)
    seed = split_seed(env_cfg, "train")
    wanted = data.episodes
    kept: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    attempts = {t: 0 for t in tasks}
    successes = {t: 0 for t in tasks}
    faults: dict[str, int] = {}
    limit = max_attempts(data)
    expert = _expert(cfg.env.suite, tasks)
    planner_failures = {t: 0 for t in tasks}
    planning = None
    if cfg.env.suite == "maniskill":
        env_factory = env_factory or fresh_scene_env  # episodes independent of the workers' history
    demonstrator = Demonstrator(expert, data, bool(data.suboptimal))
    bar = Progress("collect", wanted * len(tasks), unit="demo", show=progress)
    engine = RolloutEngine(
        run_env,
        cfg.rollout.num_workers,
        cfg.rollout.step_timeout_s,
        env_factory=env_factory,
        backend=cfg.rollout.backend,
        ray=cfg.ray,
        # a window-1 expert makes one request per step: a few envs a worker amortise the round trips
        # while building few envs (timings: benchmarks/results/demo_runs.md, run 12)
        envs_per_worker=COLLECT_ENVS_PER_WORKER,
    )
    control_period = None
    try:
        if cfg.env.suite == "maniskill" and cfg.rollout.num_workers > 0:
            from policytrim.envs.maniskill_demos import PlanningPool

            planning = PlanningPool(cfg.rollout.num_workers)
        while True:
            states = []
            for t in tasks:
                n = min(limit - attempts[t], wanted - len(kept[t]))
                if n > 0:
                    states += initial_states(t, seed, n, start=attempts[t])
                    attempts[t] += n
            if not states:
                break
            if cfg.env.suite == "maniskill":  # plan first; a state without a plan has no demonstration
                planned = expert.plan_states(states, pool=planning)
                for demo in planned:
                    planner_failures[demo.state.task] += not demo.success
                states = [demo.state for demo in planned if demo.success]
            for b in range(0, len(states), BATCH_EPISODES):
                batch = states[b : b + BATCH_EPISODES]
                demonstrator.begin(batch, data.seed)
                result = engine.run(
                    demonstrator, batch, 1, torch.ones(len(batch), 1, dtype=torch.long), "deterministic", data.seed
                )
                for kind, count in result.fault_counts.items():
                    faults[kind] = faults.get(kind, 0) + count
                for ep in _episodes_of(result):
                    ep["states"] = ep["states"][:, :keep_state]
                    task = ep["state"].task
                    control_period = engine.control_period_s(task)
                    successes[task] += ep["success"]
                    if (ep["success"] or data.keep_failures) and len(kept[task]) < wanted:
                        kept[task].append(ep)
                        bar.update(1)
    finally:
        engine.close()
        bar.close()
        if cfg.env.suite == "maniskill":
            expert.close()
        if planning is not None:
            planning.close()

    episodes = [ep for t in tasks for ep in sorted(kept[t], key=lambda e: e["state"].index)]
    if not episodes:
        raise InputError(
            f"the experts produced no successful demonstration in {sum(attempts.values())} attempts; "
            "try a longer env.horizon or data.keep_failures"
        )
    collected = {t: len(kept[t]) for t in tasks}
    short = {t: n for t, n in collected.items() if n < wanted}
    if short:
        what = ", ".join(
            f"{t}: {n} of {wanted} ({attempts[t]} attempts, {successes[t]} expert successes)" for t, n in short.items()
        )
        if data.on_shortfall == "error":
            raise InputError(
                f"the experts fell short of data.episodes={wanted} within data.max_attempts={limit} per task ({what}); "
                "raise data.max_attempts or env.horizon, or pass --data.on-shortfall warn to keep the smaller dataset"
            )
        log.warning("collected fewer demonstrations than requested (data.on_shortfall=warn): %s", what)
    collection = {
        "expert": EXPERTS[cfg.env.suite],
        "suboptimal": bool(data.suboptimal),
        "settings": {
            k: getattr(data, k)
            for k in (
                "speed_min",
                "speed_max",
                "pause_prob",
                "pause_min",
                "pause_max",
                "detour_prob",
                "detour_min",
                "detour_max",
                "jitter_std",
                "labels",
            )
        }
        | {"detour_latest_start": DETOUR_LATEST_START},
        "data_seed": data.seed,
        "split": "train",
        "state_seed": seed,
        "keep_failures": bool(data.keep_failures),
        "episodes_requested": wanted,
        "max_attempts": limit,
        "on_shortfall": data.on_shortfall,
        "attempts": attempts,
        "expert_successes": successes,
        "collected": collected,
        "short_of_requested": short,
        "faults": faults,
        **({"planner_failures": planner_failures} if cfg.env.suite == "maniskill" else {}),
        "replaced_workers": engine.replaced_workers,
    }
    ds = _assemble(episodes, tasks, env_cfg, collection, control_period, __version__)
    if fmt == "lerobot":
        from policytrim.data.lerobot_dataset import save_lerobot_dataset

        save_lerobot_dataset(ds, out, overwrite=overwrite)
    else:
        save_demos(ds, out, overwrite=overwrite)
    return ds


def _assemble(
    episodes: list[dict[str, Any]],
    tasks: list[str],
    env_cfg: Any,
    collection: dict,
    control_period: float | None,
    version: str,
) -> DemoDataset:
    from policytrim.envs import task_instruction

    task_id = {t: i for i, t in enumerate(tasks)}
    length = np.array([len(ep["actions"]) for ep in episodes], np.int64)
    ep_task = np.array([task_id[ep["state"].task] for ep in episodes], np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    cameras = {k: [ep[k] for ep in episodes if k in ep] for k in (OBS_IMAGE, OBS_WRIST_IMAGE)}
    return DemoDataset(
        state=np.concatenate([ep["states"] for ep in episodes]).astype(np.float32),
        action=np.concatenate([ep["actions"] for ep in episodes]).astype(np.float32),
        episode_index=np.repeat(np.arange(len(episodes)), length).astype(np.int64),
        frame_index=(np.arange(int(length.sum())) - np.repeat(start, length)).astype(np.int64),
        task_index=np.repeat(ep_task, length),
        length=length,
        success=np.array([ep["success"] for ep in episodes], bool),
        episode_task_index=ep_task,
        seed=np.array([ep["state"].seed for ep in episodes], np.int64),
        index=np.array([ep["state"].index for ep in episodes], np.int64),
        start=start,
        tasks=list(tasks),
        instructions=[task_instruction(env_cfg, t) for t in tasks],
        meta={
            "control_period_s": control_period,
            "horizon": int(env_cfg.horizon),
            "collection": collection,
            "created_by": f"policytrim {version}",
            "suite": env_cfg.suite,
            **({"camera": env_cfg.camera} if env_cfg.image and env_cfg.suite == "metaworld" else {}),
        },
        image=np.concatenate(cameras[OBS_IMAGE]) if cameras[OBS_IMAGE] else None,
        wrist_image=np.concatenate(cameras[OBS_WRIST_IMAGE]) if cameras[OBS_WRIST_IMAGE] else None,
    )
