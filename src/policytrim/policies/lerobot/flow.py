"""The flow-matching VLAs: SmolVLA, π0 and π0.5.

Train mode: one prefix pass (VLM + KV cache), then K ``denoise_step`` velocities; one step of
K-1 is the Flow-SDE transition (`policytrim.policies.flow_sde`), the others plain Euler steps; the
padded action dims (``max_action_dim`` > the real action dim) carry no noise and no density.
Deterministic mode: zero noise, plain Euler (the model's own sampler with fixed noise); sampled
mode: the plain ODE from random noise. The replay holds x_t, x_next and the SDE step.

SmolVLA and π0 / π0.5 differ only in how the prefix is built (`SmolVLAFamily.velocity`,
`PiFamily.velocity`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import policytrim.policies.flow_sde as flow_sde
from policytrim.policies.base import Mode
from policytrim.policies.lerobot.common import OBS_STATE, TOKEN_MASK, TOKENS, Adapter, Family, Replay


class FlowFamily(Family):
    """What SmolVLA, π0 and π0.5 share: Flow-SDE sampling and scoring over ``denoise_step``."""

    steps_field = "num_inference_steps"
    """The LeRobot config field holding the number of denoising steps K."""

    def velocity(self, policy: Adapter, batch: dict[str, Any]) -> flow_sde.VelocityFn:
        """Build the prefix (VLM + KV cache) once and return ``(x [B, H, A_max], t [B]) -> v``."""
        raise NotImplementedError

    def steps(self, policy: Adapter) -> int:
        return int(getattr(policy.policy.config, self.steps_field))

    def chain_dtype(self, policy: Adapter) -> torch.dtype:
        """That of the action input projection, which LeRobot keeps in float32 when the backbone runs
        in bfloat16 (π0 / π0.5 ``dtype="bfloat16"``); float32 when it is a dynamic int8 layer (which
        has no weight tensor and takes float32)."""
        weight = getattr(policy.policy.model.action_in_proj, "weight", None)
        return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32

    def spec(self, policy: Adapter) -> dict[str, Any]:
        return {"flow_steps": self.steps(policy)}

    def _dim_mask(self, policy: Adapter, width: int) -> torch.Tensor:
        return torch.arange(width, device=policy.device) < policy.action_dim

    def sample(
        self, policy: Adapter, batch: dict[str, Any], mode: Mode, generators: Sequence[torch.Generator] | None
    ) -> tuple[torch.Tensor, torch.Tensor, Replay]:
        n, device, steps = batch[OBS_STATE].shape[0], policy.device, self.steps(policy)
        width = int(policy.policy.config.max_action_dim)
        train = mode == "train"
        noise, step, eps = flow_sde.draw_sde_noise(
            generators, n, (policy.chunk_size, width), steps, train, dtype=policy.dtype
        )
        velocity = self.velocity(policy, batch)
        if train:
            out = flow_sde.sample_sde(
                velocity,
                noise.to(device),
                step.to(device),
                eps.to(device),
                steps,
                policy.options.flow_noise,
                dim_mask=self._dim_mask(policy, width),
            )
            return out.action, out.logp, {"x_t": out.x_t, "x_next": out.x_next, "step": out.step}
        start = noise.to(device) if mode == "sampled" else torch.zeros_like(noise, device=device)
        x = flow_sde.sample_ode(velocity, start, steps)
        replay = {"x_t": start, "x_next": x, "step": torch.full((n,), -1, dtype=torch.long, device=device)}
        return x, x.new_zeros(x.shape[:2]), replay

    def log_prob(self, policy: Adapter, batch: dict[str, Any], replay: Replay, row_mask: torch.Tensor) -> torch.Tensor:
        missing = {"x_t", "x_next", "step"} - set(replay)
        if missing:
            raise ValueError(f"flow replay needs x_t, x_next and step, missing {sorted(missing)}")
        x_t = replay["x_t"].to(policy.device, policy.dtype)
        return flow_sde.sde_log_prob(
            self.velocity(policy, batch),
            x_t,
            replay["x_next"].to(policy.device, policy.dtype),
            replay["step"].to(policy.device),
            self.steps(policy),
            policy.options.flow_noise,
            row_mask=row_mask,
            dim_mask=self._dim_mask(policy, x_t.shape[-1]),
        )


class SmolVLAFamily(FlowFamily):
    name = "smolvla"
    vlm_prefix = "policy.model.vlm_with_expert.vlm."
    vision_prefix = "policy.model.vlm_with_expert.vlm.model.vision_model."
    steps_field = "num_steps"
    # LeRobot keeps the action chain in float32 (it casts the expert's output to float32 before
    # action_out_proj; the time embedding follows action_in_proj's dtype) ...
    float32_modules = (
        "model.action_in_proj",
        "model.action_out_proj",
        "model.action_time_mlp_in",
        "model.action_time_mlp_out",
    )
    # ... and casts hidden states to the dtype of the VLM's and the expert's attention projections
    int8_keep = r"(text_model|lm_expert)\.layers\.\d+\.self_attn\.[qkvo]_proj$"

    def velocity(self, policy: Adapter, batch: dict[str, Any]) -> flow_sde.VelocityFn:
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        model = policy.policy.model
        images, img_masks = policy.policy.prepare_images(batch)
        state = policy.policy.prepare_state(batch)
        embs, pad, att = model.embed_prefix(images, img_masks, batch[TOKENS], batch[TOKEN_MASK], state=state)
        _, cache = model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad, att),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=model.config.use_cache,
        )
        return lambda x, t: model.denoise_step(pad, cache, x, t.to(torch.float32))


class PiFamily(FlowFamily):
    """π0 and π0.5 (openpi layout): the prefix with a 4-D attention mask and eager attention; π0
    feeds the state to each denoising step, π0.5 has it in the prompt."""

    vlm_prefix = "policy.model.paligemma_with_expert.paligemma."
    precisions = ()  # untested here; LeRobot's own config dtype="bfloat16" runs them in bfloat16
    vision_prefix = "policy.model.paligemma_with_expert.paligemma.model.vision_tower."

    def __init__(self, name: str):
        self.name = name

    def velocity(self, policy: Adapter, batch: dict[str, Any]) -> flow_sde.VelocityFn:
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        if self.name == "pi0":
            from lerobot.policies.pi0.modeling_pi0 import prepare_attention_masks_4d
        else:
            from lerobot.policies.pi05.modeling_pi05 import prepare_attention_masks_4d
        model = policy.policy.model
        images, img_masks = policy.policy._preprocess_images(batch)
        embs, pad, att = model.embed_prefix(images, img_masks, batch[TOKENS], batch[TOKEN_MASK])
        model.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"
        _, cache = model.paligemma_with_expert.forward(
            attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
            position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        if self.name == "pi0":
            state = policy.policy.prepare_state(batch)
            return lambda x, t: model.denoise_step(
                state=state, prefix_pad_masks=pad, past_key_values=cache, x_t=x, timestep=t.to(torch.float32)
            )
        return lambda x, t: model.denoise_step(
            prefix_pad_masks=pad, past_key_values=cache, x_t=x, timestep=t.to(torch.float32)
        )


SMOLVLA, PI0, PI05 = SmolVLAFamily(), PiFamily("pi0"), PiFamily("pi05")
