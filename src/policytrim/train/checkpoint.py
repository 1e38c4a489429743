"""Resumable training checkpoints: policy + optimiser + trainer state, no pickle.

Layout of one checkpoint directory (assembled under a temporary name, renamed when complete)::

    policy/                  the policy's own checkpoint (safetensors + config.json)
    optimizer.safetensors    every optimiser state tensor, keyed "state.<param>.<name>"
    trainer_state.json       epoch, stage, best-so-far, the optimiser's scalars and param groups
    best/policy/             the stage's best policy as of this epoch (hard links to ``<stage>/best``)

A run keeps its checkpoints as ``<stage>/epoch_<NNNNNN>/`` and a ``LATEST`` file naming the newest
complete one; `latest_checkpoint` falls back to scanning when ``LATEST`` is missing.

Why the best policy is inside: ``<stage>/best`` is replaced whenever validation improves, possibly
after the newest checkpoint. A run killed in between resumes from the checkpoint, so on resume
`restore_best` puts back the best policy that matches the checkpoint's "best" record; otherwise a
replay that does not repeat the improvement bit for bit (GPU kernels) would keep a "best" from the
lost future. Nothing non-finite is written: a non-finite optimiser tensor is an error.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from policytrim.errors import InputError
from policytrim.io import atomic_directory, atomic_write_bytes, atomic_write_json, kill_point, read_json
from policytrim.policies import save_policy
from policytrim.policies.checkpoint import safetensors_bytes

FORMAT_VERSION = 1
_EPOCH_DIR = re.compile(r"^epoch_(\d{6})$")


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and JSON-safe metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of `optimizer_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a directory of files as hard links (files are only ever replaced by rename, never
    modified in place, so sharing inodes is safe), falling back to copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            _link_tree(child, dst / child.name)
        else:
            try:
                os.link(child, dst / child.name)
            except OSError:
                shutil.copy2(child, dst / child.name)


def save_checkpoint(
    stage_dir: Path,
    epoch: int,
    policy,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
    best_dir: Path | None = None,
) -> Path:
    """Write ``stage_dir/epoch_<epoch>/`` atomically, point LATEST at it, prune older ones.
    ``best_dir`` (the stage's ``best/``) is stored with it, see the module docstring."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"epoch_{epoch:06d}"
    tensors, meta = optimizer_to_files(optimizer)
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"refusing to write checkpoint {final}: non-finite optimiser state in {', '.join(bad)}")
    with atomic_directory(final, overwrite=True) as tmp:
        save_policy(policy, tmp / "policy")
        (tmp / "optimizer.safetensors").write_bytes(safetensors_bytes(tensors))
        if best_dir is not None and (best_dir / "policy").is_dir():
            _link_tree(best_dir / "policy", tmp / "best" / "policy")
        kill_point("checkpoint.partial")
        atomic_write_json(
            tmp / "trainer_state.json", {"format_version": FORMAT_VERSION, "epoch": epoch, "optimizer": meta, **state}
        )
    kill_point("checkpoint.pointer")
    atomic_write_bytes(stage_dir / "LATEST", final.name.encode())
    epochs = sorted(p for p in stage_dir.iterdir() if _EPOCH_DIR.match(p.name))
    for old in epochs[:-keep]:
        # rename first: a kill mid-delete must not leave a directory that looks like a checkpoint
        doomed = old.with_name(f".{old.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def restore_best(checkpoint: Path, best_dir: Path) -> bool:
    """Make ``best_dir`` the best policy stored in ``checkpoint`` (False: it stores none)."""
    stored = checkpoint / "best" / "policy"
    if not stored.is_dir():
        return False
    with atomic_directory(best_dir, overwrite=True) as tmp:
        _link_tree(stored, tmp / "policy")
    return True


MAX_POINTER_BYTES = 64


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint of a stage (the one ``LATEST`` names), or None. A pointer is
    not followed blindly: it must name a checkpoint folder of this very stage (``epoch_NNNNNN`` in
    ``stage_dir``, no other path), and that checkpoint's trainer_state.json must say this stage and
    this epoch; anything else is an InputError (a pointer edited or copied from elsewhere would
    resume another stage's or another run's state and finish with exit code 0)."""
    if not stage_dir.is_dir():
        return None
    pointer = stage_dir / "LATEST"
    if pointer.exists() or pointer.is_symlink():
        return _checked_pointer(pointer, stage_dir)
    epochs = sorted(p for p in stage_dir.iterdir() if _EPOCH_DIR.match(p.name) and (p / "trainer_state.json").is_file())
    if not epochs:
        return None
    _check_agrees(epochs[-1], stage_dir, f"{epochs[-1]}")
    return epochs[-1]


def _checked_pointer(pointer: Path, stage_dir: Path) -> Path:
    where = f"{pointer}"
    if pointer.is_symlink() or not pointer.is_file():
        raise InputError(f"{where} is not a plain file; it should name this stage's newest checkpoint (epoch_NNNNNN)")
    raw = pointer.read_bytes()[: MAX_POINTER_BYTES + 1]
    try:
        name = raw.decode().strip()
    except UnicodeDecodeError:
        name = None
    if name is None or len(raw) > MAX_POINTER_BYTES or not _EPOCH_DIR.match(name):
        shown = repr(name if name is not None else raw)[:80]
        raise InputError(
            f"{where} holds {shown}, not the name of a checkpoint of this stage (epoch_NNNNNN inside {stage_dir})"
        )
    candidate = stage_dir / name
    if candidate.is_symlink() or not (candidate / "trainer_state.json").is_file():
        raise InputError(f"{where} names {name}, which is not a complete checkpoint folder in {stage_dir}")
    _check_agrees(candidate, stage_dir, f"{where} names {name}, but")
    return candidate


def _check_agrees(checkpoint: Path, stage_dir: Path, where: str) -> None:
    """InputError unless ``checkpoint``'s trainer_state.json says it is ``stage_dir``'s stage at the
    epoch in its folder name."""
    state = read_json(checkpoint / "trainer_state.json", name=f"{where} its trainer_state.json")
    epoch = int(_EPOCH_DIR.match(checkpoint.name).group(1))
    if state.get("stage") != stage_dir.name or state.get("epoch") != epoch:
        raise InputError(
            f"{where} its trainer_state.json is stage {state.get('stage')!r} epoch {state.get('epoch')!r}, not "
            f"stage {stage_dir.name!r} epoch {epoch}: it is not this stage's checkpoint (copied or edited?); "
            "restore the run's own checkpoint, or start a new run"
        )


def load_trainer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimiser from a checkpoint and return its trainer state (JSON)."""
    state = read_json(
        checkpoint / "trainer_state.json",
        name=f"checkpoint {checkpoint}: trainer_state.json",
        corrupt=": the checkpoint is unreadable or incomplete",
    )
    try:
        tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"checkpoint {checkpoint} is unreadable or incomplete: {exc}") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"checkpoint {checkpoint} has trainer format {state.get('format_version')!r}; this version "
            f"reads {FORMAT_VERSION}"
        )
    try:
        optimizer_from_files(optimizer, tensors, state.pop("optimizer"))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"checkpoint {checkpoint}: optimiser state does not match the policy: {exc}") from None
    return state
