"""Where the learner runs: its torch device and its torch thread count (one rule each).

Threads: env worker processes own the cores while they step. torch's intra-op thread pool
spin-waits against them (a small policy call becomes orders of magnitude slower), so while
``num_workers`` >= the number of cores the learner runs with one thread
(`workers_own_cores`), and the previous count is restored afterwards. Child processes (env workers,
planning pools) start with one BLAS/OpenMP thread each (`single_thread_environment`).

torch is imported where it is used, not with this module: env worker processes import it (through
`policytrim.rollout.workers`) and need no torch, which would add seconds to each worker's start.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from policytrim.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """InputError unless ``device`` is one this machine has (cpu, or cuda with a visible GPU)."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here; use --device cpu")


def device_of(module: object) -> torch.device:
    """The device of a module's first parameter (cpu for parameter-free policies such as experts)."""
    import torch

    parameters = getattr(module, "parameters", None)
    param = next(iter(parameters()), None) if parameters is not None else None
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (None: leave it), restoring the count after."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def workers_own_cores(num_workers: int, device: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """One torch thread while ``num_workers`` env worker processes own every core (CPU learner
    only); otherwise the thread count is left alone. Restored on exit."""
    busy = device == "cpu" and num_workers >= (os.cpu_count() or 1)
    return torch_threads(1 if busy else None)


_SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@contextlib.contextmanager
def single_thread_environment() -> Iterator[None]:
    """The BLAS/OpenMP thread variables set to 1 for the block, restored after it: a spawned child
    process inherits the environment when it starts, so start workers inside this block."""
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD}
    os.environ.update(_SINGLE_THREAD)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
