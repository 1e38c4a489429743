"""Env workers as Ray actors (issue 14), on a local Ray instance with 2 CPUs and real Meta-World:

- the same training run (tiny size, Stage 1, one epoch) with 2 Ray actors and lockstep gives
  bit-identical metrics and weights to 2 local worker processes and lockstep;
- an actor whose process is killed (SIGKILL) is restarted by Ray, its groups are dropped whole and
  counted, and the run goes on; an actor that hangs past the step timeout is killed and replaced.

Skipped only when Ray is not installed (CI installs it: scripts/run.sh).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from faults import faulty_env_factory
from policytrim.config import EnvConfig, RayConfig
from policytrim.envs import initial_states
from policytrim.io import read_jsonl
from policytrim.rollout.engine import RolloutEngine
from policytrim.train.grpo import train
from test_determinism import _canonical
from test_rollout import FakeNoisyReacher

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; every `RayPool` here joins it. Its workers
    see this directory (the test helpers, e.g. `faults`) through PYTHONPATH, as spawned local
    workers do through the inherited ``sys.path``."""
    path = os.pathsep.join(
        p for p in (os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")) if p
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_actors_give_the_same_run_as_local_processes(local_ray, tiny_baseline, tmp_path):
    stage = dict(epochs=1, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=2)
    runs = {}
    for backend in ("local", "ray"):
        cfg = tiny_config(stage1=stage)
        cfg.rollout.num_workers, cfg.rollout.lockstep, cfg.rollout.backend = 2, True, backend
        cfg.eval.latency_ms = 1.0  # the wall-clock estimate then uses a given latency, not a timing
        cfg.logging.out = str(tmp_path / backend)
        train(cfg, "extend", str(tiny_baseline))
        runs[backend] = tmp_path / backend
    records = {b: _canonical(read_jsonl(run / "metrics.jsonl")) for b, run in runs.items()}
    assert len(records["local"]) == 2 and records["local"][1]["env_steps"] > 0
    assert records["local"] == records["ray"]
    for name in ("extend/result.json", "summary.json"):
        local, remote = (_canonical(json.loads((run / name).read_text())) for run in runs.values())
        assert local == remote, name
    a, b = (load_file(str(run / "extend" / "epoch_000001" / "policy" / "model.safetensors")) for run in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_killed_or_hung_actor_is_replaced_and_its_groups_dropped(local_ray, caplog):
    env = EnvConfig(tasks=("reach-v3",), horizon=60)
    policy = FakeNoisyReacher()
    # state 0 hangs for 60 s at step 3
    factory = functools.partial(faulty_env_factory, index=0, at_step=3, kind="hang", hang_s=60.0)

    def rollout(engine, indices):
        starts = [s for s in initial_states("reach-v3", 0, 8) if s.index in indices]
        return engine.run(policy, starts, 2, torch.full((len(starts), 2), 2, dtype=torch.long), "train", seed=0)

    ray_cfg = RayConfig(max_restarts=2)
    with RolloutEngine(
        env, 2, step_timeout_s=3.0, env_factory=factory, pipeline=False, backend="ray", ray=ray_cfg
    ) as engine:
        pool = engine._pool
        first = pool.pids
        # groups 0-1 run on worker 0, groups 2-3 on worker 1 (whole groups per worker, in order)
        hung = rollout(engine, (0, 2, 3, 4))  # hangs past the 3 s step timeout
        assert hung.dropped_groups == 2 and hung.num_groups == 2 and engine.replaced_workers == 1
        assert sorted(hung.index.tolist()) == [3, 3, 4, 4]
        after_hang = pool.pids
        assert after_hang[0] != first[0] and after_hang[1] == first[1] and pool.restarts == [1, 0]

        engine.step_timeout_s = 120.0  # the hang (60 s) now outlasts the kill below (at 5 s)
        killer = threading.Timer(5.0, os.kill, (after_hang[0], signal.SIGKILL))
        killer.start()
        try:
            killed = rollout(engine, (0, 2, 3, 4))
        finally:
            killer.cancel()
        assert killed.dropped_groups == 2 and sorted(killed.index.tolist()) == [3, 3, 4, 4]
        assert engine.replaced_workers == 2 and pool.restarts == [2, 0]
        assert pool.pids[0] not in (first[0], after_hang[0])

        clean = rollout(engine, (2, 3, 4, 5))  # the run goes on with the restarted actor
        assert clean.dropped_groups == 0 and clean.num_groups == 4 and clean.env_steps > 0
    assert "died" in caplog.text and "did not answer within 3 s" in caplog.text
