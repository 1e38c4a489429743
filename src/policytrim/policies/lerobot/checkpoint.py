"""The files of a LeRobot checkpoint as policytrim writes it, and how each is read back.

A checkpoint is a LeRobot checkpoint: ``config.json`` (``n_action_steps`` = the trained window),
``model.safetensors`` and the processor files, written by LeRobot's own writers, plus
``policytrim.json`` (our options: family, window, noise scale, trainable parts, trained stage) and
``policytrim_extra.safetensors`` (ACT's log-std).

Portability. LeRobot hands SmolVLA's ``vlm_model_name`` (config.json) and the tokenizer's
``tokenizer_name`` (policy_preprocessor.json) to ``transformers``' ``from_pretrained`` unchanged:
a hub id resolves through the hub (or its local cache, offline), a path resolves against the
working directory, never against the checkpoint. So a checkpoint names its VLM in one of two ways:

- a hub id (SmolVLA's own ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``): kept as it is, nothing
  copied; the directory loads anywhere with LeRobot's loader and ours;
- a local VLM directory (a tiny test VLM, an offline copy): copied into the checkpoint's ``vlm/``
  and named by the relative path ``vlm``, so nothing points outside the directory. Our loader
  resolves it against the checkpoint; LeRobot's unmodified loader resolves it against the working
  directory (load from inside the checkpoint directory, or override ``vlm_model_name`` and
  ``tokenizer_name``).

Every write (a run's checkpoints, `export_lerobot`) does this, so no checkpoint points at another
one (before: a run's ``final/policy`` named ``baseline/vlm`` by its absolute path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from policytrim.errors import InputError
from policytrim.io import atomic_directory, read_json

KIND = "lerobot"
FORMAT_VERSION = 1
SIDECAR = "policytrim.json"
EXTRA_WEIGHTS = "policytrim_extra.safetensors"
VLM_DIR = "vlm"
LEROBOT_CONFIG = "config.json"


def is_lerobot_checkpoint(directory: str | Path) -> bool:
    """A directory written by LeRobot's ``save_pretrained`` (its config.json names a policy type)."""
    path = Path(directory) / LEROBOT_CONFIG
    if not path.is_file():
        return False
    try:
        config = read_json(path, kind=None)
    except InputError:
        return False
    return isinstance(config, dict) and isinstance(config.get("type"), str) and "kind" not in config


def local_vlm(config: Any) -> Path | None:
    """The local VLM directory a LeRobot config names (None: no VLM, or a hub id)."""
    name = getattr(config, "vlm_model_name", None)
    return Path(name).absolute() if name and Path(name).is_dir() else None


def bundled_vlm(directory: Path, config: Any) -> Path | None:
    """The VLM copy inside checkpoint ``directory`` (its ``vlm/``), if the config has a VLM."""
    vlm = directory / VLM_DIR
    return vlm.absolute() if hasattr(config, "vlm_model_name") and vlm.is_dir() else None


def _read_sidecar(path: Path) -> dict[str, Any]:
    meta = read_json(path, kind=None)
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise InputError(f"{path} does not describe a policytrim LeRobot checkpoint (kind {KIND!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: format version {meta.get('format_version')!r} is not supported (this policytrim "
            f"reads {FORMAT_VERSION})"
        )
    return meta


def _write_checkpoint(policy: Any, directory: Path) -> Path:
    """Assemble the checkpoint of ``policy`` (a `LeRobotChunkPolicy`) in a temporary sibling and
    move it into place in one rename.

    A local VLM directory is copied into ``vlm/`` and config.json / policy_preprocessor.json name
    it ``vlm`` (module docstring), so the result points at nothing outside itself."""
    from safetensors.torch import save_file

    bad = sorted(n for n, p in policy.named_parameters() if not bool(torch.isfinite(p).all()))
    if bad:
        raise ValueError(
            f"refusing to save a checkpoint to {str(directory)!r}: non-finite values in {', '.join(bad[:5])}"
        )
    directory = directory.absolute()
    if directory.exists() and not directory.is_dir():
        raise InputError(f"cannot save a checkpoint to {str(directory)!r}: it exists and is not a directory")
    config = policy.policy.config
    previous = (config.n_action_steps, getattr(config, "vlm_model_name", None))
    tokenizer_steps = [s for s in policy.preprocessor.steps if getattr(s, "tokenizer_name", None)]
    tokenizer_names = [s.tokenizer_name for s in tokenizer_steps]
    try:
        # into an existing directory (e.g. a run directory) entry by entry, other files kept, the
        # sidecar last (atomic_directory's merge)
        with atomic_directory(directory, merge=True, last=(SIDECAR,)) as tmp:
            config.n_action_steps = policy.default_window  # LeRobot deploys the trained window
            vlm = local_vlm(config)
            if vlm is not None:
                shutil.copytree(vlm, tmp / VLM_DIR)
                config.vlm_model_name = VLM_DIR
                for step in tokenizer_steps:
                    if Path(step.tokenizer_name).is_dir() and Path(step.tokenizer_name).absolute() == vlm:
                        step.tokenizer_name = VLM_DIR
            policy.policy.save_pretrained(tmp)
            policy.preprocessor.save_pretrained(tmp)
            policy.postprocessor.save_pretrained(tmp)
            extra = policy.family_ops.extra_tensors(policy)
            if extra:
                save_file(extra, str(tmp / EXTRA_WEIGHTS))
            (tmp / SIDECAR).write_text(json.dumps(policy.spec(), indent=2) + "\n")
    finally:
        config.n_action_steps = previous[0]
        if previous[1] is not None:
            config.vlm_model_name = previous[1]
        for step, name in zip(tokenizer_steps, tokenizer_names, strict=True):
            step.tokenizer_name = name
    return directory
