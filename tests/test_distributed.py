"""The data-parallel learner under torchrun (issue 14): `policytrim train` launched by
``torch.distributed.run`` with 2 CPU processes (gloo) gives the same run as one process, on one
node (``--standalone``) and on two "nodes" of one process each that meet through torchrun's c10d
rendezvous on localhost (issue 31: two torchrun agents, as on two machines; what a real cluster
adds, the network and the shared filesystem, is in docs/scaling.md, "What a real cluster adds").

Each rank rolls out half of the epoch's groups; the 1/N of the loss counts the valid trajectories
of both ranks and the gradients are summed over ranks, so the update is the single-process update
up to float32 summation order (two partial sums, then one all-reduce, instead of one sum).

Tolerances. The logged loss and pre-clipping gradient norm must agree to rel 1e-5: this is the check
that catches data-parallel mistakes (a per-rank 1/N with summed gradients doubles the gradient norm;
a missing all-reduce leaves each rank with half the batch's gradient). Parameters after one update:
atol 1e-5 (1% of lr = 1e-3). Adam's first step is lr * g / (|g| + eps) per element, which for an
element whose gradient nearly cancels (|g| ~ eps = 1e-8) amplifies the summation-order error of g by
up to lr / eps; measured here: 3 of 8 tensors bit-equal, max difference 8.2e-7, against an update of
1e-3. Rollout outcomes and validation metrics are compared exactly (per-trajectory seeding: a
trajectory's random numbers do not depend on the rank that runs it).
"""

from __future__ import annotations

import json
import os
import socket
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

OUTCOME_KEYS = (
    "success_rate",
    "mean_steps",
    "mean_window",
    "mean_calls",
    "reward",
    "valid_group_frac",
    "update_trajectories",
    "dropped_groups",
    "env_steps",
)


def torchrun(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`policytrim ARGS` under ``torch.distributed.run`` with 2 CPU processes (the console script,
    as a user would launch it)."""
    script = Path(sys.executable).parent / "policytrim"
    # PYTHONFAULTHANDLER: a rank that aborts prints its threads' Python stacks (see distributed.exit_after_success)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


STAGE = dict(epochs=2, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=1)


def run_config(out: Path):
    cfg = tiny_config(stage1=STAGE)
    cfg.rollout.groups_per_epoch = 4  # two groups per rank
    cfg.eval.latency_ms = 1.0  # the wall-clock estimate then uses a given latency, not a timing
    cfg.logging.out = str(out)
    return cfg


def train_args(cfg, tmp: Path, baseline: Path) -> list[str]:
    config = tmp / f"{Path(cfg.logging.out).name}.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    return ["train", "--config", str(config), "--stage", "extend", "--init", str(baseline)]


@pytest.fixture(scope="module")
def torchrun_run(tiny_baseline, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch Stage 1 run under torchrun (2 CPU processes, gloo)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    cfg = run_config(tmp / "ddp")
    proc = torchrun(train_args(cfg, tmp, tiny_baseline))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "ddp"


@pytest.fixture(scope="module")
def single_run(tiny_baseline, tmp_path_factory) -> Path:
    """The same run in one process."""
    out = tmp_path_factory.mktemp("single") / "single"
    train(run_config(out), "extend", str(tiny_baseline))
    return out


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process(torchrun_run, single_run, tiny_baseline):
    assert_same_as_one_process(torchrun_run, single_run, tiny_baseline)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_on_two_nodes_with_c10d_rendezvous_matches_one_process(single_run, tiny_baseline, tmp_path):
    """Two torchrun agents (one per "node", one process each) meet at a c10d rendezvous endpoint
    hosted by node 0, as ``torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint HEAD:PORT`` on
    two machines. (``--node-rank`` is for the static rendezvous; c10d assigns ranks itself.)"""
    cfg = run_config(tmp_path / "nodes")
    args = train_args(cfg, tmp_path, tiny_baseline)
    endpoint = f"127.0.0.1:{_free_port()}"
    script = Path(sys.executable).parent / "policytrim"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "policytrim-two-nodes",
                "--rdzv-conf",
                f"is_host={int(node == 0)},join_timeout=120",
                str(script),
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:  # one node failed to start: do not leave the other waiting at the rendezvous
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, (out, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-3000:] + err[-3000:]
    assert_same_as_one_process(tmp_path / "nodes", single_run, tiny_baseline)


def assert_same_as_one_process(ddp_run: Path, single_run: Path, tiny_baseline: Path) -> None:
    single, ddp = (read_jsonl(run / "metrics.jsonl") for run in (single_run, ddp_run))
    assert len(ddp) == len(single) == 3  # one writer: rank 0 (two writers would double the records)
    assert single[0] == ddp[0]  # the starting validation
    for key in OUTCOME_KEYS:  # the first epoch: same rollouts
        assert single[1][key] == ddp[1][key], key
    assert single[1]["update_trajectories"] > 0
    for key in ("loss", "grad_norm"):
        assert ddp[1][key] == pytest.approx(single[1][key], rel=1e-5, abs=1e-7), key
    a, b = (load_file(str(run / "extend/epoch_000001/policy/model.safetensors")) for run in (single_run, ddp_run))
    start = load_file(str(Path(tiny_baseline) / "model.safetensors"))
    assert a.keys() == b.keys() == start.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    # the update moved the weights by far more than the tolerance (not two copies of the start)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4
    for name in ("extend/result.json", "summary.json"):
        s, d = (json.loads((run / name).read_text()) for run in (single_run, ddp_run))
        assert s.keys() == d.keys(), name


@pytest.mark.slow
def test_torchrun_run_killed_mid_update_resumes_to_the_same_run(torchrun_run, tiny_baseline, tmp_path):
    """kill -9 of both ranks in the second epoch's update, then ``--resume`` under torchrun: the same
    metrics and weights as the uninterrupted torchrun run (in-process envs: bit-exact)."""
    killed = tmp_path / "ddp"
    proc = torchrun(
        train_args(run_config(killed), tmp_path, tiny_baseline), {"POLICYTRIM_TEST_KILL_AT": "update.step:2"}
    )
    assert proc.returncode != 0 and "Signal 9 (SIGKILL)" in proc.stderr, proc.stderr[-3000:]
    assert not (killed / "summary.json").exists() and (killed / "extend" / "epoch_000001").is_dir()
    proc = torchrun(["train", "--resume", str(killed)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def drop(records):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]  # wall-clock seconds

    assert drop(read_jsonl(torchrun_run / "metrics.jsonl")) == drop(read_jsonl(killed / "metrics.jsonl"))
    a, b = (
        load_file(str(run / "extend" / "epoch_000002" / "policy" / "model.safetensors"))
        for run in (torchrun_run, killed)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
