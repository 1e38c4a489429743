"""`pretrain --data` on a LIBERO-shaped LeRobotDataset with the LIBERO env config (offline).

The dataset is written by LeRobot's own writer (``LeRobotDataset.create`` / ``add_frame`` /
``save_episode``) with the feature names of the public LIBERO datasets (`policytrim.data.
lerobot_dataset`), a few short episodes of random data at a small image size. The LIBERO simulator
is not needed: with ``pretrain.eval-episodes 0`` no env is made, and the LIBERO task table needs no
package. Runs in .venv-lerobot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.datasets.lerobot_dataset", "lerobot")  # fails instead where scripts/run.sh requires lerobot
pytestmark = [pytest.mark.lerobot, pytest.mark.slow]

from policytrim.cli import main  # noqa: E402
from policytrim.config import EnvConfig  # noqa: E402
from policytrim.data.demos import DemoDataset, save_demos  # noqa: E402
from policytrim.data.lerobot_dataset import load_lerobot_dataset  # noqa: E402
from policytrim.envs.libero import ACTION_DIM, STATE_DIM, state_dim, suite_tasks  # noqa: E402
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402

SIZE = 32  # px; the public datasets are 256
EPISODES, LENGTH = 4, 12
TASKS = suite_tasks("libero_object")[:2]
# (state, action, agent view, wrist) names: LeRobot's LIBERO env naming | openpi's physical-intelligence/libero
LAYOUTS = {
    "lerobot": ("observation.state", "action", "observation.images.image", "observation.images.image2"),
    "openpi": ("state", "actions", "image", "wrist_image"),
}
CLI = [
    "--env.suite",
    "libero",
    "--env.tasks",
    "libero_object",
    "--env.image",
    "--env.image-size",
    str(SIZE),
    "--rollout.num-workers",
    "0",
    "--logging.no-progress",
    "--pretrain.iterations",
    "4",
    "--pretrain.batch-size",
    "8",
    "--pretrain.eval-episodes",
    "0",
    "--policy.chunk-size",
    "8",
    "--policy.default-window",
    "4",
]


def write_dataset(root, names: tuple[str, ...], state_dim: int = STATE_DIM, cameras: int = 2) -> dict[str, np.ndarray]:
    """A LIBERO-shaped LeRobotDataset of random frames in ``root``; returns what was written."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    state, action, image, wrist = names
    camera = {"dtype": "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    features = {
        state: {"dtype": "float32", "shape": (state_dim,), "names": None},
        action: {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    features.update({k: camera for k in (image, wrist)[:cameras]})
    ds = LeRobotDataset.create(
        repo_id="local/libero_tiny", fps=10, features=features, root=root, robot_type="panda", use_videos=False
    )
    rng = np.random.default_rng(0)
    written: dict[str, list] = {k: [] for k in features}
    for e in range(EPISODES):
        for _ in range(LENGTH):
            frame = {
                state: rng.normal(size=state_dim).astype(np.float32),
                action: rng.uniform(-1, 1, ACTION_DIM).astype(np.float32),
            }
            frame.update({k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in (image, wrist)[:cameras]})
            for k, v in frame.items():
                written[k].append(v)
            ds.add_frame({**frame, "task": TASKS[e % 2].instruction})
        ds.save_episode()
    ds.finalize()
    return {k: np.stack(v) for k, v in written.items()}


def libero_obs(batch: int) -> dict[str, torch.Tensor]:
    """Observations shaped as `policytrim.envs.libero.LiberoEnv` emits them (batched)."""
    g = torch.Generator().manual_seed(1)
    return {
        "state": torch.randn(batch, STATE_DIM, generator=g),
        "image": torch.randint(0, 256, (batch, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
        "wrist_image": torch.randint(0, 256, (batch, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
    }


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_libero_dataset_maps_to_our_keys_and_pretrains_tinyvla(layout, tmp_path):
    names = LAYOUTS[layout]
    written = write_dataset(tmp_path / "data", names)
    env = EnvConfig(suite="libero", tasks=("libero_object",), image=True, image_size=SIZE)
    ds = load_lerobot_dataset(tmp_path / "data", env)
    state, action, image, wrist = names
    assert np.array_equal(ds.state, written[state]) and np.array_equal(ds.action, written[action])
    assert np.array_equal(ds.image, written[image]) and np.array_equal(
        ds.wrist_image, written[wrist]
    )  # PNG: bit-exact, as stored
    assert ds.tasks == [t.address for t in TASKS] and list(ds.length) == [LENGTH] * EPISODES

    out = tmp_path / "baseline"
    assert main(["pretrain", *CLI, "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    policy = load_policy(out)
    sample = policy.sample(libero_obs(3), [TASKS[0].instruction] * 3, "deterministic")
    assert policy.image_shape == (SIZE, SIZE, 3) and tuple(sample.actions.shape) == (3, 8, ACTION_DIM)
    assert torch.isfinite(sample.actions).all()


def test_two_camera_lerobot_policy_pretrains_on_libero_data(tmp_path):
    """A LeRobot ACT with LIBERO's two cameras: agent view from obs['image'], wrist from obs['wrist_image']."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_tiny import tiny_config, write_tiny_policy
    from policytrim.policies.lerobot import camera_sources, dataset_stats, image_stats

    names = LAYOUTS["lerobot"]
    written = write_dataset(tmp_path / "data", names)
    config = tiny_config("act", STATE_DIM, ACTION_DIM, 8, 4, (SIZE, SIZE, 3), camera="image")
    config.input_features[names[3]] = PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE))
    stats = dataset_stats(
        torch.as_tensor(written[names[0]]),
        torch.as_tensor(written[names[1]]),
        torch.as_tensor(written[names[2]]),
        names[2],
    )
    stats[names[3]] = image_stats(torch.as_tensor(written[names[3]]))
    torch.manual_seed(0)
    start = write_tiny_policy(tmp_path / "act", config, stats)

    out = tmp_path / "baseline"
    assert (
        main(
            [
                "pretrain",
                *CLI,
                "--policy.kind",
                "lerobot",
                "--policy.lerobot-path",
                str(start),
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    policy = load_policy(out)
    assert camera_sources(policy.image_keys) == [(names[2], "image"), (names[3], "wrist_image")]
    obs = libero_obs(2)
    sample = policy.sample(obs, [TASKS[1].instruction] * 2, "deterministic")
    assert tuple(sample.actions.shape) == (2, 8, ACTION_DIM)
    other_wrist = policy.sample(
        {**obs, "wrist_image": 255 - obs["wrist_image"]}, [TASKS[1].instruction] * 2, "deterministic"
    )
    assert not torch.allclose(sample.actions, other_wrist.actions)  # the wrist camera is read
    with pytest.raises(InputError, match="wrist_image"):
        policy.sample({"state": obs["state"], "image": obs["image"]}, [TASKS[1].instruction] * 2, "deterministic")


def test_dataset_that_does_not_fit_libero_is_one_clear_error(tmp_path, capsys):
    """Meta-World-like data (a 9-D state, one camera) under the LIBERO config: exit 2, one line
    naming what was found and what is accepted, nothing written."""
    write_dataset(tmp_path / "data", LAYOUTS["lerobot"], state_dim=9, cameras=1)
    out = tmp_path / "baseline"
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", *CLI, "--data", str(tmp_path / "data"), "--out", str(out)])
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")
    ]  # LeRobot prints progress bars too
    assert exit_.value.code == 2 and len(errors) == 1 and not out.exists()
    err = errors[0]
    assert "does not fit env.suite=libero" in err
    assert "observation.state float32 [9]" in err and "observation.state | state [8]" in err  # found, accepted
    assert "observation.images.image2 | observation.images.wrist_image | wrist_image" in err
    with pytest.raises(InputError, match=r"env.image_size 64"):  # a size the dataset does not have
        load_lerobot_dataset(
            tmp_path / "data", EnvConfig(suite="libero", tasks=("libero_object",), image=True, image_size=64)
        )


def test_baseline_evaluation_without_the_simulator_stops_before_training(tmp_path, capsys):
    """pretrain.eval-episodes > 0 evaluates on LIBERO: without the simulator (this venv), one error
    line before anything is trained or written."""
    from policytrim.envs.libero import simulator_installed

    if simulator_installed():
        pytest.skip("the LIBERO simulator is installed here")
    write_dataset(tmp_path / "data", LAYOUTS["lerobot"])
    out = tmp_path / "baseline"
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", *CLI, "--pretrain.eval-episodes", "2", "--data", str(tmp_path / "data"), "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and not out.exists()
    assert (
        len(errors) == 1
        and "pip install 'policytrim[libero]'" in errors[0]
        and "--pretrain.eval-episodes 0" in errors[0]
    )


def libero_demos(objects: bool, images: bool) -> DemoDataset:
    """A dataset shaped as `policytrim collect` writes it on LIBERO-Object (random values): the
    57-D object-pose state (env.libero_state=objects) or the 8-D proprioception, with or without the
    agent-view and wrist images."""
    rng = np.random.default_rng(2)
    dim = state_dim("libero_object", objects)
    length = np.array([LENGTH, LENGTH + 3, LENGTH - 2], np.int64)
    ep_task = np.array([0, 1, 0], np.int64)
    frames, start = int(length.sum()), np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    camera = lambda: rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)  # noqa: E731
    return DemoDataset(
        state=rng.normal(size=(frames, dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (frames, ACTION_DIM)).astype(np.float32),
        episode_index=np.repeat(np.arange(3), length).astype(np.int64),
        frame_index=(np.arange(frames) - np.repeat(start, length)).astype(np.int64),
        task_index=np.repeat(ep_task, length),
        length=length,
        success=np.array([True, True, False]),
        episode_task_index=ep_task,
        seed=np.zeros(3, np.int64),
        index=np.arange(3, dtype=np.int64),
        start=start,
        tasks=[t.address for t in TASKS],
        instructions=[t.instruction for t in TASKS],
        meta={"control_period_s": 0.05, "suite": "libero"},
        image=camera() if images else None,
        wrist_image=camera() if images else None,
    )


@pytest.mark.parametrize("objects,images", [(True, False), (False, True)])
def test_convert_writes_the_public_libero_names_and_reads_back(objects, images, tmp_path):
    """`policytrim convert` (a LIBERO collection -> LeRobotDataset): LeRobot's own reader sees the
    public LIBERO names (the object poses as its ENV feature), and our reader under the LIBERO env
    config that collected it gives back the same arrays."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.feature_utils import FeatureType, dataset_to_policy_features

    ds = libero_demos(objects, images)
    save_demos(ds, tmp_path / "demos")
    out = tmp_path / "lerobot"
    assert main(["convert", str(tmp_path / "demos"), str(out), "--format", "lerobot"]) == 0

    lr = LeRobotDataset(repo_id="local/libero", root=out, video_backend="pyav")
    features = {k: (v["dtype"], tuple(v["shape"])) for k, v in lr.meta.features.items()}
    wanted = {"observation.state": ("float32", (STATE_DIM,)), "action": ("float32", (ACTION_DIM,))}
    if objects:
        wanted["observation.environment_state"] = ("float32", (ds.state.shape[1] - STATE_DIM,))
    if images:
        for key in ("observation.images.image", "observation.images.wrist_image"):
            wanted[key] = ("image", (SIZE, SIZE, 3))
    assert {k: v for k, v in features.items() if k.startswith(("observation.", "action"))} == wanted
    kinds = {k: f.type for k, f in dataset_to_policy_features(lr.meta.features).items()}
    assert kinds.get("observation.environment_state") == (FeatureType.ENV if objects else None)
    assert (lr.meta.fps, lr.meta.robot_type, lr.num_episodes, len(lr)) == (20, "panda", 3, ds.num_frames)
    last = lr[ds.num_frames - 1]  # a frame as a LeRobot policy's dataloader gets it
    assert last["task"] == TASKS[0].instruction
    assert torch.equal(last["observation.state"], torch.from_numpy(ds.state[-1, :STATE_DIM]))

    env = EnvConfig(suite="libero", tasks=("libero_object",), image=images, image_size=SIZE)
    back = load_lerobot_dataset(out, env)
    for key in ("state", "action", "image", "wrist_image", "length", "success", "episode_task_index"):
        assert np.array_equal(getattr(back, key), getattr(ds, key)), key
    assert back.tasks == ds.tasks and back.instructions == ds.instructions
    if objects:  # the public datasets have no object poses: they read as proprioception only
        proprio = load_lerobot_dataset(out, EnvConfig(suite="libero", tasks=("libero_object",), libero_state="proprio"))
        assert np.array_equal(proprio.state, ds.state[:, :STATE_DIM])
    else:
        with pytest.raises(InputError, match=r"observation.environment_state \[49\]"):
            load_lerobot_dataset(out, EnvConfig(suite="libero", tasks=("libero_object",)))


def test_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    for source in (tmp_path / "missing", tmp_path / "lerobot"):
        if source.name == "lerobot":
            write_dataset(source, LAYOUTS["lerobot"])
        with pytest.raises(SystemExit) as exit_:
            main(["convert", str(source), str(out)])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exit_.value.code == 2 and len(errors) == 1 and not out.exists(), errors
