"""`LeRobotChunkPolicy`: a LeRobot policy behind the `ChunkPolicy` contract, whatever its family.

The adapter builds LeRobot's batch from our observation, runs LeRobot's own pre/post-processors
(normalisation, tokenisation, device moves: applied exactly as LeRobot applies them), sets which
parameters train, and saves and loads checkpoints. How a chunk is sampled and scored belongs to the
policy's family module (`flow`, `diffusion`, `act`: a `common.Family`), picked once from LeRobot's
``config.type``.

Observations. Our env observation ``{"state": [B, D] float, "image": [B, h, w, 3] uint8}`` and the
instructions become LeRobot's batch ``{"observation.state": [B, D], "observation.images.<cam>":
[B, 3, h, w] float in [0, 1], "task": [str]}`` (``<cam>``: the policy's one camera feature), which
LeRobot's preprocessor then normalises and tokenises. A two-camera policy (LIBERO) gets
``"wrist_image"`` as its wrist camera (``observation.images.image2`` or ``.wrist_image``, LIBERO's
names in LeRobot) and ``"image"`` as the other (`camera_sources`).

Precision: LeRobot's classes compute in float32 (SmolVLA casts the expert output to float32 before
``action_out_proj``), so a chunk's log-prob recomputes to a ratio of 1 ± 1e-4 in float32; they do
not run in float64. For deployment, `to_precision` converts the network to bf16 or dynamic int8
(`policytrim.policies.precision`; which modules stay float32 is the family's knowledge); the
observations are normalised in float32 and then cast to the network's dtype (`input_dtype`), and
chunks come back float32.

Dropout is never active: the wrapped LeRobot module stays in eval mode (``train()`` only flips our
own flag), because a GRPO ratio compares the same function at rollout and at update time.

Training only parts (``train_parts``): ``all``; ``expert`` (flow VLAs: everything outside the VLM,
i.e. the action expert and the state / action / time projections; others: like ``no_vision``);
``no_vision`` (freeze the vision encoder). Frozen parameters have ``requires_grad = False``, so
the optimiser and the memory for their gradients skip them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policytrim.errors import InputError
from policytrim.policies.base import MODES, ChunkSample, Mode, Observation, check_trained
from policytrim.policies.lerobot import act, diffusion, flow
from policytrim.policies.lerobot.checkpoint import (
    EXTRA_WEIGHTS,
    FORMAT_VERSION,
    KIND,
    SIDECAR,
    _read_sidecar,
    _write_checkpoint,
    bundled_vlm,
)
from policytrim.policies.lerobot.common import (
    ACTION,
    ACTION_IS_PAD,
    CAMERA_PREFIX,
    OBS_STATE,
    TASK,
    Family,
    require_lerobot,
)
from policytrim.policies.precision import check_precision, floating_dtype

FAMILY_OPS: dict[str, Family] = {f.name: f for f in (flow.SMOLVLA, flow.PI0, flow.PI05, diffusion.DIFFUSION, act.ACT)}
FLOW_FAMILIES = tuple(name for name, ops in FAMILY_OPS.items() if isinstance(ops, flow.FlowFamily))
FAMILIES = tuple(FAMILY_OPS)
TRAIN_PARTS = ("all", "expert", "no_vision")
WRIST_CAMERAS = (
    "image2",
    "wrist_image",
)  # LIBERO's wrist camera in LeRobot's env naming | the lerobot/libero_* datasets'
HUB_PREFIX = "lerobot:"  # load_policy("lerobot:lerobot/smolvla_base"): a hub id through LeRobot's from_pretrained


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


class LeRobotChunkPolicy(nn.Module):
    """A LeRobot policy behind the `ChunkPolicy` contract (module docstring).

    Build with `from_pretrained` (a LeRobot checkpoint directory, or a hub id where downloads are
    allowed) or directly from a LeRobot policy and its processors."""

    def __init__(
        self,
        policy: Any,
        preprocessor: Any,
        postprocessor: Any,
        options: LeRobotOptions | None = None,
        default_window: int | None = None,
        trained_stage: str = "bc",
        step_budget: float | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.options = options or LeRobotOptions()
        config = policy.config
        self.family = str(config.type)
        if self.family not in FAMILY_OPS:
            raise InputError(f"LeRobot policy type {self.family!r} is not supported; supported: {', '.join(FAMILIES)}")
        self.family_ops = FAMILY_OPS[self.family]
        self.chunk_size = self.family_ops.chunk_size(config)
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
        self.family_ops.setup(self)
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
        if parts == "expert" and self.family_ops.vlm_prefix is not None:
            frozen = (self.family_ops.vlm_prefix,)
        elif parts in ("expert", "no_vision"):
            frozen = (self.family_ops.vision_prefix,)
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

    def train(self, mode: bool = True) -> LeRobotChunkPolicy:
        """Our training flag only: the LeRobot module stays in eval mode (no dropout; docstring)."""
        super().train(mode)
        self.policy.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype observations are fed to the network in: that of most of its floating parameters
        (float32; bfloat16 after ``to_precision("bf16")``; float32 after dynamic int8)."""
        return floating_dtype(self.policy)

    def to_precision(self, precision: str) -> LeRobotChunkPolicy:
        """Convert the network in place for inference, ``bf16`` or ``int8`` (module docstring); returns
        self. Sampling only: BC and GRPO updates stay float32."""
        check_precision(precision)
        self.family_ops.to_precision(self, precision)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the action chain (noise, x_t, the DDPM chain): the family's choice (flow VLAs:
        that of the action input projection, float32 when the backbone runs in bfloat16)."""
        return self.family_ops.chain_dtype(self)

    # ------------------------------------------------------------------ observations -> LeRobot batch

    def lerobot_batch(
        self,
        obs: Observation,
        instructions: Sequence[str],
        actions: torch.Tensor | None = None,
        row_mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Our batched observation (+ demonstration chunk) as LeRobot's preprocessed batch."""
        state = torch.as_tensor(obs["state"])
        if state.dim() != 2 or (self.state_dim is not None and state.shape[1] != self.state_dim):
            raise InputError(f"obs['state'] must be [B, {self.state_dim}], got {tuple(state.shape)}")
        if len(instructions) != state.shape[0]:
            raise ValueError(f"got {len(instructions)} instructions for a batch of {state.shape[0]} observations")
        batch: dict[str, Any] = {OBS_STATE: state.float(), TASK: [str(s) for s in instructions]}
        for key, source in camera_sources(self.image_keys):
            if source not in obs:
                raise InputError(
                    f"this LeRobot policy needs a camera image obs[{source!r}] for its camera {key}; run "
                    "the env with image=True"
                )
            image = torch.as_tensor(obs[source])
            if image.dim() != 4 or image.shape[-1] != 3:
                raise InputError(f"obs[{source!r}] must be uint8 [B, h, w, 3], got {tuple(image.shape)}")
            batch[key] = image.permute(0, 3, 1, 2).float() / 255.0
        if actions is not None:
            batch[ACTION] = torch.as_tensor(actions).float()
            batch[ACTION_IS_PAD] = ~torch.as_tensor(row_mask).bool()
        out = self.preprocessor(batch)
        # the processors' device step follows the LeRobot config; the trainer may have moved the model;
        # observations are normalised in float32 and fed in the network's dtype (bf16 after to_precision)
        device, dtype = self.device, self.input_dtype
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(device, dtype) if v.is_floating_point() and k != ACTION else v.to(device)
        return out

    def _unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model actions [B, H, A] -> raw actions clipped to the env's bounds."""
        raw = self.postprocessor(x[..., : self.action_dim].float())
        return raw.to(torch.float32).clamp(self.options.action_low, self.options.action_high)

    def randn_rows(
        self, generators: Sequence[torch.Generator] | None, batch: int, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Standard normal noise [batch, *shape], row b drawn from ``generators[b]`` (float64, then cast)."""
        gens = list(generators) if generators is not None else [None] * batch
        if len(gens) != batch:
            raise ValueError(f"need one generator per batch row: got {len(gens)} for batch {batch}")
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
        """One chunk per row; ``generators[b]`` drives row b's random numbers (the family module
        says how each mode samples)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        x, logp, replay = self.family_ops.sample(self, self.lerobot_batch(obs, instructions), mode, generators)
        return ChunkSample(actions=self._unnormalise(x), logp=logp, replay=replay)

    def log_prob(
        self, obs: Observation, instructions: Sequence[str], replay: dict[str, torch.Tensor], row_mask: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable per-row log-prob [B, H] of recorded chunks; masked rows are exactly 0."""
        batch = self.lerobot_batch(obs, instructions)
        row_mask = row_mask.to(device=self.device, dtype=torch.bool)
        logp = self.family_ops.log_prob(self, batch, replay, row_mask)
        return torch.where(row_mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))

    def bc_loss(
        self,
        obs: Observation,
        instructions: Sequence[str],
        actions: torch.Tensor,
        row_mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """LeRobot's own training loss (``policy.forward``) on demonstration chunks [B, H, A] (raw
        actions; rows where ``row_mask`` is False are LeRobot's ``action_is_pad``). ``generator``
        seeds the loss's noise (flow time / diffusion timestep), so validation losses compare."""
        batch = self.family_ops.bc_batch(self.lerobot_batch(obs, instructions, actions, row_mask))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seed)
            loss, _ = self.policy.forward(batch)
        return loss

    # ------------------------------------------------------------------ spec and checkpoints

    def spec(self) -> dict:
        """JSON-safe description (what ``policytrim.json`` holds, plus the LeRobot type)."""
        return {
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
            **self.family_ops.spec(self),
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a self-contained LeRobot checkpoint (`policytrim.policies.lerobot.checkpoint`) into
        ``directory`` atomically."""
        _write_checkpoint(self, Path(directory))

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        options: LeRobotOptions | None = None,
        dataset_stats: dict[str, dict[str, Any]] | None = None,
    ) -> LeRobotChunkPolicy:
        """Load a LeRobot checkpoint (directory, or hub id where downloads are allowed) through
        LeRobot's own ``from_pretrained``; ``policytrim.json`` (if present) restores our options.
        A VLM under the checkpoint's ``vlm/`` is the one it was saved with, wherever the directory
        now lies. ``dataset_stats`` replaces the processors' normalisation statistics (LeRobot's
        override, as ``lerobot-train`` does when it fine-tunes a checkpoint on a new dataset)."""
        require_lerobot()
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = Path(source)
        local = path.is_dir()
        if not local and (path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1):
            raise InputError(
                f"LeRobot checkpoint {str(source)!r} is not a directory (nor a hub id like lerobot/smolvla_base)"
            )
        meta: dict[str, Any] = {}
        if local and (path / SIDECAR).is_file():
            meta = _read_sidecar(path / SIDECAR)
        try:
            config = PreTrainedConfig.from_pretrained(str(source))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{str(source)!r} is not a readable LeRobot checkpoint ({type(exc).__name__}: {exc})"
            ) from None
        overrides: dict[str, Any] = {}
        vlm = bundled_vlm(path, config) if local else None
        if vlm is not None:  # config.json names it "vlm", relative to the checkpoint (checkpoint module)
            config.vlm_model_name = str(vlm)
            overrides = {"tokenizer_processor": {"tokenizer_name": str(vlm)}}
        config.device = "cpu"
        policy = get_policy_class(config.type).from_pretrained(str(source), config=config)
        post_overrides: dict[str, Any] = {}
        if dataset_stats is not None:
            overrides["normalizer_processor"] = {"stats": dataset_stats}
            post_overrides["unnormalizer_processor"] = {"stats": dataset_stats}
        pre, post = make_pre_post_processors(
            config,
            pretrained_path=str(source),
            preprocessor_overrides=overrides,
            postprocessor_overrides=post_overrides,
        )
        if options is None:
            known = {f.name for f in fields(LeRobotOptions)}
            options = LeRobotOptions(**{k: v for k, v in meta.items() if k in known})
        wrapped = cls(
            policy,
            pre,
            post,
            options,
            default_window=meta.get("default_window", config.n_action_steps),
            trained_stage=meta.get("trained_stage", "bc"),
            step_budget=meta.get("step_budget"),
        )
        if local and (path / EXTRA_WEIGHTS).is_file():
            from safetensors.torch import load_file

            wrapped.family_ops.load_extra(wrapped, load_file(str(path / EXTRA_WEIGHTS)), str(path / EXTRA_WEIGHTS))
        wrapped.apply_train_parts(wrapped.options.train_parts)
        return wrapped.eval()

    def extra_repr(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return (
            f"family={self.family}, H={self.chunk_size}, k={self.default_window}, "
            f"train_parts={self.options.train_parts}, params={total} ({trainable} trainable)"
        )


def export_lerobot(policy: LeRobotChunkPolicy | str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``policy`` (or the checkpoint at that path) as a self-contained LeRobot checkpoint in
    ``out``: LeRobot's ``PreTrainedPolicy.from_pretrained(out)`` and ``make_pre_post_processors(
    config, pretrained_path=out)`` load it with ``n_action_steps`` = the trained window, after ``out``
    is moved anywhere (a VLM named by a local path: see `policytrim.policies.lerobot.checkpoint`)."""
    if not isinstance(policy, LeRobotChunkPolicy):
        policy = LeRobotChunkPolicy.from_pretrained(policy)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    return _write_checkpoint(policy, out)


def camera_sources(image_keys: Sequence[str]) -> list[tuple[str, str]]:
    """(LeRobot camera feature, our observation key) per camera of a policy: one camera reads
    ``obs["image"]``; two read ``obs["image"]`` and ``obs["wrist_image"]`` (LIBERO), the wrist being
    the feature with a LIBERO wrist-camera name (`WRIST_CAMERAS`)."""
    if len(image_keys) <= 1:
        return [(k, "image") for k in image_keys]
    wrist = [k for k in image_keys if k.removeprefix(CAMERA_PREFIX) in WRIST_CAMERAS]
    if len(image_keys) > 2 or len(wrist) != 1:
        raise InputError(
            f"this LeRobot policy has the cameras {', '.join(image_keys)}; policytrim's envs give one "
            "image, or two (LIBERO: "
            f"image and wrist_image, the wrist camera named {CAMERA_PREFIX}{' | '.join(WRIST_CAMERAS)})"
        )
    return [(k, "wrist_image" if k in wrist else "image") for k in image_keys]
