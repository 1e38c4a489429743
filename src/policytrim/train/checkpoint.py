"""Resumable training checkpoints: policy + optimiser + trainer state, no pickle.

Layout of one checkpoint directory (assembled under a temporary name, renamed when complete)::

    policy/                  the policy's own checkpoint (safetensors + config.json)
    optimizer.safetensors    every optimiser state tensor, keyed "state.<param>.<name>"
    trainer_state.json       epoch, stage, best-so-far, the optimiser's scalars and param groups

A run keeps its checkpoints as ``<stage>/epoch_<NNNNNN>/`` and a ``LATEST`` file naming the newest
complete one; `latest_checkpoint` falls back to scanning when ``LATEST`` is missing.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from policytrim.errors import InputError
from policytrim.io import atomic_directory, atomic_write_bytes, atomic_write_json

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


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(stage_dir: Path, epoch: int, policy, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``stage_dir/epoch_<epoch>/`` atomically, point LATEST at it, prune older ones."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"epoch_{epoch:06d}"
    with atomic_directory(final, overwrite=True) as tmp:
        policy.save_pretrained(tmp / "policy")
        tensors, meta = optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "trainer_state.json", {"format_version": FORMAT_VERSION, "epoch": epoch, "optimizer": meta, **state})
    atomic_write_bytes(stage_dir / "LATEST", final.name.encode())
    epochs = sorted(p for p in stage_dir.iterdir() if _EPOCH_DIR.match(p.name))
    for old in epochs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint of a stage, or None."""
    if not stage_dir.is_dir():
        return None
    pointer = stage_dir / "LATEST"
    if pointer.is_file():
        candidate = stage_dir / pointer.read_text().strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    epochs = sorted(p for p in stage_dir.iterdir() if _EPOCH_DIR.match(p.name) and (p / "trainer_state.json").is_file())
    return epochs[-1] if epochs else None


def load_trainer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimiser from a checkpoint and return its trainer state (JSON)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise InputError(f"checkpoint {checkpoint} is unreadable or incomplete: {exc}") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"checkpoint {checkpoint} has trainer format {state.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    try:
        optimizer_from_files(optimizer, tensors, state.pop("optimizer"))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"checkpoint {checkpoint}: optimiser state does not match the policy: {exc}") from None
    return state
