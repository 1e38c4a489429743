"""Action heads of the built-in chunk policy: context [B, C] -> a chunk of H actions [B, H, A].

Both heads work in *normalised* action space (``(a − mean) / std`` with the dataset's action
statistics); `policytrim.policies.tinyvla.TinyVLA` maps to and from raw actions.

- `GaussianHead`: diagonal Gaussian, mean from the context, a state-independent learnable log-std
  per (chunk position, action dim). Exact log-probs.
- `FlowHead`: a flow-matching action expert, velocity v(x_t, t, context); K Euler steps to act,
  Flow-SDE (`policytrim.policies.flow_sde`) for exploration and log-probs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Bounds of the Gaussian head's log-std (normalised units). They keep the density finite; a
# log-std at a bound stops getting gradient from the NLL, which is what a bound is for.
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


def mlp(sizes: list[int], act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


STD_MODES = ("fixed", "state")


class GaussianHead(nn.Module):
    """mean [B, H, A] = Linear(context); log-std clamped to [LOG_STD_MIN, LOG_STD_MAX]:

    - ``std_mode="fixed"``: a free parameter [H, A] (state-independent), returned as [1, H, A];
    - ``std_mode="state"``: that parameter plus Linear(context) [B, H, A] (zero-initialised, so it
      starts state-independent): precise where demonstrations agree (grasping), broad where
      they do not (pauses, speed), which matters when the policy acts by sampling.
    """

    def __init__(
        self, context_dim: int, chunk_size: int, action_dim: int, init_log_std: float, std_mode: str = "fixed"
    ):
        super().__init__()
        if std_mode not in STD_MODES:
            raise ValueError(f"std_mode must be one of {STD_MODES}, got {std_mode!r}")
        self.chunk_size, self.action_dim, self.std_mode = chunk_size, action_dim, std_mode
        self.mean = nn.Linear(context_dim, chunk_size * action_dim)
        self.log_std = nn.Parameter(torch.full((chunk_size, action_dim), float(init_log_std)))
        if std_mode == "state":
            self.log_std_net = nn.Linear(context_dim, chunk_size * action_dim)
            nn.init.zeros_(self.log_std_net.weight)
            nn.init.zeros_(self.log_std_net.bias)

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(context).reshape(-1, self.chunk_size, self.action_dim)
        log_std = self.log_std.unsqueeze(0)
        if self.std_mode == "state":
            log_std = log_std + self.log_std_net(context).reshape(-1, self.chunk_size, self.action_dim)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [B, dim] of the flow time t ∈ [0, 1] (as in diffusion policies)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * (-math.log(1000.0) / max(half - 1, 1)))
    angles = (t.reshape(-1, 1) * 1000.0) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class FlowHead(nn.Module):
    """Velocity network v(x_t [B, H, A], t [B], context [B, C]) -> [B, H, A].

    The whole noisy chunk, the time features and the observation context go through one MLP, so
    the chunk's rows are denoised jointly (as an action expert does with attention)."""

    def __init__(
        self,
        context_dim: int,
        chunk_size: int,
        action_dim: int,
        hidden_dim: int,
        num_layers: int = 2,
        time_dim: int = 32,
    ):
        super().__init__()
        self.chunk_size, self.action_dim, self.time_dim = chunk_size, action_dim, time_dim
        flat = chunk_size * action_dim
        self.net = mlp([flat + time_dim + context_dim] + [hidden_dim] * num_layers + [flat])

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([x_t.flatten(1), time_features(t.to(x_t.dtype), self.time_dim), context], dim=-1)
        return self.net(feats).reshape(-1, self.chunk_size, self.action_dim)
