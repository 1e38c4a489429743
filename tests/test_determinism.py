"""Determinism (issue 7): the same config and seed on CPU give the same metrics, decisions and
weights, run twice in one process (tiny size, both stages): in-process envs, and env worker
processes with ``rollout.lockstep`` (served as they answer, workers make the batching of policy calls
follow their timing, which moves results in the 6th digit)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from policytrim.io import read_jsonl
from policytrim.train.grpo import train
from policytrim.train.logger import TIMING_KEYS


def _canonical(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if k not in TIMING_KEYS and k != "run_dir"}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_same_config_and_seed_give_the_same_run(tiny_baseline, tmp_path, workers):
    stage = dict(epochs=1, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=2)
    runs = []
    for name in ("first", "second"):
        cfg = tiny_config(stage1=stage, stage2=stage)
        cfg.rollout.num_workers, cfg.rollout.lockstep = workers, workers > 0
        cfg.eval.latency_ms = 1.0  # the wall-clock estimate then uses a given latency, not a timing
        cfg.logging.out = str(tmp_path / name)
        summary = train(cfg, "both", str(tiny_baseline))
        runs.append(tmp_path / name)
        assert summary.trim.budget > 0
    first, second = runs
    records = [_canonical(read_jsonl(run / "metrics.jsonl")) for run in runs]
    assert len(records[0]) == 4 and records[0] == records[1]
    for name in ("summary.json", "extend/result.json", "trim/result.json", "trim/budget.json"):
        assert _canonical(json.loads((first / name).read_text())) == _canonical(
            json.loads((second / name).read_text())
        ), name
    for name in ("final/policy", "extend/epoch_000001/policy", "trim/epoch_000001/policy"):
        a, b = (load_file(str(run / name / "model.safetensors")) for run in runs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (load_file(str(run / "trim" / "epoch_000001" / "optimizer.safetensors")) for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
