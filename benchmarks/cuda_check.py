"""The CUDA learner beside the CPU one, on one GPU machine: latency, update time, paired evaluation.

Needs a CUDA device (run on a lent GPU; this project's machines have none). For a TinyVLA
checkpoint (e.g. an MW-8 BC baseline written by benchmarks/mw8.py):

- latency: median wall time of one ``policy.sample`` call (what the rollout engine calls, noise
  drawn on the CPU per row and moved to the device) at batch 16, 128 and 1024, CPU vs CUDA;
- update: one forward + backward + Adam step of ``log_prob`` on a micro-batch of chunks, CPU vs CUDA;
- served: one robot's call through `policytrim serve`'s code (``PolicyService.infer``: the request
  checked, the chunk computed and copied back as numpy) in process, and the round trip of one
  client over loopback (websocket + msgpack, ``ServerThread`` + ``PolicyClient``), policy on the CPU
  vs on the GPU (needs the serve extra; skipped without it);
- paired evaluation: the same checkpoint on the same test states with the same random numbers,
  learner on the CPU vs on the GPU (env workers on the CPU either way), in float32 (as trained and
  deployed) and float64: success rate, mean steps, and the fraction of episodes whose success and
  step count are identical (float32 kernels differ in the last bits between devices, and a
  contact-rich episode can amplify that; float64 shows how much of a difference is rounding).

    python benchmarks/cuda_check.py --checkpoint RUN/baseline --tasks MW8 --episodes 25 --window 15 \\
        --out benchmarks/results/cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from policytrim.config import EnvConfig
from policytrim.envs.tasks import resolve_tasks
from policytrim.eval.evaluate import evaluate_policy
from policytrim.machine import describe_machine
from policytrim.policies import load_policy


def timed(fn, device: str, calls: int) -> float:
    """Median ms of ``fn()`` over ``calls`` calls after 10 warm-ups (the GPU synchronised each call)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(10):
        fn()
    sync()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def inputs(policy, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(batch, policy.state_dim, generator=g)}
    instructions = policy.spec()["instructions"]
    return obs, [instructions[i % len(instructions)] for i in range(batch)]


# The closures handed to `timed` below use this iteration's variables and are called at once (B023 noqa).
def latency_rows(checkpoint: str, calls: int) -> list[dict]:
    rows = []
    for device in ("cpu", "cuda"):
        policy = load_policy(checkpoint).to(device).eval()
        for batch in (16, 128, 1024):
            obs, ins = inputs(policy, batch)
            gens = [torch.Generator().manual_seed(i) for i in range(batch)]
            with torch.no_grad():
                ms = timed(lambda: policy.sample(obs, ins, "sampled", gens), device, calls)  # noqa: B023
            rows.append({"what": "sample", "device": device, "batch": batch, "ms": round(ms, 3)})
            print(f"sample  {device:4s} batch {batch:5d}: {ms:8.3f} ms", flush=True)
        for batch in (512, 4096):
            policy.train()
            obs, ins = inputs(policy, batch, seed=1)
            gens = [torch.Generator().manual_seed(i) for i in range(batch)]
            with torch.no_grad():
                replay = policy.sample(obs, ins, "train", gens).replay
            rows_mask = torch.ones(batch, policy.chunk_size, dtype=torch.bool)
            optimizer = torch.optim.Adam(policy.parameters(), lr=1e-6)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)  # noqa: B023
                (-policy.log_prob(obs, ins, replay, rows_mask).mean()).backward()  # noqa: B023
                optimizer.step()  # noqa: B023

            ms = timed(step, device, max(10, calls // 4))
            rows.append({"what": "update", "device": device, "batch": batch, "ms": round(ms, 3)})
            print(f"update  {device:4s} batch {batch:5d}: {ms:8.3f} ms", flush=True)
    return rows


def served_rows(checkpoint: str, calls: int) -> list[dict]:
    """Median ms of one robot's call: ``PolicyService.infer`` in process, and the loopback round trip."""
    try:
        from policytrim.serve.client import PolicyClient
        from policytrim.serve.server import PolicyServer, PolicyService, ServeConfig, ServerThread
    except ImportError as exc:
        print(f"served: skipped ({exc}; pip install 'policytrim[serve]')", flush=True)
        return []
    rows = []
    for device in ("cpu", "cuda"):
        policy = load_policy(checkpoint).to(device).eval()
        obs = {"state": inputs(policy, 1)[0]["state"][0].numpy(), "prompt": policy.spec()["instructions"][0]}
        service = PolicyService(policy, ServeConfig(port=0, mode="sampled", device=device))
        generator = torch.Generator().manual_seed(0)
        # infer returns numpy: already synchronised
        ms = timed(lambda: service.infer(obs, generator), "cpu", calls)  # noqa: B023
        rows.append({"what": "service.infer", "device": device, "batch": 1, "ms": round(ms, 3)})
        print(f"served  {device:4s} in process: {ms:8.3f} ms", flush=True)
        with ServerThread(PolicyServer(service)) as running, PolicyClient(running.host, running.port) as client:
            ms = timed(lambda: client.infer(obs), "cpu", calls)  # noqa: B023
        rows.append({"what": "round trip", "device": device, "batch": 1, "ms": round(ms, 3)})
        print(f"served  {device:4s} round trip: {ms:8.3f} ms", flush=True)
    return rows


def paired_eval(
    checkpoint: str, tasks: tuple[str, ...], horizon: int, episodes: int, window: int, workers: int, dtype: str
) -> dict:
    env = EnvConfig(tasks=tasks, horizon=horizon)
    results = {}
    for device in ("cpu", "cuda"):
        policy = load_policy(checkpoint, tasks).to(device, getattr(torch, dtype)).eval()
        t0 = time.perf_counter()
        m = evaluate_policy(
            policy, env, episodes, window, "sampled", 0, "test", num_workers=workers, return_outcomes=True
        )
        results[device] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "overall": m["overall"],
            "outcomes": m["outcomes"],
        }
        o = m["overall"]
        print(
            f"eval    {device:4s} {dtype}: SR {o['success_rate']:.4f}, mean steps {o['mean_steps']:.2f}, "
            f"{results[device]['seconds']} s",
            flush=True,
        )
    a, b = results["cpu"]["outcomes"], results["cuda"]["outcomes"]
    n = len(a["success"])
    same_success = sum(x == y for x, y in zip(a["success"], b["success"], strict=True))
    same_steps = sum(x == y for x, y in zip(a["steps"], b["steps"], strict=True))
    keys = ("success_rate", "mean_steps", "calls_per_success")
    return {
        "dtype": dtype,
        "tasks": list(tasks),
        "episodes_per_task": episodes,
        "window": window,
        "mode": "sampled",
        "env_workers": workers,
        "episodes": n,
        "cpu": {k: results["cpu"]["overall"].get(k) for k in keys} | {"seconds": results["cpu"]["seconds"]},
        "cuda": {k: results["cuda"]["overall"].get(k) for k in keys} | {"seconds": results["cuda"]["seconds"]},
        "same_success_fraction": same_success / n,
        "same_steps_fraction": same_steps / n,
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lat = {(r["what"], r["device"], r["batch"]): r["ms"] for r in result["latency"]}
    lines = [
        "# The CUDA learner beside the CPU one",
        "",
        f"Machine: {result['gpu']} (CUDA {result['cuda']}), {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"{result['cpu_threads']} CPU torch threads; checkpoint `{result['checkpoint_name']}` "
        f"({result['params']:,} parameters). "
        "Written by `benchmarks/cuda_check.py`.",
        "",
        "| call | batch | CPU ms | CUDA ms | CPU / CUDA |",
        "|---|---|---|---|---|",
    ]
    for what, batches in (("sample", (16, 128, 1024)), ("update", (512, 4096))):
        for batch in batches:
            c, g = lat[(what, "cpu", batch)], lat[(what, "cuda", batch)]
            label = "policy.sample (sampled mode)" if what == "sample" else "log_prob + backward + Adam step"
            lines.append(f"| {label} | {batch} | {c:.2f} | {g:.2f} | {c / g:.1f}× |")
    served = {(r["what"], r["device"]): r["ms"] for r in result.get("served", [])}
    if served:
        lines += [
            "",
            "One robot's call through `policytrim serve` (batch 1, sampled mode): `PolicyService.infer` in process "
            "(request checked, chunk computed and copied back) and one client's round trip over loopback "
            "(websocket + msgpack):",
            "",
            "| call | CPU ms | CUDA ms | CPU / CUDA |",
            "|---|---|---|---|",
        ]
        for what in ("service.infer", "round trip"):
            c, g = served[(what, "cpu")], served[(what, "cuda")]
            lines.append(f"| {what} | {c:.2f} | {g:.2f} | {c / g:.1f}× |")
    e = result["paired_eval"][0]
    lines += [
        "",
        f"Paired evaluation, {e['episodes']} episodes ({len(e['tasks'])} tasks × {e['episodes_per_task']} test states, "
        f"window {e['window']}, sampled, the same random numbers; env workers on the CPU: {e['env_workers']}):",
        "",
        "| policy dtype | learner | success rate | mean steps | calls per success | seconds | identical "
        "success | identical steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in result["paired_eval"]:
        for device in ("cpu", "cuda"):
            d = e[device]
            same = (
                (f"{e['same_success_fraction']:.1%}", f"{e['same_steps_fraction']:.1%}")
                if device == "cuda"
                else ("", "")
            )
            lines.append(
                f"| {e['dtype']} | {device} | {d['success_rate']:.4f} | {d['mean_steps']:.2f} | "
                f"{d['calls_per_success']:.2f} | {d['seconds']} | {same[0]} | {same[1]} |"
            )
    if result.get("pytest"):
        lines += ["", f"`python -m pytest tests/test_cuda.py` on this machine: {result['pytest']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a TinyVLA checkpoint directory")
    parser.add_argument("--tasks", default="MW8", help="a task set name or comma-separated task names")
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=25, help="test states per task")
    parser.add_argument("--window", type=int, default=0, help="execution window (0: the checkpoint's own)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "float64"],
        choices=["float32", "float64"],
        help="policy dtypes of the paired evaluation",
    )
    parser.add_argument("--pytest", default="", help="the result line of a pytest run of tests/test_cuda.py to record")
    parser.add_argument("--out", default="benchmarks/results/cuda_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_check: torch sees no CUDA device here; run it on a GPU machine")
    tasks = resolve_tasks(args.tasks)
    policy = load_policy(args.checkpoint)
    result = {
        "machine": describe_machine(),
        "gpu": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "checkpoint_name": Path(args.checkpoint).name,
        "params": sum(p.numel() for p in policy.parameters()),
        "latency": latency_rows(args.checkpoint, args.calls),
        "served": served_rows(args.checkpoint, args.calls),
        "paired_eval": [
            paired_eval(args.checkpoint, tasks, args.horizon, args.episodes, args.window, args.workers, d)
            for d in args.dtypes
        ],
        "pytest": args.pytest,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
