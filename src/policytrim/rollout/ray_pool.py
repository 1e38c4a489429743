"""Env workers as Ray actors: the same `EnvServer` and StepRequest -> StepResult as the local pools.

The rollout engine does not change: it submits one request per worker lane and waits for answers,
exactly as with `ProcessPool`; only the transport differs. Policy inference stays in the calling
process (the learner, CPU or GPU), batched over every env of every actor, so one call serves many
envs.

Placement: one placement group with one bundle per worker ({CPU: cpus_per_worker, GPU:
gpus_per_worker, memory: memory_per_worker_mb}), strategy ``SPREAD`` (across nodes, best effort) by
default; actor w is pinned to bundle w. Ray's own mechanisms do the rest: ``max_restarts`` restarts an
actor whose process dies (its constructor runs again: fresh envs), ``max_task_retries=0`` makes the
requests in flight on a dead actor fail instead of re-running on the fresh one (their trajectories
are gone; the engine drops their groups whole and counts them, as it does for a local worker), and a
worker that hangs past the step timeout is killed with ``ray.kill(actor, no_restart=False)`` so that
Ray restarts it. The env config and factory are small and travel inline with each actor's
creation (Ray warns that constructor arguments held in the object store can be lost for restarts).

Ray is imported here only (extra ``policytrim[ray]``). Without ``ray.address`` a local Ray instance
is started (``ray.init(address="local", num_cpus=..., include_dashboard=False)``) and left running for the rest of
the process, so the trainer's and the evaluator's engines share it. ``include_dashboard=False``
means no dashboard web UI and no port 8265; Ray (2.60) still starts its ``dashboard.py`` head
process with only the usage-stats module and no frontend, and a ``DashboardAgent`` and a
``RuntimeEnvAgent`` beside every raylet: no `ray.init` option turns these off. Usage-stats
reporting is turned off for the local instance (``RAY_USAGE_STATS_ENABLED=0`` unless set).

`check_cluster` runs before a command writes anything (`policytrim.preflight`): it checks that the
cluster at ``ray.address`` answers within ``ray.connect_timeout_s`` (Ray's own connect retries for
minutes) and that the worker bundles can be placed, so that a wrong address or a too-small cluster
is one error line and no half-made run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any

from policytrim.errors import InputError
from policytrim.rollout.workers import (
    DEFAULT_MAX_ENVS,
    EnvFactory,
    EnvServer,
    StepRequest,
    StepResult,
    WorkerError,
    WorkerPool,
)

log = logging.getLogger("policytrim.rollout")

RESTART_TIMEOUT_S = 120.0  # how long a killed or dead actor may take to come back


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InputError(
            "rollout.backend=ray needs Ray: pip install 'policytrim[ray]' (or choose rollout.backend=local)"
        ) from exc
    return ray


def connect(ray_cfg: Any) -> Any:
    """Ray, initialised: joins ``ray_cfg.address`` or starts a local instance (once per process).

    Ray >= 2.59 turns token authentication on for local instances: ``ray.init`` generates the token
    itself. To join a cluster started with ``RAY_AUTH_MODE=token``, this process needs the same
    token (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``), see docs/scaling.md."""
    ray = import_ray()
    if not ray.is_initialized():
        if ray_cfg.address:
            address = _resolve(ray_cfg.address)
            _check_answers(address, float(ray_cfg.connect_timeout_s))
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:  # e.g. a version or token mismatch
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"cannot join the Ray cluster at {address}: {reason}") from None
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local instance reports nothing anywhere
            # "local": a new instance even where RAY_ADDRESS is set or `ray start` ran on this machine
            # (ray.init() would join that cluster, or refuse num_cpus with a ValueError)
            ray.init(address="local", num_cpus=ray_cfg.num_cpus or None, include_dashboard=False, log_to_driver=True)
    return ray


def _resolve(address: str) -> str:
    """HOST:PORT of ``address`` (``auto``: the cluster `ray start` recorded on this machine, or RAY_ADDRESS)."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as exc:
        raise InputError(
            f"ray.address auto: {exc} (start one with `ray start --head`, or pass --ray.address HEAD:PORT)"
        ) from None


def _check_answers(address: str, timeout_s: float) -> None:
    """`InputError` unless a Ray GCS answers at ``address`` within about ``timeout_s``: a TCP connect
    first (unreachable, refused, unknown host), then Ray's own client (something else on the port)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    hint = (
        "is `ray start --head` running there, and is the port open to this machine? "
        "(ray.address, ray.connect_timeout_s)"
    )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(
            f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({reason}): {hint}"
        ) from None
    try:
        from ray._raylet import InnerGcsClient
    except ImportError:  # a Ray without it: ray.init's own retries decide
        return
    remaining_ms = int(max(1.0, deadline - time.monotonic()) * 1000)
    try:
        with _quiet_stderr():  # Ray's C++ client logs each retry to the process's stderr
            InnerGcsClient.standalone(address, None, remaining_ms)
    except Exception as exc:  # noqa: BLE001 - ray._raylet.RpcError and kin
        raise InputError(
            f"{address} accepts connections but no Ray cluster answered there ({exc}): "
            "give the head node's GCS port (6379 by default; not the dashboard's 8265)"
        ) from None


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def worker_bundle(ray_cfg: Any) -> dict[str, float]:
    """The resources one env-worker actor reserves (its placement-group bundle)."""
    bundle = {"CPU": float(ray_cfg.cpus_per_worker)}
    if ray_cfg.gpus_per_worker:
        bundle["GPU"] = float(ray_cfg.gpus_per_worker)
    if ray_cfg.memory_per_worker_mb:
        bundle["memory"] = float(ray_cfg.memory_per_worker_mb) * 2**20
    return bundle


def bundles_that_fit(nodes: list[dict[str, float]], bundle: dict[str, float], strategy: str) -> int:
    """How many ``bundle`` s ``strategy`` can place on nodes of these total resources (all bundles
    of one placement group: STRICT_SPREAD one per node, STRICT_PACK all on one node)."""
    per_node = [min(int(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items()) for node in nodes]
    if strategy == "STRICT_SPREAD":
        return sum(1 for n in per_node if n >= 1)
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    return sum(per_node)


def _placement_error(num_workers: int, bundle: dict[str, float], ray_cfg: Any, cluster: Any, waited: str) -> InputError:
    return InputError(
        f"Ray cannot place {num_workers} env workers of {bundle} ({ray_cfg.placement_strategy}){waited}; "
        f"the cluster has {cluster}: lower rollout.num_workers or ray.cpus_per_worker / gpus_per_worker / "
        "memory_per_worker_mb, or add nodes"
    )


def check_cluster(ray_cfg: Any, num_workers: int) -> None:
    """Before a command writes anything: join (or start) Ray (`connect`: bounded by
    ``ray.connect_timeout_s``) and place ``num_workers`` worker bundles once, then free them. A
    local instance cannot grow, so one too small fails at once; a cluster may still add nodes
    (an autoscaler), so it is given ``ray.placement_timeout_s``. Raises `InputError`."""
    ray = connect(ray_cfg)
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = worker_bundle(ray_cfg)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not ray_cfg.address and bundles_that_fit(nodes, bundle, ray_cfg.placement_strategy) < num_workers:
        raise _placement_error(num_workers, bundle, ray_cfg, ray.cluster_resources(), " on the local Ray instance")
    trial = placement_group([dict(bundle) for _ in range(num_workers)], strategy=ray_cfg.placement_strategy)
    try:
        ready, _ = ray.wait([trial.ready()], timeout=float(ray_cfg.placement_timeout_s))
    finally:
        remove_placement_group(trial)
    if not ready:
        waited = f" within {ray_cfg.placement_timeout_s:g} s"
        raise _placement_error(num_workers, bundle, ray_cfg, ray.cluster_resources(), waited)


class EnvActor:
    """The body of one Ray env-worker actor (made remote by `RayPool`): an `EnvServer`."""

    def __init__(self, env_cfg: Any, env_factory: EnvFactory | None, max_envs: int) -> None:
        if "torch" in sys.modules:  # imported by an env factory's module, perhaps
            sys.modules["torch"].set_num_threads(1)
        self._server = EnvServer(env_cfg, env_factory, max_envs)

    def handle(self, request: StepRequest) -> StepResult | WorkerError:
        try:
            return self._server.handle(request)
        except Exception:  # noqa: BLE001 - a bug: reported to the engine, which raises
            return WorkerError(traceback.format_exc())

    def pid(self) -> int:
        return os.getpid()


class RayPool(WorkerPool):
    """``num_workers`` `EnvActor` actors in one placement group (see the module docstring).

    ray_cfg: a `policytrim.config.RayConfig` (address, num_cpus, placement_strategy,
    cpus_per_worker, gpus_per_worker, memory_per_worker_mb, max_restarts, placement_timeout_s).
    """

    def __init__(
        self,
        env_cfg: Any,
        num_workers: int,
        ray_cfg: Any,
        env_factory: EnvFactory | None = None,
        max_envs: int = DEFAULT_MAX_ENVS,
    ) -> None:
        if num_workers < 1:
            raise InputError(f"rollout.backend=ray needs rollout.num_workers >= 1, got {num_workers}")
        ray = self._ray = connect(ray_cfg)
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.num_workers = num_workers
        self._max_restarts = int(ray_cfg.max_restarts)
        bundle = worker_bundle(ray_cfg)
        self._pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy=ray_cfg.placement_strategy)
        ready, _ = ray.wait([self._pg.ready()], timeout=float(ray_cfg.placement_timeout_s))
        if not ready:
            remove_placement_group(self._pg)
            waited = f" within {ray_cfg.placement_timeout_s:g} s"
            raise _placement_error(num_workers, bundle, ray_cfg, ray.cluster_resources(), waited)
        actor_cls = ray.remote(EnvActor)
        self._actors = [
            actor_cls.options(
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                memory=bundle.get("memory"),
                max_restarts=self._max_restarts,
                max_task_retries=0,  # a request lost with its actor is not re-run on the fresh one
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=w),
            ).remote(env_cfg, env_factory, max_envs)
            for w in range(num_workers)
        ]
        self._inflight: list[deque[Any]] = [deque() for _ in range(num_workers)]  # object refs, oldest first
        self._dead: set[int] = set()  # workers whose actor died (Ray restarts it on its own)
        self.restarts = [0] * num_workers
        """Restarts per worker (deaths and hang kills), each one of Ray's max_restarts."""
        self._pids = ray.get([a.pid.remote() for a in self._actors], timeout=RESTART_TIMEOUT_S)

    def submit(self, worker: int, request: StepRequest) -> None:
        self._inflight[worker].append(self._actors[worker].handle.remote(request))

    def wait(self, workers: list[int], timeout: float | None) -> list[tuple[int, StepResult | None]]:
        ray = self._ray
        heads = {self._inflight[w][0]: w for w in workers if self._inflight[w]}
        if not heads:
            return []
        ready, _ = ray.wait(list(heads), num_returns=1, timeout=timeout)
        if not ready:
            return []
        pending = [ref for w in workers for ref in self._inflight[w]]
        done = set(ray.wait(pending, num_returns=len(pending), timeout=0)[0])
        out: list[tuple[int, StepResult | None]] = []
        for w in workers:
            queue = self._inflight[w]
            while queue and queue[0] in done:  # everything this worker has answered so far, in order
                ref = queue.popleft()
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    self._dead.add(w)
                    queue.clear()
                    out.append((w, None))
                    break
                if isinstance(result, WorkerError):
                    raise WorkerError(f"env worker {w} failed:\n{result}")
                out.append((w, result))
        return out

    def restart(self, worker: int) -> None:
        """A dead actor is being restarted by Ray already; a live (hung) one is killed so that Ray
        restarts it. Either way this returns once the fresh actor answers."""
        ray = self._ray
        self.restarts[worker] += 1
        if 0 <= self._max_restarts < self.restarts[worker]:
            raise WorkerError(
                f"env worker {worker} was lost {self.restarts[worker]} times, more than "
                f"ray.max_restarts={self._max_restarts}"
            )
        if worker not in self._dead:
            ray.kill(self._actors[worker], no_restart=False)
        self._dead.discard(worker)
        self._inflight[worker].clear()
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                pid = ray.get(self._actors[worker].pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise WorkerError(
                        f"env worker {worker}: its Ray actor did not come back within {RESTART_TIMEOUT_S:g} s"
                    ) from None
                time.sleep(0.2)  # still restarting
                continue
            if pid != self._pids[worker]:
                break
            time.sleep(0.2)  # the kill has not landed yet: the old process answered
        self._pids[worker] = pid
        log.info("env worker %d: Ray restarted its actor (pid %d)", worker, pid)

    def close(self) -> None:
        ray = self._ray
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        remove_placement_group(self._pg)

    @property
    def pids(self) -> list[int]:
        """Process ids of the actors (for tests: a restarted worker has a new pid)."""
        return list(self._pids)
