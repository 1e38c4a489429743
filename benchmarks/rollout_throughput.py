"""Environment steps per second: the raw simulator versus the rollout engine, on all cores.

Both sides run the same episodes (same tasks, same initial states, same episode lengths, resets
included) on the same number of processes:

- raw: each process replays precomputed actions from an array -- ``env.reset(state)`` then
  ``env.step(actions[t])`` -- with no policy and no engine (the speed of light).
- engine: `RolloutEngine` with the same number of env workers runs the policy (central inference in
  this process, window k per call).

Policies: ``tinyvla`` (default: the built-in chunk policy, untrained, sampling, executing its
default window k = 5) or ``expert`` (Meta-World's scripted experts, window 1: one engine round trip
and one Python expert call per env step, the engine's worst case). Either way the raw side replays
exactly the actions the engine executed in an untimed warm-up run (recorded chunks for tinyvla, the
deterministic experts' own actions for expert), so both sides simulate identical episodes.

Env construction and Meta-World's state tables are warmed up outside the timed region on both
sides. Each repeat times raw then engine back to back; the reported ratio is the median over repeats
of the per-repeat ratio (robust to background load that drifts between repeats); the JSON also
holds each side's median throughput and the load average at every repeat.

    .venv/bin/python benchmarks/rollout_throughput.py [--policy expert] [--workers 2] [--episodes 16]

The last line printed is ``rollout/raw ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from policytrim.config import EnvConfig, PolicyConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.base import InitialState
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.machine import describe_machine
from policytrim.policies.expert import ExpertPolicy, expert_action, scripted_expert
from policytrim.rollout.engine import RolloutEngine

DEFAULT_TASKS = "reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3"
BENCH_SEED = 7  # a seed of its own, not a train/val/test seed


def expert_episode(env, state: InitialState) -> np.ndarray:
    """The expert's actions from ``state`` until success or the horizon (float32 [T, 4])."""
    expert = scripted_expert(state.task)
    obs = env.reset(state)
    actions = []
    for _ in range(env.horizon):
        a = expert_action(expert, obs["state"])
        actions.append(a)
        obs, ok = env.step(a)
        if ok:
            break
    return np.stack(actions)


def _raw_worker(env_cfg: EnvConfig, episodes: list[tuple[InitialState, np.ndarray]], ready, go, results) -> None:
    envs = {}
    for state, _ in episodes:  # warm-up: build envs and Meta-World's state tables
        if state.task not in envs:
            envs[state.task] = make_env(env_cfg, state.task)
        envs[state.task].reset(state)
    ready.wait()
    go.wait()
    t0 = time.perf_counter()
    steps = 0
    for state, actions in episodes:
        env = envs[state.task]
        env.reset(state)
        for a in actions:
            env.step(a)
        steps += len(actions)
    results.put((time.perf_counter() - t0, steps))
    for env in envs.values():
        env.close()


def run_raw(env_cfg: EnvConfig, episodes: list[tuple[InitialState, np.ndarray]], workers: int) -> tuple[float, int]:
    """Wall seconds and steps to replay ``episodes`` split into ``workers`` contiguous shares."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1), ctx.Queue()
    shares = [episodes[w * len(episodes) // workers : (w + 1) * len(episodes) // workers] for w in range(workers)]
    procs = [ctx.Process(target=_raw_worker, args=(env_cfg, share, ready, go, results)) for share in shares]
    for p in procs:
        p.start()
    ready.wait()
    go.wait()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(t for t, _ in out), sum(s for _, s in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--episodes", type=int, default=16, help="episodes per task")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="processes on both sides (default: all cores)"
    )
    parser.add_argument("--policy", choices=("tinyvla", "expert"), default="tinyvla")
    parser.add_argument("--window", type=int, default=0, help="window k of the tinyvla policy (0: its default)")
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lanes", type=int, default=2, help="engine lanes per worker (RolloutEngine default: 2)")
    parser.add_argument("--envs-per-worker", type=int, default=None, help="engine concurrency per worker (default: 32)")
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="one policy call per round over every worker (rollout.lockstep: reproducible)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout_throughput.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # the env workers own the cores (see policytrim.rollout.engine)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    env_cfg = EnvConfig(tasks=tasks, horizon=args.horizon)
    starts = [s for t in tasks for s in initial_states(t, BENCH_SEED, args.episodes)]
    load_before = os.getloadavg()

    if args.policy == "expert":
        policy, window = ExpertPolicy(tasks), 1
        envs = {t: make_env(env_cfg, t) for t in tasks}
        episodes = [(s, expert_episode(envs[s.task], s)) for s in starts]
        for env in envs.values():
            env.close()
    else:
        from policytrim.policies.tinyvla import TinyVLA

        torch.manual_seed(0)
        policy = TinyVLA.from_config(PolicyConfig(), 39, 4, [INSTRUCTIONS[t] for t in tasks]).eval()
        window = args.window or policy.default_window
        episodes = []  # the executed actions come from the engine's warm-up run below

    windows = torch.full((len(starts), 1), window, dtype=torch.long)
    raw_s, engine_s, loads = [], [], []
    with RolloutEngine(
        env_cfg,
        num_workers=args.workers,
        lanes=args.lanes,
        envs_per_worker=args.envs_per_worker,
        pipeline=not args.lockstep,
    ) as engine:
        warm = engine.run(policy, starts, 1, windows, "sampled", seed=0, record_chunks=True)  # builds envs
        if args.policy == "tinyvla":
            executed = warm.replay["sample"].clamp(-1.0, 1.0)  # what the engine executed (Gaussian head)
            episodes = [
                (
                    s,
                    torch.cat(
                        [
                            executed[c, :n]
                            for c, n in zip(
                                warm.chunks_of(torch.tensor([i])).tolist(),
                                warm.chunk_rows[warm.chunk_traj == i].tolist(),
                                strict=True,
                            )
                        ]
                    ).numpy(),
                )
                for i, s in enumerate(starts)
            ]
        lengths = [len(a) for _, a in episodes]
        assert warm.steps.tolist() == lengths, "engine and raw episode lengths differ"
        total_steps = sum(lengths)
        for _ in range(args.repeats):
            seconds, steps = run_raw(env_cfg, episodes, args.workers)
            assert steps == total_steps
            raw_s.append(seconds)
            t0 = time.perf_counter()
            traj = engine.run(policy, starts, 1, windows, "sampled", seed=0, record_chunks=True)
            engine_s.append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
            assert traj.env_steps == total_steps, (traj.env_steps, total_steps)
        policy_s = traj.policy_seconds

    raw = total_steps / statistics.median(raw_s)
    eng = total_steps / statistics.median(engine_s)
    ratio = statistics.median(r / e for r, e in zip(raw_s, engine_s, strict=True))
    result = {
        "policy": args.policy,
        "window": window,
        "tasks": list(tasks),
        "episodes": len(starts),
        "env_steps": total_steps,
        "workers": args.workers,
        "horizon": args.horizon,
        "repeats": args.repeats,
        "raw_seconds": raw_s,
        "engine_seconds": engine_s,
        "engine_policy_seconds_last": policy_s,
        "raw_steps_per_s": raw,
        "engine_steps_per_s": eng,
        "ratio": ratio,
        "ratio_of_medians": eng / raw,
        "machine": {
            **describe_machine(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "load_average_1min_per_repeat": loads,
        },
        "command": "benchmarks/rollout_throughput.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"policy {args.policy} (window {window}), {len(tasks)} tasks x {args.episodes} episodes = "
        f"{total_steps} env steps, {args.workers} processes"
    )
    print(
        f"load average (1 min) before: {load_before[0]:.2f}, after each repeat: {', '.join(f'{x:.2f}' for x in loads)}"
    )
    print(f"raw simulator:  {raw:8.0f} env-steps/s  (median of {args.repeats})")
    print(
        f"rollout engine: {eng:8.0f} env-steps/s  (median of {args.repeats}; policy {policy_s:.2f} s of the last run)"
    )
    print(f"rollout/raw ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
