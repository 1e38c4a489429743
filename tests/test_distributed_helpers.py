"""`policytrim.train.distributed` helpers with 2 real gloo processes on uneven shares: a rank whose
groups were all dropped, a parameter with a gradient on one rank only, an error on rank 0.
(`tests/test_distributed.py` runs the whole trainer under torchrun.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from policytrim.errors import InputError
from policytrim.rollout.types import Trajectories
from policytrim.train import distributed

TASKS = ["reach-v3", "push-v3"]


def _trajectories(
    task_ids: list[int], success: list[bool], steps: list[int], dropped: int, env_steps: int
) -> Trajectories:
    n = len(task_ids)
    return Trajectories(
        task=[TASKS[t] for t in task_ids],
        instruction=["x"] * n,
        seed=torch.zeros(n, dtype=torch.long),
        index=torch.arange(n),
        group=torch.arange(n) // 2,
        window=torch.full((n,), 3),
        success=torch.tensor(success, dtype=torch.bool),
        steps=torch.tensor(steps, dtype=torch.long),
        calls=torch.tensor(steps, dtype=torch.long) // 3,
        horizon=100,
        group_size=2,
        env_steps=env_steps,
        dropped_groups=dropped,
    )


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        result = {"shard": [distributed.shard(5).start, distributed.shard(5).stop]}
        # rank 0: two groups; rank 1: its only group was dropped
        traj = (
            _trajectories([0, 0, 1, 1], [True, False, True, True], [40, 100, 30, 50], 0, 220)
            if rank == 0
            else _trajectories([], [], [], 1, 17)
        )
        everyone, mine = distributed.gather_outcomes(traj, TASKS)
        result.update(
            task=everyone.task,
            steps=everyone.steps.tolist(),
            success=everyone.success.tolist(),
            groups=everyone.num_groups,
            dropped=everyone.dropped_groups,
            env_steps=everyone.env_steps,
            mine=[mine.start, mine.stop],
            n=distributed.global_sum(traj.num_trajectories),
        )
        a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
        if rank == 0:
            a.grad = torch.tensor([1.0, 2.0, 3.0])
        distributed.all_reduce_grads([a, b])
        result.update(grad_a=a.grad.tolist(), grad_b=None if b.grad is None else b.grad.tolist())
        result["shared"] = distributed.main_only(lambda: {"rank": distributed.rank(), "values": (1, 2)})
        try:
            distributed.main_only(lambda: (_ for _ in ()).throw(InputError("bad value for x; accepted: y")))
        except InputError as exc:
            result["error"] = str(exc)
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_helpers_on_two_gloo_processes(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["shard"] == [0, 2] and r1["shard"] == [2, 5]
    for r in (r0, r1):  # identical on both ranks: rank 0's groups, the totals of both
        assert r["task"] == ["reach-v3", "reach-v3", "push-v3", "push-v3"]
        assert r["steps"] == [40, 100, 30, 50] and r["success"] == [True, False, True, True]
        assert (r["groups"], r["dropped"], r["env_steps"], r["n"]) == (2, 1, 237, 4)
        assert r["grad_a"] == [1.0, 2.0, 3.0] and r["grad_b"] is None  # summed; none anywhere stays none
        assert r["shared"] == {"rank": 0, "values": [1, 2]}  # rank 0's value, through JSON
        assert r["error"] == "bad value for x; accepted: y"  # the same one-line error on both ranks
    assert r0["mine"] == [0, 4] and r1["mine"] == [4, 4]
