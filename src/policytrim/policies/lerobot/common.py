"""What the LeRobot adapter and its family modules share: LeRobot's batch keys, the `Family`
interface a family module implements, and the Gaussian density both Diffusion and ACT score with.

Imports nothing from LeRobot (the family modules import it inside their functions)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from policytrim.errors import InputError
from policytrim.policies.base import Mode
from policytrim.policies.precision import quantize_linear

# LeRobot's batch keys (lerobot.utils.constants), kept here so the mapping reads in one place.
OBS_STATE, TASK, ACTION, ACTION_IS_PAD = "observation.state", "task", "action", "action_is_pad"
TOKENS, TOKEN_MASK = "observation.language.tokens", "observation.language.attention_mask"
OBS_IMAGES = "observation.images"
CAMERA_PREFIX = OBS_IMAGES + "."

_LOG_2PI = math.log(2.0 * math.pi)

Replay = dict[str, torch.Tensor]


def require_lerobot() -> None:
    try:
        import lerobot  # noqa: F401
    except ImportError:
        raise InputError(
            "LeRobot policies need the lerobot extra (Python >= 3.12): pip install 'policytrim[lerobot]', "
            "or build .venv-lerobot with `bash scripts/run.sh setup-lerobot`"
        ) from None


def normal_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Per-row log-density [B, H] of x [B, H, A] under N(mean, std²) (std scalar or broadcastable)."""
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - mean) / std_t).pow(2) - torch.log(std_t) - 0.5 * _LOG_2PI).expand_as(x).sum(-1)


class Adapter(Protocol):
    """What a family sees of the `LeRobotChunkPolicy` it serves (the adapter imports the families,
    never the other way round)."""

    policy: Any
    """The wrapped LeRobot ``PreTrainedPolicy``."""
    options: Any
    """`LeRobotOptions` (flow_noise, act_log_std, ...)."""
    chunk_size: int
    action_dim: int
    image_keys: list[str]
    log_std: torch.nn.Parameter
    """ACT only: set by `ActFamily.setup`."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def randn_rows(
        self, generators: Sequence[torch.Generator] | None, batch: int, shape: tuple[int, ...]
    ) -> torch.Tensor: ...


class Family:
    """How one LeRobot policy family samples, scores and clones chunks (one module per family).

    A family holds no state: every method is handed the `LeRobotChunkPolicy` it serves, seen as an
    `Adapter` (its LeRobot module ``policy.policy``, options, chunk size, random-number helper). The
    log-probs are per chunk row [B, H] in the model's normalised action space."""

    name: str = ""
    vision_prefix: str = ""
    """Parameter-name prefix of the vision encoder (frozen by train_parts no_vision)."""
    vlm_prefix: str | None = None
    """Parameter-name prefix of the VLM (frozen by train_parts expert); None: expert = no_vision."""
    precisions: tuple[str, ...] = ("bf16", "int8")
    """What `to_precision` can convert to (tested at tiny size, tests/with_lerobot/test_lerobot_precision.py)."""
    float32_modules: tuple[str, ...] = ()
    """bf16: modules of the LeRobot policy that stay float32 (LeRobot feeds them float32 tensors)."""
    int8_keep: str | None = None
    """int8: regex of the linear layers left unquantized (LeRobot reads their ``.weight.dtype``)."""

    def chunk_size(self, config: Any) -> int:
        """Validate the LeRobot config for policytrim and return its chunk size H."""
        return int(config.chunk_size)

    def setup(self, policy: Adapter) -> None:
        """Add the family's own parameters to the adapter (ACT's exploration std)."""

    def chain_dtype(self, policy: Adapter) -> torch.dtype:
        """The dtype of the sampled chain (noise, x_t, the DDPM chain)."""
        return next(policy.policy.parameters()).dtype

    def to_precision(self, policy: Adapter, precision: str) -> None:
        """Convert the LeRobot policy in place for inference (`policytrim.policies.precision`): bf16 but
        `float32_modules`; dynamic int8 linear layers but those `int8_keep` matches. ``precision`` is one
        of `PRECISIONS` (the adapter checked it)."""
        if precision not in self.precisions:
            raise InputError(
                f"{precision} is not available for LeRobot's {self.name}"
                + (f" (only {', '.join(self.precisions)})" if self.precisions else "")
                + ": its forward makes float32 tensors of its own or is untested here"
            )
        model = policy.policy
        if precision == "bf16":
            model.to(torch.bfloat16)
            for name in self.float32_modules:
                model.get_submodule(name).float()
            return
        keep = re.compile(self.int8_keep) if self.int8_keep else None
        quantize_linear(model, [n for n, _ in model.named_modules() if keep is not None and keep.search(n)])

    def spec(self, policy: Adapter) -> dict[str, Any]:
        """Family entries of ``policytrim.json`` (e.g. the number of denoising steps)."""
        return {}

    def sample(
        self, policy: Adapter, batch: dict[str, Any], mode: Mode, generators: Sequence[torch.Generator] | None
    ) -> tuple[torch.Tensor, torch.Tensor, Replay]:
        """(normalised chunk x [B, H, A'], log-prob [B, H], replay) for a preprocessed batch."""
        raise NotImplementedError

    def log_prob(self, policy: Adapter, batch: dict[str, Any], replay: Replay, row_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable per-row log-prob [B, H] of a recorded chunk (masked rows may be anything)."""
        raise NotImplementedError

    def bc_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The preprocessed batch as the family's LeRobot ``forward`` (training loss) takes it."""
        return batch

    def extra_tensors(self, policy: Adapter) -> dict[str, torch.Tensor]:
        """Our own tensors saved beside LeRobot's weights (``policytrim_extra.safetensors``)."""
        return {}

    def load_extra(self, policy: Adapter, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Restore `extra_tensors` read from ``where``."""
