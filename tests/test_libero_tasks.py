"""LIBERO's task table: a LIBERO run is configured without the simulator installed (every venv).
tests/test_libero.py checks the table against the installed benchmark."""

from __future__ import annotations

import pytest

from policytrim.config import ConfigError, EnvConfig
from policytrim.envs.libero import SUITES, suite_tasks


def test_a_libero_run_is_configured_from_the_table():
    assert [len(suite_tasks(s)) for s in SUITES] == [10, 10, 10, 10, 90]
    cfg = EnvConfig(suite="libero", tasks=("libero_object",), libero_max_steps="paper")
    assert cfg.tasks == tuple(t.address for t in suite_tasks("libero_object")) and cfg.horizon == 160
    assert (
        suite_tasks("libero_10")[2].instruction == "turn on the stove and put the moka pot on it"
    )  # scene prefix dropped
    with pytest.raises(ConfigError, match="unknown LIBERO task"):
        EnvConfig(suite="libero", tasks=("libero_object/no_such_task",))
