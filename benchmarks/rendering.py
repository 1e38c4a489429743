"""What a camera image costs in Meta-World rollouts (64 px by default), on this machine.

- per core: one env, random actions; ms per physics step without an image, ms per step that also
  renders the image, and their difference (ms per frame);
- two workers: two processes each stepping and rendering every step; frames/s together;
- rollouts of an image policy at window k: env-steps/s when every step renders (what the adapter did
  before on-demand observations) and when only the observation a chunk starts from is rendered
  (`MetaWorldEnv.step(action, observe=False)`, what the env workers do now).

    .venv/bin/python benchmarks/rendering.py [--task push-v3] [--size 64] [--steps 300] [--window 5]

Writes benchmarks/results/rendering.json (with the machine and its load). About 1 minute.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from policytrim.envs.base import InitialState
from policytrim.machine import describe_machine


def _env(task: str, size: int):
    from policytrim.envs.metaworld import MetaWorldEnv

    return MetaWorldEnv(task, horizon=10**6, image=True, image_size=size)


def steps_per_second(task: str, size: int, steps: int, render_every: int, seed: int = 0) -> float:
    """Env-steps/s of one env with random actions, rendering every ``render_every``-th step
    (0 = never)."""
    env = _env(task, size)
    rng = np.random.default_rng(seed)
    env.reset(InitialState(task, 0, 0))
    for _ in range(10):  # warm-up: the renderer's context is created on the first render
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    t0 = time.perf_counter()
    for t in range(steps):
        observe = render_every > 0 and t % render_every == render_every - 1
        env.step(rng.uniform(-1, 1, 4).astype(np.float32), observe=observe)
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def _worker(args: tuple[str, int, int, int]) -> float:
    task, size, steps, seed = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return steps_per_second(task, size, steps, render_every=1, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/rendering.json")
    args = parser.parse_args()

    machine_start = describe_machine()
    physics = steps_per_second(args.task, args.size, args.steps * 4, render_every=0)
    every = steps_per_second(args.task, args.size, args.steps, render_every=1)
    per_chunk = steps_per_second(args.task, args.size, args.steps * 2, render_every=args.window)
    ms_physics, ms_render_step = 1e3 / physics, 1e3 / every
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:  # concurrent workers; each times its own loop (start-up excluded)
        two_workers_fps = sum(pool.map(_worker, [(args.task, args.size, args.steps, s) for s in (1, 2)]))
    result = {
        "task": args.task,
        "image_size": args.size,
        "ms_per_physics_step": round(ms_physics, 3),
        "ms_per_step_with_image": round(ms_render_step, 3),
        "ms_per_frame": round(ms_render_step - ms_physics, 3),
        "render_to_physics_ratio": round((ms_render_step - ms_physics) / ms_physics, 1),
        "frames_per_s_two_workers": round(two_workers_fps, 1),
        "window": args.window,
        "env_steps_per_s_render_every_step": round(every, 1),
        "env_steps_per_s_render_per_chunk": round(per_chunk, 1),
        "on_demand_speedup": round(per_chunk / every, 2),
        "machine": machine_start,
        "load_after": list(os.getloadavg()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.task} {args.size}px: physics {ms_physics:.2f} ms/step, image {result['ms_per_frame']:.2f} ms/frame "
        f"({result['render_to_physics_ratio']}x a physics step); two workers {two_workers_fps:.0f} frames/s; "
        f"rollouts at k={args.window}: {every:.0f} env-steps/s rendering every step, {per_chunk:.0f} "
        "rendering once per chunk "
        f"({result['on_demand_speedup']}x); load {machine_start['load_average']} -> {result['load_after']}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
