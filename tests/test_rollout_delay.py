"""Stale chunks in training (`rollout.delay`): the rollout engine executes what the asynchronous robot
loop of `policytrim.eval.realtime` executes when every call takes d control periods and the next chunk
is requested d actions early -- each chunk after the first predicted from the observation d actions
before the previous one ends, its first d rows skipped -- on real Meta-World with a real TinyVLA;
the learner's log-probs cover exactly the rows that ran; the trainer runs with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from policytrim.config import ConfigError, GRPOConfig, PolicyConfig, RolloutConfig
from policytrim.envs import initial_states
from policytrim.envs.base import OBS_STATE, InitialState
from policytrim.envs.metaworld import MetaWorldEnv
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.errors import InputError
from policytrim.eval.realtime import DeployTiming, policy_infer, run_timed_episode
from policytrim.io import read_jsonl
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine
from policytrim.rollout.types import Trajectories
from policytrim.train import grpo

TASK = "reach-v3"
HORIZON = 40


def tiny_policy(head: str = "gaussian") -> TinyVLA:
    torch.manual_seed(0)
    cfg = PolicyConfig(head=head, chunk_size=8, default_window=6, hidden_dim=32, num_layers=1, flow_steps=4)
    return TinyVLA.from_config(cfg, 39, 4, [INSTRUCTIONS[TASK]]).eval()


@pytest.mark.parametrize("delay", [1, 2])
def test_the_engine_runs_the_chunks_the_async_robot_loop_runs(delay):
    """Deterministic mode: a chunk is a function of its observation, so the same observations at
    every call mean the same executed actions; the two loops must agree on every one of them."""
    policy = tiny_policy()
    state = initial_states(TASK, 0, 1)[0]
    cfg = tiny_config()
    cfg.env.tasks, cfg.env.horizon = (TASK,), HORIZON
    with RolloutEngine(cfg.env, num_workers=0, delay=delay) as engine:
        traj = engine.run(policy, [state], 1, torch.tensor([[6]]), "deterministic", seed=0)

    seen: list[np.ndarray] = []
    infer = policy_infer(policy, "deterministic")

    def recording(observation, instruction):
        seen.append(np.asarray(observation[OBS_STATE]).copy())
        return infer(observation, instruction)

    env = MetaWorldEnv(TASK, horizon=HORIZON)
    try:
        timing = DeployTiming(window=6, mode="async", threshold=delay, latency_s=delay * env.control_period_s)
        ep = run_timed_episode(env, recording, state, timing)
    finally:
        env.close()

    assert int(traj.steps[0]) == ep.steps == HORIZON and not ep.success
    assert int(traj.calls[0]) == ep.calls == len(seen) == traj.num_chunks
    assert np.array_equal(traj.obs[OBS_STATE].numpy(), np.stack(seen))  # bit-identical states at every call
    assert list(ep.staleness) == [0] + [delay] * (ep.calls - 1)
    assert traj.chunk_offset.tolist() == [0] + [delay] * (ep.calls - 1)
    rows = traj.chunk_rows.tolist()
    assert rows[0] == 6 and set(rows[1:-1]) == {6 - delay} and sum(rows) == HORIZON
    # without the delay the states at the calls differ: the comparison above is not vacuous
    with RolloutEngine(cfg.env, num_workers=0) as engine:
        fresh = engine.run(policy, [state], 1, torch.tensor([[6]]), "deterministic", seed=0)
    assert not np.array_equal(fresh.obs[OBS_STATE][1].numpy(), traj.obs[OBS_STATE][1].numpy())


def test_worker_processes_give_the_same_stale_rollout_as_in_process():
    policy = tiny_policy()
    starts = initial_states(TASK, 0, 2)
    cfg = tiny_config()
    cfg.env.tasks, cfg.env.horizon = (TASK,), HORIZON
    out = {}
    for workers in (0, 2):
        with RolloutEngine(cfg.env, num_workers=workers, delay=2, pipeline=False) as engine:
            out[workers] = engine.run(policy, starts, 2, torch.tensor([[6, 8], [8, 6]]), "train", seed=5)
    a, b = out[0], out[2]
    assert torch.equal(a.steps, b.steps) and torch.equal(a.calls, b.calls)
    assert torch.equal(a.chunk_offset, b.chunk_offset) and torch.equal(a.chunk_rows, b.chunk_rows)
    assert torch.equal(a.obs[OBS_STATE], b.obs[OBS_STATE])


def test_the_row_mask_covers_the_rows_that_ran():
    traj = Trajectories(
        task=[TASK],
        instruction=[""],
        seed=torch.zeros(1, dtype=torch.long),
        index=torch.zeros(1, dtype=torch.long),
        group=torch.zeros(1, dtype=torch.long),
        window=torch.tensor([6]),
        success=torch.zeros(1, dtype=torch.bool),
        steps=torch.tensor([12]),
        calls=torch.tensor([3]),
        horizon=12,
        group_size=1,
        chunk_traj=torch.zeros(3, dtype=torch.long),
        chunk_pos=torch.arange(3),
        chunk_rows=torch.tensor([6, 4, 2]),
        chunk_offset=torch.tensor([0, 2, 2]),
        old_logp=torch.zeros(3, 8),
    )
    mask = traj.chunk_row_mask()
    assert mask.int().tolist() == [
        [1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
    ]
    traj.chunk_offset = torch.zeros(0, dtype=torch.long)  # not recorded: every chunk starts at row 0
    assert traj.chunk_row_mask()[1].int().tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("head", ["gaussian", "flow"])
def test_the_learner_recomputes_the_stale_rows_log_probs(head):
    policy = tiny_policy(head)
    cfg = tiny_config()
    cfg.env.tasks, cfg.env.horizon = (TASK,), 24
    with RolloutEngine(cfg.env, num_workers=0, delay=2) as engine:
        traj = engine.run(policy, initial_states(TASK, 0, 2), 2, torch.tensor([[6, 8], [6, 8]]), "train", seed=0)
    assert (traj.chunk_offset[traj.chunk_pos > 0] == 2).all()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    out = grpo.grpo_update(
        policy,
        None,
        optimizer,
        traj,
        torch.tensor([1.0, -1.0, 0.5, -0.5]),
        torch.ones(4, dtype=torch.bool),
        GRPOConfig(update_epochs=1),
    )
    policy.load_state_dict(before)
    assert out["logp_gap"] < 1e-4 and out["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert int(traj.chunk_row_mask().sum()) == int(traj.steps.sum())  # every executed row, once


def test_a_window_too_short_for_the_delay_is_one_clear_error():
    policy = tiny_policy()
    cfg = tiny_config()
    cfg.env.tasks = (TASK,)
    with RolloutEngine(cfg.env, num_workers=0, delay=3) as engine:
        with pytest.raises(InputError, match="must be > 2 x 3 = 6"):
            engine.run(policy, [InitialState(TASK, 0, 0)], 1, torch.tensor([[6]]), "train", seed=0)
    with pytest.raises(ConfigError, match="rollout.delay"):
        RolloutConfig(delay=-1)


def test_training_with_stale_chunks(tiny_baseline, tmp_path):
    """Stage 2 for two epochs with rollout.delay = 1 (the tiny baseline: H = 8, k = 4)."""
    stage = dict(epochs=2, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3)
    cfg = tiny_config(stage2=stage)
    cfg.rollout.delay = 1
    cfg.logging.out = str(tmp_path / "run")
    grpo.train(cfg, "trim", str(tiny_baseline))
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "logp_gap" in r]
    assert len(records) == 2 and all(r["logp_gap"] < 1e-3 for r in records)
