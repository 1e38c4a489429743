"""TinyVLA from pixels: proprioception + camera + instruction, on-demand rendering, and the whole
command chain (collect -> pretrain -> train -> eval) from 64 px Meta-World images at tiny size."""

from __future__ import annotations

import json

import pytest
import torch

from policytrim.cli import main
from policytrim.config import ConfigError, EnvConfig, PolicyConfig, RunConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.metaworld import PROPRIO_DIMS
from policytrim.policies import load_policy
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine

TASK = "drawer-close-v3"


def test_an_image_policy_reads_proprioception_only_unless_told_otherwise():
    assert RunConfig(env=EnvConfig(image=True)).policy_state_dims == PROPRIO_DIMS
    assert RunConfig(env=EnvConfig(image=False)).policy_state_dims is None
    assert RunConfig(env=EnvConfig(image=True), policy=PolicyConfig(state_input="full")).policy_state_dims is None
    assert RunConfig(policy=PolicyConfig(state_input="proprio")).policy_state_dims == PROPRIO_DIMS
    with pytest.raises(ConfigError, match="state_input=proprio needs env.suite=metaworld"):
        RunConfig(env=EnvConfig(suite="gym", gym_id="CartPole-v1"), policy=PolicyConfig(state_input="proprio"))


def test_state_dims_policy_ignores_the_other_state_entries():
    policy = TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=3,
        default_window=1,
        instructions=["pull the drawer open"],
        hidden_dim=16,
        num_layers=1,
        state_dims=PROPRIO_DIMS,
    )
    state = torch.randn(2, 39, generator=torch.Generator().manual_seed(0))
    other = state.clone()
    other[:, 4:18] += 5.0  # object positions: not proprioception
    a = policy.sample({"state": state}, ["pull the drawer open"] * 2, "deterministic").actions
    assert torch.equal(a, policy.sample({"state": other}, ["pull the drawer open"] * 2, "deterministic").actions)
    other[:, 0] += 5.0  # the hand: proprioception
    assert not torch.equal(a, policy.sample({"state": other}, ["pull the drawer open"] * 2, "deterministic").actions)
    assert TinyVLA.from_spec(policy.spec()).state_dims == list(PROPRIO_DIMS)


def test_random_shift_moves_each_image_by_at_most_pad_pixels():
    from policytrim.train.bc import random_shift

    ramp = (
        (torch.arange(16).reshape(1, 16, 1, 1) * 16 + torch.arange(16).reshape(1, 1, 16, 1))
        .expand(64, 16, 16, 3)
        .to(torch.uint8)
    )
    out = random_shift(ramp, 2, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape and out.dtype == torch.uint8
    assert torch.equal(random_shift(ramp, 0), ramp)
    # the centre pixel (row 8, col 8 = 136) lands on a neighbour at most 2 rows / cols away
    dy, dx = out[:, 8, 8, 0].long() // 16 - 8, out[:, 8, 8, 0].long() % 16 - 8
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10
    # a shift moves the whole image: each output is the input translated (edges repeated)
    for i in range(4):
        y, x = int(dy[i]), int(dx[i])
        want = ramp[0, (torch.arange(16) + y).clamp(0, 15)][:, (torch.arange(16) + x).clamp(0, 15)]
        assert torch.equal(out[i], want)


class RenderEveryStep:
    """Env factory (picklable) whose envs render every step, as the adapter did before
    `observes_on_demand`: the reference the on-demand rollouts must match exactly."""

    def __call__(self, env_cfg, task):
        return _EveryStep(make_env(env_cfg, task))


class _EveryStep:
    def __init__(self, env):
        self.env = env
        for name in ("task", "instruction", "horizon", "action_dim", "observation_spec", "control_period_s"):
            setattr(self, name, getattr(env, name))

    def reset(self, state):
        return self.env.reset(state)

    def step(self, action):
        return self.env.step(action)

    def close(self):
        self.env.close()


def test_rendering_only_the_observations_a_chunk_starts_from_changes_nothing():
    env_cfg = EnvConfig(tasks=(TASK,), horizon=13, image=True, image_size=32)
    policy = TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=4,
        default_window=3,
        instructions=["push the drawer closed"],
        hidden_dim=16,
        num_layers=1,
        image_shape=(32, 32, 3),
        state_dims=PROPRIO_DIMS,
    )
    starts = initial_states(TASK, 0, 2)
    windows = torch.tensor([[3, 3], [4, 4]])
    runs = []
    for factory in (None, RenderEveryStep()):
        with RolloutEngine(env_cfg, num_workers=0, env_factory=factory) as engine:
            runs.append(engine.run(policy, starts, 2, windows, "train", seed=5))
    lazy, eager = runs
    assert lazy.num_chunks == eager.num_chunks > 4
    assert torch.equal(lazy.obs["image"], eager.obs["image"]) and torch.equal(lazy.obs["state"], eager.obs["state"])
    assert torch.equal(lazy.steps, eager.steps) and torch.equal(lazy.success, eager.success)
    assert lazy.obs["image"].float().std() > 0  # real frames, not blanks


def test_train_refuses_an_image_policy_without_images_before_writing(tmp_path, capsys):
    policy = TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=4,
        default_window=2,
        instructions=["push the drawer closed"],
        hidden_dim=16,
        num_layers=1,
        image_shape=(32, 32, 3),
    )
    policy.save_pretrained(tmp_path / "p")
    flags = [
        "--init",
        str(tmp_path / "p"),
        "--env.tasks",
        TASK,
        "--policy.hidden-dim",
        "16",
        "--policy.num-layers",
        "1",
        "--policy.chunk-size",
        "4",
        "--policy.default-window",
        "2",
        "--stage",
        "trim",
    ]
    for extra, message in (([], "no --env.image"), (["--env.image", "--env.image-size", "64"], "--env.image-size 64")):
        with pytest.raises(SystemExit) as exc:
            main(["train", *flags, *extra, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and message in err[0] and "--env.image-size 32" in err[0], err
        assert not (tmp_path / "run").exists()


def test_perturbed_image_envs_render_on_demand_too():
    """Blur / occlusion wrap the adapter: chunk-start images are still rendered, and perturbed."""
    from policytrim.eval.robustness import Perturbation, PerturbedEnvFactory

    env_cfg = EnvConfig(tasks=(TASK,), horizon=9, image=True, image_size=32)
    policy = TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=4,
        default_window=3,
        instructions=["push the drawer closed"],
        hidden_dim=16,
        num_layers=1,
        image_shape=(32, 32, 3),
        state_dims=PROPRIO_DIMS,
    )
    starts = initial_states(TASK, 0, 1)
    runs = []
    for factory in (None, PerturbedEnvFactory(Perturbation("occ", occlusion=0.5))):
        with RolloutEngine(env_cfg, num_workers=0, env_factory=factory) as engine:
            runs.append(engine.run(policy, starts, 2, torch.tensor([[3, 3]]), "deterministic", seed=1))
    clean, occluded = runs
    assert clean.num_chunks == occluded.num_chunks == 6
    grey = (occluded.obs["image"] == 127).all(-1).flatten(1).sum(1)
    assert (grey >= 0.4 * 32 * 32).all() and not torch.equal(clean.obs["image"], occluded.obs["image"])


@pytest.mark.slow
def test_collect_pretrain_train_eval_from_64px_images(tmp_path, capsys):
    common = [
        "--env.tasks",
        TASK,
        "--env.image",
        "--env.image-size",
        "64",
        "--env.horizon",
        "40",
        "--rollout.num-workers",
        "0",
        "--policy.chunk-size",
        "6",
        "--policy.default-window",
        "2",
        "--policy.hidden-dim",
        "32",
        "--policy.num-layers",
        "1",
        "--logging.no-progress",
        "--logging.no-tensorboard",
    ]
    demos, base, run, ev = (tmp_path / n for n in ("demos", "base", "run", "eval"))
    assert (
        main(
            [
                "collect",
                *common,
                "--env.horizon",
                "150",
                "--data.episodes",
                "3",
                "--data.no-suboptimal",
                "--out",
                str(demos),
            ]
        )
        == 0
    )
    meta = json.loads((demos / "meta.json").read_text())
    assert meta["features"]["observation.image"] == {"shape": [64, 64, 3], "dtype": "uint8"}

    assert (
        main(
            [
                "pretrain",
                *common,
                "--data",
                str(demos),
                "--pretrain.iterations",
                "30",
                "--pretrain.batch-size",
                "16",
                "--pretrain.eval-episodes",
                "0",
                "--out",
                str(base),
            ]
        )
        == 0
    )
    spec = json.loads((base / "config.json").read_text())
    assert spec["image_shape"] == [64, 64, 3] and spec["state_dims"] == list(PROPRIO_DIMS)

    stage = [
        "--stage1.epochs",
        "1",
        "--stage2.epochs",
        "1",
        "--stage1.val-episodes",
        "1",
        "--stage2.val-episodes",
        "1",
        "--rollout.group-size",
        "2",
        "--rollout.groups-per-epoch",
        "1",
        "--stage2.budget",
        "40",
    ]
    assert main(["train", *common, *stage, "--init", str(base), "--stage", "both", "--out", str(run)]) == 0
    trained = load_policy(run / "final" / "policy")
    assert trained.image_shape == (64, 64, 3) and trained.state_dims == list(PROPRIO_DIMS)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "logp_gap" in r] == ["extend", "trim"]
    assert all(r["logp_gap"] < 1e-3 for r in records if "logp_gap" in r)

    assert (
        main(
            [
                "eval",
                *common,
                "--policy",
                str(run / "final" / "policy"),
                "--baseline",
                str(base),
                "--episodes",
                "2",
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["overall"]["episodes"] == 2
