"""ACT-style temporal ensembling (Zhao et al. 2023) around any chunk policy: a reference point for
inference calls, not a competitor.

The wrapped policy is queried at every step (window 1: calls = T) and the action executed at step t
is the weighted average of every prediction made for step t so far: the chunk predicted at step s
holds a prediction for step t at row t - s, for s > t - H. Weights follow ACT's code,
``w_i = exp(-m * i)`` with i = 0 for the OLDEST prediction (ACT: "w_0 is the weight for the oldest
action"), normalised to sum to 1; m = 0.01 (ACT's value) makes them nearly uniform.

Per-trajectory memory. The rollout engine gives every trajectory its own `torch.Generator`, passed
to `sample` on every call for that trajectory and alive exactly as long as the rollout; the wrapper
keys its memory on that object (a weak key), so memory is per trajectory, begins empty at a
trajectory's first call and disappears with the rollout, with no change to the engine or the policy
contract. Calls without generators are refused.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from policytrim.errors import InputError
from policytrim.policies.base import ChunkSample, Mode, Observation

ACT_M = 0.01


def ensemble_weights(count: int, m: float = ACT_M) -> torch.Tensor:
    """Normalised weights [count] of ``count`` predictions for one step, oldest first."""
    if count < 1:
        raise ValueError(f"need at least one prediction, got {count}")
    w = torch.exp(-float(m) * torch.arange(count, dtype=torch.float64))
    return w / w.sum()


class TemporalEnsemble:
    """Wraps a chunk policy; executes one ensembled action per call (window 1)."""

    default_window = 1
    max_window = 1

    def __init__(self, policy: Any, m: float = ACT_M) -> None:
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
            raise InputError(f"temporal ensembling m must be a finite number >= 0, got {m!r}")
        self.policy = policy
        self.m = float(m)
        self.chunk_size = int(policy.chunk_size)
        self.action_dim = int(policy.action_dim)
        # generator -> list of past chunks [H, A] (newest last), at most H of them
        self._memory: weakref.WeakKeyDictionary[torch.Generator, list[torch.Tensor]] = weakref.WeakKeyDictionary()

    def parameters(self):
        params = getattr(self.policy, "parameters", None)
        return params() if callable(params) else iter(())

    def spec(self) -> dict:
        inner = self.policy.spec() if hasattr(self.policy, "spec") else {}
        return {"kind": "temporal_ensembling", "m": self.m, "policy": inner.get("kind")}

    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode,
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        """Actions [B, H, A] whose row 0 is the ensembled action for the current step (the only
        row executed); logp zeros (evaluation only)."""
        if generators is None:
            raise ValueError(
                "temporal ensembling keeps memory per trajectory and needs the per-trajectory generators "
                "the rollout engine passes"
            )
        out = self.policy.sample(obs, instructions, mode, generators)
        chunks = out.actions.detach()
        actions = chunks.clone()
        for b, gen in enumerate(generators):
            history = self._memory.setdefault(gen, [])
            history.append(chunks[b])
            del history[: -self.chunk_size]
            # history[j] was predicted len(history) - 1 - j calls ago: its row for now is that age
            ages = range(len(history) - 1, -1, -1)
            preds = torch.stack([chunk[age] for chunk, age in zip(history, ages, strict=True)]).double()
            w = ensemble_weights(len(history), self.m).to(preds.device)
            actions[b, 0] = (w[:, None] * preds).sum(0).to(actions.dtype)
        return ChunkSample(
            actions=actions, logp=torch.zeros(actions.shape[:2], dtype=out.logp.dtype, device=out.logp.device)
        )
