"""Demonstrations in LeRobot's dataset format, written and read by LeRobot's own `LeRobotDataset`.

``policytrim collect --format lerobot`` writes the collected demonstrations with
``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize`` (images as LeRobot
``image`` features, PNG in the parquet files, so they read back bit-exact; no video encoding);
``policytrim pretrain --data DIR`` reads any local LeRobotDataset (ours or a user's teleoperation
data) into a `policytrim.data.demos.DemoDataset`, so every policy (TinyVLA too) trains on it.

Key mapping: ``observation.state`` -> state, ``action`` -> action, the (first)
``observation.images.*`` or ``observation.image`` feature -> image (uint8 [h, w, 3]), ``task`` (the
language instruction) -> instruction. Meta-World task names are recovered from their instructions
where they match; otherwise the instruction itself names the task. ``next.success`` (written by
collect) marks successful episodes; datasets without it count every episode as a success.
Initial-state addresses (seed, index) are not part of LeRobot's format and read back as -1.

Requires the ``lerobot`` extra (Python >= 3.12).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from policytrim.data.demos import DemoDataset
from policytrim.errors import InputError

STATE, ACTION, SUCCESS, TASK = "observation.state", "action", "next.success", "task"
IMAGE_PREFIX = "observation.images."
INFO = Path("meta") / "info.json"


def is_lerobot_dataset(path: str | Path) -> bool:
    """A local LeRobotDataset directory (it has ``meta/info.json``)."""
    return (Path(path) / INFO).is_file()


def _require_lerobot() -> None:
    try:
        import lerobot.datasets.lerobot_dataset  # noqa: F401
    except ImportError as exc:
        raise InputError(f"LeRobotDataset files need the lerobot extra (Python >= 3.12): pip install 'policytrim[lerobot]' ({exc})") from None


def save_lerobot_dataset(ds: DemoDataset, out: str | Path, overwrite: bool = False, camera: str = "corner2", fps: int | None = None) -> Path:
    """Write ``ds`` as a LeRobotDataset in ``out`` (assembled in a temporary sibling, then renamed)."""
    _require_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    ds.validate()
    period = ds.meta.get("control_period_s") or 0.0125  # Meta-World: 5 x 2.5 ms per env step
    fps = int(fps or round(1.0 / period))
    features: dict[str, Any] = {
        STATE: {"dtype": "float32", "shape": tuple(ds.state.shape[1:]), "names": None},
        ACTION: {"dtype": "float32", "shape": tuple(ds.action.shape[1:]), "names": None},
        SUCCESS: {"dtype": "bool", "shape": (1,), "names": None},
    }
    image_key = IMAGE_PREFIX + camera
    if ds.image is not None:
        features[image_key] = {"dtype": "image", "shape": tuple(ds.image.shape[1:]), "names": ["height", "width", "channels"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    root = tmp / "dataset"
    try:
        dataset = LeRobotDataset.create(repo_id=f"local/{out.name}", fps=fps, features=features, root=root, robot_type="sawyer", use_videos=False)
        for e in range(ds.num_episodes):
            rows = ds.episode(e)
            instruction = ds.instructions[int(ds.episode_task_index[e])]
            last = rows.stop - 1
            for i in range(rows.start, rows.stop):
                frame = {STATE: ds.state[i], ACTION: ds.action[i], SUCCESS: np.array([bool(ds.success[e]) and i == last]), TASK: instruction}
                if ds.image is not None:
                    frame[image_key] = ds.image[i]
                dataset.add_frame(frame)
            dataset.save_episode()
        dataset.finalize()
        if out.exists():
            shutil.rmtree(out)
        os.replace(root, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_lerobot_dataset(path: str | Path) -> DemoDataset:
    """Read a local LeRobotDataset into a validated `DemoDataset` (module docstring)."""
    _require_lerobot()
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policytrim.envs.tasks import INSTRUCTIONS

    path = Path(path)
    if not is_lerobot_dataset(path):
        raise InputError(f"{str(path)!r} is not a LeRobotDataset directory (no {INFO})")
    try:
        dataset = LeRobotDataset(repo_id=f"local/{path.name}", root=path)
    except Exception as exc:  # noqa: BLE001 - LeRobot raises several types for a malformed dataset
        raise InputError(f"{str(path)!r} is not a readable LeRobotDataset ({type(exc).__name__}: {exc})") from None
    features = dataset.meta.features
    missing = [k for k in (STATE, ACTION) if k not in features]
    if missing:
        raise InputError(f"LeRobotDataset {str(path)!r} lacks {', '.join(missing)}; policytrim trains on observation.state and action")
    image_keys = [k for k in features if (k.startswith(IMAGE_PREFIX) or k == "observation.image") and features[k]["dtype"] in ("image", "video")]
    hf = dataset.hf_dataset
    columns = [STATE, ACTION, "episode_index", "frame_index", "task_index"] + ([SUCCESS] if SUCCESS in features else [])
    table = {k: torch.stack([torch.as_tensor(v) for v in hf[k]]).numpy() for k in columns}
    image = None
    if image_keys:  # decoded by LeRobot to float [C, h, w] in [0, 1]; PNG/lossless sources round-trip exactly
        frames = [dataset[i][image_keys[0]] for i in range(len(dataset))]
        image = (torch.stack(frames).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    episode = table["episode_index"].reshape(-1).astype(np.int64)
    order = np.lexsort((table["frame_index"].reshape(-1), episode))
    episode = episode[order]
    ids, start, length = np.unique(episode, return_index=True, return_counts=True)
    task_index = table["task_index"].reshape(-1).astype(np.int64)[order]
    tasks_df = dataset.meta.tasks
    by_index = {int(i): str(t) for t, i in zip(tasks_df.index, tasks_df["task_index"])}
    used = sorted(set(task_index.tolist()))
    remap = {old: new for new, old in enumerate(used)}
    instructions = [by_index[i] for i in used]
    by_instruction = {v: k for k, v in INSTRUCTIONS.items()}
    tasks = [by_instruction.get(s, s) for s in instructions]
    ep_task = np.array([remap[int(t)] for t in task_index[start]], np.int64)
    if SUCCESS in table:
        flags = table[SUCCESS].reshape(-1).astype(bool)[order]
        success = np.array([flags[s : s + n].any() for s, n in zip(start, length)], bool)
    else:
        success = np.ones(len(ids), bool)
    new_episode = np.repeat(np.arange(len(ids)), length).astype(np.int64)
    ds = DemoDataset(
        state=table[STATE].astype(np.float32)[order].reshape(len(order), -1),
        action=table[ACTION].astype(np.float32)[order].reshape(len(order), -1),
        episode_index=new_episode,
        frame_index=(np.arange(len(order)) - np.repeat(start, length)).astype(np.int64),
        task_index=np.repeat(ep_task, length),
        length=length.astype(np.int64),
        success=success,
        episode_task_index=ep_task,
        seed=np.full(len(ids), -1, np.int64),
        index=np.full(len(ids), -1, np.int64),
        start=start.astype(np.int64),
        tasks=tasks,
        instructions=instructions,
        meta={"format": "lerobot", "source": str(path), "fps": dataset.meta.fps, "control_period_s": 1.0 / dataset.meta.fps, "image_key": image_keys[0] if image_keys else None},
        image=image[order] if image is not None else None,
    )
    ds.validate()
    return ds
