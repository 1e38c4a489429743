"""LIBERO demonstrations into a LeRobotDataset, the way a user with two environments does it:
`policytrim collect` in LIBERO's environment (a subprocess of ``POLICYTRIM_LIBERO_PYTHON``, which
scripts/run.sh points at .venv-libero), then `policytrim convert` here, where LeRobot is. The
converted dataset carries the public LIBERO names and reads back, with LeRobot's own reader and with
ours, into the collected arrays. Skipped where no LIBERO environment is given. About 40 s on one core.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.datasets.lerobot_dataset", "lerobot")  # fails instead where scripts/run.sh requires lerobot
pytestmark = [pytest.mark.lerobot, pytest.mark.slow]

import policytrim  # noqa: E402
from policytrim.cli import main  # noqa: E402
from policytrim.config import EnvConfig  # noqa: E402
from policytrim.data.demos import load_demos  # noqa: E402
from policytrim.data.lerobot_dataset import load_lerobot_dataset  # noqa: E402
from policytrim.envs.libero import ACTION_DIM, STATE_DIM, state_dim  # noqa: E402

LIBERO_PYTHON = os.environ.get("POLICYTRIM_LIBERO_PYTHON", "")
TASK = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
SIZE = 32


@pytest.mark.skipif(
    not os.access(LIBERO_PYTHON or "-", os.X_OK), reason="no LIBERO environment (POLICYTRIM_LIBERO_PYTHON)"
)
def test_collected_in_libero_converted_here_reads_back(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    demos, out = tmp_path / "demos", tmp_path / "lerobot"
    source = str(Path(policytrim.__file__).parents[1])  # this checkout's policytrim, in the other environment too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.update(OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), POLICYTRIM_REQUIRE="")
    flags = ["--env.suite", "libero", "--tasks", TASK, "--env.image", "--env.image-size", str(SIZE)]
    flags += ["--env.libero-state", "objects", "--data.episodes", "1", "--rollout.num-workers", "0"]
    proc = subprocess.run(
        [LIBERO_PYTHON, "-m", "policytrim.cli", "collect", *flags, "--logging.no-progress", "--out", str(demos)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert main(["convert", str(demos), str(out), "--format", "lerobot"]) == 0

    ds = load_demos(demos)
    lr = LeRobotDataset(repo_id="local/libero", root=out, video_backend="pyav")
    poses = state_dim("libero_object", True) - STATE_DIM
    shapes = {k: tuple(v["shape"]) for k, v in lr.meta.features.items()}
    assert shapes["observation.state"] == (STATE_DIM,) and shapes["action"] == (ACTION_DIM,)
    assert shapes["observation.environment_state"] == (poses,)
    assert shapes["observation.images.image"] == shapes["observation.images.wrist_image"] == (SIZE, SIZE, 3)
    assert lr.num_episodes == 1 and len(lr) == ds.num_frames and lr[0]["task"] == ds.instructions[0]

    cfg = EnvConfig(suite="libero", tasks=(TASK,), image=True, image_size=SIZE, libero_state="objects")
    back = load_lerobot_dataset(out, cfg)
    for key in ("state", "action", "image", "wrist_image", "length", "success"):
        assert np.array_equal(getattr(back, key), getattr(ds, key)), key
    assert back.tasks == [TASK] and back.instructions == ds.instructions
