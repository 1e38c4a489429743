"""LeRobotDataset in and out through LeRobot's own writer and reader, via the CLI (offline)."""

from __future__ import annotations

import numpy as np
import pytest

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.datasets.lerobot_dataset", "lerobot")  # fails instead where scripts/run.sh requires lerobot
pytestmark = [pytest.mark.lerobot, pytest.mark.slow]

from policytrim.cli import main  # noqa: E402
from policytrim.config import EnvConfig, RunConfig  # noqa: E402
from policytrim.data.collect import collect_demos  # noqa: E402
from policytrim.data.lerobot_dataset import is_lerobot_dataset, load_lerobot_dataset  # noqa: E402
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402

COMMON = [
    "--env.tasks",
    "drawer-close-v3",
    "--env.horizon",
    "40",
    "--env.image",
    "--env.image-size",
    "32",
    "--rollout.num-workers",
    "0",
    "--logging.no-progress",
]


def test_collect_lerobot_format_round_trips_and_pretrains_tinyvla(tmp_path):
    data = tmp_path / "lerobot_demos"
    assert (
        main(
            [
                "collect",
                *COMMON,
                "--data.episodes",
                "2",
                "--data.keep-failures",
                "--format",
                "lerobot",
                "--out",
                str(data),
            ]
        )
        == 0
    )
    assert is_lerobot_dataset(data) and (data / "meta" / "info.json").is_file()
    back = load_lerobot_dataset(data)
    cfg = RunConfig(env=EnvConfig(tasks=("drawer-close-v3",), horizon=40, image=True, image_size=32))
    cfg.data.episodes, cfg.data.keep_failures, cfg.rollout.num_workers = 2, True, 0
    ours = collect_demos(cfg, tmp_path / "policytrim_demos")  # the same episodes in policytrim's format
    for key in ("state", "action", "image", "episode_index", "frame_index", "task_index", "length", "success"):
        assert np.array_equal(getattr(back, key), getattr(ours, key)), key
    assert back.tasks == ["drawer-close-v3"] and back.instructions == ours.instructions

    # any policy trains on a LeRobotDataset: the built-in TinyVLA from images
    out = tmp_path / "baseline"
    assert (
        main(
            [
                "pretrain",
                *COMMON,
                "--data",
                str(data),
                "--pretrain.iterations",
                "5",
                "--pretrain.batch-size",
                "8",
                "--pretrain.eval-episodes",
                "0",
                "--policy.chunk-size",
                "8",
                "--policy.default-window",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    policy = load_policy(out)
    assert policy.image_shape == (32, 32, 3) and policy.chunk_size == 8


def test_not_a_lerobot_dataset_is_one_clear_error(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{}")
    with pytest.raises(InputError, match=r"has no data/\*\.parquet and no meta/episodes/\*\.parquet files"):
        load_lerobot_dataset(tmp_path)
    for part in ("data", "meta/episodes"):  # the files are there, the metadata is not LeRobot's
        (tmp_path / part).mkdir(exist_ok=True)
        (tmp_path / part / "file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable LeRobotDataset"):
        load_lerobot_dataset(tmp_path)


def _write_tiny_dataset(root, video: bool) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    camera = {"dtype": "video" if video else "image", "shape": (32, 32, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.images.cam": camera,
    }
    ds = LeRobotDataset.create(
        repo_id="local/tiny", fps=10, features=features, root=root, use_videos=video, video_backend="pyav"
    )
    for _ in range(2):
        for i in range(6):
            ds.add_frame(
                {
                    "observation.state": np.full(3, i, np.float32),
                    "action": np.zeros(2, np.float32),
                    "observation.images.cam": np.full((32, 32, 3), 40 * i, np.uint8),
                    "task": "close the drawer",
                }
            )
        ds.save_episode()
    ds.finalize()


def test_reading_a_video_dataset_never_imports_torchcodec(tmp_path):
    """LeRobot's default video backend imports torchcodec first, which prints ~100 lines of
    tracebacks where FFmpeg's libraries are missing; we read with PyAV (bundled FFmpeg), in a fresh
    process so that nothing else has imported torchcodec before."""
    import json
    import subprocess
    import sys

    _write_tiny_dataset(tmp_path / "video", video=True)
    code = (
        "import json, sys; from policytrim.data.lerobot_dataset import load_lerobot_dataset as load; "
        f"ds = load({str(tmp_path / 'video')!r}); "
        "print(json.dumps(sorted(ds.image.reshape(len(ds.image), "
        "-1).mean(1).round().astype(int).tolist())), 'torchcodec' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    means, imported = result.stdout.strip().rsplit(" ", 1)
    assert imported == "False" and "torchcodec" not in result.stderr, result.stderr[-3000:]
    expected = sorted([40 * i for i in range(6)] * 2)
    # AV1 is lossy: frames read back closely
    assert all(abs(a - b) <= 3 for a, b in zip(json.loads(means), expected, strict=True)), means


def test_a_local_dataset_with_missing_files_is_one_error_and_no_download(tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a user's shell has it
    root = tmp_path / "ds"
    _write_tiny_dataset(root, video=False)
    import pyarrow.compute
    import pyarrow.parquet as pq

    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data)
    pq.write_table(table.filter(pyarrow.compute.equal(table["episode_index"], 0)), data)  # episode 1's frames lost
    with pytest.raises(
        InputError, match="lacks files its metadata names .*offline mode.*policytrim reads local datasets only"
    ):
        load_lerobot_dataset(root)  # LeRobot would fetch the dataset from the hub; refused instead
    assert constants.HF_HUB_OFFLINE is False  # restored
    shutil.rmtree(root / "data")
    with pytest.raises(InputError, match=r"has no data/\*\.parquet files; policytrim reads local datasets only"):
        load_lerobot_dataset(root)
