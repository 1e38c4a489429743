"""Preconditions of a command, checked before it writes anything.

A command that fails after creating its output leaves a half-made run behind (a run directory that
then says "already exists; pass --resume", and a resume that fails the same way). So everything that
can be known up front is checked first: the output directory can be written, the device exists, the
logging back-ends asked for are installed, a Ray cluster (rollout.backend=ray) answers and fits the
env workers. Inputs (checkpoints, datasets) are validated by their loaders, which every command
calls before creating its output.
"""

from __future__ import annotations

from pathlib import Path

from policytrim.config import RunConfig
from policytrim.io import check_output_dir
from policytrim.runtime import check_device
from policytrim.train.logger import check_backends


def check_preconditions(cfg: RunConfig, out: str | Path | None = None, flag: str = "--logging.out") -> None:
    """InputError naming the first precondition of a run with ``cfg`` writing to ``out`` that fails."""
    if out is not None:
        check_output_dir(out, flag)
    check_device(cfg.device)
    check_backends(cfg.logging.wandb)
    if cfg.rollout.backend == "ray":  # last: it joins or starts Ray
        from policytrim.rollout.ray_pool import check_cluster

        check_cluster(cfg.ray, cfg.rollout.num_workers)
