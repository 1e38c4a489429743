"""Perturbed evaluation: noise is applied where it should be, paired per initial state, bounded,
and image perturbations behave (no simulator needed: a fake env)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from policytrim.envs.base import InitialState, ObsSpec
from policytrim.errors import InputError
from policytrim.eval.robustness import Perturbation, PerturbedEnv, PerturbedEnvFactory, gaussian_blur, occlude


class FakeEnv:
    task, instruction, horizon, action_dim, control_period_s = "reach-v3", "reach", 10, 4, 0.0125

    def __init__(self, image: bool = False):
        self.observation_spec = {"state": ObsSpec((3,), "float32")}
        if image:
            self.observation_spec["image"] = ObsSpec((8, 8, 3), "uint8")
        self.image = image
        self.executed: list[np.ndarray] = []

    def _obs(self):
        obs = {"state": np.zeros(3, np.float32)}
        if self.image:
            obs["image"] = np.full((8, 8, 3), 200, np.uint8)
        return obs

    def reset(self, state):
        self.executed = []
        return self._obs()

    def step(self, action):
        self.executed.append(np.asarray(action))
        return self._obs(), False

    def close(self):
        pass


S0, S1 = InitialState("reach-v3", 2, 0), InitialState("reach-v3", 2, 1)


def rollout(env, state, steps=5):
    seen = [env.reset(state)["state"]]
    for _ in range(steps):
        seen.append(env.step(np.full(4, 0.9, np.float32))[0]["state"])
    return np.stack(seen), np.stack(env.env.executed)


def test_observation_and_actuation_noise_are_paired_per_state():
    p = Perturbation("both", obs_noise=0.1, act_noise=0.5)
    a_obs, a_act = rollout(PerturbedEnv(FakeEnv(), p), S0)
    b_obs, b_act = rollout(PerturbedEnv(FakeEnv(), p), S0)  # another policy, same state: same noise
    c_obs, _ = rollout(PerturbedEnv(FakeEnv(), p), S1)
    assert np.array_equal(a_obs, b_obs) and np.array_equal(a_act, b_act)
    assert not np.allclose(a_obs, c_obs)
    assert 0.03 < a_obs.std() < 0.3  # noise of about the requested size on what the policy sees
    assert np.all(np.abs(a_act) <= 1.0) and not np.allclose(a_act, 0.9)  # noisy, clipped actions


def test_clean_factory_returns_the_plain_env_and_pickles():
    factory = PerturbedEnvFactory(Perturbation(), inner=lambda cfg, task: FakeEnv())
    assert isinstance(factory(None, "reach-v3"), FakeEnv)
    noisy = PerturbedEnvFactory(Perturbation("o", obs_noise=0.1))
    assert pickle.loads(pickle.dumps(noisy)) == noisy
    env = PerturbedEnvFactory(Perturbation("o", obs_noise=0.1), inner=lambda cfg, task: FakeEnv())(None, "reach-v3")
    assert env.task == "reach-v3" and env.horizon == 10 and getattr(env, "terminated", False) is False  # delegated


def test_image_perturbations():
    img = np.full((8, 8, 3), 200, np.uint8)
    assert np.array_equal(gaussian_blur(img, 1.5), img)  # a constant image stays constant
    spot = np.zeros((9, 9, 1), np.uint8)
    spot[4, 4] = 255
    blurred = gaussian_blur(spot, 1.0)
    assert blurred[4, 4, 0] < 255 and blurred[4, 5, 0] > 0 and blurred.sum() == pytest.approx(255, rel=0.05)
    occluded = occlude(img, 0.5, np.random.default_rng(0))
    assert abs((occluded[..., 0] == 127).mean() - 0.5) < 0.1
    env = PerturbedEnv(FakeEnv(image=True), Perturbation("occ", occlusion=0.5))
    assert (env.reset(S0)["image"] == 127).any()
    with pytest.raises(InputError, match="image"):
        PerturbedEnv(FakeEnv(image=False), Perturbation("blur", blur_sigma=1.0))
    with pytest.raises(InputError, match="occlusion"):
        Perturbation("bad", occlusion=1.0)


def test_a_libero_pro_perturbation_is_another_scene_not_a_wrapper():
    """``libero`` sets the env config's LIBERO-PRO scene (no wrapper); refused off LIBERO or when unknown."""
    from policytrim.config import EnvConfig
    from policytrim.eval.robustness import perturbation_from_dict

    p = Perturbation("libero_pro_swap", libero="swap")
    cfg = EnvConfig(suite="libero", tasks=("libero_spatial",))
    assert p.is_clean and PerturbedEnvFactory(p, inner=lambda c, t: "plain")(cfg, cfg.tasks[0]) == "plain"
    assert p.env_config(cfg).libero_perturbation == "swap" and cfg.libero_perturbation == "none"
    assert p.env_config(cfg).tasks == cfg.tasks and Perturbation().env_config(cfg) is cfg
    assert "LIBERO-PRO swap: objects' positions exchanged" in p.describe()
    assert perturbation_from_dict(p.to_dict()) == p
    with pytest.raises(InputError, match="perturbation libero must be swap, object, lan, task"):
        Perturbation("x", libero="blur")
    with pytest.raises(InputError, match="needs env.suite=libero"):
        p.env_config(EnvConfig())
