"""`grpo_update`'s diagnostics on real tiny policies and a real rollout: the learner's recomputed
log-probs equal the rollout's before the first optimiser step (ratio 1, nothing clipped), so a spike of
``approx_kl`` comes from the update steps that follow, and a step that hit the clip hard is flagged."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from policytrim.config import GRPOConfig, PolicyConfig
from policytrim.envs import initial_states
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine
from policytrim.train import grpo

TASK = "drawer-close-v3"
HEADS = ["gaussian", "flow", "token_parallel", "token_ar"]


@pytest.fixture(scope="module", params=HEADS)
def rollout(request):
    """An untrained policy of one head and one real rollout batch of it (2 groups of 2, horizon 16)."""
    cfg = tiny_config()
    cfg.env.horizon = 16
    torch.manual_seed(0)
    policy_cfg = PolicyConfig(
        head=request.param,
        chunk_size=8,
        default_window=4,
        hidden_dim=32,
        num_layers=1,
        flow_steps=4,
        token_dim=16,
        token_layers=1,
    )
    policy = TinyVLA.from_config(policy_cfg, 39, 4, [INSTRUCTIONS[TASK]])
    with RolloutEngine(cfg.env, num_workers=0) as engine:
        traj = engine.run(policy, initial_states(TASK, 0, 2), 2, torch.tensor([[4, 8], [4, 8]]), "train", seed=0)
    assert traj.num_trajectories == 4 and traj.num_chunks > 0
    return policy, traj


ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5])
VALID = torch.ones(4, dtype=torch.bool)


def test_first_minibatch_recomputes_the_rollout_log_probs(rollout):
    """One update step: every diagnostic is measured before the optimiser moves, so the ratio is 1."""
    policy, traj = rollout
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    out = grpo.grpo_update(
        policy, None, optimizer, traj, ADVANTAGES, VALID, GRPOConfig(update_epochs=1, micro_batch_trajectories=2)
    )
    policy.load_state_dict(before)
    assert out["logp_gap"] < 1e-4, "the learner's log-prob differs from the rollout's before any update"
    assert out["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert out["clip_frac"] == 0.0 and out["clip_frac_max"] == 0.0 and not out["clip_hard"]
    assert abs(out["approx_kl"]) < 1e-6


def test_a_step_that_hits_the_clip_hard_is_flagged(rollout):
    """Large steps (lr 0.05, 4 update epochs on the same batch): later steps clip, their KL grows,
    and the epoch's worst step is recorded beside the mean."""
    policy, traj = rollout
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=0.05)
    out = grpo.grpo_update(policy, None, optimizer, traj, ADVANTAGES, VALID, GRPOConfig(update_epochs=4))
    policy.load_state_dict(before)
    assert out["skipped_steps"] == 0
    assert out["clip_frac_max"] >= out["clip_frac"] > 0.0 and out["approx_kl_max"] >= out["approx_kl"]
    assert out["clip_hard"] == (out["clip_frac_max"] > grpo.CLIP_HARD_FRACTION)
    assert out["clip_hard"], out  # lr 0.05 moves these tiny policies far past the 0.2 clip
