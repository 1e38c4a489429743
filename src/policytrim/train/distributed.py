"""Data-parallel learner under torchrun: small helpers the trainer calls at a few points.

Launch ``torchrun --nproc-per-node N -m policytrim.cli train ...`` (gloo on CPU, NCCL with
``--device cuda``). Every rank runs the same trainer loop:

- rollouts: rank r rolls out its contiguous share of the epoch's groups (`shard`) on its own env
  workers. A trajectory's random numbers depend only on (seed, state, member), never on which rank or
  batch ran it, so the union over ranks is the single-process epoch. Ranks roll out in parallel
  (rank 0 rolling out everything and scattering would idle N - 1 learners during the rollout and
  ship chunk tensors between processes).
- rewards and advantages are group-local; `gather_outcomes` still collects every rank's outcomes
  (success, steps, window, calls: a few numbers per trajectory; dropped groups and faults by kind)
  so that rewards, advantages, the dropped-groups stop rule and the logged metrics are computed on
  the whole epoch, identically on every rank.
- the update (`policytrim.train.grpo.grpo_update`): the loss of each rank is summed over its own
  trajectories and divided by N = the valid trajectories of *all* ranks (`global_sum`, passed to
  `policytrim.objective.reduce_grpo_loss` as ``num_trajectories``), so the
  per-trajectory 1/N normalisation is global; `all_reduce_grads` then sums the ranks' gradients, which
  is exactly the gradient of the single-process loss (the data-parallel mean of per-rank means
  would weight a rank with few valid trajectories like one with many). Clipping and the optimiser
  step see identical gradients on every rank, so parameters stay identical without a broadcast.
- decisions and files: `main_only` runs validations and every write (checkpoints, metrics, run
  files) on rank 0 and shares the JSON result (or rank 0's error) with the other ranks; it is also
  the barrier that keeps the ranks in step.

Without torchrun (no ``WORLD_SIZE`` > 1) every helper is a no-op and the trainer is unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from policytrim.errors import InputError
from policytrim.rollout.types import Trajectories

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its torchrun launch (or not launched by torchrun); valid
    before the process group exists and after it is gone (e.g. for printing a summary once)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL for ``device="cuda"``
    (one GPU per local rank), gloo otherwise. Returns whether this call created the group."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return True


def shutdown(synchronize: bool = True) -> None:
    """Leave the process group. ``synchronize``: wait at a barrier first, so that no rank tears down
    its gloo connections while a peer still uses them (seen without it: a rank aborting at exit with
    "terminate called without an active exception" after its work had finished). Pass False on an
    error path, where a peer may never reach the barrier (torchrun then stops the other ranks)."""
    if is_distributed():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def exit_after_success(code: int) -> NoReturn:
    """End a torchrun rank whose command finished and left the process group (`shutdown`): flush
    the standard streams and ``os._exit(code)``, skipping the interpreter's teardown.

    Why: a rank that had finished its work and passed the barrier in `shutdown` still aborted now
    and then on its way out ("terminate called without an active exception", SIGABRT, in 1 of 3 full
    test-suite runs on one day, never in 10 runs of the test alone), which torchrun reports as a
    failed run. The likely culprit is a C++ thread of the process group torn down by the
    interpreter's exit; that is not pinned down (the tests run torchrun with PYTHONFAULTHANDLER set,
    so a repeat prints every thread's Python stack). Nothing is left to tear down here: the trainer
    has closed the env workers, the metrics logger and every file it wrote."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)


def _device() -> torch.device:
    """Where collective buffers live: NCCL only moves GPU tensors."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(num_groups: int) -> slice:
    """This rank's contiguous share of ``num_groups`` groups (all of them in one process)."""
    r, w = rank(), world_size()
    return slice(r * num_groups // w, (r + 1) * num_groups // w)


def global_sum(value: int) -> int:
    """``value`` summed over ranks (counts: the N of the 1/N normalisation)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_device())
    dist.all_reduce(t)
    return int(t.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (a new tensor; ``tensor`` itself in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks, in place, in one flat all-reduce. A parameter
    without a gradient on some rank (no valid trajectory there) counts as zeros there; one without a
    gradient on every rank keeps none (the optimiser skips it, as in one process)."""
    if not is_distributed():
        return
    params = list(params)
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=_device())
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    params = [p for p, flag in zip(params, has_grad.tolist(), strict=True) if flag]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean_over_ranks(stats: dict[str, float], maxed: Iterable[str] = ()) -> dict[str, float]:
    """Per-rank diagnostics averaged over ranks (the keys in ``maxed``: their maximum)."""
    if not is_distributed():
        return stats
    keys = sorted(stats)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=_device())
    top = t.clone()
    dist.all_reduce(t)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    maxed = set(maxed)
    return {k: float(top[i] if k in maxed else t[i] / world_size()) for i, k in enumerate(keys)}


def main_only(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank (JSON: no pickle between
    processes). An exception on rank 0 is re-raised there and reported on the others, so no rank
    waits forever. Also a barrier: every rank must reach the same `main_only` calls in order."""
    if not is_distributed():
        return fn()
    error: BaseException | None = None
    if is_main():
        try:
            payload = {"value": fn()}
        except BaseException as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error, payload = exc, {"error": f"{type(exc).__name__}: {exc}", "input_error": isinstance(exc, InputError)}
        data = json.dumps(payload).encode()
    device = _device()
    size = torch.tensor([len(data) if is_main() else 0], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buf = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if is_main()
        else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    )
    dist.broadcast(buf, 0)
    if error is not None:
        raise error
    payload = json.loads(buf.cpu().numpy().tobytes().decode())
    if "error" in payload:
        if payload["input_error"]:  # bad input: the same one-line error on every rank
            raise InputError(payload["error"].split(": ", 1)[1])
        raise RuntimeError(f"rank 0 failed: {payload['error']}")
    return payload["value"]


def on_main(fn: Callable[[], Any]) -> None:
    """Run ``fn`` (a write: checkpoint, metrics, run files) on rank 0 only; see `main_only`."""

    def call() -> None:
        fn()

    main_only(call)


def all_gather_json(value: Any) -> list[Any]:
    """``value`` (JSON-serialisable) of every rank, in rank order (JSON: no pickle between processes)."""
    if not is_distributed():
        return [value]
    device = _device()
    data = json.dumps(value).encode()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.long, device=device))
    longest = max(int(n.item()) for n in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world_size())]
    dist.all_gather(parts, buf.to(device))
    return [json.loads(p.cpu().numpy()[: int(n.item())].tobytes().decode()) for p, n in zip(parts, sizes, strict=True)]


_OUTCOME_COLUMNS = ("success", "steps", "window", "calls", "seed", "index")


def gather_outcomes(traj: Trajectories, tasks: list[str]) -> tuple[Trajectories, slice]:
    """Every rank's trajectories, outcomes only (no chunks, empty instructions), in rank order --
    the single-process epoch's order -- and the rows of this rank's ``traj`` in it.

    ``tasks``: the run's task names (a trajectory's task travels as its position in this list).
    In one process: ``traj`` itself and all its rows."""
    if not is_distributed():
        return traj, slice(0, traj.num_trajectories)
    device = _device()
    n = traj.num_trajectories
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=device))
    counts_ = [int(c.item()) for c in counts]
    n_max = max(counts_)
    local = torch.zeros(n_max, len(_OUTCOME_COLUMNS) + 1, dtype=torch.long)
    for j, name in enumerate(_OUTCOME_COLUMNS):
        local[:n, j] = getattr(traj, name).long()
    local[:n, -1] = torch.tensor([tasks.index(t) for t in traj.task], dtype=torch.long)
    parts = [torch.zeros_like(local, device=device) for _ in range(world_size())]
    dist.all_gather(parts, local.to(device))
    table = torch.cat([p.cpu()[:c] for p, c in zip(parts, counts_, strict=True)])
    totals = all_reduce_sum(torch.tensor([traj.env_steps, traj.dropped_groups], dtype=torch.long, device=device)).cpu()
    fault_counts: dict[str, int] = {}
    for counts_of_rank in all_gather_json(traj.fault_counts):
        for kind, count in counts_of_rank.items():
            fault_counts[kind] = fault_counts.get(kind, 0) + int(count)
    G = traj.group_size
    col = {name: table[:, j] for j, name in enumerate(_OUTCOME_COLUMNS)}
    everyone = Trajectories(
        task=[tasks[i] for i in table[:, -1].tolist()],
        instruction=[""] * len(table),
        seed=col["seed"],
        index=col["index"],
        group=torch.arange(len(table)) // G,
        window=col["window"],
        success=col["success"].bool(),
        steps=col["steps"],
        calls=col["calls"],
        horizon=traj.horizon,
        group_size=G,
        env_steps=int(totals[0]),
        dropped_groups=int(totals[1]),
        fault_counts=dict(sorted(fault_counts.items())),
    )
    start = sum(counts_[: rank()])
    return everyone, slice(start, start + n)
