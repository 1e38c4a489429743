"""The robot's clock (`policytrim.eval.realtime`): synchronous and asynchronous chunk requests on
real Meta-World, with fake policies named as such for controlled latencies and a real TinyVLA for
the "same actions in both modes" property."""

from __future__ import annotations

import time

import numpy as np
import pytest

from policytrim.envs.base import InitialState
from policytrim.envs.metaworld import MetaWorldEnv
from policytrim.errors import InputError
from policytrim.eval.realtime import DeployTiming, policy_infer, run_timed_episode, summarize_timed
from policytrim.policies.tinyvla import TinyVLA

TASK = "reach-v3"
STATE = InitialState(TASK, 7, 0)


class FakeSlowPolicy:
    """A fake policy (not a model): a fixed chunk of small moves, after sleeping ``sleep_s``."""

    def __init__(self, sleep_s: float, chunk_size: int = 10):
        self.sleep_s, self.chunk_size, self.calls = sleep_s, chunk_size, 0

    def __call__(self, observation, instruction):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        chunk = np.zeros((self.chunk_size, 4), np.float32)
        chunk[:, 0] = np.linspace(-0.5, 0.5, self.chunk_size)  # row i is recognisable by its value
        return chunk


def tiny_policy(instruction: str, **kwargs) -> TinyVLA:
    """A real, random-init TinyVLA for Meta-World's state (H = 10, k = 5)."""
    return TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=10,
        default_window=5,
        instructions=[instruction],
        hidden_dim=32,
        num_layers=1,
        **kwargs,
    ).eval()


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(TASK, horizon=40)
    yield e
    e.close()


def test_sync_timeline_is_actions_plus_calls(env):
    timing = DeployTiming(window=5, mode="sync", latency_s=0.02)
    ep = run_timed_episode(env, FakeSlowPolicy(0.0), STATE, timing)
    assert ep.steps == 40 and ep.calls == 8
    assert ep.robot_s == pytest.approx(40 * env.control_period_s + 8 * 0.02)
    assert ep.idle_s == pytest.approx(8 * 0.02)
    assert ep.dry_events == 7  # every call after the first stops the arm
    assert ep.staleness == (0,) * 8


def test_slow_policy_runs_the_queue_dry_and_the_arm_waits(env):
    """Measured latency (a real sleep of 40 ms) exceeds what the queue covers (1 action of 12.5 ms)."""
    period = env.control_period_s
    timing = DeployTiming(window=5, mode="async", threshold=1)
    ep = run_timed_episode(env, FakeSlowPolicy(0.04), STATE, timing)
    assert ep.dry_events >= ep.calls - 2
    assert ep.idle_s > 0.5 * (ep.calls - 1) * (0.04 - period)
    assert ep.robot_s == pytest.approx(ep.steps * period + ep.idle_s)
    # each reply arrives after the arm used up what it had: the actions executed meanwhile are skipped
    assert set(ep.staleness[1:]) == {1}


def test_fast_policy_never_runs_dry(env):
    timing = DeployTiming(window=5, mode="async", threshold=1)
    ep = run_timed_episode(env, FakeSlowPolicy(0.0), STATE, timing)
    assert ep.dry_events == 0
    assert ep.idle_s < 0.01  # only the first call's microseconds
    assert ep.steps == 40


def test_staleness_skips_the_actions_executed_while_the_policy_computed(env):
    period = env.control_period_s  # 12.5 ms: a 30 ms call spans 3 action starts
    timing = DeployTiming(window=10, mode="async", threshold=5, latency_s=0.03)
    ep = run_timed_episode(env, FakeSlowPolicy(0.0), STATE, timing, record_actions=True)
    assert ep.staleness[0] == 0 and set(ep.staleness[1:]) == {3}
    assert ep.dry_events == 0 and ep.idle_s == pytest.approx(0.03)
    rows = np.linspace(-0.5, 0.5, 10)
    first = [a[0] for a in ep.actions]
    # the request leaves when 5 actions remain; 3 of them run while it computes (rows 5, 6, 7), then
    # the reply's rows 0..2 are stale and its rows 3..9 replace what was left; from then on every
    # chunk executes rows 3..7 before the next reply replaces it
    assert first[:8] == pytest.approx(list(rows[:8]))
    assert first[8:13] == pytest.approx(list(rows[3:8]))
    assert first[13:18] == pytest.approx(list(rows[3:8]))
    assert ep.robot_s == pytest.approx(ep.steps * period + 0.03)


def test_same_seed_same_actions_in_both_modes_at_zero_delay(env):
    """A real (random-init) TinyVLA in sampled mode: async with threshold 0 requests exactly when
    sync does, so with the same per-episode generator the executed actions are bit-identical."""
    policy = tiny_policy(env.instruction)
    runs = {}
    for mode in ("sync", "async"):
        timing = DeployTiming(window=5, mode=mode, threshold=0)
        runs[mode] = run_timed_episode(env, policy_infer(policy, "sampled", seed=3), STATE, timing, record_actions=True)
    assert runs["sync"].actions == runs["async"].actions
    assert runs["sync"].steps == runs["async"].steps and runs["sync"].calls == runs["async"].calls
    assert len(runs["sync"].actions) == runs["sync"].steps
    other = run_timed_episode(
        env, policy_infer(policy, "sampled", seed=4), STATE, DeployTiming(window=5), record_actions=True
    )
    assert other.actions != runs["sync"].actions  # the seed matters: the comparison above is not vacuous


def test_summary_reports_seconds_per_success(env):
    eps = [
        run_timed_episode(env, FakeSlowPolicy(0.0), InitialState(TASK, 7, i), DeployTiming(window=5, latency_s=0.01))
        for i in range(2)
    ]
    summary = summarize_timed(eps)
    assert summary["episodes"] == 2 and summary["calls_per_episode"] == 8
    successes = sum(e.success for e in eps)
    expected = sum(e.robot_s for e in eps) / successes if successes else None
    assert summary["seconds_per_success"] == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"window": 5, "mode": "later"}, "request mode must be one of sync, async"),
        ({"window": 5, "threshold": 5}, "threshold must be an integer in [0, window - 1]"),
        ({"window": 5, "latency_s": float("nan")}, "latency_s must be a finite number >= 0"),
    ],
)
def test_bad_timing_is_one_clear_error(kwargs, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DeployTiming(**kwargs)


def test_a_chunk_shorter_than_the_window_is_refused(env):
    with pytest.raises(InputError, match="executing window 12 needs"):
        run_timed_episode(env, FakeSlowPolicy(0.0, chunk_size=10), STATE, DeployTiming(window=12))


class RenderEveryStep:
    """A wrapper (not a fake: it forwards to the real env) that hides ``observes_on_demand``, so the
    timed loop gets an image from every step, as an env that cannot skip rendering would give it."""

    observes_on_demand = False

    def __init__(self, env):
        self._env = env

    def step(self, action):
        return self._env.step(action)

    def __getattr__(self, name):
        return getattr(self._env, name)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_images_rendered_on_demand_give_the_same_episode(mode):
    """An image policy's calls read images rendered only when a call needs them: the same actions,
    calls and timeline as rendering after every step, in both request modes."""
    env = MetaWorldEnv(TASK, horizon=30, image=True, image_size=32)
    try:
        policy = tiny_policy(env.instruction, image_shape=(32, 32, 3))
        timing = DeployTiming(window=5, mode=mode, threshold=2, latency_s=0.03 if mode == "async" else None)
        renders = []
        render = env.render
        env.render = lambda: renders.append(1) or render()  # count the images the lazy loop asks for
        lazy = run_timed_episode(env, policy_infer(policy, "sampled", seed=1), STATE, timing, record_actions=True)
        del env.render
        eager = run_timed_episode(
            RenderEveryStep(env), policy_infer(policy, "sampled", seed=1), STATE, timing, record_actions=True
        )
    finally:
        env.close()
    assert lazy.actions == eager.actions and lazy.calls == eager.calls and lazy.steps == eager.steps == 30
    assert lazy.staleness == eager.staleness
    assert len(renders) == lazy.calls  # the reset's image (read by the first call), then one per later call
