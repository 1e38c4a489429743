"""Policy checkpoints: ``model.safetensors`` + ``config.json``, never pickle.

``config.json`` holds the policy's `spec()` (everything needed to rebuild and act: sizes, H,
default window, normalisation statistics, instructions, encoder name) plus the format version and
the SHA-256 of the weights file, so a truncated, corrupt or swapped weights file is refused before
any tensor is read. Every failure is an `InputError` that names the file and what is wrong.

Identical tensors give identical bytes (`safetensors_bytes`), so ``weights_sha256`` identifies the
weights: an interrupted and resumed run that ends with the same tensors as an uninterrupted one
has the same hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from policytrim.errors import InputError
from policytrim.io import atomic_directory, read_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors``, byte-identical for identical tensors and metadata.

    safetensors writes the header's ``__metadata__`` from a hash map, whose order changes from call
    to call; the header is rewritten here with the metadata keys sorted (same length: only the order
    changes; tensor entries, offsets and data are untouched)."""
    data = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # cannot happen for a reordering; never write a header that overflows
        raise RuntimeError("safetensors header grew while reordering its metadata")
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def save_policy_checkpoint(directory: str | Path, spec: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a policy's weights + config into ``directory``; non-finite weights are refused (ValueError).

    Written with `policytrim.io.atomic_directory`: a new ``directory`` appears in one rename; into
    an existing one (e.g. a run directory with other files) the weights and then the config are
    each moved with an atomic `os.replace`, and since the config pins the weights' SHA-256 a crash
    in between leaves a checkpoint that is refused, never a silently wrong one.
    """
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:  # a checkpoint is only ever written with finite weights (and `read_weights` refuses others)
        raise ValueError(f"refusing to save a checkpoint to {str(directory)!r}: non-finite values in {', '.join(bad)}")
    if directory.exists() and not directory.is_dir():
        raise InputError(f"cannot save a checkpoint to {str(directory)!r}: it exists and is not a directory")
    with atomic_directory(directory, merge=True, last=(CONFIG_NAME,)) as tmp:
        (tmp / WEIGHTS_NAME).write_bytes(
            safetensors_bytes(tensors, metadata={"format": "pt", "policytrim_kind": str(spec.get("kind"))})
        )
        config = dict(spec)
        config["weights_sha256"] = _sha256(tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json (validated to exist and parse), without the weights."""
    directory = Path(directory)
    if not directory.exists():
        raise InputError(f"checkpoint directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise InputError(
            f"checkpoint {str(directory)!r} is not a directory (expected {CONFIG_NAME} + {WEIGHTS_NAME} inside)"
        )
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise InputError(
            f"checkpoint {str(directory)!r} has no {CONFIG_NAME}: not a policy checkpoint, or an incomplete one"
        )
    return read_json(path, corrupt=": the checkpoint is corrupt")


def read_weights(directory: str | Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights, checked against the SHA-256 in config.json and for non-finite values."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise InputError(f"checkpoint {str(directory)!r} has no {WEIGHTS_NAME}")
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(path) != expected:
        raise InputError(
            f"{path} does not match its {CONFIG_NAME} (SHA-256 differs): the file is truncated, corrupt "
            "or from another checkpoint"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{path} is not a readable safetensors file ({exc}): the checkpoint is truncated or corrupt"
        ) from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise InputError(f"{path} holds non-finite values in {', '.join(bad)}: refusing to act with it")
    return tensors


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """InputError listing missing, unexpected and mis-shaped tensors (architecture mismatch)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(got)
        if tuple(got[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes (file != config): {'; '.join(shapes)}")
    if problems:
        raise InputError(f"{where}: weights do not match the architecture in its config ({'; '.join(problems)})")
