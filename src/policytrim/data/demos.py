"""Demonstration datasets: the file format, its loader and checks (collected by `policytrim.data.collect`).

Format ``policytrim-demos`` version 1 (LeRobot-style key names; no pickle anywhere)::

    DATASET/
      meta.json            {"format": "policytrim-demos", "version": 1,
                            "tasks": [...], "instructions": [... one per task index],
                            "features": {"observation.state": {"shape": [39], "dtype": "float32"},
                                         "action": {"shape": [4], "dtype": "float32"},
                                         ("observation.image": {"shape": [h, w, 3], "dtype": "uint8"})},
                            "num_episodes", "num_frames", "control_period_s", "horizon",
                            "collection": {expert, suboptimality settings, seeds, split, attempts,
                                           max_attempts, on_shortfall, collected (per task), faults},
                            "created_by": "policytrim <version>"}
      frames.safetensors   observation.state [S, D] f32, action [S, A] f32, episode_index [S] i64,
                           frame_index [S] i64, task_index [S] i64 (+ observation.image [S, h, w, 3] u8)
                           (+ observation.wrist_image [S, h, w, 3] u8: LIBERO's wrist camera)
      episodes.safetensors length [E] i64, success [E] u8, task_index [E] i64, seed [E] i64,
                           index [E] i64, start [E] i64 (first frame of the episode)

Frame t of an episode is the observation before its t-th action and that action; episodes are
stored contiguously in order. (seed, index) is the episode's initial-state address (training split).

Suboptimality (``data.suboptimal``, on by default). Clean scripted experts move with
almost no spread in episode length, which leaves Stage 2 nothing to remove; imitation-learned VLAs
inherit hesitations and detours from teleoperation. Per episode, with its own random numbers:

- speed: the xyz part of every action is scaled by s ~ U(speed_min, speed_max) (0.6, 1.0);
- pauses: each step starts a hesitation with probability pause_prob (0.04) lasting
  U{pause_min..pause_max} (3..8) steps: xyz = 0, the gripper command kept;
- detour: with probability detour_prob (0.5) the episode holds one detour of U{detour_min..detour_max}
  (5..10) steps starting at a step drawn from U{0..40}: xyz = s * a random unit direction, gripper kept;
- jitter: N(0, jitter_std) (0.1) on every action dimension; then clipped to [-1, 1].

``--data.no-suboptimal`` records the clean experts. Collection (`policytrim.data.collect`) runs the
experts through the rollout engine; how many states it tries per task (``data.max_attempts``) and
what a shortfall does (``data.on_shortfall``) are documented there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policytrim.envs.base import InitialState
from policytrim.errors import InputError
from policytrim.io import atomic_directory, read_json

FORMAT = "policytrim-demos"
VERSION = 1
META_FILE, FRAMES_FILE, EPISODES_FILE = "meta.json", "frames.safetensors", "episodes.safetensors"

# Key names (LeRobot style), kept in one place.
STATE, ACTION, IMAGE, WRIST_IMAGE = "observation.state", "action", "observation.image", "observation.wrist_image"
EPISODE_INDEX, FRAME_INDEX, TASK_INDEX = "episode_index", "frame_index", "task_index"
EP_KEYS = ("length", "success", "task_index", "seed", "index", "start")


@dataclass
class DemoDataset:
    """A demonstration dataset in memory (numpy arrays; S frames, E episodes)."""

    state: np.ndarray
    """float32 [S, D]: observation.state."""
    action: np.ndarray
    """float32 [S, A]."""
    episode_index: np.ndarray
    """int64 [S]."""
    frame_index: np.ndarray
    """int64 [S]: position within the episode."""
    task_index: np.ndarray
    """int64 [S]: index into `tasks`."""
    length: np.ndarray
    """int64 [E]: frames per episode."""
    success: np.ndarray
    """bool [E]."""
    episode_task_index: np.ndarray
    """int64 [E]."""
    seed: np.ndarray
    """int64 [E]: initial-state seed."""
    index: np.ndarray
    """int64 [E]: initial-state index."""
    start: np.ndarray
    """int64 [E]: first frame of each episode."""
    tasks: list[str]
    instructions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = None
    """uint8 [S, h, w, 3] or None: observation.image."""
    wrist_image: np.ndarray | None = None
    """uint8 [S, h, w, 3] or None: a wrist camera (LIBERO), observation.wrist_image."""

    @property
    def num_frames(self) -> int:
        return int(self.state.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.length.shape[0])

    def episode(self, e: int) -> slice:
        """Frame slice of episode e."""
        return slice(int(self.start[e]), int(self.start[e] + self.length[e]))

    def cameras(self) -> list[tuple[str, np.ndarray]]:
        """(key, uint8 [S, h, w, 3]) of each camera image the dataset holds."""
        return [(k, v) for k, v in ((IMAGE, self.image), (WRIST_IMAGE, self.wrist_image)) if v is not None]

    def initial_state(self, e: int) -> InitialState:
        return InitialState(self.tasks[int(self.episode_task_index[e])], int(self.seed[e]), int(self.index[e]))

    def validate(self) -> None:
        """Raise InputError if shapes, dtypes, values or the episode indexing are inconsistent."""
        _validate(self)


# ---------------------------------------------------------------------------------------------
# validation, save, load


def _bad(message: str) -> InputError:
    return InputError(f"invalid demonstration dataset: {message}")


def _check_array(name: str, arr: Any, dtype: str, ndim: int, rows: int | None = None) -> None:
    if not isinstance(arr, np.ndarray):
        raise _bad(f"{name} is missing or not an array")
    if arr.dtype != np.dtype(dtype):
        raise _bad(f"{name} has dtype {arr.dtype}, expected {dtype}")
    if arr.ndim != ndim:
        raise _bad(f"{name} has shape {arr.shape}, expected {ndim} dimensions")
    if rows is not None and arr.shape[0] != rows:
        raise _bad(f"{name} has {arr.shape[0]} rows, expected {rows}")


def _validate(ds: DemoDataset) -> None:
    S = ds.state.shape[0] if isinstance(ds.state, np.ndarray) and ds.state.ndim else -1
    _check_array(STATE, ds.state, "float32", 2)
    _check_array(ACTION, ds.action, "float32", 2, S)
    for name in (EPISODE_INDEX, FRAME_INDEX, TASK_INDEX):
        _check_array(name, getattr(ds, name), "int64", 1, S)
    E = ds.length.shape[0] if isinstance(ds.length, np.ndarray) and ds.length.ndim else -1
    _check_array("length", ds.length, "int64", 1)
    _check_array("success", ds.success, "bool", 1, E)
    for name, attr in (("task_index", "episode_task_index"), ("seed", "seed"), ("index", "index"), ("start", "start")):
        _check_array(f"episodes.{name}", getattr(ds, attr), "int64", 1, E)
    for name, image in ds.cameras():
        _check_array(name, image, "uint8", 4, S)
        if image.shape[3] != 3:
            raise _bad(f"{name} must be [S, h, w, 3], got {image.shape}")
    if not np.isfinite(ds.state).all():
        raise _bad(f"{STATE} contains NaN or infinite values")
    if not np.isfinite(ds.action).all():
        raise _bad(f"{ACTION} contains NaN or infinite values")
    if len(ds.tasks) == 0 or len(ds.instructions) != len(ds.tasks):
        raise _bad(f"need one instruction per task, got {len(ds.tasks)} tasks and {len(ds.instructions)} instructions")
    if (ds.length < 1).any():
        raise _bad("every episode needs at least one frame")
    if int(ds.length.sum()) != S:
        raise _bad(f"episode lengths sum to {int(ds.length.sum())}, but there are {S} frames")
    expected_start = np.concatenate([[0], np.cumsum(ds.length)[:-1]]).astype(np.int64) if E else ds.start
    if not np.array_equal(ds.start, expected_start):
        raise _bad("episode starts are not the running sum of episode lengths (episodes must be contiguous, in order)")
    if not np.array_equal(ds.episode_index, np.repeat(np.arange(E), ds.length)):
        raise _bad("episode_index does not match the episode lengths")
    frame = np.arange(S) - np.repeat(ds.start, ds.length)
    if not np.array_equal(ds.frame_index, frame):
        raise _bad("frame_index must count 0, 1, ... within each episode")
    if E and (ds.episode_task_index.min() < 0 or ds.episode_task_index.max() >= len(ds.tasks)):
        raise _bad(f"task_index outside [0, {len(ds.tasks)})")
    if not np.array_equal(ds.task_index, np.repeat(ds.episode_task_index, ds.length)):
        raise _bad("frame task_index does not match its episode's task_index")


def _meta(ds: DemoDataset) -> dict[str, Any]:
    from policytrim import __version__

    features = {
        STATE: {"shape": list(ds.state.shape[1:]), "dtype": "float32"},
        ACTION: {"shape": list(ds.action.shape[1:]), "dtype": "float32"},
    }
    for name, image in ds.cameras():
        features[name] = {"shape": list(image.shape[1:]), "dtype": "uint8"}
    meta = dict(ds.meta)
    meta.update(
        format=FORMAT,
        version=VERSION,
        tasks=list(ds.tasks),
        instructions=list(ds.instructions),
        features=features,
        num_episodes=ds.num_episodes,
        num_frames=ds.num_frames,
    )
    meta.setdefault("created_by", f"policytrim {__version__}")
    return meta


def save_demos(ds: DemoDataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``ds`` to directory ``path`` atomically (temp dir + rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{str(path)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    ds.validate()
    with atomic_directory(path, overwrite=True) as tmp:
        frames = {
            STATE: ds.state,
            ACTION: ds.action,
            EPISODE_INDEX: ds.episode_index,
            FRAME_INDEX: ds.frame_index,
            TASK_INDEX: ds.task_index,
        }
        frames.update(ds.cameras())
        save_file({k: np.ascontiguousarray(v) for k, v in frames.items()}, str(tmp / FRAMES_FILE))
        episodes = {
            "length": ds.length,
            "success": ds.success.astype(np.uint8),
            "task_index": ds.episode_task_index,
            "seed": ds.seed,
            "index": ds.index,
            "start": ds.start,
        }
        save_file({k: np.ascontiguousarray(v) for k, v in episodes.items()}, str(tmp / EPISODES_FILE))
        (tmp / META_FILE).write_text(json.dumps(_meta(ds), indent=2) + "\n")
    return path


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not file.is_file():
        raise _bad(f"{file.name} is missing in {str(file.parent)!r}")
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise _bad(f"{file.name} cannot be read (truncated or corrupt?): {exc}") from None


def load_demos(path: str | Path) -> DemoDataset:
    """Read and validate a dataset written by `save_demos` / `policytrim collect`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"demonstration dataset {str(path)!r} does not exist (run `policytrim collect` first)")
    if not (path / META_FILE).is_file():
        raise _bad(f"{META_FILE} is missing in {str(path)!r}")
    meta = read_json(path / META_FILE, name=f"invalid demonstration dataset: {META_FILE} in {str(path)!r}", kind=None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(f"{META_FILE} does not describe a {FORMAT!r} dataset")
    if meta.get("version") != VERSION:
        raise _bad(f"format version {meta.get('version')!r} is not supported; this policytrim reads version {VERSION}")
    tasks, instructions = meta.get("tasks"), meta.get("instructions")
    if not (
        isinstance(tasks, list)
        and isinstance(instructions, list)
        and all(isinstance(t, str) for t in tasks + instructions)
    ):
        raise _bad(f"{META_FILE} needs lists of task names and instructions")
    frames = _read_tensors(path / FRAMES_FILE)
    episodes = _read_tensors(path / EPISODES_FILE)
    success = episodes.get("success")
    if isinstance(success, np.ndarray) and success.dtype in (np.uint8, np.bool_):
        if success.dtype == np.uint8 and (success > 1).any():
            raise _bad("episodes.success must be 0 or 1")
        success = success.astype(bool)
    ds = DemoDataset(
        state=frames.get(STATE),
        action=frames.get(ACTION),
        episode_index=frames.get(EPISODE_INDEX),
        frame_index=frames.get(FRAME_INDEX),
        task_index=frames.get(TASK_INDEX),
        length=episodes.get("length"),
        success=success,
        episode_task_index=episodes.get("task_index"),
        seed=episodes.get("seed"),
        index=episodes.get("index"),
        start=episodes.get("start"),
        tasks=tasks,
        instructions=instructions,
        meta=meta,
        image=frames.get(IMAGE),
        wrist_image=frames.get(WRIST_IMAGE),
    )
    ds.validate()
    features = meta.get("features", {})
    for key, arr in ((STATE, ds.state), (ACTION, ds.action), (IMAGE, ds.image), (WRIST_IMAGE, ds.wrist_image)):
        spec = features.get(key)
        if arr is None:
            if spec is not None:
                raise _bad(f"{META_FILE} lists {key} but {FRAMES_FILE} has none")
            continue
        if spec is None or list(arr.shape[1:]) != list(spec.get("shape", [])) or arr.dtype.name != spec.get("dtype"):
            raise _bad(f"{key} has shape {list(arr.shape[1:])} / {arr.dtype.name}, {META_FILE} says {spec}")
    if meta.get("num_episodes") != ds.num_episodes or meta.get("num_frames") != ds.num_frames:
        raise _bad(
            f"{META_FILE} says {meta.get('num_episodes')} episodes / {meta.get('num_frames')} frames, the "
            f"files hold {ds.num_episodes} / {ds.num_frames}"
        )
    return ds


def summarize_demos(ds: DemoDataset) -> dict[str, dict[str, Any]]:
    """Per task: episodes, expert success rate over the attempts, mean and sd of steps."""
    collection = ds.meta.get("collection", {})
    out = {}
    for k, task in enumerate(ds.tasks):
        lengths = ds.length[ds.episode_task_index == k]
        attempts = collection.get("attempts", {}).get(task)
        succ = collection.get("expert_successes", {}).get(task)
        out[task] = {
            "episodes": int(len(lengths)),
            "expert_success_rate": (succ / attempts) if attempts else None,
            "attempts": attempts,
            "mean_steps": float(lengths.mean()) if len(lengths) else math.nan,
            "sd_steps": float(lengths.std()) if len(lengths) else math.nan,
        }
    return out
