"""The policy contract every policy implements and nothing else in the library goes around.

A chunking policy maps a batch of observations + instructions to a chunk of H actions in one call.
Three modes (SPEC.md, "Log-probabilities by policy kind" and "Evaluation protocol"):

- ``"train"``: exploration during RL rollouts (Gaussian sample; Flow-SDE for a flow head).
- ``"sampled"``: how it acts when deployed (Gaussian sample; flow head: random noise, plain ODE).
- ``"deterministic"``: Gaussian mean; flow head from zero noise.

Model-specific code (encoders, heads, tokenisers, LeRobot/GR00T wrappers) stays inside the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from policytrim.errors import InputError
from policytrim.windows import check_window, resolve_window, window_bound  # noqa: F401  (re-exported)

Mode = Literal["train", "sampled", "deterministic"]
MODES: tuple[str, ...] = ("train", "sampled", "deterministic")
STAGES: tuple[str, ...] = ("extend", "trim")

# How a saved policy was trained (spec key ``trained_stage``): behaviour cloning, PolicyTrim Stage 1
# (extension) or Stage 2 (trim). Its spec's ``default_window`` is the window that training chose.
TRAINED_STAGES: tuple[str, ...] = ("bc", "extend", "trim")

# Batched observations: the per-env observation dicts of `policytrim.envs.base` stacked along a
# leading batch dimension and converted to tensors (state float32 [B, D], image uint8 [B, h, w, 3]).
Observation = dict[str, torch.Tensor]


@dataclass
class ChunkSample:
    """What one batched policy call returns, B = batch size, H = chunk size, A = action dim.

    actions: float32 [B, H, A], already within the env's action bounds: what gets executed.
    logp:    float32 [B, H], log-prob of each row (summed over action dims) under the mode's
             sampling distribution; zeros for a policy with no density (scripted experts).
    replay:  tensors with leading dim B: everything `log_prob` needs to recompute `logp`
             (Gaussian: the pre-clip sample; flow: the stored chain x_t, x_{t-Δ}, step index).
    """

    actions: torch.Tensor
    logp: torch.Tensor
    replay: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class ChunkPolicy(Protocol):
    """The contract. `torch.nn.Module` subclasses implement it; experts implement it without params."""

    chunk_size: int  # H: actions predicted per call
    default_window: int  # k the policy was trained to execute: its BC window, or the window PolicyTrim chose
    max_window: int  # largest window it may execute (H for learned policies, 1 for experts)
    action_dim: int

    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode,
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        """Sample one chunk per batch row. ``generators[b]`` (one per row) makes row b's random
        numbers reproducible independently of the batch composition (paired evaluation)."""
        ...

    def log_prob(
        self,
        obs: Observation,
        instructions: Sequence[str],
        replay: dict[str, torch.Tensor],
        row_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Differentiable per-row log-prob [B, H] of the recorded chunks; rows where
        ``row_mask`` (bool [B, H]) is False are 0 and get no gradient."""
        ...

    def bc_loss(
        self,
        obs: Observation,
        instructions: Sequence[str],
        actions: torch.Tensor,
        row_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Behaviour-cloning loss (scalar) for demonstration chunks actions [B, H, A]."""
        ...

    def spec(self) -> dict:
        """JSON-safe description that rebuilds the architecture with `policy_from_spec` (kind, H,
        sizes, normalisation statistics, vocabulary...). Weights travel separately as a state dict.
        A trainable policy's spec also carries what deploying it needs: ``default_window`` (the
        window it was trained to execute), ``trained_stage`` (`TRAINED_STAGES`) and
        ``step_budget`` (the Stage 2 budget B it was trained against, or None); the trainer sets
        them with the policy's ``mark_trained(stage, window, step_budget)``."""
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write safetensors weights + JSON config (atomically). Never pickle."""
        ...


def check_trained(stage: Any, window: int, chunk_size: int, step_budget: Any) -> None:
    """InputError unless ``stage`` is one of `TRAINED_STAGES`, ``window`` in [1, chunk_size] and
    ``step_budget`` None or a positive finite number (steps)."""
    if stage not in TRAINED_STAGES:
        raise InputError(f"trained_stage must be one of {', '.join(TRAINED_STAGES)}, got {stage!r}")
    check_window(int(window), chunk_size, "default_window", chunk_size)
    if step_budget is not None and not (
        isinstance(step_budget, (int, float))
        and not isinstance(step_budget, bool)
        and math.isfinite(step_budget)
        and step_budget > 0
    ):
        raise InputError(f"step_budget must be a positive number or null, got {step_budget!r}")


def supported_stages(policy: ChunkPolicy) -> tuple[str, ...]:
    """The PolicyTrim stages a policy can run. Stage 1 (extend) executes windows longer than the
    policy's own, so it needs a longest executable window (`window_bound`) above the default
    window; a policy that decodes exactly the k actions it executes (an OpenVLA-style
    autoregressive policy with chunk size = window) runs Stage 2 (trim) only, the paper's Table 3
    path."""
    return STAGES if window_bound(policy) > int(policy.default_window) else ("trim",)
