"""Env workers as Ray actors versus local processes, and a scale curve for sizing a cluster.

Measured (this machine):

1. env-steps/s of the rollout engine with 2 Ray actors (``rollout.backend=ray``, a local Ray
   instance limited to the same cores) and with 2 local worker processes, on the same episodes:
   the same tasks, initial states and policy (the built-in TinyVLA, untrained, sampling, its
   default window k = 5), lockstep, so both backends execute identical trajectories (asserted).
   Repeats alternate local / Ray back to back; ``ray_over_local`` is the median per-repeat ratio.
2. the cost of one round trip (an empty request and its answer) through each backend; Ray's
   overhead per round trip is the difference of the medians.
3. the components of the scale model: the simulator's seconds per env step (one process, replaying
   the executed actions), and the policy call's seconds as a function of batch size (TinyVLA on
   this CPU, one thread).

Extrapolated (a model, not a measurement): per-epoch time for W workers x E envs per worker on a
cluster with one core per worker. An epoch of N trajectories of mean length T at window k runs in
ceil(N / (W E)) waves of T / k rounds; a lockstep round costs policy(W E) + E k t_step + t_rt (one
batched call, then every worker steps its E envs for k steps, plus one round trip), and a fully
pipelined round max(policy, E k t_step) + t_rt (the engine's lanes overlap the policy call with
stepping). The model is checked against the measured 2-worker runs (``model_check``). A GPU policy
changes only policy(B): rerun with your own latency table (``--policy-ms-per-call``).

    .venv/bin/python benchmarks/ray_throughput.py            # ~3-4 min on 2 cores
    .venv/bin/python benchmarks/ray_throughput.py --small    # ~1 min: a smoke run

The last line printed is ``ray/local ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from policytrim.config import EnvConfig, PolicyConfig, RayConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.machine import describe_machine
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.engine import RolloutEngine, make_pool
from policytrim.rollout.workers import StepRequest

DEFAULT_TASKS = "reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3"
BENCH_SEED = 7  # a seed of its own, not a train/val/test seed
BATCHES = (1, 8, 32, 128, 512)
SCALE_WORKERS = (1, 2, 4, 8, 16, 32, 64, 128)
SCALE_ENVS = (8, 16, 32)


def round_trip_s(env_cfg: EnvConfig, backend: str, ray_cfg: RayConfig, trips: int) -> float:
    """Median seconds of one empty request -> answer through one worker of ``backend``."""
    pool = make_pool(env_cfg, 1, None, 1, backend, ray_cfg)
    try:
        times = []
        for i in range(trips + 20):
            t0 = time.perf_counter()
            pool.submit(0, StepRequest(tag=i))
            while not pool.wait([0], 10.0):
                pass
            if i >= 20:  # warm-up excluded
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        pool.close()


def step_seconds(env_cfg: EnvConfig, episodes: list[tuple]) -> float:
    """Simulator seconds per env step in this process, replaying the executed actions."""
    envs = {s.task: make_env(env_cfg, s.task) for s, _ in episodes}
    for s, _ in episodes:
        envs[s.task].reset(s)
    t0, steps = time.perf_counter(), 0
    for s, actions in episodes:
        envs[s.task].reset(s)
        for a in actions:
            envs[s.task].step(a)
        steps += len(actions)
    seconds = time.perf_counter() - t0
    for env in envs.values():
        env.close()
    return seconds / steps


def policy_seconds(
    policy: TinyVLA, obs_row: dict[str, np.ndarray], instruction: str, batches: tuple[int, ...]
) -> dict[int, float]:
    """Median seconds of one sampling call of ``policy`` per batch size."""
    out = {}
    for b in batches:
        obs = {k: torch.from_numpy(np.repeat(v[None], b, axis=0)) for k, v in obs_row.items()}
        gens = [torch.Generator().manual_seed(i) for i in range(b)]
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            with torch.no_grad():
                policy.sample(obs, [instruction] * b, "sampled", gens)
            times.append(time.perf_counter() - t0)
        out[b] = statistics.median(times[2:])
    return out


def policy_model(table: dict[int, float]):
    """Seconds of a call at batch B, interpolated linearly in B between measured sizes (beyond the
    largest: extrapolated linearly from the last two)."""
    bs = sorted(table)

    def at(b: float) -> float:
        if b <= bs[0]:
            return table[bs[0]]
        for lo, hi in zip(bs, bs[1:], strict=False):
            if b <= hi or hi == bs[-1]:
                return table[lo] + (table[hi] - table[lo]) * (b - lo) / (hi - lo)
        raise AssertionError

    return at


def epoch_seconds(
    n_traj: int, mean_steps: float, k: int, workers: int, envs: int, t_step: float, t_rt: float, policy_at
) -> dict[str, float]:
    """The scale model (module docstring): lockstep and pipelined per-epoch seconds."""
    envs = min(envs, math.ceil(n_traj / workers))  # a worker runs at most its share of the epoch
    waves = math.ceil(n_traj / (workers * envs))
    batch = min(n_traj, workers * envs)
    rounds = waves * math.ceil(mean_steps / k)
    stepping = envs * k * t_step
    policy = policy_at(batch)
    return {
        "lockstep_s": rounds * (policy + stepping + t_rt),
        "pipelined_s": rounds * (max(policy, stepping) + t_rt),
        "policy_share_lockstep": policy / (policy + stepping + t_rt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--episodes", type=int, default=12, help="episodes per task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trips", type=int, default=300, help="round trips timed per backend")
    parser.add_argument(
        "--epoch-trajectories", type=int, default=1024, help="N of the modelled epoch (e.g. 128 groups x G = 8)"
    )
    parser.add_argument(
        "--policy-ms-per-call",
        default="",
        help="B:ms,... a policy latency table to model instead of this CPU's TinyVLA (e.g. a GPU's)",
    )
    parser.add_argument("--small", action="store_true", help="a smoke run (~1 min): fewer episodes, repeats and trips")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_throughput.json"))
    args = parser.parse_args()
    if args.small:
        args.episodes, args.repeats, args.trips, args.horizon = 4, 1, 100, 100

    torch.set_num_threads(1)  # the env workers own the cores (see policytrim.rollout.engine)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    env_cfg = EnvConfig(tasks=tasks, horizon=args.horizon)
    ray_cfg = RayConfig(num_cpus=args.workers)
    starts = [s for t in tasks for s in initial_states(t, BENCH_SEED, args.episodes)]
    torch.manual_seed(0)
    policy = TinyVLA.from_config(PolicyConfig(), 39, 4, [INSTRUCTIONS[t] for t in tasks]).eval()
    window = policy.default_window
    windows = torch.full((len(starts), 1), window, dtype=torch.long)
    load_before = os.getloadavg()

    # 1. the same episodes through both backends
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    policy_s: dict[str, float] = {}
    engines = {
        b: RolloutEngine(env_cfg, args.workers, pipeline=False, backend=b, ray=ray_cfg) for b in ("local", "ray")
    }
    try:
        warm = {b: e.run(policy, starts, 1, windows, "sampled", seed=0) for b, e in engines.items()}  # builds envs
        assert torch.equal(warm["local"].steps, warm["ray"].steps), "the backends ran different episodes"
        total_steps = int(warm["local"].env_steps)
        loads = []
        for _ in range(args.repeats):
            for b, engine in engines.items():
                t0 = time.perf_counter()
                traj = engine.run(policy, starts, 1, windows, "sampled", seed=0)
                seconds[b].append(time.perf_counter() - t0)
                policy_s[b] = traj.policy_seconds
                assert traj.env_steps == total_steps
            loads.append(os.getloadavg()[0])
    finally:
        for engine in engines.values():
            engine.close()
    rate = {b: total_steps / statistics.median(s) for b, s in seconds.items()}
    ratio = statistics.median(t_local / t_ray for t_local, t_ray in zip(seconds["local"], seconds["ray"], strict=True))

    # 2. round trips, 3. model components
    rt = {b: round_trip_s(env_cfg, b, ray_cfg, args.trips) for b in ("local", "ray")}
    executed = warm["local"].replay["sample"].clamp(-1.0, 1.0)
    w0 = warm["local"]
    episodes = [
        (
            s,
            torch.cat(
                [
                    executed[c, :n]
                    for c, n in zip(
                        w0.chunks_of(torch.tensor([i])).tolist(),
                        w0.chunk_rows[w0.chunk_traj == i].tolist(),
                        strict=True,
                    )
                ]
            ).numpy(),
        )
        for i, s in enumerate(starts)
    ]
    t_step = step_seconds(env_cfg, episodes)
    env0 = make_env(env_cfg, tasks[0])
    obs_row = env0.reset(starts[0])
    env0.close()
    if args.policy_ms_per_call:
        table = {int(b): float(ms) / 1000 for b, ms in (x.split(":") for x in args.policy_ms_per_call.split(","))}
        table_source = "given (--policy-ms-per-call)"
    else:
        table = policy_seconds(policy, obs_row, INSTRUCTIONS[tasks[0]], BATCHES)
        table_source = "measured: TinyVLA sampling on this CPU, 1 thread"
    policy_at = policy_model(table)
    mean_steps = total_steps / len(starts)

    # model check: the measured 2-worker lockstep epoch (local processes, one wave)
    predicted = epoch_seconds(
        len(starts), mean_steps, window, args.workers, len(starts), t_step, rt["local"], policy_at
    )
    curve = [
        {
            "workers": w,
            "envs_per_worker": e,
            **epoch_seconds(args.epoch_trajectories, mean_steps, window, w, e, t_step, rt["ray"], policy_at),
        }
        for w in SCALE_WORKERS
        for e in SCALE_ENVS
    ]
    result = {
        "ray_over_local": ratio,
        "ray_round_trip_overhead_s": rt["ray"] - rt["local"],
        "round_trip_s": rt,
        "steps_per_s": rate,
        "seconds": seconds,
        "policy_seconds_last_run": policy_s,
        "env_steps": total_steps,
        "episodes": len(starts),
        "tasks": list(tasks),
        "window": window,
        "workers": args.workers,
        "lockstep": True,
        "scale_model": {
            "measured": {
                "sim_seconds_per_step": t_step,
                "policy_seconds_by_batch": {str(b): s for b, s in table.items()},
                "policy_source": table_source,
                "mean_episode_steps": mean_steps,
            },
            "model_check": {
                "measured_local_epoch_s": statistics.median(seconds["local"]),
                "predicted_lockstep_s": predicted["lockstep_s"],
                "predicted_pipelined_s": predicted["pipelined_s"],
            },
            "extrapolated": {
                "epoch_trajectories": args.epoch_trajectories,
                "window": window,
                "round_trip_s": rt["ray"],
                "assumes": "one core per worker, uniform episode lengths, network latency not included",
                "curve": curve,
            },
        },
        "machine": {
            **describe_machine(),
            "load_average_before": list(load_before),
            "load_average_1min_per_repeat": loads,
            "load_average_after": list(os.getloadavg()),
        },
        "command": "benchmarks/ray_throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if k != "out" and v not in (False, "")
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(
        f"{len(starts)} episodes ({total_steps} env steps), {args.workers} workers, TinyVLA k={window}, "
        f"lockstep; load before {load_before[0]:.2f}, per repeat {', '.join(f'{x:.2f}' for x in loads)}"
    )
    print(f"local processes: {rate['local']:7.0f} env-steps/s   Ray actors: {rate['ray']:7.0f} env-steps/s")
    print(
        f"round trip: local {rt['local'] * 1e6:.0f} us, Ray {rt['ray'] * 1e6:.0f} us (Ray overhead "
        f"{(rt['ray'] - rt['local']) * 1e6:.0f} us per round trip)"
    )
    print(
        f"model check: measured epoch {statistics.median(seconds['local']):.2f} s, predicted lockstep "
        f"{predicted['lockstep_s']:.2f} s"
    )
    print(f"ray/local ratio: {ratio:.2f}")


def markdown(r: dict) -> str:
    m = r["scale_model"]
    lines = [
        "# Ray env workers vs local processes",
        "",
        f"Command: `{r['command']}`. Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores; "
        f"load (1 min) before {r['machine']['load_average_before'][0]:.2f}, per repeat "
        f"{', '.join(f'{x:.2f}' for x in r['machine']['load_average_1min_per_repeat'])}.",
        "",
        "## Measured",
        "",
        f"{r['episodes']} episodes ({r['env_steps']} env steps), {r['workers']} workers, TinyVLA at k = "
        f"{r['window']}, lockstep (identical episodes on both backends).",
        "",
        "| backend | env-steps/s | round trip (empty request) |",
        "|---|---:|---:|",
        f"| local processes | {r['steps_per_s']['local']:.0f} | {r['round_trip_s']['local'] * 1e6:.0f} us |",
        f"| Ray actors | {r['steps_per_s']['ray']:.0f} | {r['round_trip_s']['ray'] * 1e6:.0f} us |",
        "",
        f"**ray_over_local = {r['ray_over_local']:.2f}** (median per-repeat ratio); Ray's overhead per "
        f"round trip: {r['ray_round_trip_overhead_s'] * 1e6:.0f} us.",
        "",
        f"Model components: simulator {m['measured']['sim_seconds_per_step'] * 1e3:.3f} ms per env step; "
        f"policy call ({m['measured']['policy_source']}): "
        + ", ".join(f"B={b}: {s * 1e3:.2f} ms" for b, s in m["measured"]["policy_seconds_by_batch"].items())
        + ".",
        "",
        "Model check: the measured local epoch above took "
        f"{m['model_check']['measured_local_epoch_s']:.2f} s; the model predicts "
        f"{m['model_check']['predicted_lockstep_s']:.2f} s (lockstep): "
        "measured / predicted = "
        f"{m['model_check']['measured_local_epoch_s'] / m['model_check']['predicted_lockstep_s']:.2f}. The "
        "model leaves out the engine's own work per step (observations, "
        "requests, bookkeeping) and uneven episode lengths; scale the extrapolated times below by this "
        "factor for an estimate of real epochs.",
        "",
        "## Extrapolated: per-epoch seconds",
        "",
        f"{m['extrapolated']['epoch_trajectories']} trajectories per epoch at k = "
        f"{m['extrapolated']['window']}, Ray round trip as measured; assumes "
        f"{m['extrapolated']['assumes']}. lockstep / pipelined.",
        "",
        "| workers | " + " | ".join(f"{e} envs/worker" for e in SCALE_ENVS) + " |",
        "|---:|" + "---:|" * len(SCALE_ENVS),
    ]
    for w in SCALE_WORKERS:
        row = [c for c in m["extrapolated"]["curve"] if c["workers"] == w]
        lines.append(f"| {w} | " + " | ".join(f"{c['lockstep_s']:.1f} / {c['pipelined_s']:.1f}" for c in row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
