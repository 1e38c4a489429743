"""Env adapters: addressed initial states reproduce bit-exactly, splits differ, images upright,
horizon and control period, the generic gymnasium adapter."""

from __future__ import annotations

import numpy as np
import pytest

from policytrim.config import ConfigError, EnvConfig
from policytrim.envs import initial_states, make_env, split_seed
from policytrim.envs.base import EnvAdapter, InitialState
from policytrim.envs.metaworld import MetaWorldEnv, mt1_seed
from policytrim.errors import InputError


@pytest.fixture(scope="module")
def push():
    env = make_env(EnvConfig(tasks=("push-v3",)), "push-v3")
    yield env
    env.close()


def rollout(env, state, actions):
    obs = env.reset(state)
    states, successes = [obs["state"]], []
    for a in actions:
        obs, ok = env.step(a)
        states.append(obs["state"])
        successes.append(ok)
    return np.stack(states), successes


ACTIONS = np.random.default_rng(0).uniform(-1, 1, (40, 4)).astype(np.float32)


def test_adapter_contract(push):
    assert isinstance(push, EnvAdapter)
    assert push.task == "push-v3" and push.instruction == "push the puck to the goal"
    assert push.observation_spec["state"].shape == (39,) and push.observation_spec["state"].dtype == "float32"
    assert push.action_dim == 4 and push.horizon == 200
    assert push.control_period_s == pytest.approx(5 * 0.0025)  # read from the model: frame_skip x timestep
    obs = push.reset(InitialState("push-v3", 0, 0))
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (39,)


def test_same_address_same_trajectory_bit_exact(push):
    a = InitialState("push-v3", 0, 3)
    first, s1 = rollout(push, a, ACTIONS)
    rollout(push, InitialState("push-v3", 0, 4), ACTIONS[::-1])  # something else in between
    again, s2 = rollout(push, a, ACTIONS)
    assert np.array_equal(first, again) and s1 == s2
    other = make_env(EnvConfig(tasks=("push-v3",)), "push-v3")  # a fresh instance, too
    try:
        fresh, _ = rollout(other, a, ACTIONS)
    finally:
        other.close()
    assert np.array_equal(first, fresh)


def test_first_block_is_metaworld_mt1_and_indices_go_past_50(push):
    import metaworld

    mt = metaworld.MT1("push-v3", seed=0)
    raw = mt.train_classes["push-v3"]()
    raw.set_task(mt.train_tasks[7])
    expected, _ = raw.reset()
    raw.close()
    assert np.array_equal(push.reset(InitialState("push-v3", 0, 7))["state"], expected.astype(np.float32))
    firsts = {i: push.reset(InitialState("push-v3", 0, i))["state"] for i in (7, 57, 107)}
    assert not np.array_equal(firsts[7], firsts[57]) and not np.array_equal(firsts[57], firsts[107])
    assert np.array_equal(push.reset(InitialState("push-v3", 0, 57))["state"], firsts[57])
    assert mt1_seed(0, 1) >= 2**31 and mt1_seed(0, 1) != mt1_seed(1, 1)


@pytest.mark.parametrize("task", ["push-v3", "pick-place-v3", "drawer-close-v3", "peg-insert-side-v3"])
def test_initial_state_blocks_are_bit_identical_to_metaworld_mt1(task):
    """Our MT1 blocks draw with one reused env per task (`_mt1_tasks`); every task object must
    pickle to the same bytes as Meta-World's own ``MT1(task, seed)``, for a block-0 seed and a
    derived seed, whatever blocks the reused env drew before, and the global RNG is left alone."""
    import metaworld

    from policytrim.envs.metaworld import _mt1_tasks

    for seed in (3, mt1_seed(11, 2), 3):  # 3 again: after the reused env drew another block
        _mt1_tasks.cache_clear()
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        ours = _mt1_tasks(task, seed)
        assert np.array_equal(np.random.get_state()[1], before)
        theirs = metaworld.MT1(task, seed=seed).train_tasks
        assert [t.env_name for t in ours] == [t.env_name for t in theirs]
        assert [t.data for t in ours] == [t.data for t in theirs]


def test_splits_use_disjoint_seeds_and_different_states(push):
    cfg = EnvConfig(tasks=("push-v3",))
    seeds = {s: split_seed(cfg, s) for s in ("train", "val", "test")}
    assert seeds == {"train": 0, "val": 1, "test": 2}
    with pytest.raises(InputError, match="split must be one of"):
        split_seed(cfg, "dev")
    for index in (0, 60):
        firsts = [push.reset(initial_states("push-v3", seeds[s], 1, start=index)[0])["state"] for s in seeds]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not np.array_equal(firsts[i], firsts[j])
    with pytest.raises(ConfigError, match="disjoint"):
        EnvConfig(train_seed=1, val_seed=1)


def test_initial_states_addresses():
    states = initial_states("reach-v3", 2, 3, start=49)
    assert states == [InitialState("reach-v3", 2, 49), InitialState("reach-v3", 2, 50), InitialState("reach-v3", 2, 51)]
    with pytest.raises(InputError, match="seed"):
        initial_states("reach-v3", -1, 1)


def test_unknown_task_lists_valid_full_names():
    with pytest.raises(ConfigError) as err:
        EnvConfig(tasks=("pushh",))
    assert "reach-v3" in str(err.value) and "push-v3" in str(err.value)
    with pytest.raises(InputError, match="reach-v3"):
        MetaWorldEnv("pushh")


def test_horizon_beyond_metaworld_max_path_length():
    """Meta-World truncates an episode at its max_path_length (500) and refuses the next step; the
    adapter lifts that limit, so a 520-step horizon runs to its end with the arm still moving."""
    env = MetaWorldEnv("reach-v3", horizon=520)
    try:
        env.reset(InitialState("reach-v3", 0, 0))
        limit = type(env.unwrapped).max_path_length
        assert limit < 520
        hand = []
        for t in range(520):
            direction = 1.0 if (t // 25) % 2 == 0 else -1.0  # back and forth: never pinned at the workspace edge
            obs, _ = env.step(np.array([direction, 0.0, 0.0, 0.0], np.float32))
            hand.append(obs["state"][:3].copy())
        assert env.unwrapped.curr_path_length == 520
        assert np.linalg.norm(hand[-1] - hand[limit]) > 1e-3  # steps past Meta-World's limit still move the arm

        env.reset(InitialState("reach-v3", 0, 0))
        env.unwrapped.max_path_length = limit  # what the adapter lifts: Meta-World's own limit
        for _ in range(limit):
            env.step(np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="reset the env"):
            env.step(np.zeros(4, np.float32))
    finally:
        env.close()


def test_image_observation_is_upright_and_not_mirrored():
    """Checks the rendered image against a pinhole projection of the scene.

    The puck is painted magenta; its pixel centroid must sit where a right-handed camera model of
    ``corner2`` (rolled upright) projects its centre, within 3 px at 128 px. A point 10 cm above the
    puck must project higher in the image. A vertical flip, a horizontal mirror or the raw upside-down
    render would put the centroid 7+ px away (checked below, too).
    """
    import mujoco

    size = 128
    env = MetaWorldEnv("push-v3", image=True, image_size=size, camera="corner2")
    try:
        obs = env.reset(InitialState("push-v3", 0, 0))
        assert obs["image"].shape == (size, size, 3) and obs["image"].dtype == np.uint8
        m, d = env.unwrapped.model, env.unwrapped.data
        geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "objGeom")
        m.geom_matid[geom] = -1
        m.geom_rgba[geom] = [1, 0, 1, 1]
        m.site_rgba[:, 3] = 0
        img = env.render().astype(int)
        cam = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        rot, pos = d.cam_xmat[cam].reshape(3, 3), d.cam_xpos[cam]
        focal = 0.5 * size / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
        upright = -1.0 if rot[2, 1] < 0 else 1.0  # camera's y axis points down in the world: roll it

        def project(p):
            x, y, z = rot.T @ (p - pos)  # camera looks along -z, x right, y up
            return size / 2 - upright * focal * y / -z, size / 2 + upright * focal * x / -z  # (row, col)

        rows, cols = np.nonzero((img[..., 0] > 150) & (img[..., 2] > 150) & (img[..., 1] < 90))
        assert len(rows) >= 3, "the painted puck is not visible"
        centroid = np.array([rows.mean(), cols.mean()]) + 0.5
        expected = np.array(project(d.geom_xpos[geom]))
        assert np.abs(centroid - expected).max() < 3.0, (centroid, expected)
        above = np.array(project(d.geom_xpos[geom] + [0, 0, 0.1]))
        assert above[0] < expected[0] - 2  # up in the world is up in the image
        for wrong in (
            (size - centroid[0], centroid[1]),
            (centroid[0], size - centroid[1]),
            (size - centroid[0], size - centroid[1]),
        ):
            assert np.abs(np.array(wrong) - expected).max() > 5.0
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
# generic gymnasium adapter, with a tiny env defined here


def _register_line_env():
    import gymnasium as gym

    class LineEnv(gym.Env):
        """Fake 1-D env: move a point to a random target; success within 0.05; falls off at |x| > 2.05."""

        metadata = {"render_fps": 50, "render_modes": []}
        instruction = "move the point to the target"

        def __init__(self):
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.x, self.target = 0.0, float(self.np_random.uniform(-1, 1))
            return np.array([self.x, self.target], np.float32), {}

        def step(self, action):
            self.x += 0.1 * float(action[0])
            ok = abs(self.x - self.target) < 0.05
            return np.array([self.x, self.target], np.float32), 0.0, abs(self.x) > 2.05, False, {"success": ok}

    if "PolicytrimLine-v0" not in gym.registry:
        gym.register("PolicytrimLine-v0", entry_point=LineEnv)


def test_gym_adapter_success_reset_and_termination():
    _register_line_env()
    cfg = EnvConfig(suite="gym", gym_id="PolicytrimLine-v0", horizon=50)
    env = make_env(cfg, "PolicytrimLine-v0")
    assert env.instruction == "move the point to the target" and env.control_period_s == pytest.approx(0.02)
    assert env.observation_spec["state"].shape == (2,)
    a, b = InitialState("PolicytrimLine-v0", 0, 0), InitialState("PolicytrimLine-v0", 0, 1)
    oa = env.reset(a)["state"]
    assert np.array_equal(env.reset(a)["state"], oa) and not np.array_equal(env.reset(b)["state"], oa)
    obs = env.reset(a)
    ok = False
    for _ in range(50):
        obs, ok = env.step(np.array([np.clip((obs["state"][1] - obs["state"][0]) * 10, -1, 1)], np.float32))
        if ok:
            break
    assert ok
    env.reset(a)
    for _ in range(25):
        _, ok = env.step(np.array([1.0], np.float32) * np.sign(-oa[1] or 1))
        if env.terminated:
            break
    assert env.terminated and not ok
    with pytest.raises(InputError, match="one task"):
        make_env(cfg, "push-v3")


def test_unknown_camera_lists_cameras():
    with pytest.raises(InputError, match="corner2"):
        MetaWorldEnv("push-v3", image=True, camera="nope")
