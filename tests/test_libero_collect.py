"""`policytrim collect` on LIBERO with images, from the CLI at a tiny size: the agent view and the
wrist camera of every frame, the 8-D proprioception that image policies and the public datasets
read, and the scripted expert's own demonstration (it reads the object poses, which the image run's
state leaves out: `policytrim.data.collect.expert_env`).

Skipped where LIBERO is not installed (failed instead where POLICYTRIM_REQUIRE=libero, as
scripts/run.sh sets in .venv-libero). About 46 s of CPU (one core).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip(
    "libero.libero.benchmark", "libero", reason="LIBERO is not installed (pip install 'policytrim[libero]')"
)

from policytrim.cli import main  # noqa: E402
from policytrim.data.demos import load_demos  # noqa: E402
from policytrim.envs.libero import STATE_DIM, state_dim  # noqa: E402

TASK = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
SIZE = 32
ONE = ["--env.suite", "libero", "--tasks", TASK, "--data.episodes", "1", "--rollout.num-workers", "0"]
ONE += ["--logging.no-progress"]


def test_collect_with_images_records_both_cameras_and_the_experts_demonstration(tmp_path):
    images, state = tmp_path / "images", tmp_path / "state"
    assert main(["collect", *ONE, "--env.image", "--env.image-size", str(SIZE), "--out", str(images)]) == 0
    assert main(["collect", *ONE, "--out", str(state)]) == 0  # the same episode, state-only (object poses)
    img, ref = load_demos(images), load_demos(state)
    frames = img.num_frames
    assert img.state.shape == (frames, STATE_DIM) and ref.state.shape[1] == state_dim("libero_object", True)
    # the same expert demonstration (same init state, same suboptimality), with the proprioception only
    assert np.array_equal(img.action, ref.action) and list(img.length) == list(ref.length)
    assert np.array_equal(img.state, ref.state[:, :STATE_DIM])
    assert img.success.all() and img.meta["collection"]["collected"] == {TASK: 1}
    for camera in (img.image, img.wrist_image):
        assert camera is not None and camera.shape == (frames, SIZE, SIZE, 3) and camera.dtype == np.uint8
        assert not np.array_equal(camera[0], camera[-1])  # the scene changed: the object was carried
    assert np.abs(img.image.astype(int) - img.wrist_image.astype(int)).mean() > 10  # two cameras
    assert ref.image is None and ref.wrist_image is None  # state-only stays the cheap default


@pytest.mark.skipif(
    importlib.util.find_spec("lerobot") is not None, reason="checks the message where LeRobot is absent"
)
def test_lerobot_format_without_lerobot_names_the_convert_command(tmp_path, capsys):
    """LIBERO's environment (Python 3.11 here) has no LeRobot: one line naming the way through
    (collect, then `policytrim convert` where LeRobot is), before any episode runs; nothing written."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["collect", *ONE, "--format", "lerobot", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and not out.exists()
    assert "policytrim convert DATA OUT --format lerobot" in errors[0]
