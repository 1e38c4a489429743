"""LeRobot policies (SmolVLA, π0, π0.5, Diffusion Policy, ACT) as a `ChunkPolicy`.

`LeRobotChunkPolicy` wraps a LeRobot ``PreTrainedPolicy`` and its own pre/post-processor pipelines
(normalisation, tokenisation, device moves: applied exactly as LeRobot applies them) so that the
rollout engine, both PolicyTrim stages and the evaluation run on it unchanged. ``lerobot`` is
imported lazily, only here (extra ``policytrim[lerobot]``, Python >= 3.12).

Observations. Our env observation ``{"state": [B, D] float, "image": [B, h, w, 3] uint8}`` and the
instructions become LeRobot's batch ``{"observation.state": [B, D], "observation.images.<cam>":
[B, 3, h, w] float in [0, 1], "task": [str]}`` (``<cam>``: the policy's one camera feature), which
LeRobot's preprocessor then normalises and tokenises. A two-camera policy (LIBERO) gets
``"wrist_image"`` as its wrist camera (``observation.images.image2`` or ``.wrist_image``, LIBERO's
names in LeRobot) and ``"image"`` as the other (`camera_sources`).

How each family samples and scores a chunk (H = the LeRobot chunk size; log-probs are per chunk
row [B, H], summed over the real action dims, in the model's normalised action space: the
post-processor's un-normalisation is affine, so ratios are the same as in raw action space):

=========  ==========================================================  ============================
family     train mode (exploration, scored)                            deterministic mode
=========  ==========================================================  ============================
flow       one prefix pass (VLM + KV cache), then K ``denoise_step``   zero noise, plain Euler
(smolvla,  velocities; one step of K-1 is the Flow-SDE transition      (the model's own sampler
pi0,       (`policytrim.policies.flow_sde`); padded action dims        with fixed noise)
pi05)      (``max_action_dim``) are masked out
diffusion  the DDPM sampler itself: every step but the last is a       zero initial noise, each
           Gaussian x_{t-1} ~ N(μ(x_t), σ_t²): the chain's density is   step's mean
           exact (sum over the K-1 stochastic steps)
act        ACT is deterministic: a Gaussian N(ACT(obs), σ²) around its  ACT's output
           output with a learnable std σ = exp(log_std) [H, A],
           initialised from ``act_log_std`` (not trained by BC)
=========  ==========================================================  ============================

"sampled" mode is the deployed behaviour: flow from random noise (plain ODE), diffusion's own
stochastic sampler, ACT's output (ACT acts deterministically when deployed). Only train-mode
log-probs enter GRPO; the replay data hold what recomputes them differentiably (flow: x_t, x_next,
step; diffusion: the whole chain [B, K+1, H, A]; ACT: the normalised sample).

Precision: LeRobot's classes compute in float32 (SmolVLA casts the expert output to float32 before
``action_out_proj``), so a chunk's log-prob recomputes to a ratio of 1 ± 1e-4 in float32; they do
not run in float64.

Dropout is never active: the wrapped LeRobot module stays in eval mode (``train()`` only flips our
own flag), because a GRPO ratio compares the same function at rollout and at update time.

Training only parts (``train_parts``): ``all``; ``expert`` (flow VLAs: everything outside the VLM,
i.e. the action expert and the state / action / time projections; others: like ``no_vision``);
``no_vision`` (freeze the vision encoder). Frozen parameters have ``requires_grad = False``, so
the optimiser and the memory for their gradients skip them.

Checkpoints are LeRobot checkpoints: `save_pretrained` writes LeRobot's ``config.json`` (with
``n_action_steps`` = the trained window ``default_window``), ``model.safetensors`` and the
processor files with LeRobot's own writers, the tiny/local VLM directory under ``vlm/`` when the
VLM is a local directory, and ``policytrim.json`` (our options: family, window, noise scale,
trainable parts, trained stage) plus ``policytrim_extra.safetensors`` (ACT's log-std). LeRobot's
``from_pretrained`` loads the directory as is (`export_lerobot` writes one whose ``config.json``
points at its own ``vlm/``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from policytrim.errors import InputError
from policytrim.policies import flow_sde
from policytrim.policies.base import MODES, ChunkSample, Mode, Observation, check_trained

KIND = "lerobot"
FORMAT_VERSION = 1
FLOW_FAMILIES = ("smolvla", "pi0", "pi05")
FAMILIES = FLOW_FAMILIES + ("diffusion", "act")
TRAIN_PARTS = ("all", "expert", "no_vision")
SIDECAR = "policytrim.json"
EXTRA_WEIGHTS = "policytrim_extra.safetensors"
VLM_DIR = "vlm"
LEROBOT_CONFIG = "config.json"
CAMERA_PREFIX = "observation.images."
WRIST_CAMERAS = ("image2", "wrist_image")  # LIBERO's wrist camera in LeRobot's env naming | the lerobot/libero_* datasets'
HUB_PREFIX = "lerobot:"  # load_policy("lerobot:lerobot/smolvla_base"): a hub id through LeRobot's from_pretrained

# LeRobot's batch keys (lerobot.utils.constants), kept here so the mapping reads in one place.
OBS_STATE, TASK, ACTION, ACTION_IS_PAD = "observation.state", "task", "action", "action_is_pad"
TOKENS, TOKEN_MASK = "observation.language.tokens", "observation.language.attention_mask"

_LOG_2PI = math.log(2.0 * math.pi)

# Parameter-name prefixes of the VLM and the vision encoder in each family (for train_parts).
_VLM_PREFIX = {
    "smolvla": "policy.model.vlm_with_expert.vlm.",
    "pi0": "policy.model.paligemma_with_expert.paligemma.",
    "pi05": "policy.model.paligemma_with_expert.paligemma.",
}
_VISION_PREFIX = {
    "smolvla": "policy.model.vlm_with_expert.vlm.model.vision_model.",
    "pi0": "policy.model.paligemma_with_expert.paligemma.model.vision_tower.",
    "pi05": "policy.model.paligemma_with_expert.paligemma.model.vision_tower.",
    "diffusion": "policy.diffusion.rgb_encoder.",
    "act": "policy.model.backbone.",
}


@dataclass
class LeRobotOptions:
    """policytrim's settings for a wrapped LeRobot policy (saved in ``policytrim.json``)."""

    flow_noise: float = 0.5
    """a: Flow-SDE noise scale of the flow families, σ_t = a·sqrt(t/(1-t))."""
    train_parts: str = "all"
    """all | expert | no_vision: which parameters GRPO and BC update (module docstring)."""
    act_log_std: float = -1.0
    """ACT only: initial log-std (normalised action units) of the exploration Gaussian."""
    action_low: float = -1.0
    """Executed actions are clipped to [action_low, action_high] (the env's bounds)."""
    action_high: float = 1.0

    def __post_init__(self) -> None:
        if self.train_parts not in TRAIN_PARTS:
            raise InputError(f"train_parts must be one of {', '.join(TRAIN_PARTS)}, got {self.train_parts!r}")
        if not (isinstance(self.flow_noise, (int, float)) and 0.0 < self.flow_noise <= 5.0):
            raise InputError(f"flow_noise must be in (0, 5], got {self.flow_noise!r}")
        if not self.action_low < self.action_high:
            raise InputError(f"action_low must be < action_high, got {self.action_low}, {self.action_high}")


def _require_lerobot():
    try:
        import lerobot  # noqa: F401
    except ImportError:
        raise InputError(
            "LeRobot policies need the lerobot extra (Python >= 3.12): pip install 'policytrim[lerobot]', "
            "or build .venv-lerobot with `bash scripts/run.sh setup-lerobot`"
        ) from None


def is_lerobot_checkpoint(directory: str | Path) -> bool:
    """A directory written by LeRobot's ``save_pretrained`` (its config.json names a policy type)."""
    path = Path(directory) / LEROBOT_CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("type"), str) and "kind" not in config


class LeRobotChunkPolicy(nn.Module):
    """A LeRobot policy behind the `ChunkPolicy` contract (module docstring).

    Build with `from_pretrained` (a LeRobot checkpoint directory, or a hub id where downloads are
    allowed) or directly from a LeRobot policy and its processors."""

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, options: LeRobotOptions | None = None, default_window: int | None = None, trained_stage: str = "bc", step_budget: float | None = None):
        super().__init__()
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.options = options or LeRobotOptions()
        config = policy.config
        self.family = str(config.type)
        if self.family not in FAMILIES:
            raise InputError(f"LeRobot policy type {self.family!r} is not supported; supported: {', '.join(FAMILIES)}")
        if self.family == "diffusion":
            if int(config.n_obs_steps) != 1:
                raise InputError(f"Diffusion Policy with n_obs_steps={config.n_obs_steps}: policytrim feeds one observation per call; use n_obs_steps=1")
            if config.noise_scheduler_type != "DDPM":
                raise InputError(f"Diffusion Policy with the {config.noise_scheduler_type} scheduler has no chunk density (DDIM with eta 0 is deterministic); use DDPM")
            self.chunk_size = int(config.horizon)
        else:
            self.chunk_size = int(config.chunk_size)
        self.action_dim = int(config.output_features[ACTION].shape[0])
        self.state_dim = int(config.input_features[OBS_STATE].shape[0]) if OBS_STATE in config.input_features else None
        self.image_keys = list(config.image_features)
        self.default_window = int(default_window or config.n_action_steps)
        if not 1 <= self.default_window <= self.chunk_size:
            raise InputError(f"default window {self.default_window} must be in [1, chunk size {self.chunk_size}]")
        self.max_window = self.chunk_size
        check_trained(trained_stage, self.default_window, self.chunk_size, step_budget)
        self.trained_stage = trained_stage
        self.step_budget = None if step_budget is None else float(step_budget)
        self.kind = KIND
        if self.family == "act":
            self.log_std = nn.Parameter(torch.full((self.chunk_size, self.action_dim), float(self.options.act_log_std)))
        self.apply_train_parts(self.options.train_parts)
        self.policy.eval()

    def mark_trained(self, stage: str, window: int, step_budget: float | None = None) -> None:
        """Record how this policy was trained (`ChunkPolicy.spec`): ``stage`` (bc | extend | trim),
        the ``window`` it was trained (Stage 1: chose) to execute, which becomes its default window
        and the saved checkpoint's LeRobot ``n_action_steps``, and the Stage 2 step budget."""
        check_trained(stage, window, self.chunk_size, step_budget)
        self.trained_stage, self.default_window = stage, int(window)
        self.step_budget = None if step_budget is None else float(step_budget)

    # ------------------------------------------------------------------ options

    def apply_train_parts(self, parts: str) -> None:
        """Set ``requires_grad`` for ``all`` / ``expert`` / ``no_vision`` (module docstring)."""
        if parts not in TRAIN_PARTS:
            raise InputError(f"train_parts must be one of {', '.join(TRAIN_PARTS)}, got {parts!r}")
        frozen: tuple[str, ...] = ()
        if parts == "expert" and self.family in _VLM_PREFIX:
            frozen = (_VLM_PREFIX[self.family],)
        elif parts in ("expert", "no_vision"):
            frozen = (_VISION_PREFIX[self.family],)
        for name, param in self.named_parameters():
            param.requires_grad_(not name.startswith(frozen) if frozen else True)
        self.options.train_parts = parts

    def set_options(self, flow_noise: float | None = None, train_parts: str | None = None) -> None:
        """Change the exploration noise scale and/or the trainable parts (e.g. from the run config)."""
        if flow_noise is not None:
            self.options.flow_noise = float(flow_noise)
        if train_parts is not None:
            self.apply_train_parts(train_parts)
        LeRobotOptions(**asdict(self.options))  # validates

    def train(self, mode: bool = True) -> "LeRobotChunkPolicy":
        """Our training flag only: the LeRobot module stays in eval mode (no dropout; docstring)."""
        super().train(mode)
        self.policy.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the action chain (noise, x_t, the DDPM chain): for the flow families that of
        the action input projection, which LeRobot keeps in float32 when the backbone runs in bfloat16
        (π0 / π0.5 `dtype="bfloat16"`); otherwise that of the first parameter."""
        if self.family in FLOW_FAMILIES:
            return self.policy.model.action_in_proj.weight.dtype
        return next(self.policy.parameters()).dtype

    @property
    def flow_steps(self) -> int:
        c = self.policy.config
        return int(c.num_steps if self.family == "smolvla" else c.num_inference_steps)

    # ------------------------------------------------------------------ observations -> LeRobot batch

    def lerobot_batch(self, obs: Observation, instructions: Sequence[str], actions: torch.Tensor | None = None, row_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Our batched observation (+ demonstration chunk) as LeRobot's preprocessed batch."""
        state = torch.as_tensor(obs["state"])
        if state.dim() != 2 or (self.state_dim is not None and state.shape[1] != self.state_dim):
            raise InputError(f"obs['state'] must be [B, {self.state_dim}], got {tuple(state.shape)}")
        if len(instructions) != state.shape[0]:
            raise ValueError(f"got {len(instructions)} instructions for a batch of {state.shape[0]} observations")
        batch: dict[str, Any] = {OBS_STATE: state.float(), TASK: [str(s) for s in instructions]}
        for key, source in camera_sources(self.image_keys):
            if source not in obs:
                raise InputError(f"this LeRobot policy needs a camera image obs[{source!r}] for its camera {key}; run the env with image=True")
            image = torch.as_tensor(obs[source])
            if image.dim() != 4 or image.shape[-1] != 3:
                raise InputError(f"obs[{source!r}] must be uint8 [B, h, w, 3], got {tuple(image.shape)}")
            batch[key] = image.permute(0, 3, 1, 2).float() / 255.0
        if actions is not None:
            batch[ACTION] = torch.as_tensor(actions).float()
            batch[ACTION_IS_PAD] = ~torch.as_tensor(row_mask).bool()
        out = self.preprocessor(batch)
        # the processors' device step follows the LeRobot config; the trainer may have moved the model
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def _unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model actions [B, H, A] -> raw actions clipped to the env's bounds."""
        raw = self.postprocessor(x[..., : self.action_dim].float())
        return raw.to(torch.float32).clamp(self.options.action_low, self.options.action_high)

    # ------------------------------------------------------------------ flow families

    def _velocity(self, batch: dict[str, Any]) -> flow_sde.VelocityFn:
        """Build the prefix (VLM + KV cache) once and return ``(x [B, H, A_max], t [B]) -> v``."""
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        model = self.policy.model
        if self.family == "smolvla":
            images, img_masks = self.policy.prepare_images(batch)
            state = self.policy.prepare_state(batch)
            embs, pad, att = model.embed_prefix(images, img_masks, batch[TOKENS], batch[TOKEN_MASK], state=state)
            _, cache = model.vlm_with_expert.forward(
                attention_mask=make_att_2d_masks(pad, att), position_ids=torch.cumsum(pad, dim=1) - 1,
                past_key_values=None, inputs_embeds=[embs, None], use_cache=model.config.use_cache,
            )
            return lambda x, t: model.denoise_step(pad, cache, x, t.to(torch.float32))
        # π0 / π0.5 (openpi layout): same prefix, a 4-D attention mask, eager attention
        prepare_4d = _pi_mask_fn(self.family)
        images, img_masks = self.policy._preprocess_images(batch)
        embs, pad, att = model.embed_prefix(images, img_masks, batch[TOKENS], batch[TOKEN_MASK])
        model.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"
        _, cache = model.paligemma_with_expert.forward(
            attention_mask=prepare_4d(make_att_2d_masks(pad, att)), position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None, inputs_embeds=[embs, None], use_cache=True,
        )
        if self.family == "pi0":
            state = self.policy.prepare_state(batch)
            return lambda x, t: model.denoise_step(state=state, prefix_pad_masks=pad, past_key_values=cache, x_t=x, timestep=t.to(torch.float32))
        return lambda x, t: model.denoise_step(prefix_pad_masks=pad, past_key_values=cache, x_t=x, timestep=t.to(torch.float32))

    def _dim_mask(self, width: int) -> torch.Tensor:
        return torch.arange(width, device=self.device) < self.action_dim

    # ------------------------------------------------------------------ diffusion (DDPM)

    def _ddpm_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        from lerobot.utils.constants import OBS_IMAGES

        batch = dict(batch)
        batch[OBS_STATE] = batch[OBS_STATE].unsqueeze(1)
        if self.image_keys:
            batch[OBS_IMAGES] = torch.stack([batch[k].unsqueeze(1) for k in self.image_keys], dim=-4)
        return self.policy.diffusion._prepare_global_conditioning(batch)

    def _ddpm_moments(self, x: torch.Tensor, t: int, cond: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean [B, H, A] and std of x_{t-1} given x_t under the DDPM posterior (DDPMScheduler.step
        with variance_type fixed_small, written out so that the noise comes from our generators)."""
        diffusion = self.policy.diffusion
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
            raise InputError(f"Diffusion prediction_type {scheduler.config.prediction_type!r} is not supported (epsilon or sample)")
        if scheduler.config.clip_sample:
            r = scheduler.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        mean = (a_prev.sqrt() * beta / beta_t) * x0 + (alpha.sqrt() * beta_prev / beta_t) * x
        var = torch.clamp(beta_prev / beta_t * beta, min=1e-20) if t > 0 else torch.zeros(())
        return mean, float(var.sqrt())

    def _ddpm_timesteps(self) -> list[int]:
        scheduler = self.policy.diffusion.noise_scheduler
        scheduler.set_timesteps(self.policy.diffusion.num_inference_steps)
        return [int(t) for t in scheduler.timesteps]

    # ------------------------------------------------------------------ random numbers

    def _randn(self, generators: Sequence[torch.Generator] | None, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
        gens = list(generators) if generators is not None else [None] * batch
        if len(gens) != batch:
            raise ValueError(f"need one generator per batch row: got {len(gens)} for batch {batch}")
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens]).to(self.device, self.dtype)

    # ------------------------------------------------------------------ the contract

    @torch.no_grad()
    def sample(self, obs: Observation, instructions: Sequence[str], mode: Mode, generators: Sequence[torch.Generator] | None = None) -> ChunkSample:
        """One chunk per row; ``generators[b]`` drives row b's random numbers (module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        batch = self.lerobot_batch(obs, instructions)
        n = len(instructions)
        if self.family in FLOW_FAMILIES:
            width = int(self.policy.config.max_action_dim)
            train = mode == "train"
            noise, step, eps = flow_sde.draw_sde_noise(generators, n, (self.chunk_size, width), self.flow_steps, train, dtype=self.dtype)
            velocity = self._velocity(batch)
            if train:
                out = flow_sde.sample_sde(velocity, noise.to(self.device), step.to(self.device), eps.to(self.device), self.flow_steps, self.options.flow_noise, dim_mask=self._dim_mask(width))
                x, logp = out.action, out.logp
                replay = {"x_t": out.x_t, "x_next": out.x_next, "step": out.step}
            else:
                start = noise.to(self.device) if mode == "sampled" else torch.zeros_like(noise, device=self.device)
                x = flow_sde.sample_ode(velocity, start, self.flow_steps)
                logp = x.new_zeros(x.shape[:2])
                replay = {"x_t": start, "x_next": x, "step": torch.full((n,), -1, dtype=torch.long, device=self.device)}
        elif self.family == "diffusion":
            cond = self._ddpm_condition(batch)
            steps = self._ddpm_timesteps()
            shape = (self.chunk_size, self.action_dim)
            deterministic = mode == "deterministic"
            z = torch.zeros((n, len(steps) + 1, *shape), device=self.device, dtype=self.dtype) if deterministic else self._randn(generators, n, (len(steps) + 1, *shape))
            x = z[:, 0]
            chain, logp = [x], x.new_zeros((n, self.chunk_size))
            for k, t in enumerate(steps):
                mean, std = self._ddpm_moments(x, t, cond)
                if std > 0:
                    x = mean + std * z[:, k + 1]
                    logp = logp + _normal_logp(x, mean, std)
                else:
                    x = mean
                chain.append(x)
            replay = {"chain": torch.stack(chain, dim=1)}
        else:  # act
            from lerobot.utils.constants import OBS_IMAGES

            act_batch = dict(batch)
            if self.image_keys:
                act_batch[OBS_IMAGES] = [batch[k] for k in self.image_keys]
            mean = self.policy.model(act_batch)[0]
            std = self.log_std.exp().to(mean.dtype)
            x = mean if mode != "train" else mean + std * self._randn(generators, n, (self.chunk_size, self.action_dim))
            logp = _normal_logp(x, mean, std)
            replay = {"sample": x}
        return ChunkSample(actions=self._unnormalise(x), logp=logp, replay=replay)

    def log_prob(self, obs: Observation, instructions: Sequence[str], replay: dict[str, torch.Tensor], row_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable per-row log-prob [B, H] of recorded chunks; masked rows are exactly 0."""
        batch = self.lerobot_batch(obs, instructions)
        row_mask = row_mask.to(device=self.device, dtype=torch.bool)
        if self.family in FLOW_FAMILIES:
            missing = {"x_t", "x_next", "step"} - set(replay)
            if missing:
                raise ValueError(f"flow replay needs x_t, x_next and step, missing {sorted(missing)}")
            x_t = replay["x_t"].to(self.device, self.dtype)
            return flow_sde.sde_log_prob(
                self._velocity(batch), x_t, replay["x_next"].to(self.device, self.dtype), replay["step"].to(self.device),
                self.flow_steps, self.options.flow_noise, row_mask=row_mask, dim_mask=self._dim_mask(x_t.shape[-1]),
            )
        if self.family == "diffusion":
            if "chain" not in replay:
                raise ValueError(f"diffusion replay needs 'chain', got keys {sorted(replay)}")
            chain = replay["chain"].to(self.device, self.dtype)
            cond = self._ddpm_condition(batch)
            logp = chain.new_zeros(chain.shape[0], self.chunk_size)
            for k, t in enumerate(self._ddpm_timesteps()):
                mean, std = self._ddpm_moments(chain[:, k], t, cond)
                if std > 0:
                    logp = logp + _normal_logp(chain[:, k + 1], mean, std)
        else:
            from lerobot.utils.constants import OBS_IMAGES

            if "sample" not in replay:
                raise ValueError(f"ACT replay needs 'sample', got keys {sorted(replay)}")
            act_batch = dict(batch)
            if self.image_keys:
                act_batch[OBS_IMAGES] = [batch[k] for k in self.image_keys]
            mean = self.policy.model(act_batch)[0]
            logp = _normal_logp(replay["sample"].to(self.device, mean.dtype), mean, self.log_std.exp().to(mean.dtype))
        return torch.where(row_mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))

    def bc_loss(self, obs: Observation, instructions: Sequence[str], actions: torch.Tensor, row_mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """LeRobot's own training loss (``policy.forward``) on demonstration chunks [B, H, A] (raw
        actions; rows where ``row_mask`` is False are LeRobot's ``action_is_pad``). ``generator``
        seeds the loss's noise (flow time / diffusion timestep), so validation losses compare."""
        batch = self.lerobot_batch(obs, instructions, actions, row_mask)
        if self.family == "diffusion":  # LeRobot's diffusion loss takes an observation-history axis
            batch = {**batch, OBS_STATE: batch[OBS_STATE].unsqueeze(1)}
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seed)
            loss, _ = self.policy.forward(batch)
        return loss

    # ------------------------------------------------------------------ spec and checkpoints

    def spec(self) -> dict:
        """JSON-safe description (what ``policytrim.json`` holds, plus the LeRobot type)."""
        spec = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "chunk_size": self.chunk_size,
            "default_window": self.default_window,
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "image_keys": list(self.image_keys),
            "trained_stage": self.trained_stage,
            "step_budget": self.step_budget,
            **asdict(self.options),
        }
        if self.family in FLOW_FAMILIES + ("diffusion",):
            spec["flow_steps"] = self.flow_steps
        return spec

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a LeRobot checkpoint (module docstring) into ``directory`` atomically."""
        _write_checkpoint(self, Path(directory), self_contained=False)

    @classmethod
    def from_pretrained(cls, source: str | Path, options: LeRobotOptions | None = None, dataset_stats: dict[str, dict[str, Any]] | None = None) -> "LeRobotChunkPolicy":
        """Load a LeRobot checkpoint (directory, or hub id where downloads are allowed) through
        LeRobot's own ``from_pretrained``; ``policytrim.json`` (if present) restores our options.
        ``dataset_stats`` replaces the processors' normalisation statistics (LeRobot's override,
        as ``lerobot-train`` does when it fine-tunes a checkpoint on a new dataset)."""
        _require_lerobot()
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = Path(source)
        local = path.is_dir()
        if not local and (path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1):
            raise InputError(f"LeRobot checkpoint {str(source)!r} is not a directory (nor a hub id like lerobot/smolvla_base)")
        meta: dict[str, Any] = {}
        if local and (path / SIDECAR).is_file():
            meta = _read_sidecar(path / SIDECAR)
        try:
            config = PreTrainedConfig.from_pretrained(str(source))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{str(source)!r} is not a readable LeRobot checkpoint ({type(exc).__name__}: {exc})") from None
        overrides: dict[str, Any] = {}
        if local and (path / VLM_DIR).is_dir() and hasattr(config, "vlm_model_name"):
            vlm = str((path / VLM_DIR).resolve())  # the VLM travels with the checkpoint; rebind wherever it now lies
            config.vlm_model_name = vlm
            overrides = {"tokenizer_processor": {"tokenizer_name": vlm}}
        config.device = "cpu"
        policy = get_policy_class(config.type).from_pretrained(str(source), config=config)
        post_overrides: dict[str, Any] = {}
        if dataset_stats is not None:
            overrides["normalizer_processor"] = {"stats": dataset_stats}
            post_overrides["unnormalizer_processor"] = {"stats": dataset_stats}
        pre, post = make_pre_post_processors(config, pretrained_path=str(source), preprocessor_overrides=overrides, postprocessor_overrides=post_overrides)
        if options is None:
            known = {f.name for f in fields(LeRobotOptions)}
            options = LeRobotOptions(**{k: v for k, v in meta.items() if k in known})
        wrapped = cls(policy, pre, post, options, default_window=meta.get("default_window", config.n_action_steps), trained_stage=meta.get("trained_stage", "bc"), step_budget=meta.get("step_budget"))
        if local and (path / EXTRA_WEIGHTS).is_file():
            from safetensors.torch import load_file

            extra = load_file(str(path / EXTRA_WEIGHTS))
            if wrapped.family == "act" and "log_std" in extra:
                if tuple(extra["log_std"].shape) != tuple(wrapped.log_std.shape):
                    raise InputError(f"{path / EXTRA_WEIGHTS}: log_std has shape {tuple(extra['log_std'].shape)}, expected {tuple(wrapped.log_std.shape)}")
                wrapped.log_std.data.copy_(extra["log_std"])
        wrapped.apply_train_parts(wrapped.options.train_parts)
        return wrapped.eval()

    def extra_repr(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return f"family={self.family}, H={self.chunk_size}, k={self.default_window}, train_parts={self.options.train_parts}, params={total} ({trainable} trainable)"


def _normal_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Per-row log-density [B, H] of x [B, H, A] under N(mean, std²) (std scalar or broadcastable)."""
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - mean) / std_t).pow(2) - torch.log(std_t) - 0.5 * _LOG_2PI).expand_as(x).sum(-1)


def _pi_mask_fn(family: str):
    if family == "pi0":
        from lerobot.policies.pi0.modeling_pi0 import prepare_attention_masks_4d
    else:
        from lerobot.policies.pi05.modeling_pi05 import prepare_attention_masks_4d
    return prepare_attention_masks_4d


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise InputError(f"{path} does not describe a policytrim LeRobot checkpoint (kind {KIND!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format version {meta.get('format_version')!r} is not supported (this policytrim reads {FORMAT_VERSION})")
    return meta


def _write_checkpoint(policy: LeRobotChunkPolicy, directory: Path, self_contained: bool) -> Path:
    """Assemble the checkpoint in a temporary sibling and move it into place in one rename.

    ``self_contained``: config.json's ``vlm_model_name`` points at the copy under ``directory/vlm``
    (absolute path of the final location), so LeRobot's own ``from_pretrained`` finds it."""
    from safetensors.torch import save_file

    bad = sorted(n for n, p in policy.named_parameters() if not bool(torch.isfinite(p).all()))
    if bad:
        raise ValueError(f"refusing to save a checkpoint to {str(directory)!r}: non-finite values in {', '.join(bad[:5])}")
    directory = directory.absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    config = policy.policy.config
    previous = (config.n_action_steps, getattr(config, "vlm_model_name", None))
    tokenizer_steps = [s for s in policy.preprocessor.steps if getattr(s, "tokenizer_name", None)]
    tokenizer_names = [s.tokenizer_name for s in tokenizer_steps]
    try:
        config.n_action_steps = policy.default_window  # LeRobot deploys the trained window
        vlm = previous[1]
        if vlm and Path(vlm).is_dir():
            shutil.copytree(vlm, tmp / VLM_DIR)
            if self_contained:
                config.vlm_model_name = str(directory / VLM_DIR)
                for step in tokenizer_steps:
                    step.tokenizer_name = config.vlm_model_name
        policy.policy.save_pretrained(tmp)
        policy.preprocessor.save_pretrained(tmp)
        policy.postprocessor.save_pretrained(tmp)
        if policy.family == "act":
            save_file({"log_std": policy.log_std.detach().cpu().contiguous()}, str(tmp / EXTRA_WEIGHTS))
        (tmp / SIDECAR).write_text(json.dumps(policy.spec(), indent=2) + "\n")
        if not directory.exists():
            os.replace(tmp, directory)
        elif not directory.is_dir():
            raise InputError(f"cannot save a checkpoint to {str(directory)!r}: it exists and is not a directory")
        else:  # into an existing directory (e.g. a run directory): entry by entry, other files kept
            for entry in sorted(tmp.iterdir(), key=lambda e: e.name == SIDECAR):  # the sidecar last
                target = directory / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(entry, target)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        config.n_action_steps = previous[0]
        if previous[1] is not None:
            config.vlm_model_name = previous[1]
        for step, name in zip(tokenizer_steps, tokenizer_names):
            step.tokenizer_name = name
    return directory


def export_lerobot(policy: LeRobotChunkPolicy | str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``policy`` (or the checkpoint at that path) as a self-contained LeRobot checkpoint in
    ``out``: LeRobot's ``PreTrainedPolicy.from_pretrained(out)`` and ``make_pre_post_processors(
    config, pretrained_path=out)`` load it with ``n_action_steps`` = the trained window."""
    if not isinstance(policy, LeRobotChunkPolicy):
        policy = LeRobotChunkPolicy.from_pretrained(policy)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    return _write_checkpoint(policy, out, self_contained=True)


def camera_sources(image_keys: Sequence[str]) -> list[tuple[str, str]]:
    """(LeRobot camera feature, our observation key) per camera of a policy: one camera reads
    ``obs["image"]``; two read ``obs["image"]`` and ``obs["wrist_image"]`` (LIBERO), the wrist being
    the feature with a LIBERO wrist-camera name (`WRIST_CAMERAS`)."""
    if len(image_keys) <= 1:
        return [(k, "image") for k in image_keys]
    wrist = [k for k in image_keys if k.removeprefix(CAMERA_PREFIX) in WRIST_CAMERAS]
    if len(image_keys) > 2 or len(wrist) != 1:
        raise InputError(
            f"this LeRobot policy has the cameras {', '.join(image_keys)}; policytrim's envs give one image, or two (LIBERO: "
            f"image and wrist_image, the wrist camera named {CAMERA_PREFIX}{' | '.join(WRIST_CAMERAS)})"
        )
    return [(k, "wrist_image" if k in wrist else "image") for k in image_keys]


def _stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.double()
    q = torch.quantile(x[:: max(1, x.shape[0] // 100_000)], torch.tensor([0.01, 0.99], dtype=x.dtype), dim=0)
    return {"mean": x.mean(0).float(), "std": x.std(0, unbiased=False).clamp(min=1e-6).float(), "min": x.min(0).values.float(), "max": x.max(0).values.float(), "q01": q[0].float(), "q99": q[1].float()}


def image_stats(images: torch.Tensor, max_images: int = 2048) -> dict[str, torch.Tensor]:
    """Per-channel statistics [3, 1, 1] in [0, 1] of uint8 images [S, h, w, 3], from an evenly
    spaced subset of at most ``max_images`` frames."""
    sub = images[:: max(1, images.shape[0] // max_images)].permute(0, 3, 1, 2).double() / 255.0
    return {k: v.reshape(3, 1, 1) for k, v in _stats(sub.permute(1, 0, 2, 3).reshape(3, -1).T).items()}


def dataset_stats(state: torch.Tensor, actions: torch.Tensor, images: torch.Tensor | None, image_key: str | None) -> dict[str, dict[str, torch.Tensor]]:
    """LeRobot-style normalisation statistics (mean, std, min, max, q01, q99) of demonstration
    frames: state [S, D], actions [S, A], and one camera's images uint8 [S, h, w, 3] under
    ``image_key`` (`image_stats`)."""
    out = {OBS_STATE: _stats(state), ACTION: _stats(actions)}
    if images is not None and image_key is not None:
        out[image_key] = image_stats(images)
    return out


def policy_for_bc(policy_cfg: Any, data: Any, train_rows: torch.Tensor) -> LeRobotChunkPolicy:
    """The LeRobot checkpoint ``policy_cfg.lerobot_path`` ready for behaviour cloning on ``data``
    (a `policytrim.train.bc.ChunkData`): statistics from the training frames, the run config's
    window, noise scale and trainable parts. Its chunk size must equal ``policy.chunk_size``."""
    if not policy_cfg.lerobot_path:
        raise InputError("policy.kind=lerobot: pass --policy.lerobot-path, the LeRobot checkpoint to fine-tune (a directory or lerobot:<hub id>)")
    source = str(policy_cfg.lerobot_path).removeprefix(HUB_PREFIX)
    probe = LeRobotChunkPolicy.from_pretrained(source)
    if probe.chunk_size != policy_cfg.chunk_size:
        raise InputError(f"{source}: the LeRobot policy predicts chunks of {probe.chunk_size} actions; pass --policy.chunk-size {probe.chunk_size}")
    stats = dataset_stats(data.state[train_rows], data.actions[train_rows], None, None)
    for key, field in camera_sources(probe.image_keys):
        images = getattr(data, field)
        if images is None:
            raise InputError(f"{source} needs camera images ({key}: the data's {field}); collect and train with --env.image true")
        stats[key] = image_stats(images[train_rows])
    options = LeRobotOptions(flow_noise=policy_cfg.flow_noise, train_parts=policy_cfg.train_parts, act_log_std=probe.options.act_log_std)
    policy = LeRobotChunkPolicy.from_pretrained(source, options=options, dataset_stats=stats)
    policy.default_window = int(policy_cfg.default_window)
    return policy


def apply_policy_config(policy: LeRobotChunkPolicy, policy_cfg: Any) -> None:
    """Apply the run config's LeRobot settings (``policy.flow_noise``, ``policy.train_parts``)."""
    policy.set_options(flow_noise=getattr(policy_cfg, "flow_noise", None), train_parts=getattr(policy_cfg, "train_parts", None))
