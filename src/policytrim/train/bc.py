"""Behaviour cloning (`policytrim pretrain`): demonstrations -> a baseline TinyVLA checkpoint.

Chunks. Every demonstration frame t gives one training chunk: the observation at t and the actions
t .. t+H-1. Near an episode's end the missing rows are padded by repeating the last action and a
row mask marks them, so they never enter the loss (a rollout stops at the first success, so those
rows are never executed either).

Split. A fraction ``pretrain.val_fraction`` of each task's episodes is held out for the validation
loss. Normalisation statistics come from the training episodes only.

Training. Adam with a cosine-decayed learning rate, random minibatches of chunks (images randomly
shifted by up to ``pretrain.image_shift`` pixels, DrQ-style, against overfitting a few hundred
demonstrations' pixels), gradient-norm clip 1.0, torch on up to 2 cores (one when the machine is
busy, `training_threads`); the validation loss is computed ``_VAL_POINTS`` times. At the end the
checkpoint is written (``model.safetensors`` + ``config.json`` in the run directory, so
`load_policy(out)` works) with ``pretrain_metrics.json``, then the baseline is evaluated at its
default window on *validation* initial states through `policytrim.eval.evaluate.evaluate_policy` and
the metrics file is updated with its success rate, mean steps and calls.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim.config import EnvConfig, RunConfig, to_dict
from policytrim.errors import InputError
from policytrim.policies.tinyvla import TinyVLA
from policytrim.progress import Progress
from policytrim.runtime import torch_threads

METRICS_NAME = "pretrain_metrics.json"
_VAL_POINTS = 10  # validation-loss measurements per run
_VAL_MAX_CHUNKS = 4096  # a fixed random subset of validation chunks keeps each measurement cheap
_GRAD_CLIP = 1.0


@dataclasses.dataclass
class ChunkData:
    """Demonstration frames as BC chunks. S frames, H rows, A action dims.

    state [S, D] float32; actions [S, A] float32 (per frame); chunk_index [S, H] long (frame of
    each chunk row, padded with the episode's last frame); row_mask [S, H] bool; instruction [S]
    long (index into ``instructions``); episode [S] long; image and wrist_image (a second camera,
    LIBERO) [S, h, w, 3] uint8 or None.
    """

    state: torch.Tensor
    actions: torch.Tensor
    chunk_index: torch.Tensor
    row_mask: torch.Tensor
    instruction: torch.Tensor
    episode: torch.Tensor
    instructions: list[str]
    image: torch.Tensor | None = None
    wrist_image: torch.Tensor | None = None

    def batch(
        self, rows: torch.Tensor, as_text: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | list[str], torch.Tensor, torch.Tensor]:
        """(obs, instruction ids, action chunks [B, H, A], row mask [B, H]) for frame ids ``rows``;
        ``as_text``: the instructions as strings (policies that tokenise them, e.g. LeRobot's)."""
        obs = {"state": self.state[rows]}
        for key, images in (("image", self.image), ("wrist_image", self.wrist_image)):
            if images is not None:
                obs[key] = images[rows]
        ins = self.instruction[rows]
        if as_text:
            ins = [self.instructions[i] for i in ins.tolist()]
        return obs, ins, self.actions[self.chunk_index[rows]], self.row_mask[rows]


def chunk_data(dataset: Any, chunk_size: int) -> ChunkData:
    """Build BC chunks from a `policytrim.data.demos.DemoDataset` (any object with its arrays)."""
    try:
        state = np.asarray(dataset.state, dtype=np.float32)
        action = np.asarray(dataset.action, dtype=np.float32)
        episode = np.asarray(dataset.episode_index, dtype=np.int64)
        frame = np.asarray(dataset.frame_index, dtype=np.int64)
        task = np.asarray(dataset.task_index, dtype=np.int64)
        instructions = [str(s) for s in dataset.instructions]
    except AttributeError as exc:
        raise InputError(f"demonstration dataset lacks a field: {exc}") from None
    frames = state.shape[0]
    if frames == 0:
        raise InputError("the demonstration dataset holds no frames")
    if (
        state.ndim != 2
        or action.ndim != 2
        or not (action.shape[0] == episode.shape[0] == frame.shape[0] == task.shape[0] == frames)
    ):
        raise InputError(
            f"demonstration arrays disagree in length: state {state.shape}, action {action.shape}, "
            f"episode_index {episode.shape}"
        )
    if not (np.isfinite(state).all() and np.isfinite(action).all()):
        raise InputError("the demonstration dataset holds non-finite states or actions")
    if task.min() < 0 or task.max() >= len(instructions):
        raise InputError(f"task_index out of range for {len(instructions)} instructions")
    cameras = {key: getattr(dataset, key, None) for key in ("image", "wrist_image")}

    order = np.lexsort((frame, episode))
    state, action, episode, frame, task = state[order], action[order], episode[order], frame[order], task[order]
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    lengths = np.diff(np.r_[starts, frames])
    first = np.repeat(starts, lengths)
    length = np.repeat(lengths, lengths)
    if not np.array_equal(frame, np.arange(frames) - first):
        raise InputError("demonstration frame_index must run 0, 1, ..., length-1 within each episode")
    offset = np.minimum(np.arange(chunk_size)[None, :], (length - 1 - frame)[:, None])
    index = np.arange(frames)[:, None] + offset
    mask = (frame[:, None] + np.arange(chunk_size)[None, :]) < length[:, None]
    images = {
        key: None if image is None else torch.as_tensor(np.asarray(image, dtype=np.uint8)[order])
        for key, image in cameras.items()
    }
    return ChunkData(
        state=torch.as_tensor(state),
        actions=torch.as_tensor(action),
        chunk_index=torch.as_tensor(index),
        row_mask=torch.as_tensor(mask),
        instruction=torch.as_tensor(task),
        episode=torch.as_tensor(episode),
        instructions=instructions,
        **images,
    )


def split_episodes(
    episode: torch.Tensor, instruction: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame ids (train, val): ``val_fraction`` of each task's episodes (at least one when the task
    has two or more and the fraction is > 0) go to validation."""
    rng = np.random.default_rng(seed)
    ep = episode.numpy()
    ep_ids, first = np.unique(ep, return_index=True)
    ep_task = instruction.numpy()[first]
    val_eps: list[int] = []
    for t in np.unique(ep_task):
        eps = ep_ids[ep_task == t]
        n_val = int(round(val_fraction * len(eps)))
        if val_fraction > 0 and len(eps) >= 2:
            n_val = min(max(n_val, 1), len(eps) - 1)
        val_eps.extend(rng.permutation(eps)[:n_val].tolist())
    is_val = np.isin(ep, np.asarray(val_eps, dtype=ep.dtype))
    return torch.as_tensor(np.flatnonzero(~is_val)), torch.as_tensor(np.flatnonzero(is_val))


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's random shift: uint8 images [B, h, w, 3] padded by ``pad`` pixels (edges repeated) and
    cropped back to [B, h, w, 3] at a random offset per image. ``pad = 0`` returns them unchanged."""
    if pad == 0:
        return images
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator)
    rows = dy + torch.arange(h).reshape(1, h, 1)
    cols = dx + torch.arange(w).reshape(1, 1, w)
    return padded[torch.arange(b).reshape(b, 1, 1), :, rows, cols].to(torch.uint8)  # [B, h, w, 3]


def training_threads(max_threads: int = 2) -> int:
    """Torch threads for BC: up to ``max_threads`` cores, but one when other processes keep the
    machine busy: OpenMP threads spin-waiting for a core that another process holds slow a small
    model down many times over; one thread does not suffer from that."""
    cores = os.cpu_count() or 1
    want = max(1, min(max_threads, cores))
    if want > 1 and os.getloadavg()[0] > cores - 1:
        return 1
    return want


def _stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x64 = x.double()
    return x64.mean(0).numpy(), x64.std(0, unbiased=False).numpy()


@torch.no_grad()
def validation_loss(policy: TinyVLA, data: ChunkData, rows: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean BC loss over ``rows`` (fixed noise for the flow head, so measurements compare)."""
    if rows.numel() == 0:
        return float("nan")
    gen = torch.Generator().manual_seed(12345)
    total, weight = 0.0, 0.0
    was_training = policy.training
    policy.eval()
    for i in range(0, rows.numel(), batch_size):
        obs, ins, actions, mask = data.batch(rows[i : i + batch_size], as_text=not isinstance(policy, TinyVLA))
        n = float(mask.sum())
        total += float(policy.bc_loss(obs, ins, actions, mask, generator=gen)) * n
        weight += n
    policy.train(was_training)
    return total / max(weight, 1.0)


def _load(data: Any, env: EnvConfig) -> Any:
    """A DemoDataset from ``data``: a `collect` directory, a LeRobotDataset (its features mapped for
    ``env``, the run's `EnvConfig`), or an already-loaded dataset."""
    if not isinstance(data, (str, Path)):
        return data  # an already-loaded DemoDataset
    path = Path(data)
    if not path.exists():
        raise InputError(
            f"demonstration dataset {str(path)!r} does not exist (make one with `policytrim collect --out DIR`)"
        )
    from policytrim.data.lerobot_dataset import is_lerobot_dataset

    if is_lerobot_dataset(path):
        from policytrim.data.lerobot_dataset import load_lerobot_dataset

        return load_lerobot_dataset(path, env)
    from policytrim.data.demos import load_demos

    return load_demos(path)


def build_policy(cfg: RunConfig, data: ChunkData, train_rows: torch.Tensor) -> Any:
    """A fresh TinyVLA sized for the data, with statistics from the training frames; an image policy
    reads only proprioception from the state (`RunConfig.policy_state_dims`). For
    ``policy.kind=lerobot``: the LeRobot checkpoint ``policy.lerobot_path`` with its normalisation
    statistics replaced by the training frames' (as ``lerobot-train`` does when fine-tuning)."""
    if cfg.policy.kind == "lerobot":
        from policytrim.policies.lerobot import policy_for_bc

        return policy_for_bc(cfg.policy, data, train_rows)
    s_mean, s_std = _stats(data.state[train_rows])
    a_mean, a_std = _stats(data.actions[train_rows])
    image_shape = tuple(data.image.shape[1:]) if data.image is not None else None
    return TinyVLA.from_config(
        cfg.policy,
        data.state.shape[1],
        data.actions.shape[1],
        data.instructions,
        state_mean=s_mean,
        state_std=s_std,
        action_mean=a_mean,
        action_std=a_std,
        image_shape=image_shape,
        state_dims=cfg.policy_state_dims,
    )


def train_bc(
    policy: TinyVLA,
    data: ChunkData,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    cfg: RunConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """The BC loop; returns the loss history and timing."""
    p = cfg.pretrain
    gen = torch.Generator().manual_seed(cfg.seed)
    val_subset = val_rows[
        torch.randperm(val_rows.numel(), generator=torch.Generator().manual_seed(cfg.seed + 1))[:_VAL_MAX_CHUNKS]
    ]
    optimizer = torch.optim.Adam([q for q in policy.parameters() if q.requires_grad], lr=p.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / p.iterations))
    )
    val_every = max(1, p.iterations // _VAL_POINTS)
    history: list[dict[str, float]] = [
        {"iteration": 0, "train_loss": None, "val_loss": validation_loss(policy, data, val_subset), "seconds": 0.0}
    ]
    running = None
    policy.train()
    t0 = time.perf_counter()
    bar = Progress("pretrain", p.iterations, unit="it", show=progress)
    for it in bar.wrap(range(1, p.iterations + 1)):
        b_rows = train_rows[torch.randint(0, train_rows.numel(), (p.batch_size,), generator=gen)]
        b_obs, b_ins, b_actions, b_mask = data.batch(b_rows, as_text=not isinstance(policy, TinyVLA))
        for key in ("image", "wrist_image"):
            if key in b_obs:
                b_obs[key] = random_shift(b_obs[key], p.image_shift, gen)
        loss = policy.bc_loss(b_obs, b_ins, b_actions, b_mask, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), _GRAD_CLIP)
        optimizer.step()
        schedule.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if it % val_every == 0 or it == p.iterations:
            val = validation_loss(policy, data, val_subset)
            history.append(
                {"iteration": it, "train_loss": running, "val_loss": val, "seconds": time.perf_counter() - t0}
            )
            bar.set_postfix(train=f"{running:.3f}", val=f"{val:.3f}")
    bar.close()
    policy.eval()
    return {"history": history, "train_seconds": time.perf_counter() - t0}


def pretrain(cfg: RunConfig, data: Path | str | Any, out: Path | str, overwrite: bool = False) -> dict[str, Any]:
    """Behaviour cloning from ``data`` (a `collect` output directory or a loaded DemoDataset) to a
    baseline checkpoint in ``out``; returns the metrics written to ``out/pretrain_metrics.json``.
    Bad input raises `InputError` before anything is written."""
    from policytrim.io import atomic_directory, atomic_write_json
    from policytrim.preflight import check_preconditions

    out = Path(out)
    check_preconditions(cfg, out, simulator=False)  # the simulator only for the evaluation, checked below
    if out.exists() and not overwrite:
        raise InputError(f"output directory {str(out)!r} already exists; pass --overwrite to replace it")
    if cfg.policy.kind == "expert":
        raise InputError("pretrain trains a learned policy; policy.kind='expert' has nothing to learn")
    if cfg.env.suite == "libero" and cfg.pretrain.eval_episodes > 0:
        from policytrim.envs.libero import INSTALL_HINT, simulator_installed

        if not simulator_installed():  # the baseline evaluation would fail after training
            raise InputError(
                f"pretrain.eval_episodes={cfg.pretrain.eval_episodes} evaluates the baseline in the LIBERO "
                f"simulator, which is not installed: {INSTALL_HINT}; or pass --pretrain.eval-episodes 0"
            )
    dataset = _load(data, cfg.env)
    chunks = chunk_data(dataset, cfg.policy.chunk_size)
    if cfg.env.image and chunks.image is None:
        raise InputError("env.image=true but the demonstrations hold no images; collect them with --env.image true")
    if not cfg.env.image:
        chunks.image = chunks.wrist_image = None  # a state-only policy, even when the data has images
    if cfg.policy.kind != "lerobot":
        chunks.wrist_image = None  # TinyVLA reads one camera, the agent view
    train_rows, val_rows = split_episodes(chunks.episode, chunks.instruction, cfg.pretrain.val_fraction, cfg.seed)
    if train_rows.numel() == 0:
        raise InputError("no training frames left after holding out validation episodes; lower pretrain.val_fraction")
    tasks = [str(t) for t in getattr(dataset, "tasks", [])]

    train_threads = training_threads()
    with torch_threads(train_threads):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg, chunks, train_rows)
        info = train_bc(policy, chunks, train_rows, val_rows, cfg, progress=cfg.logging.progress)

    history = info["history"]
    metrics: dict[str, Any] = {
        "tasks": tasks,
        "instructions": chunks.instructions,
        "frames": {"train": int(train_rows.numel()), "val": int(val_rows.numel())},
        "episodes": {
            "train": int(chunks.episode[train_rows].unique().numel()),
            "val": int(chunks.episode[val_rows].unique().numel()),
        },
        "parameters": sum(p.numel() for p in policy.parameters()),
        "train_seconds": round(info["train_seconds"], 2),
        "torch_threads": train_threads,
        "initial_val_loss": history[0]["val_loss"] if history else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "history": history,
        "eval": None,
        "config": to_dict(cfg),
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        policy.save_pretrained(tmp)
        atomic_write_json(tmp / METRICS_NAME, metrics)

    if cfg.pretrain.eval_episodes > 0 and tasks:
        metrics["eval"] = evaluate_baseline(policy, cfg, tasks)
        atomic_write_json(out / METRICS_NAME, metrics)
    return metrics


def evaluate_baseline(policy: TinyVLA, cfg: RunConfig, tasks: list[str]) -> dict[str, Any]:
    """Success rate, mean steps and calls at the default window on validation states."""
    from policytrim.eval.evaluate import evaluate_policy

    env_cfg = dataclasses.replace(cfg.env, tasks=tuple(tasks)) if cfg.env.suite == "metaworld" else cfg.env
    return evaluate_policy(
        policy,
        env_cfg,
        episodes=cfg.pretrain.eval_episodes,
        window=policy.default_window,
        mode=cfg.eval.mode,
        seed=cfg.eval.seed,
        split="val",
        num_workers=cfg.rollout.num_workers,
    )
