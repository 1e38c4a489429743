"""Multi-node Ray, simulated on one machine (issue 31): Ray's own `ray.cluster_utils.Cluster` starts a
head node with no CPUs (the learner's node, as `ray start --head --num-cpus 0` on a cluster) and
worker nodes, each its own raylet with its own resources, so that Ray places, loses and replaces env
workers across nodes for real:

- the worker bundles of a SPREAD placement group land on different nodes (either node could hold
  both); a node whose raylet is killed mid-epoch loses its worker: that worker's groups are dropped
  and counted, Ray reschedules its bundle onto the surviving node and restarts the actor there, and
  the run goes on;
- a run asking for more workers than the cluster holds waits (the pre-flight check, within
  ``ray.placement_timeout_s``) for a node that joins late, and places a worker on it.

What one machine cannot show: a network between nodes, separate filesystems, other hosts' clocks
and firewalls (docs/scaling.md says what a real cluster adds). Real Meta-World envs,
the fake reacher policy of tests/test_rollout.py.
"""

from __future__ import annotations

import functools
import os
import threading
import time

import pytest
import torch

from faults import faulty_env_factory
from policytrim.config import EnvConfig, RayConfig
from policytrim.envs import initial_states
from policytrim.rollout.engine import RolloutEngine
from policytrim.rollout.ray_pool import _check_answers, check_cluster
from test_rollout import FakeNoisyReacher

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.placement_group import placement_group_table  # noqa: E402

# the GCS declares a node dead after 4 missed health checks 0.5 s apart (default: 5 x 3 s)
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 4,
}
ENV = EnvConfig(tasks=("reach-v3",), horizon=60)


@pytest.fixture(scope="module")
def cluster():
    """A head node without CPUs and two worker nodes of 2 CPUs; this process is the driver. Workers
    see this directory (the `faults` helper) through PYTHONPATH, as in tests/test_ray.py."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    saved = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    head_args = {"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_NODE_DEATH}
    simulated = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        for _ in range(2):
            simulated.add_node(num_cpus=2)
        simulated.wait_for_nodes()
        ray.init(address=simulated.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        yield simulated
    finally:
        ray.shutdown()
        simulated.shutdown()  # also forgets the address it recorded for `ray.init("auto")`
        if saved is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = saved


def bundle_nodes(pool) -> dict[int, str]:
    """Node id (hex) of each worker's bundle."""
    return dict(placement_group_table(pool._pg)["bundles_to_node_id"])


def alive_worker_nodes(simulated) -> dict[str, float]:
    ids = {node.node_id for node in simulated.worker_nodes}
    return {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"] and n["NodeID"] in ids}


def rollout(engine, indices):
    policy = FakeNoisyReacher()
    starts = [s for s in initial_states("reach-v3", 0, 8) if s.index in indices]
    return engine.run(policy, starts, 2, torch.full((len(starts), 2), 2, dtype=torch.long), "train", seed=0)


@pytest.mark.slow
def test_workers_spread_over_nodes_and_a_node_dying_mid_epoch_is_survived(cluster, caplog):
    start = time.monotonic()
    _check_answers(cluster.address, 15.0)  # the pre-flight's reachability check accepts a real cluster (no InputError)
    assert time.monotonic() - start < 10.0
    # state 0 hangs at step 3 (for 60 s): worker 0 is mid-request when its node is killed
    factory = functools.partial(faulty_env_factory, index=0, at_step=3, kind="hang", hang_s=60.0)
    ray_cfg = RayConfig(address=cluster.address, placement_strategy="SPREAD", max_restarts=2)
    engine = RolloutEngine(
        ENV, 2, step_timeout_s=120.0, env_factory=factory, pipeline=False, backend="ray", ray=ray_cfg
    )
    with engine:
        pool = engine._pool
        placed = bundle_nodes(pool)
        assert len(set(placed.values())) == 2, placed  # one worker per node
        victim = next(node for node in cluster.worker_nodes if node.node_id == placed[0])
        survivor = placed[1]
        killer = threading.Timer(3.0, cluster.remove_node, (victim,), {"allow_graceful": False})  # SIGKILL its raylet
        killer.start()
        start = time.monotonic()
        try:
            # groups 0-1 (states 0, 2) on worker 0, groups 2-3 (states 3, 4) on worker 1
            killed = rollout(engine, (0, 2, 3, 4))
        finally:
            killer.join()
        print(f"the epoch with a node killed at 3 s took {time.monotonic() - start:.1f} s")
        assert killed.dropped_groups == 2 and killed.num_groups == 2 and sorted(killed.index.tolist()) == [3, 3, 4, 4]
        assert engine.replaced_workers == 1 and pool.restarts == [1, 0]
        assert bundle_nodes(pool) == {0: survivor, 1: survivor}  # the lost bundle moved to the surviving node
        clean = rollout(engine, (2, 3, 4, 5))  # the run goes on: the restarted actor serves groups again
        assert clean.dropped_groups == 0 and clean.num_groups == 4 and clean.env_steps > 0
    assert "died" in caplog.text


@pytest.mark.slow
def test_workers_wait_for_a_node_that_joins_late(cluster):
    cpus = alive_worker_nodes(cluster)
    workers = int(sum(cpus.values())) + 1  # one more than the cluster holds now
    ray_cfg = RayConfig(address=cluster.address, placement_timeout_s=120.0)
    outcome: dict[str, object] = {}

    def check() -> None:  # the pre-flight waits until the bundles fit
        try:
            check_cluster(ray_cfg, workers)
            outcome["placed_at"] = time.monotonic()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    checker = threading.Thread(target=check)
    start = time.monotonic()
    checker.start()
    time.sleep(2.0)
    assert checker.is_alive()  # still waiting: the cluster cannot hold them yet
    late = cluster.add_node(num_cpus=1)  # in the main thread: a Ray node installs signal handlers
    checker.join(timeout=120)
    assert "error" not in outcome, outcome
    waited = outcome["placed_at"] - start
    print(f"{workers} workers placed {waited:.1f} s after the check began (the node joined after 2 s)")
    with RolloutEngine(ENV, workers, step_timeout_s=120.0, pipeline=False, backend="ray", ray=ray_cfg) as engine:
        assert late.node_id in bundle_nodes(engine._pool).values()  # a worker runs on the late node
        result = rollout(engine, tuple(range(workers)))
    assert result.dropped_groups == 0 and result.num_groups == workers and result.env_steps > 0
