"""LeRobot-style normalisation statistics (mean, std, min, max, q01, q99) of demonstration frames,
as LeRobot's normaliser reads them (a policy fine-tuned on our data is normalised by these)."""

from __future__ import annotations

import torch

from policytrim.policies.lerobot.common import ACTION, OBS_STATE


def _stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.double()
    q = torch.quantile(x[:: max(1, x.shape[0] // 100_000)], torch.tensor([0.01, 0.99], dtype=x.dtype), dim=0)
    return {
        "mean": x.mean(0).float(),
        "std": x.std(0, unbiased=False).clamp(min=1e-6).float(),
        "min": x.min(0).values.float(),
        "max": x.max(0).values.float(),
        "q01": q[0].float(),
        "q99": q[1].float(),
    }


def image_stats(images: torch.Tensor, max_images: int = 2048) -> dict[str, torch.Tensor]:
    """Per-channel statistics [3, 1, 1] in [0, 1] of uint8 images [S, h, w, 3], from an evenly
    spaced subset of at most ``max_images`` frames."""
    sub = images[:: max(1, images.shape[0] // max_images)].permute(0, 3, 1, 2).double() / 255.0
    return {k: v.reshape(3, 1, 1) for k, v in _stats(sub.permute(1, 0, 2, 3).reshape(3, -1).T).items()}


def dataset_stats(
    state: torch.Tensor, actions: torch.Tensor, images: torch.Tensor | None, image_key: str | None
) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of state [S, D], actions [S, A], and one camera's images uint8 [S, h, w, 3] under
    ``image_key`` (`image_stats`)."""
    out = {OBS_STATE: _stats(state), ACTION: _stats(actions)}
    if images is not None and image_key is not None:
        out[image_key] = image_stats(images)
    return out
