"""What the rollout engine returns: trajectories in GRPO groups, and their executed chunks.

Shapes: N trajectories, stored group by group (members of group g are rows g*G .. g*G+G-1),
M executed chunks over all trajectories (flat), H the policy's chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trajectories:
    # ---- per trajectory, [N] ----
    task: list[str]
    """Task name of each trajectory."""
    instruction: list[str]
    """Language instruction of each trajectory."""
    seed: torch.Tensor
    """long [N]: seed of the initial-state address (task, seed, index)."""
    index: torch.Tensor
    """long [N]: index of the initial-state address."""
    group: torch.Tensor
    """long [N]: group id; members of a group share the initial state."""
    window: torch.Tensor
    """long [N]: execution window k_i (with a window adaptor: the bound of its choices)."""
    success: torch.Tensor
    """bool [N]: success S_i (first success within the horizon)."""
    steps: torch.Tensor
    """long [N]: physical steps T_i (to first success, or the horizon)."""
    calls: torch.Tensor
    """long [N]: inference calls C_i actually made."""
    horizon: int
    """Episode horizon (env steps) the rollouts ran with."""
    group_size: int
    """G, members per group."""

    # ---- per executed chunk, [M] (empty when chunks were not recorded) ----
    chunk_traj: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """long [M]: trajectory each chunk belongs to."""
    chunk_pos: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """long [M]: position c of the chunk within its trajectory (0, 1, ...)."""
    chunk_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """long [M]: rows n_c actually executed (<= k; cut short by success or the horizon)."""
    chunk_offset: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """long [M]: the chunk's first executed row (0; ``rollout.delay`` for a stale chunk, which
    executes rows offset .. offset + n_c - 1). Empty: 0 for every chunk."""
    obs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Observation the chunk was predicted from, each [M, ...]."""
    old_logp: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    """float [M, H]: per-row log-prob recorded by the rollout (rows >= n_c are meaningless)."""
    replay: dict[str, torch.Tensor] = field(default_factory=dict)
    """Policy replay data, each [M, ...]: what `ChunkPolicy.log_prob` needs."""
    chunk_window: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """long [M]: the window chosen for each chunk (its trajectory's k, or the window adaptor's
    choice at that call); n_c <= it."""
    window_logp: torch.Tensor | None = None
    """float [M]: log-prob of each chunk's window under the window adaptor at rollout time (None
    without an adaptor)."""
    chunk_actions: torch.Tensor | None = None
    """float [M, H, A]: the chunk each call returned, the window adaptor's other input (None without
    an adaptor)."""
    chunk_branch: torch.Tensor | None = None
    """bool [M]: the chunks of their group's branch call, where the adaptor sampled (per-call credit,
    `RolloutEngine.run`'s ``branch_below``); None without branching."""

    # ---- diagnostics ----
    policy_seconds: float = 0.0
    """Wall time spent inside policy calls."""
    policy_batches: int = 0
    """Number of batched policy calls made (for latency per call)."""
    env_steps: int = 0
    """Total environment steps taken."""
    dropped_groups: int = 0
    """Groups dropped whole because a member hit a simulator fault or timeout."""
    fault_counts: dict[str, int] = field(default_factory=dict)
    """Failed trajectories by fault kind (the exception's class name, ``non_finite_action``,
    ``worker_lost``)."""
    timing: dict[str, float] = field(default_factory=dict)
    """Where the rollout's time went (seconds; `policytrim.rollout.engine` documents the keys):
    ``wall``, ``policy`` (policy calls), ``wait`` (the engine blocked on workers), ``worker`` /
    ``worker_reset`` (worker wall time on requests / on resets, summed over workers), ``worker_cpu`` /
    ``worker_reset_cpu`` (the same in worker CPU time), ``requests``,
    ``mean_batch`` (trajectories per policy call)."""

    @property
    def num_trajectories(self) -> int:
        return len(self.task)

    @property
    def num_groups(self) -> int:
        return self.num_trajectories // self.group_size

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_traj.numel())

    @property
    def chunk_instruction(self) -> list[str]:
        """Instruction of each chunk, [M]."""
        return [self.instruction[i] for i in self.chunk_traj.tolist()]

    def chunk_row_mask(self) -> torch.Tensor:
        """bool [M, H]: True on executed rows of each chunk."""
        h = self.old_logp.shape[1]
        rows = torch.arange(h).unsqueeze(0)
        if not self.chunk_offset.numel():
            return rows < self.chunk_rows.unsqueeze(1)
        first = self.chunk_offset.unsqueeze(1)
        return (rows >= first) & (rows < first + self.chunk_rows.unsqueeze(1))

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape a per-trajectory tensor [N] to [num_groups, G]."""
        return values.reshape(self.num_groups, self.group_size)

    def padded(self, chunk_values: torch.Tensor, traj_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scatter per-chunk per-row values [M, H] into [n, C_max, K_max] for `grpo_loss`.

        ``traj_ids`` (long [n], default all) selects and orders the trajectories; chunk_values
        must then hold exactly the chunks of those trajectories (see `chunks_of`). K_max is the
        largest window among them; padding is 0.
        """
        traj_ids = torch.arange(self.num_trajectories) if traj_ids is None else traj_ids
        chunk_ids = self.chunks_of(traj_ids)
        if chunk_values.shape[0] != chunk_ids.numel():
            raise ValueError(
                f"chunk_values has {chunk_values.shape[0]} chunks, the selected trajectories have {chunk_ids.numel()}"
            )
        remap = torch.full((self.num_trajectories,), -1, dtype=torch.long)
        remap[traj_ids] = torch.arange(traj_ids.numel())
        rows = remap[self.chunk_traj[chunk_ids]]
        pos = self.chunk_pos[chunk_ids]
        c_max = int(pos.max().item()) + 1 if pos.numel() else 1
        k_max = int(self.window[traj_ids].max().item()) if traj_ids.numel() else 1
        k_max = min(k_max, chunk_values.shape[1])
        out = chunk_values.new_zeros((traj_ids.numel(), c_max, k_max))
        out[rows, pos] = chunk_values[:, :k_max]
        return out

    def chunks_of(self, traj_ids: torch.Tensor) -> torch.Tensor:
        """long: indices of the chunks of the given trajectories, in chunk order."""
        selected = torch.zeros(self.num_trajectories, dtype=torch.bool)
        selected[traj_ids] = True
        return torch.nonzero(selected[self.chunk_traj], as_tuple=False).flatten()
