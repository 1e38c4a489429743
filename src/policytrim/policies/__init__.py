"""Policies behind one contract (`policytrim.policies.base.ChunkPolicy`)."""

from __future__ import annotations

from pathlib import Path

from policytrim.errors import InputError
from policytrim.policies.adaptor import WindowAdaptor, adaptor_of, attach_adaptor, has_adaptor
from policytrim.policies.base import MODES, TRAINED_STAGES, ChunkPolicy, ChunkSample, Mode, Observation, resolve_window

__all__ = [
    "MODES",
    "TRAINED_STAGES",
    "ChunkPolicy",
    "ChunkSample",
    "Mode",
    "Observation",
    "load_policy",
    "policy_from_spec",
    "resolve_window",
    "save_policy",
]


def policy_from_spec(spec: dict, state_dict: dict | None = None) -> ChunkPolicy:
    """Rebuild a policy from `policy.spec()` (and load weights when given)."""
    kind = spec.get("kind")
    if kind == "expert":
        from policytrim.policies.expert import ExpertPolicy

        return ExpertPolicy.from_spec(spec)
    if kind == "chunk":
        from policytrim.policies.tinyvla import TinyVLA

        policy = TinyVLA.from_spec(spec)
        if state_dict is not None:
            policy.load_state_dict(state_dict)
        return policy
    if kind == "lerobot":
        raise InputError(
            "a LeRobot policy is rebuilt from its checkpoint directory (load_policy), not from a spec alone"
        )
    raise InputError(f"unknown policy kind {kind!r} in spec; known kinds: expert, chunk, lerobot")


def load_policy(source: str | Path, tasks: tuple[str, ...] = ()) -> ChunkPolicy:
    """'expert' (the scripted experts for `tasks`: Meta-World's, or LIBERO's pick-and-place ones), a checkpoint
    directory (policytrim's or LeRobot's), or ``lerobot:<hub id>`` (LeRobot's from_pretrained; needs the lerobot
    extra and hub access). A checkpoint directory holding ``adaptor/`` loads with its window adaptor attached
    (`policytrim.policies.adaptor.adaptor_of`): it then executes a window per call."""
    policy = _load(source, tasks)
    if str(source) != "expert" and has_adaptor(source):
        adaptor = WindowAdaptor.from_pretrained(source)
        if adaptor.chunk_size != policy.chunk_size:
            raise InputError(
                f"window adaptor of {str(source)!r} is for chunk size {adaptor.chunk_size}, "
                f"the policy's is {policy.chunk_size}"
            )
        attach_adaptor(policy, adaptor)
    return policy


def save_policy(policy: ChunkPolicy, directory: str | Path) -> None:
    """``policy.save_pretrained(directory)``, plus ``directory/adaptor/`` when it carries a window adaptor."""
    policy.save_pretrained(directory)
    adaptor = adaptor_of(policy)
    if adaptor is not None:
        adaptor.save_pretrained(directory)


def _load(source: str | Path, tasks: tuple[str, ...]) -> ChunkPolicy:
    if str(source) == "expert":
        from policytrim.policies.expert import ExpertPolicy

        return ExpertPolicy(tasks)
    from policytrim.policies.lerobot import HUB_PREFIX, is_lerobot_checkpoint

    if str(source).startswith(HUB_PREFIX) or is_lerobot_checkpoint(source):
        from policytrim.policies.lerobot import LeRobotChunkPolicy

        return LeRobotChunkPolicy.from_pretrained(str(source).removeprefix(HUB_PREFIX))
    from policytrim.policies.tinyvla import TinyVLA

    return TinyVLA.from_pretrained(source)
