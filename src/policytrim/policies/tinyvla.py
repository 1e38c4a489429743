"""TinyVLA: the built-in VLA-shaped action-chunking policy, small enough to train on 2 CPU cores.

Architecture (one inference call = one forward pass = one chunk of H actions)::

    state [B, D] ─ normalise ─ state_dims ┐
    image [B, h, w, 3] uint8 ─ small CNN ─┼─ concat ─ MLP trunk ─ context [B, C] ─ head ─ [B, H, A]
    instruction ─ text encoder ───────────┘

``state_dims`` (optional) picks the entries of the state the policy reads: an image policy reads
only proprioception (`policytrim.envs.metaworld.PROPRIO_DIMS`) and sees the scene through the
camera.

Heads (`policytrim.policies.heads`): a diagonal Gaussian (exact log-prob) or a flow-matching action
expert with K denoising steps (Flow-SDE log-probs, `policytrim.policies.flow_sde`). Both work in
normalised action space; actions returned are raw and clipped to the action bounds [-1, 1].
Token heads (`policytrim.policies.tokens`): actions as 256 bins per dimension over the action
bounds, decoded in parallel from placeholder queries (``token_parallel``, OpenVLA-OFT) or one token
at a time (``token_ar``, OpenVLA); exact categorical log-probs.

What `sample` returns per mode (``logp`` is [B, H], summed over action dims, in the policy's dtype):

========  =========================================  =============================================
mode      Gaussian head                              flow head
========  =========================================  =============================================
train     sample (pre-clip scored, clipped run)      Flow-SDE chain; logp of its one SDE transition
sampled   same as train                              random noise, plain ODE; logp = 0 (no density)
determ.   the mean; logp = density at the mean       zero noise, plain ODE; logp = 0
========  =========================================  =============================================

Token heads: train and sampled draw each token from softmax(logits / policy.token_temperature),
logp = the sum of the row's token log-probs; deterministic takes the argmax (logp = its log-prob).

Only ``train``-mode log-probs enter GRPO. Replay data: Gaussian ``{"sample": [B, H, A]}`` (the
pre-clip sample); flow ``{"x_t", "x_next": [B, H, A], "step": long [B]}`` (``step = -1`` outside
train mode: there is no stochastic transition to score); tokens ``{"tokens": long [B, H, A]}``.

Acting in three lines::

    from policytrim.policies import load_policy
    policy = load_policy("runs/mw8/pretrain")
    chunk = policy.act({"state": state}, "push the puck to the goal")  # np.ndarray [H, A]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policytrim import limits as L
from policytrim.errors import InputError
from policytrim.policies import flow_sde
from policytrim.policies.base import MODES, ChunkSample, Mode, Observation, check_trained, supported_stages
from policytrim.policies.checkpoint import check_state_dict, read_config, read_weights, save_policy_checkpoint
from policytrim.policies.heads import STD_MODES, FlowHead, GaussianHead, mlp
from policytrim.policies.text import (
    SENTENCE_ENCODERS,
    WORD_EMBEDDING,
    SentenceEncoder,
    WordEmbeddingEncoder,
    canonical_encoder_name,
)
from policytrim.policies.tokens import DEFAULT_BINS, TOKEN_HEADS, ActionBins, build_token_head, draw_uniforms

FORMAT_VERSION = 2  # 2: the spec records how the policy was trained (trained_stage, step_budget)
READABLE_VERSIONS = (1, 2)  # version 1 checkpoints load as behaviour-cloned policies (no budget)
HEADS = ("gaussian", "flow", *TOKEN_HEADS)  # the action heads built here (policy.head; config.HEADS lists the same)
KIND = "chunk"
_LOG_2PI = math.log(2.0 * math.pi)
_MIN_STD = 1e-6  # statistics below this (constant dims) normalise with std 1

# Keys of spec() that from_spec requires (everything else has a default).
_REQUIRED = (
    "state_dim",
    "action_dim",
    "chunk_size",
    "default_window",
    "head",
    "hidden_dim",
    "num_layers",
    "text_encoder",
    "instructions",
)
# Size-like keys of spec() and their upper bounds (`policytrim.limits`); each is an integer >= 1.
_SIZE_LIMITS = {
    "state_dim": L.MAX_OBS_DIM,
    "action_dim": L.MAX_OBS_DIM,
    "chunk_size": L.MAX_CHUNK_SIZE,
    "default_window": L.MAX_CHUNK_SIZE,
    "hidden_dim": L.MAX_HIDDEN_DIM,
    "num_layers": L.MAX_LAYERS,
    "text_dim": L.MAX_EMBED_DIM,
    "image_dim": L.MAX_EMBED_DIM,
    "flow_steps": L.MAX_FLOW_STEPS,
    "flow_layers": L.MAX_LAYERS,
}


class ImageEncoder(nn.Module):
    """uint8 [B, h, w, 3] -> features [B, dim]: three strided convolutions, 4×4 pooling, linear."""

    def __init__(self, image_shape: Sequence[int], dim: int):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        channels = self.image_shape[2]
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32 * 16, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[1:]) != self.image_shape:
            raise InputError(
                f"image observation has shape {tuple(image.shape[1:])}, this policy was built for {self.image_shape}"
            )
        # the convolutions' dtype: a dynamic int8 `fc` has no weight tensor
        x = image.permute(0, 3, 1, 2).to(self.conv[0].weight.dtype) / 255.0
        return self.fc(self.conv(x))


def _stats(values: Any, dim: int, default: float, name: str) -> torch.Tensor:
    if values is None:
        return torch.full((dim,), float(default))
    t = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    if t.numel() != dim or not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} must hold {dim} finite numbers, got {t.numel()} values")
    return t


class TinyVLA(nn.Module):
    """The built-in chunk policy (implements `policytrim.policies.base.ChunkPolicy`).

    Build one with `from_config` (new weights) or `from_pretrained` (a checkpoint directory).
    """

    def __init__(
        self,
        *,
        state_dim: int,
        action_dim: int,
        chunk_size: int,
        default_window: int,
        instructions: Sequence[str],
        head: str = "gaussian",
        hidden_dim: int = 256,
        num_layers: int = 3,
        text_encoder: str = WORD_EMBEDDING,
        text_dim: int = 32,
        vocabulary: Sequence[str] | None = None,
        image_shape: Sequence[int] | None = None,
        image_dim: int = 64,
        state_dims: Sequence[int] | None = None,
        flow_steps: int = 10,
        flow_noise: float = 0.5,
        flow_layers: int = 3,
        init_log_std: float = -1.0,
        std_mode: str = "fixed",
        min_std: float = 0.0,
        state_mean: Any = None,
        state_std: Any = None,
        action_mean: Any = None,
        action_std: Any = None,
        action_low: float = -1.0,
        action_high: float = 1.0,
        token_bins: int = DEFAULT_BINS,
        bin_edges: Sequence[float] | None = None,
        token_temperature: float = 1.0,
        token_dim: int = 32,
        token_layers: int = 2,
        token_heads: int = 4,
        trained_stage: str = "bc",
        step_budget: float | None = None,
        _sentence_table: torch.Tensor | None = None,
    ):
        super().__init__()
        if head not in HEADS:
            raise InputError(f"policy head must be one of {', '.join(HEADS)}, got {head!r}")
        if not 1 <= default_window <= chunk_size:
            raise InputError(f"default_window must be in [1, chunk_size={chunk_size}], got {default_window}")
        if head == "flow" and flow_steps < 2:
            raise InputError(f"flow_steps must be >= 2, got {flow_steps}")
        if not instructions:
            raise InputError("a TinyVLA needs the list of instructions it is trained on (at least one)")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.chunk_size, self.default_window, self.max_window = int(chunk_size), int(default_window), int(chunk_size)
        self.head_kind = head
        self.mark_trained(trained_stage, default_window, step_budget)
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        self.text_encoder_name = canonical_encoder_name(text_encoder)
        self.text_dim, self.image_dim = int(text_dim), int(image_dim)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape else None
        self.flow_steps, self.flow_noise, self.flow_layers = int(flow_steps), float(flow_noise), int(flow_layers)
        self.init_log_std = float(init_log_std)
        if std_mode not in STD_MODES:
            raise InputError(f"policy std mode must be one of {', '.join(STD_MODES)}, got {std_mode!r}")
        self.std_mode = std_mode
        if not (isinstance(min_std, (int, float)) and math.isfinite(min_std) and 0 <= min_std <= 1):
            raise InputError(f"policy min_std must be a number in [0, 1], got {min_std!r}")
        self.min_std = float(min_std)
        self.action_low, self.action_high = float(action_low), float(action_high)
        if not (isinstance(token_temperature, (int, float)) and 0 < token_temperature <= 10):
            raise InputError(f"token_temperature must be in (0, 10], got {token_temperature!r}")
        self.token_temperature = float(token_temperature)
        self.token_dim, self.token_layers, self.token_heads = int(token_dim), int(token_layers), int(token_heads)
        # token heads: bins over the action bounds (the env's normalised range), kept in the spec
        self.bins = (
            ActionBins(bin_edges)
            if bin_edges is not None
            else ActionBins.uniform(self.action_low, self.action_high, int(token_bins))
        )
        if self.bins.count != int(token_bins):
            raise InputError(f"bin_edges hold {self.bins.count} bins but token_bins is {token_bins}")

        # Statistics are part of the spec (config.json), not of the weights file.
        s_std = _stats(state_std, self.state_dim, 1.0, "state_std")
        a_std = _stats(action_std, self.action_dim, 1.0, "action_std")
        self.register_buffer(
            "state_mean", _stats(state_mean, self.state_dim, 0.0, "state_mean").float(), persistent=False
        )
        self.register_buffer(
            "state_std", torch.where(s_std < _MIN_STD, torch.ones_like(s_std), s_std).float(), persistent=False
        )
        self.register_buffer(
            "action_mean", _stats(action_mean, self.action_dim, 0.0, "action_mean").float(), persistent=False
        )
        self.register_buffer(
            "action_std", torch.where(a_std < _MIN_STD, torch.ones_like(a_std), a_std).float(), persistent=False
        )

        if self.text_encoder_name == WORD_EMBEDDING:
            self.text = WordEmbeddingEncoder(instructions, self.text_dim, vocabulary)
        else:
            self.text = SentenceEncoder(self.text_encoder_name, instructions, self.text_dim, table=_sentence_table)
        self.image = ImageEncoder(self.image_shape, self.image_dim) if self.image_shape else None
        self.state_dims = [int(i) for i in state_dims] if state_dims is not None else None
        if self.state_dims is not None and (
            not self.state_dims or not all(0 <= i < self.state_dim for i in self.state_dims)
        ):
            raise InputError(
                f"state_dims must be a non-empty list of indices in [0, {self.state_dim}), got {state_dims!r}"
            )
        self.register_buffer(
            "_state_index",
            torch.tensor(self.state_dims if self.state_dims is not None else range(self.state_dim), dtype=torch.long),
            persistent=False,
        )
        trunk_in = int(self._state_index.numel()) + self.text_dim + (self.image_dim if self.image_shape else 0)
        self.trunk = nn.Sequential(mlp([trunk_in] + [self.hidden_dim] * self.num_layers), nn.GELU())
        if head == "gaussian":
            self.head: nn.Module = GaussianHead(
                self.hidden_dim, self.chunk_size, self.action_dim, self.init_log_std, self.std_mode
            )
        elif head == "flow":
            self.head = FlowHead(self.hidden_dim, self.chunk_size, self.action_dim, self.hidden_dim, self.flow_layers)
        else:
            self.head = build_token_head(
                head,
                self.hidden_dim,
                self.chunk_size,
                self.action_dim,
                self.bins.count,
                self.token_dim,
                self.token_layers,
                self.token_heads,
            )

    def mark_trained(self, stage: str, window: int, step_budget: float | None = None) -> None:
        """Record how this policy was trained: ``stage`` (bc | extend | trim), the execution
        ``window`` it was trained (Stage 1: chose) to execute, which becomes its default window,
        and the Stage 2 step ``budget`` it was trained against. Saved with its spec."""
        check_trained(stage, window, self.chunk_size, step_budget)
        self.trained_stage, self.default_window = stage, int(window)
        self.step_budget = None if step_budget is None else float(step_budget)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        policy_cfg: Any,
        state_dim: int,
        action_dim: int,
        instructions: Sequence[str],
        state_mean: Any = None,
        state_std: Any = None,
        action_mean: Any = None,
        action_std: Any = None,
        image_shape: Sequence[int] | None = None,
        state_dims: Sequence[int] | None = None,
    ) -> TinyVLA:
        """A new policy from a `policytrim.config.PolicyConfig` and the dataset's sizes/statistics;
        ``state_dims``: the state entries it reads (None: all)."""
        return cls(
            state_dim=state_dim,
            action_dim=action_dim,
            chunk_size=policy_cfg.chunk_size,
            default_window=policy_cfg.default_window,
            instructions=list(dict.fromkeys(instructions)),
            head=policy_cfg.head,
            hidden_dim=policy_cfg.hidden_dim,
            num_layers=policy_cfg.num_layers,
            text_encoder=policy_cfg.text_encoder,
            image_shape=image_shape,
            state_dims=state_dims,
            flow_steps=policy_cfg.flow_steps,
            flow_noise=policy_cfg.flow_noise,
            init_log_std=policy_cfg.init_log_std,
            std_mode=policy_cfg.std_mode,
            min_std=policy_cfg.min_std,
            token_bins=policy_cfg.token_bins,
            token_temperature=policy_cfg.token_temperature,
            token_dim=policy_cfg.token_dim,
            token_layers=policy_cfg.token_layers,
            state_mean=state_mean,
            state_std=state_std,
            action_mean=action_mean,
            action_std=action_std,
        )

    def spec(self) -> dict:
        """JSON-safe description that rebuilds this architecture (`from_spec`)."""
        spec = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "default_window": self.default_window,
            "trained_stage": self.trained_stage,
            "step_budget": self.step_budget,
            "head": self.head_kind,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "text_encoder": self.text_encoder_name,
            "text_dim": self.text_dim,
            "instructions": list(self.text.instructions),
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "image_dim": self.image_dim,
            "flow_steps": self.flow_steps,
            "flow_noise": self.flow_noise,
            "flow_layers": self.flow_layers,
            "init_log_std": self.init_log_std,
            "std_mode": self.std_mode,
            "state_mean": self.state_mean.tolist(),
            "state_std": self.state_std.tolist(),
            "action_mean": self.action_mean.tolist(),
            "action_std": self.action_std.tolist(),
            "action_low": self.action_low,
            "action_high": self.action_high,
        }
        if self.state_dims is not None:
            spec["state_dims"] = list(self.state_dims)
        if self.min_std > 0:  # written only when set: specs saved before it existed read as 0
            spec["min_std"] = self.min_std
        if self.head_kind in TOKEN_HEADS:
            spec.update(
                token_bins=self.bins.count,
                bin_edges=self.bins.edges.tolist(),
                token_temperature=self.token_temperature,
                token_dim=self.token_dim,
                token_layers=self.token_layers,
                token_heads=self.token_heads,
            )
        if isinstance(self.text, WordEmbeddingEncoder):
            spec["vocabulary"] = list(self.text.vocabulary)
        return spec

    @staticmethod
    def check_spec(spec: Any) -> None:
        """InputError unless ``spec`` is a TinyVLA spec of this format whose sizes are within
        `policytrim.limits` (checked before anything is allocated: a ``hidden_dim`` of 1e7 in a
        config.json would otherwise allocate gigabytes before any error)."""
        if not isinstance(spec, dict):
            raise InputError(f"a policy spec must be a JSON object, got {type(spec).__name__}")
        if spec.get("kind") != KIND:
            raise InputError(f"spec kind is {spec.get('kind')!r}, expected {KIND!r}")
        version = spec.get("format_version")
        if version not in READABLE_VERSIONS:
            raise InputError(
                f"policy format version {version!r} is not supported by this policytrim (it reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}); "
                "re-save the checkpoint with a matching policytrim version"
            )
        missing = [k for k in _REQUIRED if k not in spec]
        if missing:
            raise InputError(f"policy spec is missing {', '.join(missing)}")
        for name, hi in _SIZE_LIMITS.items():
            if name in spec:
                L.check_int(f"policy spec {name}", spec[name], 1, hi)
        # format 2's record of training (a version 1 spec has none: behaviour-cloned, no budget)
        check_trained(
            spec.get("trained_stage", "bc"), spec["default_window"], spec["chunk_size"], spec.get("step_budget")
        )
        for name in ("instructions", "vocabulary"):
            if not isinstance(spec.get(name, []), list) or len(spec.get(name, [])) > L.MAX_VOCABULARY:
                raise InputError(f"policy spec {name} must be a list of at most {L.MAX_VOCABULARY} strings")
        image_shape = spec.get("image_shape")
        if image_shape is not None:
            if not (isinstance(image_shape, list) and len(image_shape) == 3):
                raise InputError(f"policy spec image_shape must be [height, width, channels], got {image_shape!r}")
            for size, hi in zip(image_shape, (L.MAX_IMAGE_SIZE, L.MAX_IMAGE_SIZE, 4), strict=True):
                L.check_int("policy spec image_shape entry", size, 1, hi)

    @staticmethod
    def check_weights(spec: dict, shapes: dict[str, tuple[int, ...]], where: str) -> None:
        """InputError unless the trunk in the weights (``shapes``: name -> shape, as in the
        safetensors header) has the depth and width ``spec`` says, checked before the model is built
        so that a spec whose sizes disagree with its weights costs nothing."""
        trunk = [k for k in shapes if k.startswith("trunk.0.") and k.endswith(".weight")]
        width = shapes.get("trunk.0.0.weight", (None,))[0]
        if len(trunk) != spec["num_layers"] or width != spec["hidden_dim"]:
            raise InputError(
                f"{where}: weights do not match the architecture in its config (config.json: num_layers "
                f"{spec['num_layers']}, "
                f"hidden_dim {spec['hidden_dim']}; weights: {len(trunk)} trunk layers of width {width})"
            )

    @classmethod
    def from_spec(cls, spec: dict) -> TinyVLA:
        """Rebuild the architecture from `spec()` (weights are loaded separately)."""
        cls.check_spec(spec)
        kwargs = {
            k: v for k, v in spec.items() if k not in ("kind", "format_version", "weights_sha256", "policytrim_version")
        }
        table = None
        name = canonical_encoder_name(str(spec["text_encoder"]))
        if name != WORD_EMBEDDING:  # placeholder, filled by the checkpoint's stored embeddings
            table = torch.zeros(len(spec["instructions"]), SENTENCE_ENCODERS[name][1])
        try:
            return cls(**kwargs, _sentence_table=table)
        except TypeError as exc:
            raise InputError(f"policy spec does not describe a TinyVLA: {exc}") from None

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` + ``config.json`` (see `policytrim.policies.checkpoint`)."""
        from policytrim import __version__

        save_policy_checkpoint(directory, {**self.spec(), "policytrim_version": __version__}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TinyVLA:
        """Load a checkpoint; any problem with it is an `InputError` saying what is wrong. Order:
        the spec's sizes, the weights file (hash, format, finite), the weights' shapes against the
        spec, and only then the model is built and the weights checked tensor by tensor."""
        config = read_config(directory)
        where = f"checkpoint {str(directory)!r}"
        try:
            cls.check_spec(config)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        tensors = read_weights(directory, config)
        cls.check_weights(config, {k: tuple(v.shape) for k, v in tensors.items()}, where)
        policy = cls.from_spec(config)
        expected = policy.state_dict()
        check_state_dict(expected, tensors, where)
        float_dtypes = {v.dtype for v in tensors.values() if v.is_floating_point()}
        if len(float_dtypes) == 1:
            policy.to(float_dtypes.pop())
        policy.load_state_dict(tensors)
        policy.eval()
        return policy

    @property
    def supported_stages(self) -> tuple[str, ...]:
        """PolicyTrim stages this policy can run (`policytrim.policies.base.supported_stages`)."""
        return supported_stages(self)

    # ------------------------------------------------------------------ forward pieces

    @property
    def dtype(self) -> torch.dtype:
        return self.state_mean.dtype

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    def encode(self, obs: Observation, instructions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Context features [B, hidden_dim] of a batch. ``instructions``: strings, or indices into
        the policy's known ``instructions`` (fast path for training)."""
        state = torch.as_tensor(obs["state"], device=self.device)
        if state.dim() != 2 or state.shape[1] != self.state_dim:
            raise InputError(f"obs['state'] must be [B, {self.state_dim}], got {tuple(state.shape)}")
        if len(instructions) != state.shape[0]:
            raise ValueError(f"got {len(instructions)} instructions for a batch of {state.shape[0]} observations")
        normalised = (state.to(self.dtype) - self.state_mean) / self.state_std
        parts = [normalised.index_select(1, self._state_index), self.text(instructions)]
        if self.image is not None:
            if "image" not in obs:
                raise InputError(
                    f"this policy needs obs['image'] (uint8 [B, {', '.join(map(str, self.image_shape))}]); "
                    f"run the env with images (--env.image --env.image-size {self.image_shape[0]})"
                )
            parts.append(self.image(torch.as_tensor(obs["image"], device=self.device)))
        return self.trunk(torch.cat(parts, dim=-1))

    def _gaussian(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw-action mean [B, H, A] and std ([1, H, A] fixed, [B, H, A] state-dependent), the std
        floored at ``min_std`` where one is set."""
        mean_n, log_std = self.head(context)
        std = self.action_std * torch.exp(log_std)
        if self.min_std > 0:
            std = std.clamp(min=self.min_std)
        return self.action_mean + self.action_std * mean_n, std

    @staticmethod
    def _normal_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((x - mean) / std).pow(2) - torch.log(std) - 0.5 * _LOG_2PI).sum(-1)

    def _velocity(self, context: torch.Tensor) -> flow_sde.VelocityFn:
        return lambda x, t: self.head(x, t, context)

    def _to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.action_mean + self.action_std * x

    def _draw(self, generators: Sequence[torch.Generator] | None, batch: int) -> torch.Tensor:
        gens = list(generators) if generators is not None else [None] * batch
        if len(gens) != batch:
            raise ValueError(f"need one generator per batch row: got {len(gens)} for batch {batch}")
        shape = (self.chunk_size, self.action_dim)
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens]).to(
            self.device, self.dtype
        )

    # ------------------------------------------------------------------ the contract

    @torch.no_grad()
    def sample(
        self,
        obs: Observation,
        instructions: Sequence[str],
        mode: Mode,
        generators: Sequence[torch.Generator] | None = None,
    ) -> ChunkSample:
        """One chunk per row; ``generators[b]`` drives row b's random numbers (module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        context = self.encode(obs, instructions)
        batch = context.shape[0]
        if self.head_kind == "gaussian":
            mean, std = self._gaussian(context)
            x = mean if mode == "deterministic" else mean + std * self._draw(generators, batch)
            logp = self._normal_logp(x, mean, std)
            replay = {"sample": x}
        elif self.head_kind in TOKEN_HEADS:
            n = self.chunk_size * self.action_dim
            uniforms = None if mode == "deterministic" else draw_uniforms(generators, batch, n).to(self.device)
            tokens, logits = self.head.decode(context, uniforms, self.token_temperature)
            logp = self.head.row_log_prob(logits, tokens, self.token_temperature)
            x = self.bins.decode(tokens, self.dtype).reshape(batch, self.chunk_size, self.action_dim)
            replay = {"tokens": tokens.reshape(batch, self.chunk_size, self.action_dim)}
        else:
            train = mode == "train"
            noise, step, eps = flow_sde.draw_sde_noise(
                generators, batch, (self.chunk_size, self.action_dim), self.flow_steps, train, dtype=self.dtype
            )
            noise = noise.to(self.device)
            velocity = self._velocity(context)
            if train:
                out = flow_sde.sample_sde(
                    velocity, noise, step.to(self.device), eps.to(self.device), self.flow_steps, self.flow_noise
                )
                x, logp = self._to_raw(out.action), out.logp
                replay = {"x_t": out.x_t, "x_next": out.x_next, "step": out.step}
            else:
                start = noise if mode == "sampled" else torch.zeros_like(noise)
                x0 = flow_sde.sample_ode(velocity, start, self.flow_steps)
                x, logp = self._to_raw(x0), x0.new_zeros(x0.shape[:2])
                replay = {
                    "x_t": start,
                    "x_next": x0,
                    "step": torch.full((batch,), -1, dtype=torch.long, device=self.device),
                }
        actions = x.clamp(self.action_low, self.action_high).to(torch.float32)
        return ChunkSample(actions=actions, logp=logp, replay=replay)

    def log_prob(
        self,
        obs: Observation,
        instructions: Sequence[str],
        replay: dict[str, torch.Tensor],
        row_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Differentiable per-row log-prob [B, H] of recorded chunks; masked rows are exactly 0."""
        context = self.encode(obs, instructions)
        row_mask = row_mask.to(device=self.device, dtype=torch.bool)
        if self.head_kind == "gaussian":
            if "sample" not in replay:
                raise ValueError(f"Gaussian replay needs 'sample', got keys {sorted(replay)}")
            mean, std = self._gaussian(context)
            logp = self._normal_logp(replay["sample"].to(self.device, self.dtype), mean, std)
            return torch.where(row_mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
        if self.head_kind in TOKEN_HEADS:
            if "tokens" not in replay:
                raise ValueError(f"token replay needs 'tokens', got keys {sorted(replay)}")
            tokens = replay["tokens"].to(self.device, torch.long).flatten(1)
            logp = self.head.row_log_prob(self.head.logits(context, tokens), tokens, self.token_temperature)
            return torch.where(row_mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
        missing = {"x_t", "x_next", "step"} - set(replay)
        if missing:
            raise ValueError(f"flow replay needs x_t, x_next and step, missing {sorted(missing)}")
        return flow_sde.sde_log_prob(
            self._velocity(context),
            replay["x_t"].to(self.device, self.dtype),
            replay["x_next"].to(self.device, self.dtype),
            replay["step"].to(self.device),
            self.flow_steps,
            self.flow_noise,
            row_mask=row_mask,
        )

    def bc_loss(
        self,
        obs: Observation,
        instructions: Sequence[str] | torch.Tensor,
        actions: torch.Tensor,
        row_mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Behaviour cloning on demonstration chunks [B, H, A] (raw actions), averaged over the
        rows ``row_mask`` marks valid. Gaussian: negative log-likelihood per row (sum over dims).
        Flow: flow matching, ‖v(x_t, t) − (noise − a)‖² per row with t ~ U(0, 1). Tokens:
        cross-entropy of the demonstration's bins per row (sum over dims, temperature 1; the
        autoregressive head teacher-forced)."""
        context = self.encode(obs, instructions)
        actions = actions.to(self.device, self.dtype)
        mask = row_mask.to(device=self.device, dtype=self.dtype)
        if self.head_kind == "gaussian":
            mean, std = self._gaussian(context)
            per_row = -self._normal_logp(actions, mean, std)
        elif self.head_kind in TOKEN_HEADS:
            tokens = self.bins.encode(actions).flatten(1)
            per_row = -self.head.row_log_prob(self.head.logits(context, tokens), tokens, 1.0)
        else:
            target_x = (actions - self.action_mean) / self.action_std
            b = actions.shape[0]
            noise = torch.randn(target_x.shape, generator=generator, dtype=torch.float64).to(self.device, self.dtype)
            t = torch.rand((b,), generator=generator, dtype=torch.float64).to(self.device, self.dtype)
            tb = t.reshape(-1, 1, 1)
            x_t = tb * noise + (1.0 - tb) * target_x
            per_row = (self.head(x_t, t, context) - (noise - target_x)).pow(2).sum(-1)
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)

    # ------------------------------------------------------------------ convenience

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Any] | np.ndarray,
        instruction: str,
        mode: Mode = "sampled",
        seed: int | None = None,
    ) -> np.ndarray:
        """One chunk [H, A] (numpy, clipped) for ONE unbatched observation: a dict with "state"
        [D] (and "image" [h, w, 3] uint8 when the policy uses images), or the state array itself."""
        if not isinstance(obs, dict):
            obs = {"state": obs}
        batched = {k: torch.as_tensor(np.asarray(v)).unsqueeze(0) for k, v in obs.items()}
        gens = None
        if seed is not None:
            gens = [torch.Generator().manual_seed(int(seed))]
        return self.sample(batched, [instruction], mode, gens).actions[0].cpu().numpy()

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return (
            f"head={self.head_kind}, H={self.chunk_size}, k={self.default_window}, "
            f"text={self.text_encoder_name}, image={self.image_shape}, state_dims={self.state_dims}, "
            f"params={params}"
        )
