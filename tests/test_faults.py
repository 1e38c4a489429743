"""Simulator and numerical faults during training (issue 7).

- An exception in one env and a hang in another (injected into real Meta-World envs on real worker
  processes) drop the affected groups whole, are counted in the metrics, the hung worker is killed
  and replaced, and training goes on.
- NaN / inf in actions, log-probs, losses or gradients is detected: a chunk with a non-finite
  action fails its trajectory before a simulator sees it (its group is dropped); a non-finite loss
  or gradient skips the optimiser step (logged, counted in ``skipped_steps``) and leaves weights and
  optimiser state untouched; nothing non-finite is ever written to a checkpoint.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_windows, tiny_config
from faults import FaultyEnv
from policytrim.config import GRPOConfig, PolicyConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.io import read_jsonl
from policytrim.policies import load_policy
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine, stable_seed
from policytrim.train import grpo
from policytrim.train.checkpoint import save_checkpoint

TASK = "drawer-close-v3"


def exception_and_hang(env_cfg, task, *, raise_index: int, hang_index: int):
    """Envs that raise at step 3 of episodes from state ``raise_index`` and hang (60 s) at step 3
    of episodes from ``hang_index``. Module level, so that it pickles to worker processes."""
    env = FaultyEnv(make_env(env_cfg, task), raise_index, at_step=3, kind="raise")
    return FaultyEnv(env, hang_index, at_step=3, kind="hang", hang_s=60.0)


def _group_start_index(cfg, stage: str, epoch: int, group: int) -> int:
    """The initial-state index the trainer draws for one group of one epoch (same derivation)."""
    rng = np.random.default_rng(stable_seed(cfg.seed, stage, epoch, "starts"))
    return grpo.draw_starts(cfg, rng, epoch)[group].index


def _assert_finite_checkpoints(stage_dir) -> None:
    checkpoints = sorted(stage_dir.glob("epoch_*"))
    assert checkpoints
    for checkpoint in checkpoints:
        load_policy(checkpoint / "policy")  # refuses non-finite weights
        for name, tensor in load_file(str(checkpoint / "optimizer.safetensors")).items():
            assert torch.isfinite(tensor).all(), f"{checkpoint}: {name}"


@pytest.mark.slow
def test_training_survives_env_exception_hung_worker_and_nan_log_probs(tiny_baseline, tmp_path, caplog):
    stage = dict(epochs=2, eval_every=2, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=2)
    cfg = tiny_config(stage1=stage, rollout=dict(num_workers=2, step_timeout_s=3.0))
    cfg.logging.out = str(tmp_path / "run")
    # epoch 1: an env of group 0 raises; epoch 2: an env of group 1 hangs (its worker is replaced)
    factory = functools.partial(
        exception_and_hang,
        raise_index=_group_start_index(cfg, "extend", 0, 0),
        hang_index=_group_start_index(cfg, "extend", 1, 1),
    )
    engine_factory = functools.partial(RolloutEngine, env_factory=factory)

    # epoch 1's update: the learner's log-probs come out NaN (a numerically broken forward pass)
    updates = []

    def update(policy, *args, **kwargs):
        updates.append(len(updates))
        if len(updates) != 1:
            return grpo.grpo_update(policy, *args, **kwargs)
        real_log_prob = policy.log_prob
        policy.log_prob = lambda *a, **k: real_log_prob(*a, **k) * float("nan")  # this instance, this update only
        try:
            return grpo.grpo_update(policy, *args, **kwargs)
        finally:
            del policy.log_prob

    with caplog.at_level(logging.WARNING):
        summary = grpo.train(
            cfg, "extend", str(tiny_baseline), seams=grpo.TrainerSeams(engine_factory=engine_factory, update=update)
        )

    run = tmp_path / "run"
    records = {r["epoch"]: r for r in read_jsonl(run / "metrics.jsonl")}
    assert sorted(records) == [0, 1, 2] and summary.extend.window in run_windows(cfg)
    first, second = records[1], records[2]
    assert first["dropped_groups"] == 1 and first["replaced_workers"] == 0  # the exception: its group only
    assert second["dropped_groups"] == 1 and second["replaced_workers"] == 1  # the hang: worker replaced
    assert (
        first["update_trajectories"] == second["update_trajectories"] == cfg.rollout.group_size
    )  # the surviving group trained
    assert first["skipped_steps"] == cfg.stage1.update_epochs and second["skipped_steps"] == 0
    assert any("non-finite loss or gradient" in r.message for r in caplog.records)
    assert any("dropped 1 of 2 groups" in r.message for r in caplog.records)

    # the skipped update left the weights alone; the next one trained; every checkpoint is finite
    reference = load_file(str(run / "extend" / "reference" / "policy" / "model.safetensors"))
    after_first = load_file(str(run / "extend" / "epoch_000001" / "policy" / "model.safetensors"))
    after_second = load_file(str(run / "extend" / "epoch_000002" / "policy" / "model.safetensors"))
    assert all(torch.equal(reference[k], after_first[k]) for k in reference)
    assert any(not torch.equal(after_first[k], after_second[k]) for k in reference)
    _assert_finite_checkpoints(run / "extend")


def two_faulty_groups(env_cfg, task, *, first: int, second: int):
    """Envs that raise at step 2 of episodes from state ``first`` or ``second`` (module level: picklable)."""
    return FaultyEnv(FaultyEnv(make_env(env_cfg, task), first, at_step=2), second, at_step=2)


def test_valid_group_fraction_counts_the_dropped_groups(tiny_baseline, tmp_path):
    """2 of 4 groups dropped by simulator faults: at most the 2 survivors carry signal, so the epoch's
    ``valid_group_frac`` is at most 0.5 (it read 1.0 when only the survivors were counted)."""
    stage = dict(epochs=1, eval_every=1, val_episodes=1, checkpoint_every=1, lr=1e-3, update_epochs=1)
    cfg = tiny_config(stage1=stage, rollout=dict(groups_per_epoch=4, group_size=8))
    cfg.logging.out = str(tmp_path / "run")
    first, second = (_group_start_index(cfg, "extend", 0, g) for g in (0, 1))
    factory = functools.partial(two_faulty_groups, first=first, second=second)
    seams = grpo.TrainerSeams(engine_factory=functools.partial(RolloutEngine, env_factory=factory))
    grpo.train(cfg, "extend", str(tiny_baseline), seams=seams)
    epoch = {r["epoch"]: r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")}[1]
    assert epoch["dropped_groups"] == 2
    survivors_with_signal = epoch["update_trajectories"] // cfg.rollout.group_size
    assert epoch["valid_group_frac"] == survivors_with_signal / 4 <= 0.5


# ---------------------------------------------------------------------------------------------
# numerical faults, unit size (an untrained policy, one short real rollout)


@pytest.fixture(scope="module")
def batch():
    """A small policy and one real rollout batch (2 groups of 2, horizon 12)."""
    cfg = tiny_config()
    cfg.env.horizon = 12
    torch.manual_seed(0)
    policy = TinyVLA.from_config(
        PolicyConfig(chunk_size=8, default_window=4, hidden_dim=32, num_layers=1), 39, 4, [INSTRUCTIONS[TASK]]
    )
    starts = initial_states(TASK, 0, 2)
    with RolloutEngine(cfg.env, num_workers=0) as engine:
        traj = engine.run(policy, starts, 2, torch.full((2, 2), 4), "train", seed=0)
    assert traj.num_trajectories == 4
    return policy, traj


def _poisoned(kind: str, policy: TinyVLA):
    """(advantages, cleanup) with the named fault in place."""
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    handles = []
    if kind == "loss":
        advantages = torch.tensor([float("inf"), -1.0, 0.5, -0.5])
    elif kind == "gradient":
        param = next(policy.parameters())
        handles.append(param.register_hook(lambda g: torch.full_like(g, float("nan"))))
    elif kind == "log-prob":
        original = policy.log_prob
        policy.log_prob = lambda *a, **k: original(*a, **k) + float("inf")  # instance attribute
        handles.append(type("Undo", (), {"remove": lambda self: policy.__dict__.pop("log_prob")})())
    return advantages, handles


@pytest.mark.parametrize("kind", ["log-prob", "loss", "gradient"])
def test_non_finite_update_is_skipped_and_logged_and_changes_nothing(batch, kind, caplog):
    policy, traj = batch
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    advantages, handles = _poisoned(kind, policy)
    try:
        with caplog.at_level(logging.WARNING):
            out = grpo.grpo_update(
                policy, None, optimizer, traj, advantages, torch.ones(4, dtype=torch.bool), GRPOConfig(update_epochs=3)
            )
    finally:
        for handle in handles:
            handle.remove()
    assert out["skipped_steps"] == 3
    assert "non-finite loss or gradient" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert optimizer.state_dict()["state"] == {}  # Adam never stepped: no moment estimates to poison
    # and the same batch without the fault trains
    out = grpo.grpo_update(
        policy,
        None,
        optimizer,
        traj,
        torch.tensor([1.0, -1.0, 0.5, -0.5]),
        torch.ones(4, dtype=torch.bool),
        GRPOConfig(update_epochs=1),
    )
    assert out["skipped_steps"] == 0
    policy.load_state_dict(before)


def test_non_finite_action_fails_its_trajectory_before_the_simulator(batch, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo would write MUJOCO_LOG.TXT here had it seen the NaN
    policy, _ = batch
    real_sample = TinyVLA.sample
    calls = []

    class NaNFirstRow(TinyVLA):
        def sample(self, obs, instructions, mode, generators=None):
            out = real_sample(self, obs, instructions, mode, generators)
            if not calls:  # the first policy call: row 0 (group 0) gets a NaN action
                out.actions[0, 0, 0] = float("nan")
            calls.append(1)
            return out

    bad = NaNFirstRow.from_spec(policy.spec())
    bad.load_state_dict(policy.state_dict())
    cfg = tiny_config()
    cfg.env.horizon = 12
    with caplog.at_level(logging.DEBUG, logger="policytrim.rollout"), RolloutEngine(cfg.env, num_workers=0) as engine:
        traj = engine.run(bad, initial_states(TASK, 0, 2), 2, torch.full((2, 2), 4), "train", seed=0)
    assert traj.dropped_groups == 1 and traj.num_groups == 1  # the NaN's group, whole; the other kept
    assert traj.index.tolist() == [1, 1]
    assert "non-finite action from the policy" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no MUJOCO_LOG.TXT: the simulator never stepped a NaN


def test_nothing_non_finite_is_ever_saved(batch, tmp_path):
    policy, _ = batch
    broken = TinyVLA.from_spec(policy.spec())
    broken.load_state_dict(policy.state_dict())
    with torch.no_grad():
        broken.head.log_std.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite values in head.log_std"):
        broken.save_pretrained(tmp_path / "policy")
    assert not (tmp_path / "policy").exists()

    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for p in policy.parameters():  # an optimiser state that overflowed
        optimizer.state[p] = {
            "step": torch.tensor(1.0),
            "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": torch.full_like(p, float("inf")),
        }
    stage_dir = tmp_path / "extend"
    with pytest.raises(ValueError, match="non-finite optimiser state"):
        save_checkpoint(stage_dir, 1, policy, optimizer, {"stage": "extend"})
    assert not stage_dir.exists() or list(stage_dir.iterdir()) == []
