"""The rollout engine on real Meta-World at a tiny size: counts (T, C, n_c), early stop at the first
success, recorded chunks, per-trajectory seeding independent of workers and batching, the expert's
window, and faults (exception, hang, crash) that drop groups whole."""

from __future__ import annotations

import functools
import logging
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from faults import FaultyEnv, faulty_env_factory
from policytrim.config import EnvConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.base import InitialState
from policytrim.policies.base import ChunkSample
from policytrim.policies.expert import ExpertPolicy, expert_action, scripted_expert
from policytrim.rollout.engine import AdapterError, RolloutEngine, trajectory_seed


class FakeConstantPolicy:
    """Fake deterministic chunk policy: every row of every chunk is the same constant action.
    Its log-probs and replay data are tied to the observation so that row alignment is checkable."""

    default_window = 1
    action_dim = 4

    def __init__(self, chunk_size: int = 6, action=(0.0, 0.0, 0.0, 0.0)):
        self.chunk_size = self.max_window = chunk_size
        self.action = torch.tensor(action, dtype=torch.float32)

    def sample(self, obs, instructions, mode, generators=None):
        state = obs["state"]
        B, H = state.shape[0], self.chunk_size
        logp = state[:, :1] + torch.arange(H, dtype=torch.float32)
        return ChunkSample(
            self.action.expand(B, H, 4).clone(), logp, {"state_x": state[:, 0].clone(), "twice": 2 * state[:, :3]}
        )


class FakeNoisyReacher:
    """Fake stochastic chunk policy: heads for the goal (last 3 state dims) plus Gaussian noise
    drawn from each row's generator, one draw per row of the chunk."""

    default_window = 1
    action_dim = 4

    def __init__(self, chunk_size: int = 4, noise: float = 0.6):
        self.chunk_size = self.max_window = chunk_size
        self.noise = noise

    def sample(self, obs, instructions, mode, generators=None):
        state = obs["state"].double()
        B, H = state.shape[0], self.chunk_size
        eps = torch.stack([torch.randn(H, 4, generator=g, dtype=torch.float64) for g in generators])
        toward = torch.zeros(B, 1, 4, dtype=torch.float64)
        toward[:, 0, :3] = (10 * (state[:, -3:] - state[:, :3])).clamp(-1, 1)
        x = toward + self.noise * eps
        return ChunkSample(x.clamp(-1, 1).float(), (-0.5 * eps.pow(2).sum(-1)).float(), {"eps": eps.float()})


class FakeOpenLoopExpert:
    """Fake chunk policy: Meta-World's expert action for the chunk's observation, repeated H times."""

    default_window = 1
    action_dim = 4

    def __init__(self, chunk_size: int = 5):
        self.chunk_size = self.max_window = chunk_size
        self.expert = ExpertPolicy()

    def sample(self, obs, instructions, mode, generators=None):
        one = self.expert.sample(obs, instructions, mode)
        return ChunkSample(
            one.actions.expand(-1, self.chunk_size, -1).clone(), torch.zeros(len(instructions), self.chunk_size)
        )


def run(engine, policy, starts, windows, seed=0, mode="sampled", record=True):
    w = torch.tensor(windows, dtype=torch.long)
    if w.ndim == 1:
        w = w.expand(len(starts), -1).clone()
    return engine.run(policy, starts, w.shape[1], w, mode, seed, record)


@pytest.fixture(scope="module")
def local23():
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=23), num_workers=0) as engine:
        yield engine


def test_counts_for_fixed_windows_without_success(local23):
    windows = [1, 4, 5, 6]
    starts = initial_states("reach-v3", 0, 2)
    traj = run(local23, FakeConstantPolicy(6), starts, windows)
    assert traj.num_trajectories == 8 and traj.num_groups == 2 and traj.horizon == 23
    assert traj.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert traj.window.tolist() == windows * 2
    assert not traj.success.any() and traj.steps.tolist() == [23] * 8
    assert traj.calls.tolist() == [math.ceil(23 / k) for k in windows] * 2
    assert traj.env_steps == 8 * 23 and traj.dropped_groups == 0
    assert traj.num_chunks == int(traj.calls.sum())
    for i, k in enumerate(windows * 2):
        rows = traj.chunk_rows[traj.chunk_traj == i].tolist()
        assert rows == [k] * (len(rows) - 1) + [23 - k * (len(rows) - 1)]
        assert traj.chunk_pos[traj.chunk_traj == i].tolist() == list(range(len(rows)))
    assert traj.old_logp.shape == (traj.num_chunks, 6) and traj.obs["state"].shape == (traj.num_chunks, 39)
    assert torch.equal(traj.replay["state_x"], traj.obs["state"][:, 0])  # rows stay aligned
    assert torch.equal(traj.old_logp[:, 0], traj.obs["state"][:, 0])
    first = make_env(EnvConfig(tasks=("reach-v3",)), "reach-v3").reset(starts[1])["state"]
    assert torch.equal(traj.obs["state"][traj.chunks_of(torch.tensor([4]))[0]], torch.from_numpy(first))
    assert traj.padded(traj.old_logp).shape == (8, 23, 6)
    assert traj.instruction[0] == "reach the goal position"
    assert traj.policy_batches > 0 and traj.policy_seconds > 0


def test_workers_report_cpu_time_beside_wall_time():
    """Worker CPU seconds (what the profiler splits into simulator / resets / IPC) are measured in the
    worker process itself: positive, resets a part of them, never above the wall time they sit in."""
    starts = initial_states("reach-v3", 0, 2)
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=23), num_workers=1) as engine:
        t = run(engine, FakeConstantPolicy(6), starts, [1, 6]).timing
    assert 0 < t["worker_reset_cpu"] < t["worker_cpu"]
    assert t["worker_cpu"] <= t["worker"] + 0.05  # one thread: CPU time cannot outrun the wall clock
    assert t["worker_reset_cpu"] <= t["worker_reset"] + 0.05


def test_chunk_cut_short_at_first_success():
    with RolloutEngine(EnvConfig(tasks=("reach-v3",)), num_workers=0) as engine:
        starts = initial_states("reach-v3", 0, 2)
        traj = run(engine, FakeOpenLoopExpert(5), starts, [1, 3, 5])
    assert traj.success.all() and (traj.steps < 200).all()
    for i in range(traj.num_trajectories):
        k, T = int(traj.window[i]), int(traj.steps[i])
        rows = traj.chunk_rows[traj.chunk_traj == i]
        assert int(rows.sum()) == T and int(traj.calls[i]) == math.ceil(T / k) == len(rows)
        assert (rows[:-1] == k).all() and 1 <= int(rows[-1]) <= k
        # replaying the executed actions, the first success comes exactly at step T
        env = make_env(EnvConfig(tasks=("reach-v3",)), "reach-v3")
        env.reset(starts[i // 3])
        expert = scripted_expert("reach-v3")
        successes = []
        for obs, n in zip(traj.obs["state"][traj.chunk_traj == i], rows.tolist(), strict=True):
            a = expert_action(expert, obs.numpy())
            successes += [env.step(a)[1] for _ in range(n)]
        env.close()
        assert successes.index(True) == T - 1


def test_expert_policy_on_real_tasks_window_one():
    policy = ExpertPolicy(("reach-v3", "push-v3"))
    assert policy.spec() == {"kind": "expert", "tasks": ["reach-v3", "push-v3"]}
    starts = initial_states("reach-v3", 2, 2) + initial_states("push-v3", 2, 2)
    with RolloutEngine(EnvConfig(tasks=("reach-v3", "push-v3")), num_workers=0) as engine:
        traj = run(engine, policy, starts, [1], record=False)
        assert traj.success.all() and torch.equal(traj.calls, traj.steps) and traj.num_chunks == 0
        assert traj.task == ["reach-v3", "reach-v3", "push-v3", "push-v3"]
        assert engine.control_period_s("push-v3") == pytest.approx(0.0125)
        with pytest.raises(ValueError, match="closed loop"):  # InputError is a ValueError
            run(engine, policy, starts, [2])


def test_window_validation(local23):
    starts = initial_states("reach-v3", 0, 2)
    with pytest.raises(ValueError, match=r"execution window must be in \[1, 4\].*got 5"):
        run(local23, FakeConstantPolicy(4), starts, [5])
    with pytest.raises(ValueError, match=r"execution window must be in \[1, 4\].*got 0"):
        run(local23, FakeConstantPolicy(4), starts, [0])
    with pytest.raises(ValueError, match="shape"):
        local23.run(FakeConstantPolicy(4), starts, 2, torch.ones(3, 2, dtype=torch.long), "sampled", 0)
    with pytest.raises(ValueError, match="mode"):
        run(local23, FakeConstantPolicy(4), starts, [1], mode="greedy")


def fields(traj):
    return {
        "success": traj.success,
        "steps": traj.steps,
        "calls": traj.calls,
        "chunk_traj": traj.chunk_traj,
        "chunk_rows": traj.chunk_rows,
        "obs": traj.obs["state"],
        "logp": traj.old_logp,
        "eps": traj.replay["eps"],
    }


def test_seeding_is_per_trajectory_not_per_batch_or_worker():
    cfg = EnvConfig(tasks=("reach-v3", "push-v3"), horizon=30)
    starts = [InitialState("reach-v3", 0, 0), InitialState("push-v3", 0, 1), InitialState("reach-v3", 0, 2)]
    policy = FakeNoisyReacher(4)
    with RolloutEngine(cfg, num_workers=0) as engine:
        a = fields(run(engine, policy, starts, [1, 2, 4], seed=5))
        other_seed = fields(run(engine, policy, starts, [1, 2, 4], seed=6))
        alone = fields(run(engine, policy, starts[2:], [1, 2, 4], seed=5))  # different batch composition
    with RolloutEngine(cfg, num_workers=2, envs_per_worker=2) as engine:
        b = fields(run(engine, policy, starts, [1, 2, 4], seed=5))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["success"].any() and not a["success"].all()  # the fake both succeeds and fails here
    assert not torch.equal(a["obs"], other_seed["obs"])
    last = a["chunk_traj"] >= 6
    assert torch.equal(alone["obs"], a["obs"][last]) and torch.equal(alone["eps"], a["eps"][last])
    assert trajectory_seed(5, starts[0], 0) != trajectory_seed(5, starts[0], 1)


def test_exception_in_one_env_drops_its_group_whole(local23, caplog):
    FaultyEnv.fired = 0
    factory = functools.partial(faulty_env_factory, index=1, at_step=3, kind="raise", max_faults=1)
    starts = initial_states("reach-v3", 0, 3)
    clean = run(local23, FakeConstantPolicy(6), starts, [1, 4])
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=23), num_workers=0, env_factory=factory) as engine:
        with caplog.at_level(logging.WARNING, logger="policytrim.rollout"):
            traj = run(engine, FakeConstantPolicy(6), starts, [1, 4])
    assert FaultyEnv.fired == 1  # one member faulted ...
    assert traj.dropped_groups == 1 and traj.num_trajectories == 4  # ... and its whole group went
    assert traj.index.tolist() == [0, 0, 2, 2] and traj.group.tolist() == [0, 0, 1, 1]
    keep = torch.tensor([0, 1, 4, 5])
    assert torch.equal(traj.steps, clean.steps[keep]) and torch.equal(traj.calls, clean.calls[keep])
    assert set(traj.chunk_traj.tolist()) == {0, 1, 2, 3}
    assert torch.equal(traj.obs["state"], clean.obs["state"][clean.chunks_of(keep)])
    assert "dropped 1 of 3 groups" in caplog.text
    assert traj.fault_counts == {"InjectedFault": 1}
    first = [r for r in caplog.records if "first InjectedFault fault" in r.message]
    assert len(first) == 1 and first[0].levelno == logging.WARNING and "Traceback" in first[0].message


def test_programming_error_in_an_adapter_stops_the_run(caplog):
    factory = functools.partial(faulty_env_factory, index=1, at_step=3, kind="bug")
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=23), num_workers=0, env_factory=factory) as engine:
        with pytest.raises(AdapterError, match="raised AttributeError on reach-v3 state 1.*programming error"):
            run(engine, FakeConstantPolicy(6), initial_states("reach-v3", 0, 3), [1, 4])


@pytest.mark.parametrize("kind", ["hang", "crash"])
def test_hung_or_crashed_worker_is_replaced_and_its_groups_dropped(kind):
    cfg = EnvConfig(tasks=("reach-v3",), horizon=20)
    factory = functools.partial(faulty_env_factory, index=1, at_step=2, kind=kind, hang_s=60.0)
    starts = initial_states("reach-v3", 0, 4)  # groups 0, 1 on worker 0; groups 2, 3 on worker 1
    with RolloutEngine(cfg, num_workers=2, step_timeout_s=1.5, env_factory=factory) as engine:
        pids = engine._pool.pids
        traj = run(engine, FakeConstantPolicy(5), starts, [1, 5])
        assert engine.replaced_workers == 1
        new_pids = engine._pool.pids
        assert new_pids[0] != pids[0] and new_pids[1] == pids[1]
        assert traj.dropped_groups == 2 and traj.index.tolist() == [2, 2, 3, 3]
        assert traj.steps.tolist() == [20] * 4 and traj.calls.tolist() == [20, 4] * 2
        again = run(engine, FakeConstantPolicy(5), [starts[0], starts[2]], [1, 5])  # the batch goes on
        assert again.dropped_groups == 0 and again.steps.tolist() == [20] * 4


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/PID/maps (Linux)")
def test_env_worker_processes_do_not_load_torch():
    """A worker steps envs and needs no torch; loading it would add seconds to every worker's start
    (and to every replacement of a hung one). Checked in the real spawned worker, after it has built
    and stepped a Meta-World env: no torch library is mapped into the process."""
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=4), num_workers=1) as engine:
        traj = run(engine, FakeConstantPolicy(2), initial_states("reach-v3", 0, 1), [2])
        (pid,) = engine._pool.pids
        maps = Path(f"/proc/{pid}/maps").read_text()
    assert traj.steps.tolist() == [4] and "mujoco" in maps
    assert "libtorch" not in maps


def test_gym_env_ending_without_success_counts_the_horizon():
    from test_envs import _register_line_env

    _register_line_env()
    cfg = EnvConfig(suite="gym", gym_id="PolicytrimLine-v0", horizon=50)
    with RolloutEngine(cfg, num_workers=0) as engine:
        starts = initial_states("PolicytrimLine-v0", 0, 1)
        traj = engine.run(FakeConstantPolicy(4, action=(1.0,)), starts, 2, torch.tensor([[1, 4]]), "sampled", 0)
    # the point leaves [-2.05, 2.05] at step 21 (this target is not hit on the way): a failure, T = horizon
    assert traj.instruction[0] == "move the point to the target"
    assert traj.steps.tolist() == [50, 50] and not traj.success.any()
    assert traj.calls.tolist() == [21, 6] and traj.env_steps == 42


def test_image_observations_are_recorded_per_chunk():
    cfg = EnvConfig(tasks=("reach-v3",), horizon=4, image=True, image_size=32)
    with RolloutEngine(cfg, num_workers=0) as engine:
        traj = run(engine, FakeConstantPolicy(2), initial_states("reach-v3", 0, 1), [2])
    assert traj.obs["image"].shape == (2, 32, 32, 3) and traj.obs["image"].dtype == torch.uint8
    assert traj.obs["state"].shape == (2, 39) and traj.calls.tolist() == [2]


class FakeEnv:
    """Fake adapter: counts steps, succeeds at step ``state.index + 1``; records closing."""

    instruction, horizon, action_dim, control_period_s, observation_spec = "fake", 10, 4, 0.01, {}

    def __init__(self, task):
        self.task, self.closed, self.t, self.goal = task, False, 0, 0

    def reset(self, state):
        self.t, self.goal = 0, state.index + 1
        return {"state": np.zeros(3, np.float32)}

    def step(self, action):
        self.t += 1
        return {"state": np.full(3, self.t, np.float32)}, self.t == self.goal

    def close(self):
        self.closed = True


def test_env_server_reuses_envs_and_bounds_idle_ones():
    from policytrim.rollout.workers import EnvServer, StepRequest

    made = []

    def factory(cfg, task):
        made.append(FakeEnv(task))
        return made[-1]

    server = EnvServer(None, factory, max_envs=2)
    one_step = dict(actions=np.zeros((1, 1, 4), np.float32), rows=np.array([1]))
    for slot, task in enumerate(["a", "b", "a", "c", "a"]):
        res = server.handle(StepRequest(resets=[(slot, InitialState(task, 0, 0))]))
        assert res.env_info[task]["instruction"] == "fake" and not res.done.any()
        res = server.handle(StepRequest(slots=np.array([slot]), **one_step))
        assert res.done.tolist() == [True] and res.success.tolist() == [True] and res.steps.tolist() == [1]
    assert [e.task for e in made] == ["a", "b", "c"]  # the second and third "a" reused the first
    assert [e.closed for e in made] == [False, True, False]  # "b" was idle when "c" needed room


def test_evicted_envs_in_reference_cycles_are_freed_at_once():
    import gc
    import weakref

    from policytrim.rollout.workers import EnvServer, StepRequest

    refs = []

    def factory(cfg, task):
        env = FakeEnv(task)
        env.cycle = env  # gymnasium / MuJoCo envs sit in reference cycles like this one
        refs.append(weakref.ref(env))
        return env

    gc.disable()  # only the server's own collection may free it
    try:
        server = EnvServer(None, factory, max_envs=1)
        one_step = dict(actions=np.zeros((1, 1, 4), np.float32), rows=np.array([1]))
        for slot, task in enumerate(["a", "b"]):
            server.handle(StepRequest(resets=[(slot, InitialState(task, 0, 0))]))
            server.handle(StepRequest(slots=np.array([slot]), **one_step))
        assert refs[0]() is None and refs[1]() is not None  # "a" was evicted for "b" and freed
    finally:
        gc.enable()


BUILT: list[str] = []


def counting_factory(cfg, task):
    BUILT.append(task)
    return make_env(cfg, task)


def test_envs_are_kept_across_runs_when_tasks_rotate():
    BUILT.clear()
    starts = initial_states("reach-v3", 0, 3) + initial_states("push-v3", 0, 3)
    with RolloutEngine(
        EnvConfig(tasks=("reach-v3", "push-v3"), horizon=3),
        num_workers=0,
        envs_per_worker=2,
        env_factory=counting_factory,
    ) as engine:
        first = run(engine, FakeConstantPolicy(3), starts, [3], record=False)
        built = len(BUILT)
        second = run(engine, FakeConstantPolicy(3), starts[::-1], [3], record=False)
    assert built <= 4 and len(BUILT) == built  # the second run rebuilt nothing
    assert first.steps.tolist() == second.steps.tolist() == [3] * 6


def test_an_adapter_refusing_the_input_stops_the_run_with_its_message():
    """An InputError from an adapter (a wrong setting, a missing package) is the user's to fix: the
    run stops with its message (CLI exit 2) instead of dropping groups as for a simulator fault."""
    from policytrim.errors import InputError

    factory = functools.partial(faulty_env_factory, index=1, at_step=3, kind="input")
    with RolloutEngine(EnvConfig(tasks=("reach-v3",), horizon=23), num_workers=0, env_factory=factory) as engine:
        with pytest.raises(InputError, match="env.injected: an injected bad setting.*on reach-v3 state 1"):
            run(engine, FakeConstantPolicy(6), initial_states("reach-v3", 0, 3), [1, 4])


_BUILT: list[str] = []


def _counting_env_factory(env_cfg, task):
    """Fake-free factory: the real Meta-World env, with every build recorded in `_BUILT`."""
    _BUILT.append(task)
    return make_env(env_cfg, task)


def test_envs_within_cap_keeps_one_env_per_task_per_lane():
    from policytrim.rollout.engine import envs_within_cap

    ten_tasks = types.SimpleNamespace(suite="libero", tasks=[f"libero_object/task_{i}" for i in range(10)])  # stand-in
    assert envs_within_cap(12, ten_tasks, lanes=2) == 2
    assert envs_within_cap(12, EnvConfig(tasks=("reach-v3",)), lanes=2) == 12
    assert envs_within_cap(12, EnvConfig(tasks=("reach-v3", "push-v3", "pick-place-v3")), lanes=2) == 8
    assert envs_within_cap(1, EnvConfig(tasks=("reach-v3", "push-v3")), lanes=2) == 1  # never above the cap


def test_a_capped_worker_keeps_every_tasks_env_when_the_groups_tasks_rotate():
    # A worker that may keep 3 envs (memory-bound suites: LIBERO, ManiSkill) and three tasks whose
    # groups rotate, as a multi-task epoch's do. It must not build envs again for tasks it ran
    # before: with 2 trajectories of each of two tasks at once (the cap's own count), the third
    # task's envs evicted the first two and every later run rebuilt them.
    tasks = ("reach-v3", "push-v3", "drawer-close-v3")
    cfg = EnvConfig(tasks=tasks, horizon=12, max_envs_per_worker=3)
    policy = FakeConstantPolicy(6)
    _BUILT.clear()
    with RolloutEngine(cfg, num_workers=0, env_factory=_counting_env_factory) as engine:
        assert engine.envs_per_worker == 2
        for round_tasks in ((tasks[0], tasks[1]), (tasks[2],), (tasks[0], tasks[1]), (tasks[2],)):
            starts = [InitialState(t, 0, n) for n, t in enumerate(round_tasks)]
            run(engine, policy, starts, [1, 2, 3, 4])  # groups of 4
    assert sorted(_BUILT) == sorted(tasks)  # one build per task, then reuse
