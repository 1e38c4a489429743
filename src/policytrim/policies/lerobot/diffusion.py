"""LeRobot's Diffusion Policy (DDPM) as a stochastic chunk policy with an exact density.

Train and sampled mode run the DDPM sampler itself: every step but the last is a Gaussian
x_{t-1} ~ N(μ(x_t), σ_t²), so the chain's density is exact (the sum over the K-1 stochastic
steps); deterministic mode starts from zero noise and takes each step's mean. The replay holds the
whole chain [B, K+1, H, A]. policytrim feeds one observation per call (``n_obs_steps`` = 1) and
needs the DDPM scheduler (DDIM with eta 0 is deterministic: no density)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from policytrim.errors import InputError
from policytrim.policies.base import Mode
from policytrim.policies.lerobot.common import OBS_IMAGES, OBS_STATE, Adapter, Family, Replay, normal_logp


class DiffusionFamily(Family):
    name = "diffusion"
    # bf16 fails inside LeRobot's forward (float32 tensors of its own meet bf16 weights)
    precisions = ("int8",)
    vision_prefix = "policy.diffusion.rgb_encoder."

    def chunk_size(self, config: Any) -> int:
        if int(config.n_obs_steps) != 1:
            raise InputError(
                f"Diffusion Policy with n_obs_steps={config.n_obs_steps}: policytrim feeds one observation "
                "per call; use n_obs_steps=1"
            )
        if config.noise_scheduler_type != "DDPM":
            raise InputError(
                f"Diffusion Policy with the {config.noise_scheduler_type} scheduler has no chunk density "
                "(DDIM with eta 0 is deterministic); use DDPM"
            )
        return int(config.horizon)

    def spec(self, policy: Adapter) -> dict[str, Any]:
        return {"flow_steps": int(policy.policy.config.num_inference_steps)}

    def bc_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """LeRobot's diffusion loss takes an observation-history axis."""
        return {**batch, OBS_STATE: batch[OBS_STATE].unsqueeze(1)}

    def condition(self, policy: Adapter, batch: dict[str, Any]) -> torch.Tensor:
        """The U-Net's global conditioning (state and image features) for a preprocessed batch."""
        batch = dict(batch)
        batch[OBS_STATE] = batch[OBS_STATE].unsqueeze(1)
        if policy.image_keys:
            batch[OBS_IMAGES] = torch.stack([batch[k].unsqueeze(1) for k in policy.image_keys], dim=-4)
        return policy.policy.diffusion._prepare_global_conditioning(batch)

    def moments(self, policy: Adapter, x: torch.Tensor, t: int, cond: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean [B, H, A] and std of x_{t-1} given x_t under the DDPM posterior (DDPMScheduler.step
        with variance_type fixed_small, written out so that the noise comes from our generators)."""
        diffusion = policy.policy.diffusion
        scheduler = diffusion.noise_scheduler
        out = diffusion.unet(x, torch.full(x.shape[:1], t, dtype=torch.long, device=x.device), global_cond=cond)
        prev_t = int(scheduler.previous_timestep(t))
        a_t = scheduler.alphas_cumprod[t].to(x.dtype)
        a_prev = scheduler.alphas_cumprod[prev_t].to(x.dtype) if prev_t >= 0 else torch.ones((), dtype=x.dtype)
        beta_t, beta_prev = 1 - a_t, 1 - a_prev
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev
        if scheduler.config.prediction_type == "epsilon":
            x0 = (x - beta_t.sqrt() * out) / a_t.sqrt()
        elif scheduler.config.prediction_type == "sample":
            x0 = out
        else:
            raise InputError(
                f"Diffusion prediction_type {scheduler.config.prediction_type!r} is not supported (epsilon or sample)"
            )
        if scheduler.config.clip_sample:
            r = scheduler.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        mean = (a_prev.sqrt() * beta / beta_t) * x0 + (alpha.sqrt() * beta_prev / beta_t) * x
        var = torch.clamp(beta_prev / beta_t * beta, min=1e-20) if t > 0 else torch.zeros(())
        return mean, float(var.sqrt())

    def timesteps(self, policy: Adapter) -> list[int]:
        scheduler = policy.policy.diffusion.noise_scheduler
        scheduler.set_timesteps(policy.policy.diffusion.num_inference_steps)
        return [int(t) for t in scheduler.timesteps]

    def sample(
        self, policy: Adapter, batch: dict[str, Any], mode: Mode, generators: Sequence[torch.Generator] | None
    ) -> tuple[torch.Tensor, torch.Tensor, Replay]:
        n = batch[OBS_STATE].shape[0]
        cond = self.condition(policy, batch)
        steps = self.timesteps(policy)
        shape = (len(steps) + 1, policy.chunk_size, policy.action_dim)
        if mode == "deterministic":
            z = torch.zeros((n, *shape), device=policy.device, dtype=policy.dtype)
        else:
            z = policy.randn_rows(generators, n, shape)
        x = z[:, 0]
        chain, logp = [x], x.new_zeros((n, policy.chunk_size))
        for k, t in enumerate(steps):
            mean, std = self.moments(policy, x, t, cond)
            if std > 0:
                x = mean + std * z[:, k + 1]
                logp = logp + normal_logp(x, mean, std)
            else:
                x = mean
            chain.append(x)
        return x, logp, {"chain": torch.stack(chain, dim=1)}

    def log_prob(self, policy: Adapter, batch: dict[str, Any], replay: Replay, row_mask: torch.Tensor) -> torch.Tensor:
        if "chain" not in replay:
            raise ValueError(f"diffusion replay needs 'chain', got keys {sorted(replay)}")
        chain = replay["chain"].to(policy.device, policy.dtype)
        cond = self.condition(policy, batch)
        logp = chain.new_zeros(chain.shape[0], policy.chunk_size)
        for k, t in enumerate(self.timesteps(policy)):
            mean, std = self.moments(policy, chain[:, k], t, cond)
            if std > 0:
                logp = logp + normal_logp(chain[:, k + 1], mean, std)
        return logp


DIFFUSION = DiffusionFamily()
