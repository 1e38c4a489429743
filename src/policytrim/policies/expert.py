"""Scripted experts behind the chunk-policy contract (``--policy expert``): Meta-World's own, and
LIBERO's single-goal experts (`policytrim.policies.libero_expert`).

The experts are closed-loop controllers: one action per observation. As a chunk policy that is
H = 1 with window 1 (``max_window = 1``); asking the rollout engine for a longer window is refused.
Each batch row's instruction selects its task's expert (instructions are unique per task; for
LIBERO, among the tasks the policy was built for), which reads the raw state: Meta-World's 39-dim
state, or LIBERO's state with object poses (``env.libero_state=objects``). The experts are
deterministic: ``mode`` and the generators are ignored and log-probs are zero (no density). They
cannot be trained or saved. One policy serves one simulator (the action sizes differ: 4 and 7).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim.envs.base import OBS_STATE
from policytrim.envs.tasks import INSTRUCTIONS, resolve_tasks
from policytrim.errors import InputError
from policytrim.policies.base import ChunkSample, Mode, Observation

_TASK_OF_INSTRUCTION = {instruction: task for task, instruction in INSTRUCTIONS.items()}


def scripted_expert(task: str) -> Any:
    """Meta-World's scripted policy object for ``task`` (``get_action(state) -> action``)."""
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise InputError(
            f"Meta-World has no scripted expert for {task!r}; tasks with one: {', '.join(sorted(ENV_POLICY_MAP))}"
        )
    return ENV_POLICY_MAP[task]()


def expert_action(expert: Any, state: np.ndarray) -> np.ndarray:
    """One expert action for one raw state, clipped to the action bounds [-1, 1] (float32 [4])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
        return _expert_action(expert, state)


def _expert_action(expert: Any, state: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(expert.get_action(np.asarray(state, dtype=np.float64)), dtype=np.float32), -1.0, 1.0)


def _is_libero(tasks: Sequence[str]) -> bool:
    from policytrim.envs.libero import SUITES

    return any(t.split("/")[0] in SUITES for t in tasks)


class ExpertPolicy:
    """Scripted experts for ``tasks``: Meta-World task names or sets (other Meta-World tasks load on
    demand), or LIBERO suites / task addresses (their experts are planned on first use)."""

    chunk_size = 1
    default_window = 1
    max_window = 1

    def __init__(self, tasks: Sequence[str] = ()) -> None:
        self.libero = _is_libero(list(tasks))
        if self.libero:
            from policytrim.envs.libero import resolve_libero_tasks, task_info

            self.tasks: tuple[str, ...] = resolve_libero_tasks(list(tasks))
            self._libero_task = {task_info(t).instruction: t for t in self.tasks}
            self._experts: dict[str, Any] = {}
        else:
            self.tasks = resolve_tasks(list(tasks)) if tasks else ()
            self._experts = {t: scripted_expert(t) for t in self.tasks}
        self.action_dim = 7 if self.libero else 4

    def _expert_for(self, instruction: str) -> Any:
        if self.libero:
            return self._libero_expert_for(instruction)
        task = _TASK_OF_INSTRUCTION.get(instruction)
        if task is None:
            raise ValueError(f"the scripted experts know only Meta-World instructions; got {instruction!r}")
        if task not in self._experts:
            self._experts[task] = scripted_expert(task)
        return self._experts[task]

    def _libero_expert_for(self, instruction: str) -> Any:
        task = self._libero_task.get(instruction)
        if task is None:
            raise ValueError(
                f"no LIBERO task of this expert policy ({len(self.tasks)} tasks) has the instruction {instruction!r}"
            )
        if task not in self._experts:
            from policytrim.policies.libero_expert import LiberoExpert, task_plan

            self._experts[task] = LiberoExpert(task_plan(task))
        return self._experts[task]

    def _row_action(self, instruction: str, state: np.ndarray) -> np.ndarray:
        expert = self._expert_for(instruction)
        if not self.libero:
            return _expert_action(expert, state)
        if len(state) != expert.state_dim:
            raise InputError(
                f"the LIBERO experts read object poses from a {expert.state_dim}-D state, got {len(state)}-D: "
                "set env.libero_state=objects (the default without images)"
            )
        return expert.act(state).astype(np.float32)

    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode = "deterministic",
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        """Actions [B, 1, A] from each row's expert (A = 4 Meta-World, 7 LIBERO); logp zeros [B, 1]; no replay data."""
        states = obs[OBS_STATE].detach().to("cpu", torch.float64).numpy()
        if len(instructions) != len(states):
            raise ValueError(f"got {len(states)} observations but {len(instructions)} instructions")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            rows = [self._row_action(text, s) for text, s in zip(instructions, states, strict=True)]
        actions = np.stack(rows) if rows else np.zeros((0, self.action_dim), np.float32)
        return ChunkSample(actions=torch.from_numpy(actions).unsqueeze(1), logp=torch.zeros(len(states), 1))

    def log_prob(
        self, obs: Observation, instructions: Sequence[str], replay: dict[str, torch.Tensor], row_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("scripted experts have no action density; they cannot be trained with GRPO")

    def bc_loss(
        self, obs: Observation, instructions: Sequence[str], actions: torch.Tensor, row_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("scripted experts are not trainable")

    def spec(self) -> dict:
        return {"kind": "expert", "tasks": list(self.tasks)}

    @classmethod
    def from_spec(cls, spec: dict) -> ExpertPolicy:
        if spec.get("kind") != "expert":
            raise InputError(f"not an expert policy spec: kind={spec.get('kind')!r}")
        return cls(tuple(spec.get("tasks", ())))

    def save_pretrained(self, directory: str | Path) -> None:
        raise InputError("scripted experts have no weights to save; use --policy expert wherever a policy is expected")

    # torch.nn.Module-like conveniences used by trainers and evaluation
    def eval(self) -> ExpertPolicy:
        return self

    def train(self, mode: bool = True) -> ExpertPolicy:
        return self

    def parameters(self):
        return iter(())
