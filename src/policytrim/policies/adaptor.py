"""The window adaptor: a small network that decides, at every call, how many actions of the chunk
just predicted to execute (SPEC "Adaptive windows").

It sees what the policy saw — the state observation (proprioception and, for state policies, the
objects) — and the chunk the policy predicted, and puts a categorical distribution over a fixed set
of windows (e.g. {5, 10, ..., H}). ``train`` and ``sampled`` modes sample a window, ``deterministic``
takes the most likely one; a ``greedy`` adaptor (trained with per-call credit, as a one-call deviation
from its greedy self) takes the most likely one in every mode but ``train``. Its log-prob joins the
chunk's in the GRPO ratio (`policytrim.objective.grpo_loss`'s ``window_logp``).

It starts as the fixed-window policy it wraps: the initial logits put ``initial_mass`` (default
0.9) of the probability on the policy's trained window, so a stage that trains it starts from the
behaviour that was measured, and exploration comes from the remaining mass.

Saved beside the policy it decides for, as ``<policy dir>/adaptor/`` (``config.json`` +
``model.safetensors``, the same checkpoint format as policies: no pickle, the weights pinned by
SHA-256).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policytrim.errors import InputError
from policytrim.policies.base import MODES, Mode
from policytrim.policies.checkpoint import check_state_dict, read_config, read_weights, save_policy_checkpoint
from policytrim.policies.heads import mlp

KIND = "window_adaptor"
FORMAT_VERSION = 1
ADAPTOR_DIR = "adaptor"
MAX_WINDOWS = 64
MAX_HIDDEN = 4096


class WindowAdaptor(nn.Module):
    """Categorical over ``windows`` from (state observation, predicted chunk).

    Inputs are normalised with the statistics it is built with (the policy's, where it has them):
    state by ``state_mean`` / ``state_std``; the chunk's actions are already within [-1, 1].
    """

    def __init__(
        self,
        *,
        state_dim: int,
        action_dim: int,
        chunk_size: int,
        windows: Sequence[int],
        initial_window: int,
        hidden_dim: int = 64,
        initial_mass: float = 0.9,
        state_mean: Sequence[float] | None = None,
        state_std: Sequence[float] | None = None,
        greedy: bool = False,
    ) -> None:
        super().__init__()
        windows = tuple(int(w) for w in windows)
        if not windows or len(windows) > MAX_WINDOWS or list(windows) != sorted(set(windows)):
            raise InputError(
                f"adaptor windows must be 1 to {MAX_WINDOWS} distinct increasing integers, got {list(windows)}"
            )
        if windows[0] < 1 or windows[-1] > chunk_size:
            raise InputError(f"adaptor windows must lie in [1, chunk size {chunk_size}], got {list(windows)}")
        if initial_window not in windows:
            raise InputError(
                f"the initial window {initial_window} must be one of the adaptor's windows {list(windows)}"
            )
        if not 0.0 < initial_mass < 1.0 and not (initial_mass == 1.0 and len(windows) == 1):
            raise InputError(f"initial_mass must be in (0, 1), got {initial_mass!r}")
        if not 1 <= hidden_dim <= MAX_HIDDEN:
            raise InputError(f"adaptor hidden_dim must be in [1, {MAX_HIDDEN}], got {hidden_dim}")
        self.state_dim, self.action_dim, self.chunk_size = int(state_dim), int(action_dim), int(chunk_size)
        self.windows, self.initial_window = windows, int(initial_window)
        self.hidden_dim, self.initial_mass = int(hidden_dim), float(initial_mass)
        if not isinstance(greedy, bool):
            raise InputError(f"adaptor greedy must be true or false, got {greedy!r}")
        self.greedy = greedy
        mean = (
            torch.zeros(state_dim)
            if state_mean is None
            else torch.as_tensor(state_mean, dtype=torch.float32).reshape(-1)
        )
        std = (
            torch.ones(state_dim) if state_std is None else torch.as_tensor(state_std, dtype=torch.float32).reshape(-1)
        )
        if (
            mean.numel() != state_dim
            or std.numel() != state_dim
            or not bool(torch.isfinite(mean).all() & torch.isfinite(std).all() & (std > 0).all())
        ):
            raise InputError(f"adaptor state statistics must hold {state_dim} finite numbers each (std > 0)")
        self.register_buffer("state_mean", mean)
        self.register_buffer("state_std", std)
        self.net = mlp([state_dim + chunk_size * action_dim, hidden_dim, hidden_dim, len(windows)])
        with torch.no_grad():  # start as the fixed window: zero last layer, a bias with the initial mass
            last = self.net[-1]
            last.weight.zero_()
            last.bias.copy_(self.initial_logits())

    def initial_logits(self) -> torch.Tensor:
        """Logits with ``initial_mass`` on the initial window and the rest spread evenly."""
        m = len(self.windows)
        logits = torch.zeros(m)
        if m > 1:
            logits[self.windows.index(self.initial_window)] = math.log(
                self.initial_mass * (m - 1) / (1.0 - self.initial_mass)
            )
        return logits

    def logits(self, state: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """[B, M] logits from state [B, D] and chunk [B, H, A]."""
        if state.dim() != 2 or state.shape[1] != self.state_dim:
            raise InputError(f"adaptor state must be shaped [B, {self.state_dim}], got {tuple(state.shape)}")
        if chunk.shape[1:] != (self.chunk_size, self.action_dim) or chunk.shape[0] != state.shape[0]:
            raise InputError(
                f"adaptor chunk must be shaped [{state.shape[0]}, {self.chunk_size}, {self.action_dim}], "
                f"got {tuple(chunk.shape)}"
            )
        dtype = self.state_mean.dtype
        x = (state.to(dtype) - self.state_mean) / self.state_std
        return self.net(torch.cat([x, chunk.to(dtype).flatten(1)], dim=1))

    def sample(
        self, state: torch.Tensor, chunk: torch.Tensor, mode: Mode, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows [B] as action counts, log-prob [B] of the chosen index). ``generators``: one per
        row, as the policies take them, so a row's draws do not depend on the batch around it.
        Deterministic mode, and a greedy adaptor outside ``train``: the most likely window."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        logp_all = torch.log_softmax(self.logits(state, chunk), dim=-1)
        if mode == "deterministic" or (self.greedy and mode != "train"):
            index = logp_all.argmax(dim=-1)
        else:
            probs = logp_all.exp()
            if generators is None:
                index = torch.multinomial(probs, 1).squeeze(1)
            else:
                if len(generators) != probs.shape[0]:
                    raise InputError(f"need one generator per row ({probs.shape[0]}), got {len(generators)}")
                index = torch.stack(
                    [torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators, strict=True)]
                )
        windows = torch.as_tensor(self.windows, device=index.device)[index]
        return windows, logp_all.gather(1, index[:, None]).squeeze(1)

    def log_prob(self, state: torch.Tensor, chunk: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Differentiable log-prob [B] of executing ``windows`` [B] (action counts from `sample`)."""
        table = torch.as_tensor(self.windows, device=windows.device)
        match = windows[:, None] == table[None]
        if not bool(match.any(dim=1).all()):
            raise InputError(
                f"windows {sorted(set(windows.tolist()) - set(self.windows))} are not among the adaptor's "
                f"{list(self.windows)}"
            )
        index = match.float().argmax(dim=1)
        return torch.log_softmax(self.logits(state, chunk), dim=-1).gather(1, index[:, None]).squeeze(1)

    # ------------------------------------------------------------------ saving

    def spec(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "windows": list(self.windows),
            "initial_window": self.initial_window,
            "hidden_dim": self.hidden_dim,
            "initial_mass": self.initial_mass,
            "greedy": self.greedy,
        }

    def save_pretrained(self, policy_directory: str | Path) -> Path:
        """Write ``<policy_directory>/adaptor/`` (config.json + model.safetensors)."""
        return save_policy_checkpoint(Path(policy_directory) / ADAPTOR_DIR, self.spec(), self.state_dict())

    @classmethod
    def from_pretrained(cls, policy_directory: str | Path) -> WindowAdaptor:
        """Load ``<policy_directory>/adaptor/``; any problem is an `InputError` naming the file."""
        directory = Path(policy_directory) / ADAPTOR_DIR
        config = read_config(directory)
        where = f"window adaptor {str(directory)!r}"
        if config.get("kind") != KIND or config.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{where}: expected kind {KIND!r} version {FORMAT_VERSION}, got {config.get('kind')!r} "
                f"version {config.get('format_version')!r}"
            )
        keys = ("state_dim", "action_dim", "chunk_size", "windows", "initial_window", "hidden_dim", "initial_mass")
        missing = [k for k in keys if k not in config]
        if missing:
            raise InputError(f"{where}: config.json lacks {', '.join(missing)}")
        for key in ("state_dim", "action_dim", "chunk_size", "hidden_dim"):
            if not isinstance(config[key], int) or isinstance(config[key], bool) or not 1 <= config[key] <= 1_000_000:
                raise InputError(f"{where}: {key} must be an integer in [1, 1000000], got {config[key]!r}")
        if not isinstance(config["windows"], list) or not all(
            isinstance(w, int) and not isinstance(w, bool) for w in config["windows"]
        ):
            raise InputError(f"{where}: windows must be a list of integers, got {config['windows']!r}")
        if not isinstance(config["initial_mass"], (int, float)) or isinstance(config["initial_mass"], bool):
            raise InputError(f"{where}: initial_mass must be a number, got {config['initial_mass']!r}")
        greedy = config.get("greedy", False)  # absent from adaptors saved before it existed: sampling
        if not isinstance(greedy, bool):
            raise InputError(f"{where}: greedy must be true or false, got {greedy!r}")
        tensors = read_weights(directory, config)
        try:
            adaptor = cls(**{k: config[k] for k in keys}, greedy=greedy)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        check_state_dict(adaptor.state_dict(), tensors, where)
        adaptor.load_state_dict(tensors)
        return adaptor.eval()


def has_adaptor(policy_directory: str | Path) -> bool:
    """Whether a saved policy carries a window adaptor."""
    return (Path(policy_directory) / ADAPTOR_DIR).is_dir()


# ------------------------------------------------------------------ carried by a policy
# A policy carries its adaptor as the plain attribute ``window_adaptor`` (set around nn.Module's
# registration on purpose): the policy's own state dict, parameters and checkpoint stay exactly the
# policy's, and the adaptor is saved beside it as ``<policy dir>/adaptor/``. It stays on the CPU
# (``policy.to(device)`` does not move it): the rollout engine and the server call it with the CPU
# copies of the state and the chunk; the trainer moves its log-probs to the learner's device.

ATTRIBUTE = "window_adaptor"


def adaptor_of(policy: Any) -> WindowAdaptor | None:
    """The window adaptor ``policy`` carries, or None (it acts at its fixed window)."""
    return policy.__dict__.get(ATTRIBUTE) if hasattr(policy, "__dict__") else None


def attach_adaptor(policy: Any, adaptor: WindowAdaptor | None) -> None:
    """Let ``policy`` carry ``adaptor`` (None: carry none)."""
    if adaptor is None:
        policy.__dict__.pop(ATTRIBUTE, None)
    else:
        object.__setattr__(policy, ATTRIBUTE, adaptor)
