"""Preconditions of a command, checked before it writes anything.

A command that fails after creating its output leaves a half-made run behind (a run directory that
then says "already exists; pass --resume", and a resume that fails the same way). So everything that
can be known up front is checked first: the output directory can be written, the device exists, the
logging back-ends asked for are installed. Inputs (checkpoints, datasets) are validated by their
loaders, which every command calls before creating its output.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from policytrim.config import RunConfig
from policytrim.errors import InputError
from policytrim.io import check_output_dir
from policytrim.runtime import check_device


def check_backends(wandb_mode: str) -> None:
    """InputError when a logging back-end asked for is not installed (TensorBoard is used only
    when installed, never required). Here, not in `policytrim.train.logger`, so that the library
    entry points below training (collection) can check it without importing the trainer."""
    if wandb_mode != "off" and importlib.util.find_spec("wandb") is None:
        raise InputError(f"logging.wandb={wandb_mode} needs the wandb package: pip install 'policytrim[wandb]' (or --logging.wandb off)")


def check_preconditions(cfg: RunConfig, out: str | Path | None = None, flag: str = "--logging.out") -> None:
    """InputError naming the first precondition of a run with ``cfg`` writing to ``out`` that fails."""
    if out is not None:
        check_output_dir(out, flag)
    check_device(cfg.device)
    check_backends(cfg.logging.wandb)
