"""Where the pipeline's time goes: one Stage 1 epoch, one Stage 2 epoch, one validation and one test
evaluation of a behaviour-cloned policy, each split into core-seconds.

The policy process and the env workers share the machine's cores, so each phase is accounted in
core-seconds (wall x cores):

    simulator   worker CPU stepping envs             resets      worker CPU building / resetting envs
    worker IPC  worker CPU outside requests          policy      policy calls (engine process)
    update      the GRPO update (engine process)     engine      the rest of the engine process's CPU
                                                                 (pickling, bookkeeping, rewards)
    idle        cores x wall - every process's CPU

Worker and engine-process CPU times come from /proc (Linux). Run it alone: other jobs show up as
idle cores here.

    .venv/bin/python benchmarks/profile_pipeline.py --baseline runs/demo/baseline \
        --out benchmarks/results/profile_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from policytrim.config import RunConfig, load_config, preset_path
from policytrim.machine import describe_machine

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def worker_pids(engine: Any) -> list[int]:
    return [p.pid for p in engine._pool._procs]  # noqa: SLF001 - a profiler looks inside


def measure(engine: Any, name: str, fn: Callable[[], Any], cores: int) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` and split its wall time into core-seconds (see the module docstring)."""
    pids = worker_pids(engine)
    w0 = sum(cpu_seconds(p) for p in pids)
    m0 = time.process_time()
    t0 = time.perf_counter()
    out, parts = fn()
    wall = time.perf_counter() - t0
    main = time.process_time() - m0
    workers = sum(cpu_seconds(p) for p in pids) - w0
    timing = parts.get("timing", {})
    # worker CPU time (not wall: with more workers than cores a worker's wall time includes waiting
    # for a core, which made worker_ipc come out as 0 whenever workers outnumbered idle cores)
    sim = timing.get("worker_cpu", 0.0) - timing.get("worker_reset_cpu", 0.0)
    row = {
        "phase": name,
        "wall_s": wall,
        "core_s": cores * wall,
        "simulator": sim,
        "resets": timing.get("worker_reset_cpu", 0.0),
        "worker_ipc": max(0.0, workers - timing.get("worker_cpu", 0.0)),
        "policy": timing.get("policy", 0.0),
        "update": parts.get("update_s", 0.0),
        "engine": max(0.0, main - timing.get("policy", 0.0) - parts.get("update_s", 0.0)),
        "idle": max(0.0, cores * wall - main - workers),
        "env_steps": parts.get("env_steps", 0),
        "episodes": parts.get("episodes", 0),
        "policy_calls": parts.get("policy_batches", 0),
        "worker_requests": int(timing.get("requests", 0)),
        "mean_batch": timing.get("mean_batch", 0.0),
        "engine_wait_s": timing.get("wait", 0.0),
    }
    row["env_steps_per_s"] = row["env_steps"] / wall if wall else 0.0
    return out, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="a behaviour-cloned policy directory (the demo's OUT/baseline)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--out", default="benchmarks/results/profile_pipeline.json")
    ap.add_argument(
        "--warmup-epochs", type=int, default=1, help="Stage 1 epochs run first and not profiled (they build the envs)"
    )
    ap.add_argument("--workers", type=int, default=0, help="env worker processes (0: the preset's rollout.num_workers)")
    args = ap.parse_args()

    from policytrim import objective
    from policytrim.eval.evaluate import evaluate_policy
    from policytrim.policies import load_policy
    from policytrim.rollout.engine import RolloutEngine, stable_seed
    from policytrim.runtime import workers_own_cores
    from policytrim.train.grpo import draw_starts, grpo_update
    from policytrim.train.stages import Stage1, Stage2, validate

    cfg: RunConfig = load_config(preset_path(args.preset))
    if args.workers:
        cfg.rollout.num_workers = args.workers
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    policy = load_policy(args.baseline)
    rows: list[dict[str, Any]] = []
    with (
        workers_own_cores(cfg.rollout.num_workers, "cpu"),
        RolloutEngine(cfg.env, cfg.rollout.num_workers, cfg.rollout.step_timeout_s) as engine,
    ):
        stage1 = Stage1(cfg, policy)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.stage1.lr)

        def epoch(stage: Any, scfg: Any, index: int) -> tuple[Any, dict[str, Any]]:
            rng = np.random.default_rng(stable_seed(cfg.seed, stage.name, index, "starts"))
            starts = draw_starts(cfg, rng, index)
            windows = stage.assign_windows(len(starts), cfg.rollout.group_size)
            policy.eval()
            traj = engine.run(
                policy,
                starts,
                cfg.rollout.group_size,
                windows,
                "train",
                stable_seed(cfg.seed, stage.name, index, "rollout"),
            )
            t = time.perf_counter()
            rewards, _ = stage.rewards(traj)
            advantages, valid_groups = objective.group_advantages(rewards)
            policy.train()
            grpo_update(
                policy,
                None,
                optimizer,
                traj,
                advantages.flatten(),
                valid_groups.repeat_interleave(cfg.rollout.group_size),
                scfg,
            )
            update_s = time.perf_counter() - t
            return traj, {
                "timing": traj.timing,
                "update_s": update_s,
                "env_steps": traj.env_steps,
                "episodes": traj.num_trajectories,
                "policy_batches": traj.policy_batches,
            }

        for i in range(args.warmup_epochs):
            epoch(stage1, cfg.stage1, i)
        _, row = measure(
            engine,
            "Stage 1 epoch (8 groups x 8, windows 5/10/15)",
            lambda: epoch(stage1, cfg.stage1, args.warmup_epochs),
            cores,
        )
        rows.append(row)

        def through_engine(run: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
            """``run()`` (one validation or evaluation), with the engine's trajectories kept for their counters."""
            holder: dict[str, Any] = {}
            orig = engine.run

            def spy(*a: Any, **k: Any) -> Any:
                holder["traj"] = orig(*a, **k)
                return holder["traj"]

            engine.run = spy  # type: ignore[method-assign]
            try:
                policy.eval()
                out = run()
            finally:
                del engine.run
            traj = holder["traj"]
            return out, {
                "timing": traj.timing,
                "env_steps": traj.env_steps,
                "episodes": traj.num_trajectories,
                "policy_batches": traj.policy_batches,
            }

        val, row = measure(
            engine,
            f"validation ({cfg.stage1.val_episodes} states/task, k = 15)",
            lambda: through_engine(lambda: validate(policy, cfg, 15, engine, cfg.stage1.val_episodes)),
            cores,
        )
        rows.append(row)
        budget = {"budget": int(np.ceil(cfg.stage2.budget_multiplier * val["mean_steps"]))}
        stage2 = Stage2(cfg, 15, budget)
        _, row = measure(engine, "Stage 2 epoch (8 groups x 8, k = 15)", lambda: epoch(stage2, cfg.stage2, 0), cores)
        rows.append(row)

        def test_eval():
            return through_engine(
                lambda: evaluate_policy(
                    policy, cfg.env, cfg.eval.episodes, 5, cfg.eval.mode, cfg.eval.seed, "test", engine=engine
                )
            )

        _, row = measure(engine, f"test evaluation ({cfg.eval.episodes} states/task, k = 5)", test_eval, cores)
        rows.append(row)

    result = {
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "preset": args.preset,
        "baseline": str(args.baseline),
        "cores": cores,
        "note": "core-seconds per phase: simulator + resets + worker_ipc + policy + update + engine + idle = cores "
        "x wall (up to clock granularity)",
        "phases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    keys = ("simulator", "resets", "worker_ipc", "policy", "update", "engine", "idle")
    lines = [
        "# Pipeline profile (core-seconds per phase)",
        "",
        f"Machine: {result['machine']}; load before {load_before[0]:.2f}. Preset `{args.preset}`, policy "
        f"`{args.baseline}`.",
        "",
        "| phase | wall s | env steps/s | " + " | ".join(keys) + " | mean batch |",
        "|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for r in rows:
        core = r["core_s"] or 1.0
        lines.append(
            f"| {r['phase']} | {r['wall_s']:.2f} | {r['env_steps_per_s']:,.0f} | "
            + " | ".join(f"{r[k]:.2f} ({100 * r[k] / core:.0f}%)" for k in keys)
            + f" | {r['mean_batch']:.1f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
