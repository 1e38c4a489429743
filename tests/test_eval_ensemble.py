"""ACT temporal ensembling: the vectorised wrapper against a plain loop; memory per trajectory;
one call per step in the real engine."""

from __future__ import annotations

import math

import pytest
import torch

from policytrim.config import EnvConfig
from policytrim.envs import initial_states
from policytrim.eval.ensemble import TemporalEnsemble, ensemble_weights
from policytrim.policies.base import ChunkSample
from policytrim.rollout.engine import RolloutEngine


class CountingPolicy:
    """Chunk of call c (per generator) for trajectory b: row r holds 100*b_id + 10*c + r in every
    action dim, so every prediction is recognisable."""

    chunk_size, default_window, max_window, action_dim = 4, 2, 4, 2

    def __init__(self):
        self.calls: dict[int, int] = {}

    def sample(self, obs, instructions, mode, generators=None):
        rows = []
        for g in generators:
            c = self.calls.get(id(g), 0)
            self.calls[id(g)] = c + 1
            base = float(obs["state"][len(rows), 0])
            rows.append(
                torch.stack([torch.full((self.action_dim,), base + 10 * c + r) for r in range(self.chunk_size)])
            )
        actions = torch.stack(rows) / 1000.0
        return ChunkSample(actions=actions, logp=torch.zeros(actions.shape[:2]))


def loop_reference(base: float, t: int, H: int, m: float) -> float:
    """Ensembled action at step t (ACT's loop): predictions for step t from calls s = t-H+1..t,
    oldest first, weights exp(-m i)."""
    preds = [(base + 10 * s + (t - s)) / 1000.0 for s in range(max(0, t - H + 1), t + 1)]
    w = [math.exp(-m * i) for i in range(len(preds))]
    return sum(wi * p for wi, p in zip(w, preds, strict=True)) / sum(w)


def test_weights_oldest_first_and_normalised():
    w = ensemble_weights(3, 0.5)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0] > w[1] > w[2]
    assert ensemble_weights(1).tolist() == [1.0]


@pytest.mark.parametrize("m", [0.01, 0.7])
def test_matches_plain_loop_per_trajectory(m):
    te = TemporalEnsemble(CountingPolicy(), m=m)
    gens = [torch.Generator(), torch.Generator()]
    obs = {"state": torch.tensor([[0.0], [100.0]])}
    for t in range(7):
        out = te.sample(obs, ["x", "x"], "sampled", gens)
        assert out.actions.shape == (2, 4, 2)
        for b, base in enumerate((0.0, 100.0)):
            assert out.actions[b, 0, 0].item() == pytest.approx(loop_reference(base, t, 4, m), abs=1e-6)
    # a new trajectory (new generator) starts with empty memory, in the same batch as an old one
    fresh = torch.Generator()
    out = te.sample({"state": torch.tensor([[0.0], [200.0]])}, ["x", "x"], "sampled", [gens[0], fresh])
    assert out.actions[1, 0, 0].item() == pytest.approx(200.0 / 1000.0)
    assert out.actions[0, 0, 0].item() == pytest.approx(loop_reference(0.0, 7, 4, m), abs=1e-6)


def test_refuses_without_generators_and_bad_m():
    with pytest.raises(ValueError, match="generators"):
        TemporalEnsemble(CountingPolicy()).sample({"state": torch.zeros(1, 1)}, ["x"], "sampled", None)
    with pytest.raises(ValueError):
        TemporalEnsemble(CountingPolicy(), m=-1.0)


class ZeroPolicy:
    """Chunks of zero actions (the arm stays put): episodes run to the horizon."""

    chunk_size, default_window, max_window, action_dim = 5, 5, 5, 4

    def sample(self, obs, instructions, mode, generators=None):
        b = obs["state"].shape[0]
        return ChunkSample(actions=torch.zeros(b, 5, 4), logp=torch.zeros(b, 5))


def test_one_call_per_step_in_the_engine():
    cfg = EnvConfig(tasks=("reach-v3",), horizon=12)
    starts = initial_states("reach-v3", 2, 2)
    with RolloutEngine(cfg, num_workers=0) as engine:
        traj = engine.run(
            TemporalEnsemble(ZeroPolicy()),
            starts,
            1,
            torch.ones(2, 1, dtype=torch.long),
            "sampled",
            0,
            record_chunks=False,
        )
    assert traj.steps.tolist() == [12, 12] and traj.calls.tolist() == [12, 12]
