"""Collecting ManiSkill3 demonstrations (`policytrim collect` on the ManiSkill suite): the same
demonstrations whatever the number of planning and env worker processes. Its own file, so that a
2-worker test run (pytest-xdist, whole files per worker) runs it beside test_maniskill_demos.py, not
after it (the two take about as long). Runs in .venv-maniskill."""

from __future__ import annotations

import numpy as np
import pytest

from optional_env import require_or_skip

require_or_skip(
    "sapien",
    "maniskill",
    reason="ManiSkill3 is not installed (these tests run in .venv-maniskill: bash scripts/run.sh test-maniskill)",
)
pytestmark = pytest.mark.maniskill

from policytrim.config import DataConfig, EnvConfig, RolloutConfig, RunConfig  # noqa: E402
from policytrim.data.collect import collect_demos  # noqa: E402


def _collect(tmp_path, workers: int):
    cfg = RunConfig(
        env=EnvConfig(suite="maniskill", tasks=("PickCube-v1", "PushCube-v1"), horizon=250),
        data=DataConfig(episodes=2, max_attempts=5),
        rollout=RolloutConfig(num_workers=workers),
    )
    return collect_demos(cfg, tmp_path / f"demos{workers}")


def test_collection_is_the_same_whatever_the_worker_count(tmp_path):
    """Planning in 1 or 2 worker processes (and the engine's 1 or 2 env workers) gives the same
    demonstrations in the same order, array for array."""
    one, two = _collect(tmp_path, 1), _collect(tmp_path, 2)
    assert one.meta["collection"]["collected"] == {"PickCube-v1": 2, "PushCube-v1": 2}
    assert one.meta["collection"] == two.meta["collection"]
    for field in ("state", "action", "episode_index", "frame_index", "task_index", "length", "seed", "index"):
        assert np.array_equal(getattr(one, field), getattr(two, field)), field
