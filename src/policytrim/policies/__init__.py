"""Policies behind one contract (`policytrim.policies.base.ChunkPolicy`)."""

from __future__ import annotations

from pathlib import Path

from policytrim.errors import InputError
from policytrim.policies.base import MODES, TRAINED_STAGES, ChunkPolicy, ChunkSample, Mode, Observation, resolve_window

__all__ = ["MODES", "TRAINED_STAGES", "ChunkPolicy", "ChunkSample", "Mode", "Observation", "load_policy", "policy_from_spec", "resolve_window"]


def policy_from_spec(spec: dict, state_dict: dict | None = None) -> ChunkPolicy:
    """Rebuild a policy from `policy.spec()` (and load weights when given)."""
    kind = spec.get("kind")
    if kind == "expert":
        from policytrim.policies.expert import ExpertPolicy

        return ExpertPolicy.from_spec(spec)
    if kind == "chunk":
        from policytrim.policies.chunk import TinyVLA

        policy = TinyVLA.from_spec(spec)
        if state_dict is not None:
            policy.load_state_dict(state_dict)
        return policy
    raise InputError(f"unknown policy kind {kind!r} in spec; known kinds: expert, chunk")


def load_policy(source: str | Path, tasks: tuple[str, ...] = ()) -> ChunkPolicy:
    """'expert' (Meta-World's scripted experts for `tasks`) or a checkpoint directory."""
    if str(source) == "expert":
        from policytrim.policies.expert import ExpertPolicy

        return ExpertPolicy(tasks)
    from policytrim.policies.chunk import TinyVLA

    return TinyVLA.from_pretrained(source)
