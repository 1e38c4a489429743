"""Demonstrations in LeRobot's dataset format, written and read by LeRobot's own `LeRobotDataset`.

``policytrim collect --format lerobot`` writes the collected demonstrations with
``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize`` (images as LeRobot
``image`` features, PNG in the parquet files, so they read back bit-exact; no video encoding);
``policytrim pretrain --data DIR`` reads any local LeRobotDataset (ours or a user's teleoperation
data) into a `policytrim.data.demos.DemoDataset`, so every policy (TinyVLA too) trains on it.
``policytrim convert DATA OUT --format lerobot`` writes a dataset collected in policytrim's format
the same way: LIBERO's simulator (Python 3.11 here) and LeRobot (Python >= 3.12) need not share an
environment, so LIBERO demonstrations are collected in one and converted in the other.

Written names. LIBERO (the public datasets' names, below): ``observation.state`` float32 [8] (the
proprioception), ``observation.environment_state`` float32 [7 x slots + joints] (the task's object
poses and fixture joints, `policytrim.envs.libero`, when the state carries them: LeRobot's name for
privileged simulator state, which its policies read as an ``ENV`` feature), ``action`` float32 [7],
``observation.images.image`` + ``observation.images.wrist_image`` (upright, as the public datasets
store them) when images were collected, ``task`` the LIBERO instruction, robot type ``panda``, fps
20 (LIBERO's control rate; the public datasets say 10). Others: ``observation.state``, ``action``,
``observation.images.<env.camera>``. Both add ``next.success`` (true on the last frame of a
successful episode).

Key mapping (`feature_layout`; the first name present wins): state <- ``observation.state`` or
``state``; action <- ``action`` or ``actions``; ``task`` (the language instruction) -> instruction.
Meta-World task names are recovered from their instructions where they match; otherwise the
instruction itself names the task. ``next.success`` (written by collect) marks successful
episodes; datasets without it count every episode as a success. Initial-state addresses (seed,
index) are not part of LeRobot's format and read back as -1.

- Generic (env.suite metaworld / gym, or no env given): image <- the first ``observation.images.*``
  or ``observation.image`` camera feature (uint8 [h, w, 3] after decoding).
- env.suite=libero: the public LIBERO LeRobot datasets, as `policytrim.envs.libero.LiberoEnv` emits
  them: state float32 [8] (end-effector position, axis-angle, 2 gripper joints), actions float32
  [7], agent-view and wrist cameras at 256 x 256, fps 10 in their metadata (frames are read, not
  timestamps), the instruction strings LIBERO's task language. Names: openpi's
  ``physical-intelligence/libero`` (v2.0, from openpi's ``convert_libero_data_to_lerobot.py``)
  top-level ``image`` + ``wrist_image``, ``state``, ``actions``; ``lerobot/libero_*_image``
  ``observation.images.image`` + ``observation.images.wrist_image``; LeRobot's LIBERO env naming
  (``LiberoEnv.features_map`` in LeRobot 0.6.1: agentview -> ``observation.images.image``,
  eye-in-hand -> ``observation.images.image2``), which its LIBERO processor matches to
  ``HuggingFaceVLA/libero``. Agent view -> image, wrist -> wrist_image; with env.image the
  dataset's image size must equal ``env.image_size`` (a policy is built for one size). An
  instruction equal to one of ``env.tasks``' instructions is named by that task's address. With
  the object-pose state (``env.libero_state`` objects, or auto without images) the state is
  ``observation.state`` followed by ``observation.environment_state`` of the suite's size (what
  collect writes; the public datasets have none: read them with ``--env.libero-state proprio``).

  Image orientation: all three store images already rotated by 180 degrees (upright), the same
  ``[::-1, ::-1]`` our adapter applies to the raw renders. Sources: OpenVLA's
  ``regenerate_libero_dataset.py`` ("in the LIBERO HDF5 data -> RLDS data conversion ... we rotate
  the images by 180 degrees"), the RLDS data openpi converts; openpi ``examples/libero/main.py``
  rotates the env's images the same way before inference ("rotate 180 degrees to match train
  preprocessing"); LeRobot 0.6.1 ``processor/env_processor.py`` ``LiberoProcessorStep`` flips H and
  W of the env's images, "the HuggingFaceVLA/libero camera orientation convention". So dataset
  frames are used as stored. Datasets in LeRobot's older v2.x format (openpi's is v2.0) must first
  be converted to v3.0 with LeRobot's own converter (``lerobot.datasets.v30``); LeRobot refuses to
  read them otherwise and the error names it. Every frame is decoded into memory: a whole public
  suite at 256 px (tens of GB) needs a machine with that much memory.

Offline and quiet: LeRobot reads and writes these with its ``pyav`` video backend (`VIDEO_BACKEND`;
its default probes ``torchcodec``, which prints ~100 lines of tracebacks where FFmpeg's shared
libraries are missing, while PyAV bundles its own FFmpeg), and never reaches the hub for a local
dataset: a dataset missing its ``data/`` files is one error naming them (LeRobot would otherwise try
to download them), and hub requests are refused while LeRobot reads it (`_hub_offline`).

Requires the ``lerobot`` extra (Python >= 3.12).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policytrim.data.demos import DemoDataset
from policytrim.errors import InputError
from policytrim.io import atomic_directory

if TYPE_CHECKING:
    from policytrim.config import EnvConfig

STATE, ACTION, SUCCESS, TASK = "observation.state", "action", "next.success", "task"
ENV_STATE = "observation.environment_state"  # LeRobot's name for privileged simulator state (object poses)
IMAGE_PREFIX = "observation.images."
STATE_KEYS = (STATE, "state")  # LeRobot's name | openpi's physical-intelligence/libero
ACTION_KEYS = (ACTION, "actions")
LIBERO_AGENT_VIEW_KEYS = (IMAGE_PREFIX + "image", "image")
LIBERO_WRIST_KEYS = (IMAGE_PREFIX + "image2", IMAGE_PREFIX + "wrist_image", "wrist_image")
LIBERO_WRIST_KEY = IMAGE_PREFIX + "wrist_image"  # what we write: lerobot/libero_*_image's name
LIBERO_STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z")
LIBERO_STATE_NAMES += ("gripper_qpos_0", "gripper_qpos_1")
LIBERO_ACTION_NAMES = ("dx", "dy", "dz", "drot_x", "drot_y", "drot_z", "gripper")  # OSC_POSE deltas; -1 opens
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
INFO = Path("meta") / "info.json"
VIDEO_BACKEND = "pyav"  # PyAV ships its own FFmpeg; LeRobot's default first imports torchcodec (module docstring)


def is_lerobot_dataset(path: str | Path) -> bool:
    """A local LeRobotDataset directory (it has ``meta/info.json``)."""
    return (Path(path) / INFO).is_file()


def _require_lerobot(hint: str = "") -> None:
    try:
        import lerobot.datasets.lerobot_dataset  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"LeRobotDataset files need the lerobot extra (Python >= 3.12): pip install 'policytrim[lerobot]' ({exc})"
            + hint
        ) from None


def dataset_suite(ds: DemoDataset) -> str:
    """The simulator suite a dataset was collected on: its meta's ``suite`` (written by collect), else
    libero when every task is a LIBERO address, else metaworld."""
    suite = ds.meta.get("suite")
    if isinstance(suite, str) and suite:
        return suite
    from policytrim.envs.libero import SUITES

    return "libero" if all(t.split("/")[0] in SUITES for t in ds.tasks) else "metaworld"


def _camera_feature(images: np.ndarray) -> dict[str, Any]:
    return {"dtype": "image", "shape": tuple(images.shape[1:]), "names": ["height", "width", "channels"]}


def _columns(ds: DemoDataset, camera: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(LeRobot features, the per-frame arrays under their names, robot type) of ``ds``: LIBERO's public
    names for a LIBERO dataset (module docstring), ``observation.state`` / ``action`` /
    ``observation.images.<camera>`` otherwise."""
    columns: dict[str, np.ndarray] = {}
    names: dict[str, list[str] | None] = {}
    if dataset_suite(ds) == "libero":
        from policytrim.envs.libero import ACTION_DIM, STATE_DIM

        if ds.state.shape[1] < STATE_DIM or ds.action.shape[1] != ACTION_DIM:
            raise InputError(
                f"a LIBERO dataset needs a state of at least {STATE_DIM} and {ACTION_DIM} actions per frame, "
                f"got {ds.state.shape[1]} and {ds.action.shape[1]}"
            )
        columns[STATE], names[STATE] = ds.state[:, :STATE_DIM], list(LIBERO_STATE_NAMES)
        if ds.state.shape[1] > STATE_DIM:  # the task's object poses (env.libero_state=objects)
            columns[ENV_STATE], names[ENV_STATE] = ds.state[:, STATE_DIM:], None
        columns[ACTION], names[ACTION] = ds.action, list(LIBERO_ACTION_NAMES)
        cameras = {LIBERO_AGENT_VIEW_KEYS[0]: ds.image, LIBERO_WRIST_KEY: ds.wrist_image}
        robot = "panda"
    else:
        columns[STATE], names[STATE] = ds.state, None
        columns[ACTION], names[ACTION] = ds.action, None
        cameras = {IMAGE_PREFIX + (camera or ds.meta.get("camera") or "corner2"): ds.image}
        robot = "sawyer"
    features: dict[str, Any] = {
        k: {"dtype": "float32", "shape": tuple(v.shape[1:]), "names": names[k]} for k, v in columns.items()
    }
    for key, images in cameras.items():
        if images is not None:
            features[key], columns[key] = _camera_feature(images), images
    return features, columns, robot


def save_lerobot_dataset(
    ds: DemoDataset, out: str | Path, overwrite: bool = False, camera: str | None = None, fps: int | None = None
) -> Path:
    """Write ``ds`` as a LeRobotDataset in ``out`` (assembled in a temporary sibling, then renamed:
    `policytrim.io.atomic_directory`). LIBERO datasets get the public datasets' names (module
    docstring); ``camera`` names Meta-World's camera feature (default: the dataset's meta, else corner2)."""
    _require_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    ds.validate()
    period = ds.meta.get("control_period_s") or 0.0125  # Meta-World: 5 x 2.5 ms per env step
    fps = int(fps or round(1.0 / period))
    features, columns, robot = _columns(ds, camera)
    features[SUCCESS] = {"dtype": "bool", "shape": (1,), "names": None}
    with atomic_directory(out, overwrite=True) as tmp:
        root = tmp / "dataset"  # LeRobot creates its root itself; its contents become ``out``
        dataset = LeRobotDataset.create(
            repo_id=f"local/{out.name}",
            fps=fps,
            features=features,
            root=root,
            robot_type=robot,
            use_videos=False,
            video_backend=VIDEO_BACKEND,
        )
        for e in range(ds.num_episodes):
            rows = ds.episode(e)
            instruction = ds.instructions[int(ds.episode_task_index[e])]
            last = rows.stop - 1
            for i in range(rows.start, rows.stop):
                frame = {key: values[i] for key, values in columns.items()}
                frame[SUCCESS] = np.array([bool(ds.success[e]) and i == last])
                frame[TASK] = instruction
                dataset.add_frame(frame)
            dataset.save_episode()
        dataset.finalize()
        for entry in list(root.iterdir()):
            os.replace(entry, tmp / entry.name)
        root.rmdir()
    return out


def convert_to_lerobot(src: str | Path, out: str | Path, overwrite: bool = False) -> DemoDataset:
    """`policytrim convert`: a policytrim demonstration dataset (`policytrim.data.demos`, e.g. collected
    where LeRobot is not installed: LIBERO's environment) written as a LeRobotDataset in ``out``."""
    from policytrim.data.demos import load_demos

    _require_lerobot()
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    if is_lerobot_dataset(src):
        raise InputError(f"{str(src)!r} is a LeRobotDataset already; convert reads policytrim datasets")
    ds = load_demos(src)
    save_lerobot_dataset(ds, out, overwrite=overwrite)
    return ds


@dataclass(frozen=True)
class FeatureLayout:
    """Which LeRobot features of a dataset hold our observation entries (None: not read)."""

    state: str
    action: str
    image: str | None
    wrist_image: str | None
    environment_state: str | None = None
    """appended to the state (LIBERO's object poses, env.libero_state=objects)"""


def _first(features: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in features), None)


def _is_camera(feature: dict[str, Any]) -> bool:
    return feature.get("dtype") in ("image", "video")


def _describe(features: dict[str, Any]) -> str:
    """The dataset's own features in one line (LeRobot's bookkeeping columns left out)."""
    return (
        ", ".join(
            f"{k} {v.get('dtype')} {list(v.get('shape') or [])}" for k, v in features.items() if k not in BOOKKEEPING
        )
        or "none"
    )


def feature_layout(features: dict[str, Any], env: EnvConfig | None, path: str | Path) -> FeatureLayout:
    """Map a dataset's ``features`` (LeRobot's ``meta.features``) to our entries for ``env``
    (module docstring); InputError naming what was found and what is accepted when they do not fit."""
    state, action = _first(features, STATE_KEYS), _first(features, ACTION_KEYS)
    if env is None or env.suite != "libero":
        if state is None or action is None:
            raise InputError(
                f"LeRobotDataset {str(path)!r} lacks {' or '.join(STATE_KEYS)} and/or "
                f"{' or '.join(ACTION_KEYS)}; found {_describe(features)}"
            )
        cameras = [
            k for k in features if (k.startswith(IMAGE_PREFIX) or k == "observation.image") and _is_camera(features[k])
        ]
        return FeatureLayout(state, action, cameras[0] if cameras else None, None)
    from policytrim.envs.libero import ACTION_DIM, STATE_DIM, state_dim, uses_object_state

    image, wrist = _first(features, LIBERO_AGENT_VIEW_KEYS), _first(features, LIBERO_WRIST_KEYS)
    missing = []
    if state is None or tuple(features[state]["shape"]) != (STATE_DIM,):
        missing.append(f"a state {' | '.join(STATE_KEYS)} [{STATE_DIM}]")
    poses = uses_object_state(env)
    if poses:
        size = state_dim(env.tasks[0].split("/")[0], True) - STATE_DIM
        if ENV_STATE not in features or tuple(features[ENV_STATE]["shape"]) != (size,):
            missing.append(
                f"the object poses {ENV_STATE} [{size}] (env.libero_state=objects, the default without images; "
                "datasets without them train with --env.libero-state proprio)"
            )
    if action is None or tuple(features[action]["shape"]) != (ACTION_DIM,):
        missing.append(f"actions {' | '.join(ACTION_KEYS)} [{ACTION_DIM}]")
    if env.image:
        size = [env.image_size, env.image_size, 3]
        for what, key, keys in (
            ("an agent-view", image, LIBERO_AGENT_VIEW_KEYS),
            ("a wrist", wrist, LIBERO_WRIST_KEYS),
        ):
            if key is None or not _is_camera(features[key]) or list(features[key]["shape"]) != size:
                missing.append(
                    f"{what} camera {' | '.join(keys)} image or video {size} (env.image_size {env.image_size})"
                )
    if missing:
        raise InputError(
            f"LeRobotDataset {str(path)!r} does not fit env.suite=libero: it needs {'; '.join(missing)}; "
            f"found {_describe(features)}"
        )
    assert state is not None and action is not None  # checked above
    return FeatureLayout(
        state, action, image if env.image else None, wrist if env.image else None, ENV_STATE if poses else None
    )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub requests raise (OfflineModeIsEnabled) inside this block, whatever
    HF_HUB_OFFLINE said when huggingface_hub was imported: a local dataset is never downloaded."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _decoded_images(dataset: Any, keys: list[str]) -> list[np.ndarray]:
    """uint8 [S, h, w, 3] per camera feature in ``keys``, in one pass over the frames. LeRobot
    decodes them to float [3, h, w] in [0, 1]; PNG (lossless) sources round-trip exactly."""
    import torch

    if not keys:
        return []
    frames: dict[str, list[Any]] = {k: [] for k in keys}
    for i in range(len(dataset)):
        item = dataset[i]
        for k in keys:
            frames[k].append(item[k])
    return [
        (torch.stack(frames[k]).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        for k in keys
    ]


def load_lerobot_dataset(path: str | Path, env: EnvConfig | None = None) -> DemoDataset:
    """Read a local LeRobotDataset into a validated `DemoDataset`, its features mapped for ``env``
    (`feature_layout`; None: the generic mapping). Module docstring: which names are read."""
    _require_lerobot()
    import torch
    from huggingface_hub.errors import OfflineModeIsEnabled
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    path = Path(path)
    if not is_lerobot_dataset(path):
        raise InputError(f"{str(path)!r} is not a LeRobotDataset directory (no {INFO})")
    missing = [name for name in ("data", "meta/episodes") if not any((path / name).rglob("*.parquet"))]
    if missing:
        raise InputError(
            f"LeRobotDataset {str(path)!r} has no {' and no '.join(f'{m}/*.parquet' for m in missing)} "
            "files; policytrim reads local datasets only (nothing is downloaded)"
        )
    try:
        with _hub_offline():
            dataset = LeRobotDataset(repo_id=f"local/{path.name}", root=path, video_backend=VIDEO_BACKEND)
    except OfflineModeIsEnabled as exc:
        raise InputError(
            f"LeRobotDataset {str(path)!r} lacks files its metadata names (LeRobot would download them: {exc}); "
            "policytrim reads local datasets only"
        ) from None
    except Exception as exc:  # noqa: BLE001 - LeRobot raises several types for a malformed dataset
        raise InputError(f"{str(path)!r} is not a readable LeRobotDataset ({type(exc).__name__}: {exc})") from None
    features = dataset.meta.features
    layout = feature_layout(features, env, path)
    hf = dataset.hf_dataset
    columns = [layout.state, layout.action, "episode_index", "frame_index", "task_index"] + (
        [SUCCESS] if SUCCESS in features else []
    )
    columns += [layout.environment_state] if layout.environment_state else []
    table = {k: torch.stack([torch.as_tensor(v) for v in hf[k]]).numpy() for k in columns}
    cameras = [k for k in (layout.image, layout.wrist_image) if k is not None]
    decoded = dict(zip(cameras, _decoded_images(dataset, cameras), strict=True))

    episode = table["episode_index"].reshape(-1).astype(np.int64)
    order = np.lexsort((table["frame_index"].reshape(-1), episode))
    episode = episode[order]
    ids, start, length = np.unique(episode, return_index=True, return_counts=True)
    task_index = table["task_index"].reshape(-1).astype(np.int64)[order]
    tasks_df = dataset.meta.tasks
    by_index = {int(i): str(t) for t, i in zip(tasks_df.index, tasks_df["task_index"], strict=True)}
    used = sorted(set(task_index.tolist()))
    remap = {old: new for new, old in enumerate(used)}
    instructions = [by_index[i] for i in used]
    tasks = [_task_names(env).get(s, s) for s in instructions]
    ep_task = np.array([remap[int(t)] for t in task_index[start]], np.int64)
    if SUCCESS in table:
        flags = table[SUCCESS].reshape(-1).astype(bool)[order]
        success = np.array([flags[s : s + n].any() for s, n in zip(start, length, strict=True)], bool)
    else:
        success = np.ones(len(ids), bool)
    new_episode = np.repeat(np.arange(len(ids)), length).astype(np.int64)
    parts = [layout.state] + ([layout.environment_state] if layout.environment_state else [])
    state = np.concatenate([table[k].astype(np.float32).reshape(len(order), -1) for k in parts], axis=1)
    ds = DemoDataset(
        state=state[order],
        action=table[layout.action].astype(np.float32)[order].reshape(len(order), -1),
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
        meta={
            "format": "lerobot",
            "source": str(path),
            "fps": dataset.meta.fps,
            "control_period_s": 1.0 / dataset.meta.fps,
            "image_key": layout.image,
            "wrist_image_key": layout.wrist_image,
        },
        image=decoded[layout.image][order] if layout.image else None,
        wrist_image=decoded[layout.wrist_image][order] if layout.wrist_image else None,
    )
    ds.validate()
    return ds


def _task_names(env: EnvConfig | None) -> dict[str, str]:
    """instruction -> our task name: the LIBERO address among ``env.tasks`` for suite=libero, the
    Meta-World task otherwise (an instruction without a match names its task itself)."""
    if env is not None and env.suite == "libero":
        from policytrim.envs.libero import task_info

        return {task_info(t).instruction: t for t in env.tasks}
    from policytrim.envs.tasks import INSTRUCTIONS

    return {v: k for k, v in INSTRUCTIONS.items()}
