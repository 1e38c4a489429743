"""Preconditions of a command, checked before it writes anything.

A command that fails after creating its output leaves a half-made run behind (a run directory that
then says "already exists; pass --resume", and a resume that fails the same way). So everything that
can be known up front is checked first: the output directory can be written, the device exists, the
logging back-ends asked for are installed, a Ray cluster (rollout.backend=ray) answers and fits the
env workers. Inputs (checkpoints, datasets) are validated by their loaders, which every command
calls before creating its output.
"""

from __future__ import annotations

import importlib.util
import os
import sys
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
        raise InputError(
            f"logging.wandb={wandb_mode} needs the wandb package: pip install 'policytrim[wandb]' (or "
            "--logging.wandb off)"
        )


def check_preconditions(
    cfg: RunConfig, out: str | Path | None = None, flag: str = "--logging.out", simulator: bool = True
) -> None:
    """InputError naming the first precondition of a run with ``cfg`` writing to ``out`` that fails.
    ``simulator``: the command steps the configured simulator (all but a pretrain without evaluation)."""
    if out is not None:
        check_name_lengths(out, flag)
        check_output_dir(out, flag)
    check_device(cfg.device)
    check_backends(cfg.logging.wandb)
    if simulator:
        check_simulator(cfg)
    if cfg.rollout.backend == "ray":  # last: it joins or starts Ray
        from policytrim.rollout.ray_pool import check_cluster

        check_cluster(cfg.ray, cfg.rollout.num_workers)


def check_simulator(cfg: RunConfig) -> None:
    """InputError when the package of the configured simulator (``env.suite``) is not installed in
    this Python: a configuration error, said before anything is written -- not, as before, every
    rollout group dropped as a "simulator fault" and a metrics.json of 0 episodes with exit code 0.
    Looked up without importing it (a simulator's import takes seconds)."""
    suite = cfg.env.suite
    if suite == "libero":
        from policytrim.envs.libero import INSTALL_HINT, simulator_installed

        if not simulator_installed():
            raise InputError(
                f"env.suite=libero needs the LIBERO simulator, which is not installed in {sys.executable}: "
                f"{INSTALL_HINT}"
            )
        return
    packages = {"metaworld": ("metaworld", "pip install metaworld"), "gym": ("gymnasium", "pip install gymnasium")}
    module, hint = packages.get(suite, (None, ""))
    if module is not None and importlib.util.find_spec(module) is None:
        raise InputError(
            f"env.suite={suite} needs the {module} package, which is not installed in {sys.executable}: {hint}"
        )


TEMPORARY_NAME_ROOM = 32
"""Bytes a temporary sibling adds to an output's name (``.NAME.<random>.tmp``, ``.NAME.old-<pid>-<hex>``)."""


def check_name_lengths(path: str | Path, flag: str) -> None:
    """InputError when a name in ``path`` is longer than its file system allows (less the room a
    temporary sibling of the output needs), or the whole path is; checked without touching a name
    that long (the OS answers any look-up of one with ENAMETOOLONG)."""
    absolute = Path(os.path.abspath(path))
    existing = next((p for p in absolute.parents if _exists(p)), Path(absolute.anchor))
    name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    if len(os.fsencode(absolute)) > path_max - TEMPORARY_NAME_ROOM:
        size = len(os.fsencode(absolute))
        raise InputError(f"{flag} is a path of {size} bytes: at most {path_max - TEMPORARY_NAME_ROOM} are allowed here")
    for part in absolute.parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max - TEMPORARY_NAME_ROOM:
            raise InputError(
                f"{flag}: the name {part[:40]!r}... is {size} bytes long; "
                f"at most {name_max - TEMPORARY_NAME_ROOM} are allowed "
                f"here (the file system's {name_max}, less {TEMPORARY_NAME_ROOM} for temporary names beside it)"
            )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up
        return False
