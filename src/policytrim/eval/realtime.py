"""Deployment timing: an episode on the robot's clock, with synchronous or asynchronous chunk requests.

What a user pays on a robot is seconds per success, not calls. A real arm executes one action per
control period (Meta-World: ``frame_skip`` x timestep = 12.5 ms; LIBERO's controller: 50 ms), and a
policy call takes real time. `run_timed_episode` runs an episode in the simulator and keeps the
robot's timeline beside it, event by event:

- every executed action takes one control period of robot time;
- every policy call takes its measured wall-clock time (``time.perf_counter`` around the real call,
  in-process or over the network), or a fixed latency when one is given (to study staleness);
- the simulator's own computation is not robot time (a real robot's physics costs nothing).

Two ways of requesting chunks:

- ``sync``: when the queue of actions is empty the arm stops, the policy is called with the
  current observation and the arm waits for the reply (its idle time is the call's latency); the
  reply's first ``window`` actions become the queue.
- ``async``: when the queue holds at most ``threshold`` actions and no request is in flight, a
  request starts with the current observation (LeRobot's ``chunk_size_threshold``, as a count of
  actions); the arm keeps executing its queue while the policy computes. The reply arrives
  ``latency`` seconds after its request; the ``d`` actions the arm executed meanwhile are the
  reply's first ``d`` actions in time, so they are skipped (the chunk is ``d`` steps stale) and the
  rest of its window replaces the queue (latest-only aggregation). When the queue runs dry before
  the reply arrives, the arm waits: a dry event, with its idle seconds.

With ``threshold = 0`` a request starts only when the queue is empty, so ``async`` executes exactly
the actions ``sync`` does, with the same timeline. Times are continuous: an action starts as soon
as the previous one ends or a reply arrives (no alignment to control ticks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from policytrim.envs.base import OBS_IMAGE, InitialState
from policytrim.errors import InputError

RequestMode = Literal["sync", "async"]
REQUEST_MODES: tuple[str, ...] = ("sync", "async")

# infer(observation, instruction) -> chunk [H, A] (numpy): one real policy call.
InferFn = Callable[[dict[str, np.ndarray], str], np.ndarray]


@dataclass(frozen=True)
class DeployTiming:
    """How the robot requests and executes chunks.

    window:     actions executed per chunk (the policy's trained window k).
    mode:       ``sync`` or ``async`` (see the module docstring).
    threshold:  ``async`` only: request the next chunk when at most this many actions remain.
    latency_s:  None: each call's measured wall-clock time is its latency; a number: every call
                takes this long on the robot's clock (a controlled delay, labelled as such).
    control_period_s: seconds of robot time per action; None: the env's ``control_period_s``.
    """

    window: int
    mode: RequestMode = "sync"
    threshold: int = 0
    latency_s: float | None = None
    control_period_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in REQUEST_MODES:
            raise InputError(f"request mode must be one of {', '.join(REQUEST_MODES)}, got {self.mode!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise InputError(f"window must be an integer >= 1, got {self.window!r}")
        if not isinstance(self.threshold, int) or not 0 <= self.threshold < self.window:
            raise InputError(
                f"threshold must be an integer in [0, window - 1] = [0, {self.window - 1}], got {self.threshold!r}"
            )
        for name in ("latency_s", "control_period_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TimedEpisode:
    """One episode on the robot's clock.

    robot_s: seconds from the first request to the last action (actions + waiting).
    idle_s:  seconds the arm stood still waiting for a reply (sync: every call; async: dry queues).
    inference_s: the calls' latencies added up (in async mode most of it overlaps with motion).
    dry_events: times the arm stopped mid-episode because its queue ran out before a reply arrived
             (the wait for an episode's first chunk is idle time but not a dry event; in ``sync``
             mode every later call is one).
    staleness: per reply, how many actions the arm executed between the reply's observation and its
             arrival (the actions skipped from its start).
    """

    index: int
    success: bool
    steps: int
    calls: int
    robot_s: float
    idle_s: float
    inference_s: float
    dry_events: int
    staleness: tuple[int, ...]
    actions: tuple[tuple[float, ...], ...] = ()

    def to_json(self, with_actions: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["staleness"] = list(self.staleness)
        if not with_actions:
            out.pop("actions")
        else:
            out["actions"] = [list(a) for a in self.actions]
        return out


def run_timed_episode(
    env: Any,
    infer: InferFn,
    state: InitialState,
    timing: DeployTiming,
    *,
    horizon: int | None = None,
    record_actions: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> TimedEpisode:
    """Run one episode of ``env`` from ``state``, calling ``infer`` for chunks, on the robot's clock.

    ``env`` follows `policytrim.envs.base.EnvAdapter` (``reset``, ``step`` -> (obs, success),
    ``instruction``, ``control_period_s``, ``horizon``). The episode ends at the first success or
    after ``horizon`` actions (default: the env's).
    """
    period = float(env.control_period_s if timing.control_period_s is None else timing.control_period_s)
    limit = int(env.horizon if horizon is None else horizon)
    if limit < 1:
        raise InputError(f"horizon must be >= 1, got {limit}")
    obs = env.reset(state)
    instruction = env.instruction
    # an env that renders images on demand renders only the observations a call reads (exactly what
    # stepping with the image would have given: the call always reads the latest state)
    on_demand = bool(getattr(env, "observes_on_demand", False)) and OBS_IMAGE in obs

    def call(observation: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        if on_demand and OBS_IMAGE not in observation:
            observation = {**observation, OBS_IMAGE: env.render()}
        start = clock()
        chunk = np.asarray(infer(observation, instruction))
        measured = clock() - start
        if chunk.ndim != 2 or chunk.shape[0] < timing.window:
            raise InputError(
                f"the policy returned a chunk of shape {chunk.shape}; executing window {timing.window} "
                f"needs [H >= {timing.window}, A]"
            )
        return chunk, (measured if timing.latency_s is None else float(timing.latency_s))

    t = 0.0  # robot time
    idle = inference = 0.0
    steps = calls = dry = 0
    success = False
    queue: list[np.ndarray] = []
    staleness: list[int] = []
    executed: list[tuple[float, ...]] = []
    pending: tuple[np.ndarray, float, int] | None = None  # (chunk, arrival time, steps at request)

    while steps < limit and not success:
        if timing.mode == "sync":
            if not queue:
                chunk, latency = call(obs)
                calls += 1
                dry += steps > 0 and latency > 0
                inference += latency
                idle += latency
                t += latency
                staleness.append(0)
                queue = [chunk[i] for i in range(timing.window)]
        else:
            if pending is None and len(queue) <= timing.threshold:
                chunk, latency = call(obs)
                calls += 1
                inference += latency
                pending = (chunk, t + latency, steps)
            if pending is not None and (not queue or pending[1] <= t):
                chunk, arrival, at_request = pending
                if not queue and arrival > t:  # nothing left to execute: the arm waits for the reply
                    dry += steps > 0
                    idle += arrival - t
                    t = arrival
                pending = None
                skip = steps - at_request  # actions executed since the reply's observation
                staleness.append(skip)
                queue = [chunk[i] for i in range(skip, timing.window)]
                if not queue:  # the whole window went stale while the arm moved: request again
                    continue
        action = queue.pop(0)
        obs, success = env.step(action, observe=False) if on_demand else env.step(action)
        if record_actions:
            executed.append(tuple(float(x) for x in action))
        steps += 1
        t += period
    return TimedEpisode(
        index=state.index,
        success=bool(success),
        steps=steps,
        calls=calls,
        robot_s=t,
        idle_s=idle,
        inference_s=inference,
        dry_events=dry,
        staleness=tuple(staleness),
        actions=tuple(executed),
    )


def policy_infer(policy: Any, mode: str = "sampled", seed: int = 0) -> InferFn:
    """An in-process ``infer`` for a `ChunkPolicy`: batch 1, one torch generator seeded with ``seed``
    that every call of the episode draws from (so two request modes that make the same calls in the
    same order get the same actions)."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def infer(observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        batched = {k: torch.as_tensor(np.asarray(v)).unsqueeze(0) for k, v in observation.items()}
        return policy.sample(batched, [instruction], mode, [generator]).actions[0].cpu().numpy()

    return infer


def summarize_timed(episodes: Sequence[TimedEpisode]) -> dict[str, Any]:
    """Seconds per success and where the robot's time went, over episodes of one configuration."""
    if not episodes:
        raise InputError("no episodes to summarize")
    n = len(episodes)
    successes = sum(e.success for e in episodes)
    robot = sum(e.robot_s for e in episodes)
    idle = sum(e.idle_s for e in episodes)
    stale = [s for e in episodes for s in e.staleness]
    return {
        "episodes": n,
        "success_rate": successes / n,
        "seconds_per_success": robot / successes if successes else None,
        "robot_s_per_episode": robot / n,
        "moving_s_per_episode": (robot - idle) / n,
        "idle_s_per_episode": idle / n,
        "inference_s_per_episode": sum(e.inference_s for e in episodes) / n,
        "calls_per_episode": sum(e.calls for e in episodes) / n,
        "steps_per_episode": sum(e.steps for e in episodes) / n,
        "dry_events_per_episode": sum(e.dry_events for e in episodes) / n,
        "mean_staleness": float(np.mean(stale)) if stale else 0.0,
        "max_staleness": max(stale) if stale else 0,
    }
