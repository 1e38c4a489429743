"""The ManiSkill3 adapter on the real simulator (CPU physics, state only): resets, steps, success,
the no-render-device workaround and the env.suite=maniskill wiring. Runs in .venv-maniskill."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from optional_env import require_or_skip

# sapien, not mani_skill: importing mani_skill here would bind SAPIEN's RenderMaterial before
# policytrim.envs.maniskill can put its no-render-device stand-in in place
require_or_skip(
    "sapien",
    "maniskill",
    reason="ManiSkill3 is not installed (these tests run in .venv-maniskill: bash scripts/run.sh test-maniskill)",
)
pytestmark = pytest.mark.maniskill

from policytrim.config import EnvConfig  # noqa: E402
from policytrim.envs import make_env, worker_env_cap  # noqa: E402
from policytrim.envs.base import OBS_STATE, EnvAdapter, InitialState  # noqa: E402
from policytrim.envs.maniskill import (  # noqa: E402
    STATE_WIDTH,
    TASKS,
    InertRenderMaterial,
    ManiSkillEnv,
    patch_render_material_if_no_device,
    render_device_available,
)


@pytest.fixture(scope="module")
def pick():
    env = ManiSkillEnv("PickCube-v1", horizon=80)
    yield env
    env.close()


def test_workaround_replaces_render_material_only_without_a_device():
    """In a fresh process: the patch happens exactly when SAPIEN finds no render device, replaces
    both names SAPIEN looks the class up by, and a task then builds and steps."""
    code = """
import sapien
from policytrim.envs.maniskill import (
    InertRenderMaterial, ManiSkillEnv, patch_render_material_if_no_device, render_device_available,
)
from policytrim.envs.base import InitialState
import numpy as np
device = render_device_available()
original = sapien.render.RenderMaterial
patched = patch_render_material_if_no_device()
assert patched == (not device), (patched, device)
expected = InertRenderMaterial if patched else original
assert sapien.render.RenderMaterial is expected and sapien.pysapien.render.RenderMaterial is expected
env = ManiSkillEnv("PushCube-v1")
env.reset(InitialState("PushCube-v1", 0, 0))
obs, success = env.step(np.zeros(7, np.float32))
print("patched" if patched else "device", obs["state"].shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] in ("patched", "device")


def test_workaround_leaves_a_working_device_alone(monkeypatch):
    import sapien

    import policytrim.envs.maniskill as ms

    class Sentinel:  # stands for SAPIEN's real class where a device exists
        pass

    monkeypatch.setattr(sapien.render, "RenderMaterial", Sentinel)
    monkeypatch.setattr(sapien.pysapien.render, "RenderMaterial", Sentinel)
    monkeypatch.setattr(ms, "render_device_available", lambda: True)
    assert patch_render_material_if_no_device.__wrapped__() is False
    assert sapien.render.RenderMaterial is Sentinel and sapien.pysapien.render.RenderMaterial is Sentinel
    monkeypatch.setattr(ms, "render_device_available", lambda: False)
    assert patch_render_material_if_no_device.__wrapped__() is True
    assert sapien.render.RenderMaterial is InertRenderMaterial
    assert sapien.pysapien.render.RenderMaterial is InertRenderMaterial


def test_inert_render_material_takes_what_maniskill_gives_it():
    mat = InertRenderMaterial(base_color=[1, 0, 0, 1], roughness=0.5)
    mat.set_base_color([1, 1, 1, 1])
    mat.metallic = 1.0
    assert mat.base_color == [1, 0, 0, 1] and mat.metallic == 1.0
    with pytest.raises(AttributeError):
        mat.not_a_material_attribute  # noqa: B018
    assert render_device_available() in (True, False)


def test_adapter_contract(pick):
    assert isinstance(pick, EnvAdapter)
    assert pick.instruction == TASKS["PickCube-v1"] and pick.action_dim == 7
    assert pick.control_period_s == pytest.approx(0.05)
    obs = pick.reset(InitialState("PickCube-v1", 0, 0))
    assert obs[OBS_STATE].dtype == np.float32 and obs[OBS_STATE].shape == pick.observation_spec[OBS_STATE].shape
    # proprioception: joint positions and velocities (9 + 9) and the TCP pose (7)
    assert pick.proprio_dims[:18] == tuple(range(18)) and len(pick.proprio_dims) == 25
    tcp = pick.layout.parts["extra.tcp_pose"]
    tcp_position = pick.unwrapped.agent.tcp.pose.p.numpy()[0]
    np.testing.assert_allclose(obs[OBS_STATE][tcp[0] : tcp[0] + 3], tcp_position, atol=1e-6)
    obs2, success = pick.step(np.zeros(7, np.float32))
    assert success is False and obs2[OBS_STATE].shape == obs[OBS_STATE].shape
    with pytest.raises(ValueError, match="PushCube"):
        pick.reset(InitialState("PushCube-v1", 0, 0))


def test_same_address_same_observation(pick):
    a = InitialState("PickCube-v1", 3, 5)
    first = pick.reset(a)[OBS_STATE]
    for _ in range(5):
        pick.step(np.array([0.5, -0.5, -1.0, 0.2, 0.0, 0.0, -1.0], np.float32))
    other = pick.reset(InitialState("PickCube-v1", 3, 6))[OBS_STATE]
    again = pick.reset(a)[OBS_STATE]
    fresh = ManiSkillEnv("PickCube-v1")
    try:
        in_fresh = fresh.reset(a)[OBS_STATE]
    finally:
        fresh.close()
    assert np.array_equal(first, again) and np.array_equal(first, in_fresh)
    assert not np.array_equal(first, other)
    seed_other = pick.reset(InitialState("PickCube-v1", 4, 5))[OBS_STATE]
    assert not np.array_equal(first, seed_other)


def test_every_task_state_is_padded_to_one_width():
    """One multi-task policy reads every task: PushCube's 35 entries, then zeros up to STATE_WIDTH."""
    push = ManiSkillEnv("PushCube-v1")
    try:
        state = push.reset(InitialState("PushCube-v1", 0, 0))[OBS_STATE]
        assert push.layout.size == 35 and state.shape == (STATE_WIDTH,)
        assert push.observation_spec[OBS_STATE].shape == (STATE_WIDTH,)
        assert state[:35].any() and not state[35:].any()
    finally:
        push.close()


def test_config_selects_maniskill():
    cfg = EnvConfig(suite="maniskill", tasks=("PickCube-v1,StackCube-v1",), horizon=50)
    assert cfg.tasks == ("PickCube-v1", "StackCube-v1")
    env = make_env(cfg, "StackCube-v1")
    try:
        assert isinstance(env, ManiSkillEnv) and env.horizon == 50 and env.task == "StackCube-v1"
    finally:
        env.close()
    assert 1 <= worker_env_cap(cfg, 2) <= 32
