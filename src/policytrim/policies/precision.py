"""Inference precision for deployment: a policy's network in bfloat16, or with dynamic int8 linear layers.

`to_precision(policy, precision)` converts a policy in place for inference (sampling chunks; not for
training) and returns the policy to use:

- ``bf16``: parameters and buffers in bfloat16;
- ``int8``: `torch.ao.quantization.quantize_dynamic` on the ``nn.Linear`` layers (int8 weights,
  activations quantized per call; CPU), everything else in float32.

A policy that knows its own layout converts itself through a ``to_precision(precision)`` method
(`policytrim.policies.lerobot.LeRobotChunkPolicy`: LeRobot's SmolVLA keeps its action projections in
float32 and reads the ``.weight.dtype`` of its attention projections, which a dynamic int8 layer no
longer has); others get the plain conversion above (TinyVLA casts its inputs to its own dtype).
Whatever the precision, a policy's chunks stay float32 (`ChunkSample.actions`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from policytrim.errors import InputError

PRECISIONS: tuple[str, ...] = ("bf16", "int8")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def to_precision(policy: Any, precision: str) -> Any:
    """``policy`` converted in place to ``precision`` (`PRECISIONS`, module docstring); returns the
    policy to use (copy it first to keep the float32 one)."""
    check_precision(precision)
    own = getattr(policy, "to_precision", None)
    if callable(own):
        return own(precision)
    if precision == "bf16":
        return policy.to(torch.bfloat16)
    quantize_linear(policy)
    return policy


def quantize_linear(module: nn.Module, skip: Iterable[str] = ()) -> None:
    """Dynamic int8 for every ``nn.Linear`` of ``module`` (in place) except those named in ``skip``."""
    if any(p.dtype != torch.float32 for p in module.parameters() if p.is_floating_point()):
        raise InputError("dynamic int8 quantizes a float32 network; this one has other floating dtypes (bf16?)")
    skipped = set(skip)
    # exactly nn.Linear, as torch's own default mapping: not nn.MultiheadAttention's out_proj (a subclass
    # whose weight the attention reads)
    names = [n for n, m in module.named_modules() if type(m) is nn.Linear and n not in skipped]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        torch.ao.quantization.quantize_dynamic(
            module, dict.fromkeys(names, torch.ao.quantization.default_dynamic_qconfig), inplace=True
        )


def floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of most of ``module``'s floating parameters (by element count; float32 if none).

    Read from the parameters themselves, so it holds after dynamic quantization (a quantized linear
    layer has no ``weight`` tensor) and in a mixed-precision network."""
    counts: dict[torch.dtype, int] = {}
    for p in module.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32
