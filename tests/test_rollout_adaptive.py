"""The rollout engine with a window adaptor: a window per call on real Meta-World (identical group
resets, rows executed per chunk bounded by the chosen window, seeding per trajectory, recorded window
log-probs that the adaptor recomputes)."""

from __future__ import annotations

import pytest
import torch

from policytrim.config import EnvConfig
from policytrim.envs.base import InitialState
from policytrim.policies.adaptor import WindowAdaptor
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine

TASK = "reach-v3"
H = 12


@pytest.fixture(scope="module")
def policy_and_adaptor():
    torch.manual_seed(0)
    policy = TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=H,
        default_window=4,
        instructions=["reach the goal position"],
        hidden_dim=32,
        num_layers=1,
    ).eval()
    adaptor = WindowAdaptor(
        state_dim=39,
        action_dim=4,
        chunk_size=H,
        windows=(2, 4, 8, 12),
        initial_window=4,
        initial_mass=0.3,
        hidden_dim=16,
    ).eval()
    return policy, adaptor


def _run(policy, adaptor, num_workers, seed=5, groups=2, G=4):
    env = EnvConfig(tasks=(TASK,), horizon=40)
    starts = [InitialState(TASK, 11, i) for i in range(groups)]
    with RolloutEngine(env, num_workers=num_workers) as engine:
        return engine.run(policy, starts, G, torch.full((groups, G), H), "train", seed, adaptor=adaptor)


def test_windows_are_chosen_per_call_and_bound_the_rows(policy_and_adaptor):
    policy, adaptor = policy_and_adaptor
    tr = _run(policy, adaptor, num_workers=0)
    assert set(tr.chunk_window.tolist()) <= {2, 4, 8, 12}
    assert len(set(tr.chunk_window.tolist())) > 1  # the adaptor really varies its choice
    assert bool((tr.chunk_rows <= tr.chunk_window).all())
    for i in range(tr.num_trajectories):
        mine = tr.chunk_traj == i
        assert int(tr.chunk_rows[mine].sum()) == int(tr.steps[i])  # every executed step is in a chunk
        assert int(mine.sum()) == int(tr.calls[i])
        # all chunks but the last ran their whole window (the episode ends only by success or horizon)
        last = int(tr.chunk_pos[mine].max())
        full = mine & (tr.chunk_pos < last)
        assert torch.equal(tr.chunk_rows[full], tr.chunk_window[full])
    # group members start from the identical state: their first observations are equal
    first = tr.chunk_pos == 0
    obs0 = tr.obs["state"][first]
    for g in range(tr.num_groups):
        assert torch.equal(obs0[g * tr.group_size], obs0[g * tr.group_size + tr.group_size - 1])


def test_recorded_window_log_probs_are_what_the_adaptor_recomputes(policy_and_adaptor):
    policy, adaptor = policy_and_adaptor
    tr = _run(policy, adaptor, num_workers=0)
    recomputed = adaptor.log_prob(tr.obs["state"], tr.chunk_actions, tr.chunk_window)
    torch.testing.assert_close(recomputed, tr.window_logp, rtol=0, atol=1e-6)


def test_per_call_windows_do_not_depend_on_workers(policy_and_adaptor):
    policy, adaptor = policy_and_adaptor
    local = _run(policy, adaptor, num_workers=0)
    pooled = _run(policy, adaptor, num_workers=2)
    assert torch.equal(local.chunk_window, pooled.chunk_window)
    assert torch.equal(local.steps, pooled.steps) and torch.equal(local.calls, pooled.calls)


def test_an_adaptor_that_does_not_fit_is_refused(policy_and_adaptor):
    policy, _ = policy_and_adaptor
    other = WindowAdaptor(state_dim=39, action_dim=4, chunk_size=10, windows=(5, 10), initial_window=5)
    with pytest.raises(ValueError, match="does not fit this policy"):
        _run(policy, other, num_workers=0)


def _run_noise(policy, adaptor, common_noise, G=4):
    env = EnvConfig(tasks=(TASK,), horizon=40)
    starts = [InitialState(TASK, 11, i) for i in range(2)]
    with RolloutEngine(env, num_workers=0) as engine:
        return engine.run(
            policy, starts, G, torch.full((2, G), H), "train", 5, adaptor=adaptor, common_noise=common_noise
        )


def test_common_noise_leaves_the_adaptors_choices_as_the_only_difference(policy_and_adaptor):
    """With common noise every member of a group draws the policy's noise from one seed: under an
    adaptor with one window the members are identical trajectories (without it they differ); a
    sampling adaptor still varies its choices across members (its generators are its own)."""
    policy, adaptor = policy_and_adaptor
    one = WindowAdaptor(state_dim=39, action_dim=4, chunk_size=H, windows=(4,), initial_window=4, initial_mass=1.0)
    for common, identical in ((True, True), (False, False)):
        tr = _run_noise(policy, one, common)
        for g in range(tr.num_groups):
            members = [g * tr.group_size + j for j in range(tr.group_size)]
            chunks = [tr.chunk_actions[tr.chunk_traj == i] for i in members]
            same = all(c.shape == chunks[0].shape and torch.equal(c, chunks[0]) for c in chunks)
            assert same is identical
            if identical:
                assert len({int(tr.steps[i]) for i in members}) == 1
    tr = _run_noise(policy, adaptor, True)
    first = tr.chunk_pos == 0
    assert len(set(tr.chunk_window[first].tolist())) > 1  # members choose differently at their first call
    assert torch.equal(tr.chunk_actions[first][0], tr.chunk_actions[first][1])  # from the same noise
    with pytest.raises(ValueError, match="common_noise needs a window adaptor"):
        _run_noise(policy, None, True)


def test_branching_members_share_everything_but_the_branch_calls_window(policy_and_adaptor):
    """Per-call credit (common noise, branch_below): in every group the members are identical up to
    their group's branch call (same chunks, same greedy windows), each draws its own window there,
    and `chunk_branch` marks exactly the chunks at that call."""
    from policytrim.rollout.engine import branch_call

    policy, adaptor = policy_and_adaptor
    env = EnvConfig(tasks=(TASK,), horizon=40)
    starts = [InitialState(TASK, 11, i) for i in range(4)]
    with RolloutEngine(env, num_workers=0) as engine:
        tr = engine.run(
            policy, starts, 4, torch.full((4, 4), H), "train", 5, adaptor=adaptor, common_noise=True, branch_below=3
        )
    assert tr.chunk_branch is not None and tr.chunk_branch.shape == tr.chunk_pos.shape
    drawn = []
    for g, start in enumerate(starts):
        c = branch_call(5, start, 3)
        members = range(g * 4, g * 4 + 4)
        for i in members:
            mine = tr.chunk_traj == i
            assert torch.equal(tr.chunk_branch[mine], tr.chunk_pos[mine] == c)
        before = [(tr.chunk_traj == i) & (tr.chunk_pos <= c) for i in members]
        first = before[0]
        for sel in before[1:]:
            assert torch.equal(tr.chunk_actions[sel], tr.chunk_actions[first])  # same chunks up to the branch
            assert torch.equal(tr.chunk_window[sel & (tr.chunk_pos < c)], tr.chunk_window[first & (tr.chunk_pos < c)])
        drawn += tr.chunk_window[tr.chunk_branch & (tr.chunk_traj >= g * 4) & (tr.chunk_traj < g * 4 + 4)].tolist()
    assert len(set(drawn)) > 1  # the members' windows at the branch call differ
    with pytest.raises(ValueError, match="branch_below needs common_noise"):
        with RolloutEngine(env, num_workers=0) as engine:
            engine.run(policy, starts[:1], 2, torch.full((1, 2), H), "train", 5, adaptor=adaptor, branch_below=3)
