"""env.suite=maniskill without the simulator: task table, seeds, config errors, the missing-extra
message (the adapter itself is tested in tests/with_maniskill, in .venv-maniskill)."""

from __future__ import annotations

import importlib.util

import pytest

from policytrim.config import ConfigError, EnvConfig
from policytrim.envs import make_env
from policytrim.envs.maniskill import TASKS, InertRenderMaterial, maniskill_seed, resolve_maniskill_tasks
from policytrim.errors import InputError


def test_tasks_resolve_in_order_without_duplicates():
    cfg = EnvConfig(suite="maniskill", tasks=("PickCube-v1, StackCube-v1", "PickCube-v1"))
    assert cfg.tasks == ("PickCube-v1", "StackCube-v1")
    assert resolve_maniskill_tasks(",".join(TASKS)) == tuple(TASKS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tasks=("PickCube",)), "unknown ManiSkill task 'PickCube'"),
        (dict(tasks=("",)), "at least one ManiSkill task"),
        (dict(tasks=("PickCube-v1",), image=True), "state-only"),
    ],
)
def test_bad_maniskill_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(suite="maniskill", **kwargs)


def test_seeds_are_stable_distinct_and_in_maniskills_range():
    seeds = {maniskill_seed(s, i) for s in range(3) for i in range(200)}
    assert len(seeds) == 600 and all(0 <= x < 2**31 for x in seeds)
    assert maniskill_seed(0, 0) == maniskill_seed(0, 0) == 1683347236  # a stable hash, not Python's hash()
    for seed, index in ((-1, 0), (2**31, 0), (0, -1), (0.5, 0)):
        with pytest.raises(InputError):
            maniskill_seed(seed, index)


def test_inert_render_material_accepts_maniskills_calls():
    mat = InertRenderMaterial(base_color=[1, 0, 0, 1])
    mat.set_base_color([1, 1, 1, 1])
    mat.roughness = 0.1
    assert mat.base_color == [1, 0, 0, 1] and mat.roughness == 0.1
    with pytest.raises(AttributeError):
        mat.anything_else  # noqa: B018


@pytest.mark.skipif(importlib.util.find_spec("sapien") is not None, reason="ManiSkill is installed here")
def test_missing_simulator_is_one_clear_error():
    with pytest.raises(InputError, match=r"env.suite=maniskill: install ManiSkill3 .*setup-maniskill"):
        make_env(EnvConfig(suite="maniskill", tasks=("PickCube-v1",)), "PickCube-v1")
