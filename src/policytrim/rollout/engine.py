"""The rollout engine: the one place where action chunks are executed and steps and calls counted.

Design. Inference is central: the policy lives in the calling process (CPU or GPU, one copy) and
env workers (`policytrim.rollout.workers`) only step simulators. Policy weights therefore reach the
workers trivially -- after an update, the next chunk they execute is sampled from the new weights.
Each round the engine batches one policy call over every trajectory that needs a new chunk on the
workers that have answered, and sends each worker the first k_i rows of its trajectories' chunks;
while one worker steps, the engine serves another (pipelining across workers). Each worker's
trajectories are further split into ``lanes`` request streams, so that a worker steps one lane while
the policy runs for its other lane. Pipelining pays when a policy call is slow (a GPU-sized model)
or calls are frequent (window 1): the simulators keep stepping while the policy computes.
`rollout.lockstep` trades it for bit-reproducible runs (one call per round, workers in a fixed order).

Per trajectory i (group g, slot j): window k_i <= the policy's max_window, a CPU `torch.Generator`
seeded by a stable hash of (seed, task, state seed, state index, j) -- so a trajectory's random
numbers do not depend on batching, worker count, other trajectories or the policy's device (paired
evaluation; policies draw on CPU and move the noise to their device). It stops
at its first success or at the horizon. Recorded: success S, steps T (the horizon on failure), calls
C, window k, and per executed chunk the observation, rows executed n_c, old log-probs and the
policy's replay tensors.

Faults: an env exception fails its trajectory; a worker that does not answer within
``step_timeout_s`` (plus ``setup_timeout_s`` when it must build envs) or dies is killed and replaced,
failing its running trajectories. Groups with a failed member are dropped whole, counted in
``Trajectories.dropped_groups`` (and by fault kind in ``Trajectories.fault_counts``) and logged; the
batch goes on. An adapter exception that is a programming error stops the run (`AdapterError`).

CPU policies: with as many env workers as cores, run torch in the calling process with one thread
(`policytrim.runtime.workers_own_cores`): torch's default thread pool spins against the env workers
and makes a small call orders of magnitude slower.

Worker processes use the spawn start method: scripts that create an engine with workers need the
usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from policytrim.envs import env_tasks, worker_env_cap
from policytrim.envs.base import InitialState
from policytrim.errors import InputError
from policytrim.policies.base import MODES, ChunkPolicy, Mode
from policytrim.progress import rollout_finished
from policytrim.rollout.types import Trajectories
from policytrim.rollout.workers import (
    DEFAULT_MAX_ENVS,
    EnvFactory,
    Fault,
    LocalPool,
    ProcessPool,
    StepRequest,
    StepResult,
    WorkerPool,
)
from policytrim.runtime import device_of
from policytrim.windows import check_window, window_bound

log = logging.getLogger("policytrim.rollout")

DEFAULT_ENVS_PER_WORKER = 32


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (unlike ``hash()``, equal in every process)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def state_seed(tag: str, seed: int, state: InitialState, *extra: Any) -> int:
    """A stable seed for the initial state ``state`` under the run's ``seed``, kept apart by ``tag``."""
    return stable_seed(tag, seed, state.task, state.seed, state.index, *extra)


def trajectory_seed(seed: int, state: InitialState, member: int) -> int:
    """Seed of the generator of member ``member`` of a group started from ``state``."""
    return state_seed("policytrim-trajectory", seed, state, member)


def adaptor_seed(seed: int, state: InitialState, member: int) -> int:
    """Seed of the window adaptor's own generator for member ``member`` (rollouts with common noise)."""
    return state_seed("policytrim-adaptor", seed, state, member)


def branch_call(seed: int, state: InitialState, below: int) -> int:
    """The call at which the members of the group started from ``state`` sample their own window
    (per-call credit): uniform over 0 .. below - 1, the same for every member."""
    return state_seed("policytrim-branch", seed, state) % below


def make_pool(
    env: Any, num_workers: int, env_factory: EnvFactory | None, max_envs: int, backend: str = "local", ray: Any = None
) -> WorkerPool:
    """The env workers of an engine: in-process (num_workers=0), local processes, or Ray actors."""
    if backend == "ray":
        from policytrim.config import RayConfig
        from policytrim.rollout.ray_pool import RayPool

        return RayPool(env, num_workers, ray if ray is not None else RayConfig(), env_factory, max_envs)
    if backend != "local":
        raise ValueError(f"backend must be local or ray, got {backend!r}")
    if num_workers == 0:
        return LocalPool(env, 1, env_factory, max_envs=max_envs)
    return ProcessPool(env, num_workers, env_factory, max_envs=max_envs)


class _Batch:
    """The chunks sampled in one policy call (kept on CPU)."""

    __slots__ = (
        "traj",
        "pos",
        "rows",
        "obs",
        "logp",
        "replay",
        "window",
        "window_logp",
        "actions",
        "offset",
        "branch",
    )

    def __init__(
        self,
        traj: np.ndarray,
        pos: np.ndarray,
        obs: dict[str, torch.Tensor],
        logp: torch.Tensor,
        replay: dict[str, torch.Tensor],
        window: np.ndarray,
        window_logp: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        offset: np.ndarray | None = None,
        branch: np.ndarray | None = None,
    ):
        self.traj, self.pos, self.obs, self.logp, self.replay = traj, pos, obs, logp, replay
        self.branch = branch
        self.offset = np.zeros(len(traj), np.int64) if offset is None else offset
        self.window, self.window_logp, self.actions = window, window_logp, actions
        self.rows = np.zeros(len(traj), np.int64)


LOST_WORKER = "worker_lost"  # the fault kind of trajectories on a worker that hung or died


def envs_within_cap(cap: int, env: Any, lanes: int) -> int:
    """Trajectories a worker runs at once when it may keep only ``cap`` envs: few enough that an env
    of every task the config runs stays cached between runs (at most ``cap // tasks`` per task and
    lane, never more than ``cap``). Running more at once would build envs every epoch: the tasks of
    an epoch's groups rotate, and a cap of 12 LIBERO envs, filled with 6 envs of each of an epoch's
    two tasks, held none of the next epoch's (building one and its hard reset: ~2 s, against
    ~0.14 s for a reset of a kept env)."""
    per_task = max(1, cap // max(1, len(env_tasks(env))))
    return max(1, min(DEFAULT_ENVS_PER_WORKER, cap, per_task * lanes))


class AdapterError(RuntimeError):
    """An env adapter raised a programming error (`policytrim.rollout.workers.PROGRAMMING_ERRORS`)."""


class RolloutEngine:
    """Runs groups of rollouts of a chunking policy on env workers. Also a context manager.

    num_workers=0 steps envs in this process (tests, debugging; no hang protection).
    envs_per_worker caps the trajectories a worker runs at once (None: 32, or, when
    `policytrim.envs.worker_env_cap` bounds the envs by memory, as for LIBERO, or
    env.max_envs_per_worker is set, few enough that every task's env stays cached:
    `envs_within_cap`); the rest wait in a queue and reuse the envs of finished ones.
    max_envs_per_worker bounds the envs a worker keeps, idle ones included (None: that cap, else
    max(32, envs_per_worker)); beyond it the longest-idle env of another task is closed. A
    Meta-World env holds about 24 MB and takes 0.2 s to build: the cap trades rebuilding envs when
    tasks rotate against memory (two workers at 32 envs: ~2.2 GB).
    backend "local" runs workers as local processes, "ray" as Ray actors placed as ``ray`` (a
    `policytrim.config.RayConfig`) says; see `make_pool`.
    env_factory (picklable) replaces `policytrim.envs.make_env`, e.g. to inject faults in tests.
    setup_timeout_s is added to the timeout of a request that resets envs (building them is slow).
    lanes splits each worker's trajectories into that many request streams: the worker steps one
    lane while the policy runs for another. pipeline=True serves each lane as soon as it answers;
    False waits for every lane and makes one policy call per round (lockstep).
    delay d > 0 runs stale chunks (`rollout.delay`): a trajectory's first chunk executes rows 0..k-1;
    each later one is predicted from the observation d actions before the previous chunk's end and
    executes rows d..k-1 (recorded as ``Trajectories.chunk_offset``), which is what
    `policytrim.eval.realtime` runs asynchronously with a latency of d control periods and threshold d.
    """

    def __init__(
        self,
        env: Any,
        num_workers: int = 2,
        step_timeout_s: float = 30.0,
        envs_per_worker: int | None = None,
        env_factory: EnvFactory | None = None,
        setup_timeout_s: float = 120.0,
        pipeline: bool = True,
        lanes: int = 2,
        max_envs_per_worker: int | None = None,
        backend: str = "local",
        ray: Any = None,
        delay: int = 0,
    ) -> None:
        if not (isinstance(num_workers, int) and num_workers >= 0):
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        cap = worker_env_cap(env, num_workers)  # memory-bound simulators (LIBERO) or env.max_envs_per_worker
        if envs_per_worker is None:
            envs_per_worker = DEFAULT_ENVS_PER_WORKER if cap is None else envs_within_cap(cap, env, lanes)
        if not (isinstance(envs_per_worker, int) and envs_per_worker >= 1):
            raise ValueError(f"envs_per_worker must be an integer >= 1 or None, got {envs_per_worker!r}")
        if not step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, got {step_timeout_s!r}")
        self.env_cfg = env
        self.num_workers = num_workers
        self.step_timeout_s = float(step_timeout_s)
        self.setup_timeout_s = float(setup_timeout_s)
        self.envs_per_worker = envs_per_worker
        self.pipeline = bool(pipeline)
        if not (isinstance(lanes, int) and lanes >= 1):
            raise ValueError(f"lanes must be an integer >= 1, got {lanes!r}")
        self.lanes = lanes
        if not (isinstance(delay, int) and delay >= 0):
            raise ValueError(f"delay must be an integer >= 0, got {delay!r}")
        self.delay = delay
        max_envs = max_envs_per_worker or (
            max(DEFAULT_MAX_ENVS, envs_per_worker) if cap is None else max(cap, envs_per_worker)
        )
        self._pool: WorkerPool = make_pool(env, num_workers, env_factory, max_envs, backend, ray)
        self.replaced_workers = 0
        """Workers killed and replaced (timeouts, crashes) over the engine's lifetime."""
        self.warned_fault_kinds: set[str] = set()
        """Fault kinds already logged at WARNING (with a traceback) by this engine."""
        self.env_info: dict[str, dict[str, Any]] = {}
        """task -> {"instruction", "control_period_s", "horizon"}, filled as tasks are first run."""
        self._next_slot = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.close()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def control_period_s(self, task: str) -> float:
        """Physical seconds per env step of a task already run by this engine."""
        return float(self.env_info[task]["control_period_s"])

    # -- the rollout loop ---------------------------------------------------------------------

    def run(
        self,
        policy: ChunkPolicy,
        starts: Sequence[InitialState],
        group_size: int,
        windows: torch.Tensor,
        mode: Mode,
        seed: int,
        record_chunks: bool = True,
        adaptor: Any = None,
        common_noise: bool = False,
        branch_below: int = 0,
    ) -> Trajectories:
        """Roll out ``group_size`` trajectories from each of ``starts`` (one state per group).

        windows: long [len(starts), group_size], each in [1, policy.max_window]. Returns the
        trajectories in group order, minus dropped groups.
        adaptor: a `policytrim.policies.adaptor.WindowAdaptor` that chooses the window at every
        call instead (from the state observation and the chunk just sampled, drawing from the
        trajectory's generator after the policy); ``windows`` then only bounds it (each entry must
        be >= the adaptor's largest window). Its choices and log-probs are recorded per chunk.
        common_noise (with an adaptor): every member of a group draws the policy's noise from the
        same seed (member 0's: common random numbers) and the adaptor from a generator of its own
        per member, so the members of a group differ only through the adaptor's choices.
        branch_below > 0 (with common noise): per-call credit. Each group samples the adaptor at one
        call only, `branch_call` (uniform below ``branch_below``), and acts on its most likely window
        at every other call; the members are then identical up to that call and differ only through
        the window each drew there. ``Trajectories.chunk_branch`` marks the chunks of that call.
        """
        if self._pool is None:
            raise RuntimeError("the engine is closed")
        starts = list(starts)
        if not (isinstance(group_size, int) and group_size >= 1):
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        win = torch.as_tensor(windows, dtype=torch.long)
        if tuple(win.shape) != (len(starts), group_size):
            raise ValueError(
                f"windows must have shape [num_groups={len(starts)}, group_size={group_size}], got {tuple(win.shape)}"
            )
        max_window = window_bound(policy)
        if win.numel():
            for k in (int(win.min()), int(win.max())):
                check_window(k, max_window, "execution window", policy.chunk_size)
        if adaptor is not None:
            if int(adaptor.chunk_size) != int(policy.chunk_size) or max(adaptor.windows) > max_window:
                raise ValueError(
                    f"the window adaptor (chunk size {adaptor.chunk_size}, windows "
                    f"{list(adaptor.windows)}) does not fit "
                    f"this policy (chunk size {policy.chunk_size}, windows up to {max_window})"
                )
            if win.numel() and int(win.min()) < max(adaptor.windows):
                raise ValueError(
                    f"with a window adaptor, windows bound its choices and must be >= {max(adaptor.windows)}"
                )
        if common_noise and adaptor is None:
            raise ValueError("common_noise needs a window adaptor (the members would otherwise be identical)")
        if branch_below and not common_noise:
            raise ValueError("branch_below needs common_noise (the members must share everything before the branch)")
        smallest = min(adaptor.windows) if adaptor is not None else (int(win.min()) if win.numel() else None)
        if self.delay and smallest is not None and smallest <= 2 * self.delay:
            raise InputError(
                f"with chunks {self.delay} actions stale (rollout.delay={self.delay}) every window must be > "
                f"2 x {self.delay} = {2 * self.delay} (the next call is made {self.delay} actions before a chunk "
                f"of k - {self.delay} actions ends), got window {smallest}"
            )
        rollout = _Rollout(
            self,
            policy,
            starts,
            group_size,
            win.flatten().numpy().astype(np.int64),
            mode,
            seed,
            record_chunks,
            adaptor,
            common_noise,
            branch_below,
        )
        return rollout.run()

    def _allocate_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot


class _Rollout:
    """The state of one `RolloutEngine.run` call (trajectory i = group i // G, member i % G)."""

    def __init__(
        self,
        engine: RolloutEngine,
        policy: ChunkPolicy,
        starts: list[InitialState],
        G: int,
        window: np.ndarray,
        mode: Mode,
        seed: int,
        record: bool,
        adaptor: Any = None,
        common_noise: bool = False,
        branch_below: int = 0,
    ) -> None:
        self.engine, self.pool, self.policy, self.mode, self.record = engine, engine._pool, policy, mode, record
        self.starts, self.G, self.window, self.adaptor = starts, G, window, adaptor
        self.call_window = window.copy()  # the window of each trajectory's chunk in flight
        # stale chunks (engine.delay = d): a trajectory's chunks after its first execute rows d..k-1
        self.delay = engine.delay
        self.call_offset = np.zeros(len(window), np.int64)  # the first row executed of the chunk in flight
        self.N = N = len(starts) * G
        self.state_of = [starts[i // G] for i in range(N)]
        self.device = device_of(policy)
        self.generators = [
            torch.Generator().manual_seed(trajectory_seed(seed, self.state_of[i], 0 if common_noise else i % G))
            for i in range(N)
        ]
        # the adaptor draws after the policy from the trajectory's generator, or, with common noise,
        # from one of its own per member (the members' policy generators are then identical)
        self.adaptor_generators = (
            [torch.Generator().manual_seed(adaptor_seed(seed, self.state_of[i], i % G)) for i in range(N)]
            if common_noise
            else self.generators
        )
        self.branch = (
            np.array([branch_call(seed, st, branch_below) for st in self.state_of], np.int64) if branch_below else None
        )
        self.horizon = int(engine.env_cfg.horizon)
        self.success = np.zeros(N, bool)
        self.steps = np.zeros(N, np.int64)
        self.calls = np.zeros(N, np.int64)
        self.faulted = np.zeros(N, bool)
        self.fault_counts: dict[str, int] = {}  # failed trajectories by fault kind
        self.instruction = [""] * N
        self.last_obs: dict[int, dict[str, np.ndarray]] = {}  # trajectories waiting for a chunk
        self.pending: dict[int, tuple[int, int]] = {}  # trajectory -> (batch, row) of its chunk in flight
        self.batches: list[_Batch] = []
        self.env_steps = 0
        self.policy_seconds, self.policy_batches = 0.0, 0
        self.timing = {
            "wall": 0.0,
            "wait": 0.0,
            "worker": 0.0,
            "worker_reset": 0.0,
            "worker_cpu": 0.0,
            "worker_reset_cpu": 0.0,
            "requests": 0.0,
            "batched": 0.0,
        }
        # Lanes: each worker's trajectories are split into `lanes` streams of requests, so that a
        # worker steps one lane while the policy runs for another. Lane q lives on worker q // L.
        W, L = self.pool.num_workers, engine.lanes
        self.L = L
        Q = W * L
        self.queue: list[deque[int]] = [deque() for _ in range(Q)]
        groups_of_worker: list[list[int]] = [[] for _ in range(W)]
        # Whole groups per worker (a lost worker drops fewer groups), in task order: each worker
        # keeps about the same tasks from run to run, so it reuses its idle envs instead of
        # closing envs of one task to build another's (building a Meta-World env takes ~0.25 s).
        by_task = sorted(range(len(starts)), key=lambda g: (starts[g].task, g))
        for n, g in enumerate(by_task):
            groups_of_worker[n * W // len(starts)].append(g)
        for w, groups in enumerate(groups_of_worker):
            for n, g in enumerate(groups):
                self.queue[w * L + n * L // len(groups)].extend(range(g * G, g * G + G))
        self.active: list[set[int]] = [set() for _ in range(Q)]
        self.slot_traj: dict[int, int] = {}
        self.slot_of: dict[int, int] = {}
        # A worker answers its requests in order, so only the oldest one (the one it is working on)
        # is timed: its deadline starts when the request before it was answered.
        self.inflight: list[deque[tuple[int, float]]] = [deque() for _ in range(W)]  # (lane, timeout)
        self.deadline: dict[int, float] = {}  # worker -> when its current request times out
        self.cap = -(-engine.envs_per_worker // L)

    def run(self) -> Trajectories:
        t0 = time.perf_counter()
        try:
            self.loop()
        except BaseException:
            # A bug or an interrupt: workers may hold requests in flight and envs in slots that
            # this run will never release; start them afresh so the next run begins clean.
            for w in range(self.pool.num_workers):
                self.pool.restart(w)
            raise
        self.timing["wall"] = time.perf_counter() - t0
        return self.assemble()

    def loop(self) -> None:
        ready: list[int] = list(range(len(self.queue)))
        self.serve(ready)
        ready = []
        while self.deadline:
            timeout = max(0.0, min(self.deadline.values()) - time.monotonic())
            t_wait = time.perf_counter()
            answered = self.pool.wait(sorted(self.deadline), timeout)
            self.timing["wait"] += time.perf_counter() - t_wait
            lost: set[int] = set()
            if not answered:
                now = time.monotonic()
                for w in sorted(w for w, d in self.deadline.items() if d <= now):
                    ready += self.lose_worker(w, f"did not answer within {self.engine.step_timeout_s:g} s")
            for w, result in answered:
                if w in lost:
                    continue
                if result is None:
                    lost.add(w)
                    ready += self.lose_worker(w, "died")
                    continue
                q, _ = self.inflight[w].popleft()
                assert q == result.tag, (q, result.tag)
                if self.inflight[w]:
                    self.deadline[w] = time.monotonic() + self.inflight[w][0][1]
                else:
                    del self.deadline[w]
                self.absorb(result.tag, result)
                ready.append(result.tag)
            if self.engine.pipeline or not self.deadline:  # lockstep: wait for every lane
                self.serve(ready)
                ready = []

    def serve(self, ready: list[int]) -> None:
        """One policy call for the waiting trajectories of the ``ready`` lanes; send their chunks."""
        need = sorted(i for q in ready for i in self.active[q] if i in self.last_obs)
        actions = self.sample(need) if need else None
        row_of = {i: b for b, i in enumerate(need)}
        for q in ready:
            mine = [i for i in need if i in self.active[q]]
            self.send(q, mine, actions[[row_of[i] for i in mine]] if mine else None)

    def send(self, q: int, need: list[int], actions: np.ndarray | None) -> None:
        """Start queued trajectories in free slots of lane q and send it the chunks of ``need``."""
        resets = []
        while self.queue[q] and len(self.active[q]) < self.cap:
            i = self.queue[q].popleft()
            slot = self.engine._allocate_slot()
            self.slot_traj[slot], self.slot_of[i] = i, slot
            self.active[q].add(i)
            resets.append((slot, self.state_of[i]))
        if not (resets or need):
            return
        request = StepRequest(resets=resets, tag=q)
        if need:
            request.slots = np.array([self.slot_of[i] for i in need], np.int64)
            request.actions = actions
            request.rows = self.call_window[need] - self.call_offset[need]
            request.observe_back = self.delay
        w = q // self.L
        self.pool.submit(w, request)
        self.inflight[w].append((q, self.engine.step_timeout_s + (self.engine.setup_timeout_s if resets else 0.0)))
        if w not in self.deadline:
            self.deadline[w] = time.monotonic() + self.inflight[w][0][1]

    def fault(self, i: int, fault: Fault) -> None:
        """Count trajectory i's fault by kind; the first of each kind (per engine) is logged with
        its traceback at WARNING; a programming error in the adapter, or its refusal of the run's input
        (InputError), stops the run."""
        state = self.state_of[i]
        if fault.input_error:
            raise InputError(f"{fault.message} (raised by the env adapter on {state.task} state {state.index})")
        if fault.bug:
            raise AdapterError(
                f"the env adapter raised {fault.kind} on {state.task} state {state.index}: {fault.message}. "
                "This is a programming error, not a simulator fault, so the run stops instead of dropping "
                f"the group.\n{fault.traceback}"
            )
        self.fault_counts[fault.kind] = self.fault_counts.get(fault.kind, 0) + 1
        if fault.kind not in self.engine.warned_fault_kinds:
            self.engine.warned_fault_kinds.add(fault.kind)
            log.warning(
                "first %s fault (trajectory %d, %s state %d): %s; its group is dropped (later ones of this "
                "kind are counted, logged at DEBUG)\n%s",
                fault.kind,
                i,
                state.task,
                state.index,
                fault.message,
                fault.traceback,
            )
        else:
            log.debug("trajectory %d (%s) faulted: %s: %s", i, state, fault.kind, fault.message)

    def lose_worker(self, w: int, why: str) -> list[int]:
        """Kill and replace worker w; its running trajectories fail. Returns its lanes."""
        lanes = list(range(w * self.L, (w + 1) * self.L))
        running = sum(len(self.active[q]) for q in lanes)
        log.warning("env worker %d %s: killing and replacing it; its %d running trajectories fail", w, why, running)
        for q in lanes:
            for i in self.active[q]:
                self.fault_counts[LOST_WORKER] = self.fault_counts.get(LOST_WORKER, 0) + 1
                self.faulted[i] = True
                self.last_obs.pop(i, None)
                self.pending.pop(i, None)
                rollout_finished()
            self.active[q].clear()
        self.inflight[w].clear()
        self.deadline.pop(w, None)
        self.pool.restart(w)
        self.engine.replaced_workers += 1
        return lanes

    def absorb(self, q: int, res: StepResult) -> None:
        self.env_steps += res.env_steps
        self.timing["worker"] += res.seconds
        self.timing["worker_reset"] += res.reset_seconds
        self.timing["worker_cpu"] += res.cpu_seconds
        self.timing["worker_reset_cpu"] += res.reset_cpu_seconds
        self.timing["requests"] += 1
        for task, info in res.env_info.items():
            self.engine.env_info.setdefault(task, info)
        for r, slot in enumerate(res.slots.tolist()):
            i = self.slot_traj[slot]
            if i in self.pending:
                b, row = self.pending.pop(i)
                self.batches[b].rows[row] = res.rows[r]
            if slot in res.faults:
                self.fault(i, res.fault_details.get(slot) or Fault("unknown", res.faults[slot]))
                self.faulted[i] = True
                self.active[q].discard(i)
                rollout_finished()
                continue
            if not self.instruction[i]:
                self.instruction[i] = self.engine.env_info[self.state_of[i].task]["instruction"]
            if res.done[r]:
                self.success[i] = bool(res.success[r])
                self.steps[i] = int(res.steps[r]) if self.success[i] else self.horizon
                self.active[q].discard(i)
                rollout_finished()
            else:
                self.steps[i] = int(res.steps[r])
                self.last_obs[i] = {k: v[r] for k, v in res.obs.items()}

    def sample(self, need: list[int]) -> np.ndarray:
        """One batched policy call for the trajectories in ``need``; returns their first k rows."""
        t0 = time.perf_counter()
        rows = [self.last_obs.pop(i) for i in need]
        obs_cpu = {k: torch.from_numpy(np.stack([row[k] for row in rows])) for k in rows[0]}
        obs = {k: v.to(self.device) for k, v in obs_cpu.items()} if self.device.type != "cpu" else obs_cpu
        with torch.no_grad():
            sample = self.policy.sample(
                obs, [self.instruction[i] for i in need], self.mode, [self.generators[i] for i in need]
            )
        actions = sample.actions.detach().to("cpu", torch.float32)
        window_logp, branch = None, None
        if self.adaptor is not None:
            gens = [self.adaptor_generators[i] for i in need]
            state = obs_cpu["state"]
            with torch.no_grad():
                if self.branch is None:
                    chosen, window_logp = self.adaptor.sample(state, actions, self.mode, gens)
                else:  # per-call credit: greedy everywhere but at the group's branch call
                    branch = self.calls[need] == self.branch[need]
                    chosen, window_logp = self.adaptor.sample(state, actions, "deterministic")
                    at = torch.from_numpy(np.nonzero(branch)[0])
                    if at.numel():
                        drawn, drawn_logp = self.adaptor.sample(
                            state[at], actions[at], self.mode, [gens[j] for j in at.tolist()]
                        )
                        chosen, window_logp = chosen.clone(), window_logp.clone()
                        chosen[at], window_logp[at] = drawn, drawn_logp
            self.call_window[need] = chosen.numpy().astype(np.int64)
            window_logp = window_logp.detach().to("cpu", torch.float32)
        B, k_max = len(need), int(self.call_window[need].max())
        if actions.ndim != 3 or actions.shape[0] != B or actions.shape[1] < k_max:
            raise ValueError(
                f"policy.sample returned actions of shape {tuple(actions.shape)}; expected [{B}, H >= {k_max}, A]"
            )
        # an episode's first chunk is executed whole (the robot waits for it); each later one is
        # `delay` actions stale: its first `delay` rows were the previous chunk's time to run
        offset = np.where(self.calls[need] > 0, self.delay, 0).astype(np.int64)
        self.call_offset[need] = offset
        if self.record:
            self.batches.append(
                _Batch(
                    np.asarray(need, np.int64),
                    self.calls[need].copy(),
                    obs_cpu,
                    sample.logp.detach().to("cpu"),
                    {k: v.detach().to("cpu") for k, v in sample.replay.items()},
                    self.call_window[need].copy(),
                    window_logp,
                    actions if self.adaptor is not None else None,
                    offset,
                    branch,
                )
            )
            for b, i in enumerate(need):
                self.pending[i] = (len(self.batches) - 1, b)
        self.calls[need] += 1
        self.policy_seconds += time.perf_counter() - t0
        self.policy_batches += 1
        self.timing["batched"] += len(need)
        if not self.delay:
            return actions[:, :k_max].numpy()
        rows = torch.arange(k_max).unsqueeze(0) + torch.from_numpy(offset).unsqueeze(1)  # [B, k_max]
        executed = torch.gather(
            actions, 1, rows.clamp(max=actions.shape[1] - 1).unsqueeze(-1).expand(-1, -1, actions.shape[2])
        )
        return executed.numpy()  # row r of trajectory b: chunk row offset_b + r (past k_b - offset_b: not run)

    def assemble(self) -> Trajectories:
        n_groups, G, N = len(self.starts), self.G, self.N
        bad_group = self.faulted.reshape(n_groups, G).any(axis=1)
        dropped = int(bad_group.sum())
        if dropped:
            log.warning(
                "dropped %d of %d groups: a member hit a simulator fault or a worker timeout", dropped, n_groups
            )
        keep = np.nonzero(np.repeat(~bad_group, G))[0]
        new_id = np.full(N, -1, np.int64)
        new_id[keep] = np.arange(len(keep))
        out = Trajectories(
            task=[self.state_of[i].task for i in keep],
            instruction=[self.instruction[i] for i in keep],
            seed=torch.tensor([self.state_of[i].seed for i in keep], dtype=torch.long),
            index=torch.tensor([self.state_of[i].index for i in keep], dtype=torch.long),
            group=torch.from_numpy(np.repeat(np.arange(n_groups - dropped), G)),
            window=torch.from_numpy(self.window[keep]),
            success=torch.from_numpy(self.success[keep]),
            steps=torch.from_numpy(self.steps[keep]),
            calls=torch.from_numpy(self.calls[keep]),
            horizon=self.horizon,
            group_size=G,
            policy_seconds=self.policy_seconds,
            policy_batches=self.policy_batches,
            env_steps=int(self.env_steps),
            dropped_groups=dropped,
            fault_counts=dict(self.fault_counts),
            timing={
                **{k: v for k, v in self.timing.items() if k != "batched"},
                "policy": self.policy_seconds,
                "mean_batch": self.timing["batched"] / max(1, self.policy_batches),
            },
        )
        if self.record and self.batches:
            batches = self.batches
            traj = new_id[np.concatenate([b.traj for b in batches])]
            pos = np.concatenate([b.pos for b in batches])
            rows = np.concatenate([b.rows for b in batches])
            sel = np.nonzero(traj >= 0)[0]
            order = sel[np.lexsort((pos[sel], traj[sel]))]
            idx = torch.from_numpy(order)
            out.chunk_traj = torch.from_numpy(traj[order])
            out.chunk_pos = torch.from_numpy(pos[order])
            out.chunk_rows = torch.from_numpy(rows[order])
            out.obs = {k: torch.cat([b.obs[k] for b in batches])[idx] for k in batches[0].obs}
            out.old_logp = torch.cat([b.logp for b in batches])[idx]
            out.replay = {k: torch.cat([b.replay[k] for b in batches])[idx] for k in batches[0].replay}
            out.chunk_window = torch.from_numpy(np.concatenate([b.window for b in batches])[order])
            out.chunk_offset = torch.from_numpy(np.concatenate([b.offset for b in batches])[order])
            if self.adaptor is not None:
                out.window_logp = torch.cat([b.window_logp for b in batches])[idx]
                out.chunk_actions = torch.cat([b.actions for b in batches])[idx]
            if self.branch is not None:
                out.chunk_branch = torch.from_numpy(np.concatenate([b.branch for b in batches])[order])
        return out
