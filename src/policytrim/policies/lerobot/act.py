"""LeRobot's ACT as a stochastic chunk policy.

ACT is deterministic: train mode samples a Gaussian N(ACT(obs), σ²) around its output with a
learnable std σ = exp(log_std) [H, A] (the adapter's parameter ``log_std``, initialised from the
option ``act_log_std``, trained by GRPO, not by BC, and saved in ``policytrim_extra.safetensors``);
deterministic and sampled mode return ACT's output (deployed ACT acts deterministically). The replay
holds the normalised sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from policytrim.errors import InputError
from policytrim.policies.base import Mode
from policytrim.policies.lerobot.common import OBS_IMAGES, OBS_STATE, Adapter, Family, Replay, normal_logp


class ActFamily(Family):
    name = "act"
    # bf16 fails inside LeRobot's forward (float32 tensors of its own meet bf16 weights)
    precisions = ("int8",)
    vision_prefix = "policy.model.backbone."

    def setup(self, policy: Adapter) -> None:
        policy.log_std = nn.Parameter(
            torch.full((policy.chunk_size, policy.action_dim), float(policy.options.act_log_std))
        )

    def mean(self, policy: Adapter, batch: dict[str, Any]) -> torch.Tensor:
        """ACT's chunk [B, H, A] (normalised) for a preprocessed batch."""
        act_batch = dict(batch)
        if policy.image_keys:
            act_batch[OBS_IMAGES] = [batch[k] for k in policy.image_keys]
        return policy.policy.model(act_batch)[0]

    def sample(
        self, policy: Adapter, batch: dict[str, Any], mode: Mode, generators: Sequence[torch.Generator] | None
    ) -> tuple[torch.Tensor, torch.Tensor, Replay]:
        mean = self.mean(policy, batch)
        std = policy.log_std.exp().to(mean.dtype)
        x = (
            mean
            if mode != "train"
            else mean
            + std * policy.randn_rows(generators, batch[OBS_STATE].shape[0], (policy.chunk_size, policy.action_dim))
        )
        return x, normal_logp(x, mean, std), {"sample": x}

    def log_prob(self, policy: Adapter, batch: dict[str, Any], replay: Replay, row_mask: torch.Tensor) -> torch.Tensor:
        if "sample" not in replay:
            raise ValueError(f"ACT replay needs 'sample', got keys {sorted(replay)}")
        mean = self.mean(policy, batch)
        return normal_logp(replay["sample"].to(policy.device, mean.dtype), mean, policy.log_std.exp().to(mean.dtype))

    def extra_tensors(self, policy: Adapter) -> dict[str, torch.Tensor]:
        return {"log_std": policy.log_std.detach().cpu().contiguous()}

    def load_extra(self, policy: Adapter, tensors: dict[str, torch.Tensor], where: str) -> None:
        if "log_std" not in tensors:
            return
        if tuple(tensors["log_std"].shape) != tuple(policy.log_std.shape):
            raise InputError(
                f"{where}: log_std has shape {tuple(tensors['log_std'].shape)}, expected {tuple(policy.log_std.shape)}"
            )
        policy.log_std.data.copy_(tensors["log_std"])


ACT = ActFamily()
