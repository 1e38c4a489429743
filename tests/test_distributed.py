"""The data-parallel learner under torchrun (issue 14): `policytrim train` launched by
``torch.distributed.run`` with 2 CPU processes (gloo) gives the same run as one process.

Each rank rolls out half of the epoch's groups; the 1/N of the loss counts the valid trajectories
of both ranks and the gradients are summed over ranks, so the update is the single-process update
up to float32 summation order (two partial sums, then one all-reduce, instead of one sum).

Tolerances. The logged loss and pre-clipping gradient norm must agree to rel 1e-5: this is the
check that catches data-parallel mistakes (a per-rank 1/N with summed gradients doubles the
gradient norm; a missing all-reduce leaves each rank with half the batch's gradient). Parameters after one update: atol 1e-5 (1% of lr = 1e-3). Adam's
first step is lr * g / (|g| + eps) per element, which for an element whose gradient nearly cancels
(|g| ~ eps = 1e-8) amplifies the summation-order error of g by up to lr / eps; measured here: 3 of 8
tensors bit-equal, max difference 8.2e-7, against an update of 1e-3. Rollout outcomes and
validation metrics are compared exactly (per-trajectory seeding: a trajectory's random numbers do
not depend on the rank that runs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_config
from policytrim.config import to_dict
from policytrim.io import read_jsonl
from policytrim.train.grpo import train

OUTCOME_KEYS = ("success_rate", "mean_steps", "mean_window", "mean_calls", "reward", "valid_group_frac", "update_trajectories", "dropped_groups", "env_steps")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process(tiny_baseline, tmp_path):
    stage = dict(epochs=1, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=1)
    cfg = tiny_config(stage1=stage)
    cfg.rollout.groups_per_epoch = 4  # two groups per rank
    cfg.eval.latency_ms = 1.0
    cfg.logging.out = str(tmp_path / "single")
    train(cfg, "extend", str(tiny_baseline))

    cfg.logging.out = str(tmp_path / "ddp")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    script = Path(sys.executable).parent / "policytrim"  # the console script, as a user would run it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), "train", "--config", str(config), "--stage", "extend", "--init", str(tiny_baseline)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single, ddp = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("single", "ddp"))
    assert len(ddp) == len(single) == 2  # one writer: rank 0 (two writers would double the records)
    assert single[0] == ddp[0]  # the starting validation
    for key in OUTCOME_KEYS:
        assert single[1][key] == ddp[1][key], key
    assert single[1]["update_trajectories"] > 0
    for key in ("loss", "grad_norm"):
        assert ddp[1][key] == pytest.approx(single[1][key], rel=1e-5, abs=1e-7), key
    a, b = (load_file(str(tmp_path / name / "extend" / "epoch_000001" / "policy" / "model.safetensors")) for name in ("single", "ddp"))
    start = load_file(str(Path(tiny_baseline) / "model.safetensors"))
    assert a.keys() == b.keys() == start.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    # the update moved the weights by far more than the tolerance (not two copies of the start)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4
    for name in ("extend/result.json", "summary.json"):
        s, d = (json.loads((tmp_path / run / name).read_text()) for run in ("single", "ddp"))
        s.pop("run_dir", None), d.pop("run_dir", None)
        assert s.keys() == d.keys(), name
