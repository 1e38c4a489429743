"""The run config's LeRobot settings applied to a LeRobot policy (what `train.bc` and `train.grpo`
call for ``policy.kind = lerobot``)."""

from __future__ import annotations

from typing import Any

import torch

from policytrim.errors import InputError
from policytrim.policies.lerobot.adapter import HUB_PREFIX, LeRobotChunkPolicy, LeRobotOptions, camera_sources
from policytrim.policies.lerobot.stats import dataset_stats, image_stats


def policy_for_bc(policy_cfg: Any, data: Any, train_rows: torch.Tensor) -> LeRobotChunkPolicy:
    """The LeRobot checkpoint ``policy_cfg.lerobot_path`` ready for behaviour cloning on ``data``
    (a `policytrim.train.bc.ChunkData`): statistics from the training frames, the run config's
    window, noise scale and trainable parts. Its chunk size must equal ``policy.chunk_size``."""
    if not policy_cfg.lerobot_path:
        raise InputError(
            "policy.kind=lerobot: pass --policy.lerobot-path, the LeRobot checkpoint to fine-tune (a "
            "directory or lerobot:<hub id>)"
        )
    source = str(policy_cfg.lerobot_path).removeprefix(HUB_PREFIX)
    probe = LeRobotChunkPolicy.from_pretrained(source)
    if probe.chunk_size != policy_cfg.chunk_size:
        raise InputError(
            f"{source}: the LeRobot policy predicts chunks of {probe.chunk_size} actions; pass "
            f"--policy.chunk-size {probe.chunk_size}"
        )
    stats = dataset_stats(data.state[train_rows], data.actions[train_rows], None, None)
    for key, field in camera_sources(probe.image_keys):
        images = getattr(data, field)
        if images is None:
            raise InputError(
                f"{source} needs camera images ({key}: the data's {field}); collect and train with --env.image true"
            )
        stats[key] = image_stats(images[train_rows])
    options = LeRobotOptions(
        flow_noise=policy_cfg.flow_noise, train_parts=policy_cfg.train_parts, act_log_std=probe.options.act_log_std
    )
    policy = LeRobotChunkPolicy.from_pretrained(source, options=options, dataset_stats=stats)
    policy.default_window = int(policy_cfg.default_window)
    return policy


def apply_policy_config(policy: LeRobotChunkPolicy, policy_cfg: Any) -> None:
    """Apply the run config's LeRobot settings (``policy.flow_noise``, ``policy.train_parts``)."""
    policy.set_options(
        flow_noise=getattr(policy_cfg, "flow_noise", None), train_parts=getattr(policy_cfg, "train_parts", None)
    )
