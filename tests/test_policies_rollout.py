"""TinyVLA through the real rollout engine on Meta-World: the learner's recomputed log-probs of
the executed rows equal the rollout's (ratio 1 ± 1e-5, float64), whatever the learner's batching."""

import pytest
import torch

from policytrim.config import EnvConfig, PolicyConfig
from policytrim.envs import initial_states
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine


@pytest.mark.slow
@pytest.mark.parametrize("head", ["gaussian", "flow"])
def test_rollout_log_probs_are_recomputed_exactly(head):
    env = EnvConfig(tasks=("reach-v3", "push-v3"), horizon=24)
    torch.manual_seed(0)
    policy = TinyVLA.from_config(
        PolicyConfig(head=head, chunk_size=6, default_window=2, hidden_dim=32, num_layers=2, flow_steps=4),
        39,
        4,
        [INSTRUCTIONS[t] for t in env.tasks],
    ).double()
    starts = initial_states("reach-v3", 1, 1) + initial_states("push-v3", 1, 1)
    windows = torch.tensor([[2, 5], [3, 6]])
    with RolloutEngine(env, num_workers=0) as engine:
        traj = engine.run(policy, starts, 2, windows, "train", seed=0, record_chunks=True)
    mask = traj.chunk_row_mask()
    assert traj.num_chunks > 0 and mask.any()
    perm = torch.randperm(traj.num_chunks, generator=torch.Generator().manual_seed(1))
    instructions = traj.chunk_instruction
    for idx in torch.tensor_split(perm, 3):
        obs = {k: v[idx] for k, v in traj.obs.items()}
        replay = {k: v[idx] for k, v in traj.replay.items()}
        logp = policy.log_prob(obs, [instructions[i] for i in idx.tolist()], replay, mask[idx])
        ratio = torch.exp(logp - traj.old_logp[idx].to(logp.dtype))[mask[idx]]
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0), (ratio.min(), ratio.max())
