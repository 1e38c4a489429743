"""Environment workers: the processes that own simulator instances and execute action chunks.

The rollout engine keeps the policy (one copy, possibly on a GPU) and talks to workers through a
`WorkerPool`; workers never see the policy, so "policy weights reach the workers" holds trivially:
every chunk they execute was sampled from the current weights a moment before.

One round trip: the engine sends a worker one `StepRequest` -- slots to reset to an `InitialState`
and, for slots that need them, the first k rows of a chunk. The worker resets and executes, stopping
a slot at its first success or at the horizon, and answers one `StepResult` with, per slot, the new
observation, the rows executed, success and the steps taken so far. A slot whose env raises, or
whose chunk holds a non-finite action, is reported as faulted (the engine drops its group), with a
`Fault` saying its kind and traceback. An exception that means a bug in the adapter rather than a
simulator fault (`PROGRAMMING_ERRORS`: AttributeError, TypeError, NameError, ...) is marked
``bug=True`` and the engine stops the run on it. A worker that does not answer in time is killed
and replaced by the engine (`WorkerPool.restart`).

Backends: `LocalPool` (in-process; tests and debugging; no hang protection) and `ProcessPool`
(`multiprocessing` with the spawn context, one thread per worker), and `policytrim.rollout.ray_pool.RayPool`
(Ray actors, ``ray.wait``). Another backend is another `WorkerPool` subclass with the same four
methods (submit, wait, restart, close) around `EnvServer`.

This module imports no torch, so worker processes start light.
"""

from __future__ import annotations

import abc
import ctypes
import gc
import logging
import signal
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

import numpy as np

from policytrim.envs.base import EnvAdapter, InitialState
from policytrim.errors import InputError
from policytrim.runtime import single_thread_environment

log = logging.getLogger("policytrim.rollout")

EnvFactory = Callable[[Any, str], EnvAdapter]
"""(env_cfg, task) -> adapter; `policytrim.envs.make_env` by default. Must be picklable."""


# A Meta-World env holds about 24 MB, so the envs a worker keeps bound its memory: 32 keeps each
# worker near 1.1 GB. More (e.g. 64) rebuilds fewer envs when tasks rotate.
DEFAULT_MAX_ENVS = 32


@dataclass
class StepRequest:
    """What the engine asks one worker to do in one round trip."""

    resets: list[tuple[int, InitialState]] = field(default_factory=list)
    """(slot, state): (re)start a trajectory in ``slot`` from ``state``."""
    slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """long [n]: slots that execute a chunk."""
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    """float32 [n, k_max, A]: the rows to execute (row r of slot i only if r < rows[i])."""
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """long [n]: rows to execute per slot (its window k_i)."""
    observe_back: int = 0
    """Return the observation this many actions before each slot's last row instead of after it
    (stale chunks, `rollout.delay`: the next call reads it); < rows of every slot."""
    tag: int = 0
    """Echoed in the result (the engine's lane id)."""


# Exceptions from an adapter that mean a bug in code (the adapter's or its caller's), never a
# simulator fault: dropping the group would hide it, so the engine stops the run instead.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    AttributeError,
    TypeError,
    NameError,
    ImportError,
    NotImplementedError,
    AssertionError,
)
NON_FINITE_ACTION = "non_finite_action"  # the kind of a fault caused by a NaN / inf action from the policy


@dataclass
class Fault:
    """Why one trajectory failed in a worker."""

    kind: str
    """The exception's class name, or `NON_FINITE_ACTION`."""
    message: str
    traceback: str = ""
    """The formatted traceback (empty for a non-finite action)."""
    bug: bool = False
    """A programming error (`PROGRAMMING_ERRORS`), not a simulator fault."""
    input_error: bool = False
    """The adapter refused the run's input (`policytrim.errors.InputError`: a setting, a missing
    package), not a simulator fault: the engine stops with its message."""

    @classmethod
    def from_exception(cls, exc: BaseException) -> Fault:
        return cls(
            type(exc).__name__,
            str(exc),
            "".join(traceback.format_exception(exc)),
            isinstance(exc, PROGRAMMING_ERRORS),
            isinstance(exc, InputError),
        )


@dataclass
class StepResult:
    """A worker's answer. Row order: the request's resets, then its chunk slots."""

    slots: np.ndarray
    """long [m]."""
    rows: np.ndarray
    """long [m]: rows executed now (0 for a reset)."""
    success: np.ndarray
    """bool [m]: the trajectory has succeeded (it then stops)."""
    steps: np.ndarray
    """long [m]: steps taken since the reset."""
    done: np.ndarray
    """bool [m]: the trajectory ended (success, horizon, or the env ended the episode)."""
    obs: dict[str, np.ndarray]
    """each [m, ...]: the observation after the last row, or ``observe_back`` rows before it (zeros
    for ended or faulted slots)."""
    faults: dict[int, str] = field(default_factory=dict)
    """slot -> error message, for slots whose env raised (the slot is freed)."""
    env_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    """task -> {"instruction", "control_period_s", "horizon"}, for tasks reset in this request."""
    env_steps: int = 0
    """Environment steps executed for this request."""
    seconds: float = 0.0
    """Worker wall time spent on this request."""
    tag: int = 0
    """The request's tag."""
    fault_details: dict[int, Fault] = field(default_factory=dict)
    """slot -> kind, traceback and whether it is a bug, for the slots in ``faults``."""
    reset_seconds: float = 0.0
    """Worker wall time spent on this request's resets (building and resetting envs)."""
    cpu_seconds: float = 0.0
    """Worker CPU time (user + system) spent on this request; below ``seconds`` when the worker
    shared its core with other processes."""
    reset_cpu_seconds: float = 0.0
    """Worker CPU time spent on this request's resets."""


def _step(env: EnvAdapter, action: np.ndarray, observe: bool) -> tuple[dict[str, np.ndarray], bool]:
    """env.step, skipping the observation's expensive parts when nobody reads it and the adapter
    can (``observes_on_demand``, `policytrim.envs.base.EnvAdapter`)."""
    if observe or not getattr(env, "observes_on_demand", False):
        return env.step(action)
    return env.step(action, observe=False)


class WorkerError(RuntimeError):
    """A worker failed outside any environment (a bug, not a simulator fault)."""


# ---------------------------------------------------------------------------------------------
# the worker core, shared by every backend


class EnvServer:
    """Owns env instances (pooled per task, reused across trajectories) and executes requests."""

    def __init__(self, env_cfg: Any, env_factory: EnvFactory | None = None, max_envs: int = DEFAULT_MAX_ENVS) -> None:
        if env_factory is None:
            from policytrim.envs import make_env

            env_factory = make_env
        self._env_cfg = env_cfg
        self._factory = env_factory
        self._max_envs = max_envs  # idle envs of other tasks are closed beyond this many
        self._free: dict[str, list[EnvAdapter]] = defaultdict(list)
        self._slots: dict[int, list[Any]] = {}  # slot -> [env, steps]
        self._released: dict[int, int] = {}  # id(idle env) -> when it was released
        self._tick = 0
        self._closed_envs = False  # envs were closed in this request: give their memory back

    def handle(self, req: StepRequest) -> StepResult:
        t0, c0 = time.perf_counter(), time.process_time()
        n_reset, n_act = len(req.resets), len(req.slots)
        m = n_reset + n_act
        slots = np.empty(m, np.int64)
        rows = np.zeros(m, np.int64)
        success = np.zeros(m, bool)
        steps = np.zeros(m, np.int64)
        done = np.zeros(m, bool)
        obs: list[dict[str, np.ndarray] | None] = [None] * m
        faults: dict[int, str] = {}
        details: dict[int, Fault] = {}
        env_info: dict[str, dict[str, Any]] = {}
        env_steps = 0

        for i, (slot, state) in enumerate(req.resets):
            slots[i] = slot
            self._release(slot)
            try:
                env = self._acquire(state.task)
                self._slots[slot] = [env, 0]
                obs[i] = env.reset(state)
                env_info.setdefault(
                    state.task,
                    {
                        "instruction": env.instruction,
                        "control_period_s": float(env.control_period_s),
                        "horizon": int(env.horizon),
                    },
                )
            except Exception as exc:  # noqa: BLE001 - any error voids the trajectory (the engine stops on bugs)
                faults[slot], details[slot] = _describe(exc), Fault.from_exception(exc)
                self._discard(slot)

        t_reset, c_reset = time.perf_counter() - t0, time.process_time() - c0
        for j in range(n_act):
            i = n_reset + j
            slot = int(req.slots[j])
            slots[i] = slot
            entry = self._slots.get(slot)
            if entry is None:
                raise WorkerError(f"slot {slot} has no running trajectory")
            env, t = entry
            last = None
            ok = False
            r = 0
            if not np.isfinite(req.actions[j, : int(req.rows[j])]).all():
                # a policy that produced NaN / inf: never step a simulator with it (MuJoCo would
                # warn and reset itself); the trajectory fails like a simulator fault, the env is
                # untouched and reused
                faults[slot] = "non-finite action from the policy (NaN or inf)"
                details[slot] = Fault(NON_FINITE_ACTION, faults[slot])
                self._release(slot)
                continue
            # only the observation after the last row that can run (or, with observe_back = d, the
            # one d rows before it) reaches the policy; a chunk cut short by the horizon ends the
            # trajectory, so its observation is never read
            observe_at = min(int(req.rows[j]), env.horizon - t) - 1 - req.observe_back
            seen = None
            try:
                for r in range(int(req.rows[j])):
                    last, ok = _step(env, req.actions[j, r], r == observe_at)
                    if r == observe_at:
                        seen = last
                    t += 1
                    if ok or t >= env.horizon or getattr(env, "terminated", False):
                        break
            except Exception as exc:  # noqa: BLE001
                env_steps += t - entry[1]
                faults[slot], details[slot] = _describe(exc), Fault.from_exception(exc)
                self._discard(slot)
                continue
            env_steps += t - entry[1]
            entry[1] = t
            rows[i], success[i], steps[i] = r + 1, ok, t
            done[i] = ok or t >= env.horizon or bool(getattr(env, "terminated", False))
            if done[i]:
                self._release(slot)
            else:
                obs[i] = seen

        if self._closed_envs:
            self._closed_envs = False
            release_memory()
        return StepResult(
            slots,
            rows,
            success,
            steps,
            done,
            _stack(obs),
            faults,
            env_info,
            env_steps,
            time.perf_counter() - t0,
            req.tag,
            fault_details=details,
            reset_seconds=t_reset,
            cpu_seconds=time.process_time() - c0,
            reset_cpu_seconds=c_reset,
        )

    def _acquire(self, task: str) -> EnvAdapter:
        free = self._free[task]
        if free:
            env = free.pop()
            self._released.pop(id(env), None)
            return env
        while len(self._slots) + sum(len(v) for v in self._free.values()) >= self._max_envs:
            idle = [(self._released[id(e)], t, k) for t, envs in self._free.items() for k, e in enumerate(envs)]
            if not idle:
                break
            _, t, k = min(idle)  # the env idle the longest, of another task (~24 MB each)
            victim = self._free[t].pop(k)
            self._released.pop(id(victim), None)
            victim.close()
            self._closed_envs = True
        return self._factory(self._env_cfg, task)

    def _release(self, slot: int) -> None:
        entry = self._slots.pop(slot, None)
        if entry is not None:
            self._free[entry[0].task].append(entry[0])
            self._tick += 1
            self._released[id(entry[0])] = self._tick

    def _discard(self, slot: int) -> None:
        """A faulted env may be in any state: close it instead of reusing it."""
        entry = self._slots.pop(slot, None)
        if entry is not None:
            try:
                entry[0].close()
            except Exception:  # noqa: BLE001
                pass
            self._closed_envs = True

    def close(self) -> None:
        for slot in list(self._slots):
            self._release(slot)
        for envs in self._free.values():
            for env in envs:
                try:
                    env.close()
                except Exception:  # noqa: BLE001
                    pass
        self._free.clear()
        self._released.clear()


def release_memory() -> None:
    """Free closed envs now and hand their pages back to the OS. Gymnasium / MuJoCo envs sit in
    reference cycles (freed only by the cyclic GC), and glibc keeps freed heap pages: without this, a
    worker that keeps replacing envs grows by hundreds of MB."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): the GC pass is all we can do
            pass


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stack(obs: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    template = next((o for o in obs if o is not None), None)
    if template is None:
        return {}
    out = {}
    for key, value in template.items():
        arr = np.zeros((len(obs), *value.shape), value.dtype)
        for i, o in enumerate(obs):
            if o is not None:
                arr[i] = o[key]
        out[key] = arr
    return out


# ---------------------------------------------------------------------------------------------
# pools


class WorkerPool(abc.ABC):
    """A set of workers, addressed 0..num_workers-1. A worker answers its requests in order; several
    may be in flight (the engine keeps a worker busy with one lane while it serves the other)."""

    num_workers: int

    @abc.abstractmethod
    def submit(self, worker: int, request: StepRequest) -> None:
        """Send a request (non-blocking)."""

    @abc.abstractmethod
    def wait(self, workers: list[int], timeout: float | None) -> list[tuple[int, StepResult | None]]:
        """Results available from ``workers`` (each with a request in flight), waiting up to
        ``timeout`` seconds for the first; [] on timeout. A worker that died answers None (the
        engine restarts it)."""

    @abc.abstractmethod
    def restart(self, worker: int) -> None:
        """Kill the worker (its request and envs are lost) and start a fresh one in its place."""

    @abc.abstractmethod
    def close(self) -> None: ...


class LocalPool(WorkerPool):
    """In-process workers: requests run synchronously inside `submit`. No hang protection."""

    def __init__(
        self,
        env_cfg: Any,
        num_workers: int = 1,
        env_factory: EnvFactory | None = None,
        max_envs: int = DEFAULT_MAX_ENVS,
    ) -> None:
        self.num_workers = num_workers
        self._env_cfg, self._factory, self._max_envs = env_cfg, env_factory, max_envs
        self._servers = [EnvServer(env_cfg, env_factory, max_envs) for _ in range(num_workers)]
        self._results: dict[int, list[StepResult]] = defaultdict(list)

    def submit(self, worker: int, request: StepRequest) -> None:
        self._results[worker].append(self._servers[worker].handle(request))

    def wait(self, workers: list[int], timeout: float | None) -> list[tuple[int, StepResult | None]]:
        return [(w, r) for w in workers for r in self._results.pop(w, [])]

    def restart(self, worker: int) -> None:
        self._servers[worker].close()
        self._results.pop(worker, None)
        self._servers[worker] = EnvServer(self._env_cfg, self._factory, self._max_envs)

    def close(self) -> None:
        for server in self._servers:
            server.close()


def _serve(conn: Connection, env_cfg: Any, env_factory: EnvFactory | None, max_envs: int) -> None:
    """Worker process main loop: one request in, one result out, until None or a closed pipe.

    Ctrl-C in a terminal reaches the whole process group; the trainer decides what it means (it
    stops, closes the pipes, and these loops end), so a worker ignores SIGINT and exits quietly
    when its pipe closes in either direction."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "torch" in sys.modules:  # imported by an env factory's module, perhaps
        sys.modules["torch"].set_num_threads(1)
    server = EnvServer(env_cfg, env_factory, max_envs)
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                break
            if request is None:
                break
            try:
                result: Any = server.handle(request)
            except Exception:  # noqa: BLE001 - a bug: report it to the engine, which raises
                result = WorkerError(traceback.format_exc())
            try:
                conn.send(result)
            except (BrokenPipeError, OSError):
                break  # the trainer is gone
    finally:
        server.close()


class ProcessPool(WorkerPool):
    """One `multiprocessing` process per worker (spawn context: safe with torch and CUDA)."""

    def __init__(
        self,
        env_cfg: Any,
        num_workers: int,
        env_factory: EnvFactory | None = None,
        max_envs: int = DEFAULT_MAX_ENVS,
        start_method: str = "spawn",
    ) -> None:
        import multiprocessing as mp

        self.num_workers = num_workers
        self._env_cfg, self._factory, self._max_envs = env_cfg, env_factory, max_envs
        self._ctx = mp.get_context(start_method)
        self._procs: list[Any] = [None] * num_workers
        self._conns: list[Connection | None] = [None] * num_workers
        for w in range(num_workers):
            self._start(w)

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_serve,
            args=(child, self._env_cfg, self._factory, self._max_envs),
            daemon=True,
            name=f"policytrim-env-worker-{w}",
        )
        with single_thread_environment():  # a spawned child inherits the environment at start()
            proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def submit(self, worker: int, request: StepRequest) -> None:
        conn = self._conns[worker]
        assert conn is not None
        try:
            conn.send(request)
        except (BrokenPipeError, OSError):
            pass  # the worker died; wait() reports it

    def wait(self, workers: list[int], timeout: float | None) -> list[tuple[int, StepResult | None]]:
        by_conn = {self._conns[w]: w for w in workers}
        out: list[tuple[int, StepResult | None]] = []
        for conn in wait_connections(list(by_conn), timeout):
            w = by_conn[conn]
            try:
                while True:  # everything this worker has answered so far
                    result = conn.recv()
                    if isinstance(result, WorkerError):
                        raise WorkerError(f"env worker {w} failed:\n{result}")
                    out.append((w, result))
                    if not conn.poll(0):
                        break
            except (EOFError, OSError):
                out.append((w, None))
        return out

    def restart(self, worker: int) -> None:
        self._kill(worker)
        self._start(worker)

    def _kill(self, w: int) -> None:
        proc, conn = self._procs[w], self._conns[w]
        if proc is not None:
            proc.kill()
            proc.join(timeout=10)
        if conn is not None:
            conn.close()
        self._procs[w], self._conns[w] = None, None

    def close(self) -> None:
        for conn in self._conns:
            if conn is not None:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for w, proc in enumerate(self._procs):
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
            if self._conns[w] is not None:
                self._conns[w].close()
        self._procs = [None] * self.num_workers
        self._conns = [None] * self.num_workers

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the workers (for tests: a restarted worker has a new pid)."""
        return [p.pid if p is not None else None for p in self._procs]
