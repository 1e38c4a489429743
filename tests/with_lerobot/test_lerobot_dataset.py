"""LeRobotDataset in and out through LeRobot's own writer and reader, via the CLI (offline)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lerobot.datasets.lerobot_dataset")
pytestmark = [pytest.mark.lerobot, pytest.mark.slow]

from policytrim.cli import main  # noqa: E402
from policytrim.config import EnvConfig, RunConfig  # noqa: E402
from policytrim.data.collect import collect_demos  # noqa: E402
from policytrim.data.lerobot_dataset import is_lerobot_dataset, load_lerobot_dataset  # noqa: E402
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402

COMMON = ["--env.tasks", "drawer-close-v3", "--env.horizon", "40", "--env.image", "--env.image-size", "32",
          "--rollout.num-workers", "0", "--logging.no-progress"]


def test_collect_lerobot_format_round_trips_and_pretrains_tinyvla(tmp_path):
    data = tmp_path / "lerobot_demos"
    assert main(["collect", *COMMON, "--data.episodes", "2", "--data.keep-failures", "--format", "lerobot", "--out", str(data)]) == 0
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
    assert main(["pretrain", *COMMON, "--data", str(data), "--pretrain.iterations", "5", "--pretrain.batch-size", "8",
                 "--pretrain.eval-episodes", "0", "--policy.chunk-size", "8", "--policy.default-window", "4", "--out", str(out)]) == 0
    policy = load_policy(out)
    assert policy.image_shape == (32, 32, 3) and policy.chunk_size == 8


def test_not_a_lerobot_dataset_is_one_clear_error(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{}")
    with pytest.raises(InputError, match="not a readable LeRobotDataset"):
        load_lerobot_dataset(tmp_path)
