"""LIBERO simulator speed and memory per env, through policytrim's adapter (no policy, no engine).

One process, one env at a time, on one task of a suite:

- ``resets_per_s``: full resets as the adapter does them (seed, reset -- ``env.libero_reset``, fast by
  default; results from before it were hard resets -- set the init state, 10 settle steps), median over
  ``--resets`` resets of distinct test-split init states.
- ``steps_per_s_state``: env steps/s with the state observation only (no renderer).
- ``steps_per_s_images``: env steps/s with the agent-view and wrist images rendered at
  ``--image-size`` (EGL, CPU rendering here).
- ``peak_mb_per_env``: the most resident memory one more env with images added (each env built,
  reset and stepped; the libraries are already loaded by the speed runs), ``peak_mb_per_env_state``
  the same without images; the worker cap (`policytrim.envs.worker_env_cap`) divides free memory
  by the constants in `policytrim.envs.libero`.

Random actions in [-1, 1]. Default size: about 2.5 minutes on 2 cores at load ~8 (3.3 min with --steps 60 --resets 4):

    .venv-libero/bin/python benchmarks/libero_speed.py [--suite libero_object] [--steps 60] [--image-size 128]

Writes ``benchmarks/results/libero_speed.json`` (or ``--out``) with the machine description.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np

from policytrim.config import EnvConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.libero import ENV_MB_IMAGES, ENV_MB_STATE, SETTLE_STEPS
from policytrim.machine import describe_machine, tree_rss_mb

OUT = Path(__file__).resolve().parent / "results" / "libero_speed.json"


def steps_per_s(env, state, steps: int, rng: np.random.Generator) -> float:
    env.reset(state)
    actions = rng.uniform(-1, 1, (steps, 7))
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    return steps / (time.perf_counter() - t0)


def added_mb(cfg: EnvConfig, task: str, count: int) -> list[float]:
    """RSS added by each env built (each reset and stepped once), in MB."""
    gc.collect()
    before = tree_rss_mb()
    envs, added = [], []
    for i in range(count):
        env = make_env(cfg, task)
        env.reset(initial_states(task, cfg.test_seed, 1, start=i)[0])
        env.step(np.zeros(7))
        envs.append(env)
        now = tree_rss_mb()
        added.append(now - before)
        before = now
    for env in envs:
        env.close()
    gc.collect()
    return added


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--steps", type=int, default=40, help="timed steps per observation mode")
    p.add_argument("--resets", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--envs", type=int, default=3, help="envs built per memory measurement")
    p.add_argument("--out", type=Path, default=OUT, help="default: benchmarks/results/libero_speed.json")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    state_cfg = EnvConfig(suite="libero", tasks=(args.suite,))
    image_cfg = EnvConfig(suite="libero", tasks=(args.suite,), image=True, image_size=args.image_size)
    task = state_cfg.tasks[0]
    states = initial_states(task, state_cfg.test_seed, args.resets)
    t_start = time.perf_counter()

    env = make_env(state_cfg, task)
    t_state = steps_per_s(env, states[0], args.steps, rng)
    reset_s = []
    for s in states:
        t0 = time.perf_counter()
        env.reset(s)
        reset_s.append(time.perf_counter() - t0)
    env.close()
    image_env = make_env(image_cfg, task)
    t_images = steps_per_s(image_env, states[0], args.steps, rng)
    image_reset_s = []
    for s in states[:2]:
        t0 = time.perf_counter()
        image_env.reset(s)
        image_reset_s.append(time.perf_counter() - t0)
    image_env.close()
    del env, image_env
    image_mb = added_mb(image_cfg, task, args.envs)
    state_mb = added_mb(state_cfg, task, args.envs)

    result = {
        "suite": args.suite,
        "task": task,
        "steps": args.steps,
        "image_size": args.image_size,
        "settle_steps_per_reset": SETTLE_STEPS,
        "steps_per_s_state": round(t_state, 2),
        "steps_per_s_images": round(t_images, 2),
        "resets_per_s": round(1.0 / statistics.median(reset_s), 3),
        "reset_s_state": [round(x, 2) for x in reset_s],
        "reset_s_images": [round(x, 2) for x in image_reset_s],
        "peak_mb_per_env": round(max(image_mb), 1),
        "peak_mb_per_env_state": round(max(state_mb), 1),
        "added_mb_per_env_images": [round(x, 1) for x in image_mb],
        "added_mb_per_env_state": [round(x, 1) for x in state_mb],
        "worker_cap_constants_mb": {"state": ENV_MB_STATE, "images": ENV_MB_IMAGES},
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": describe_machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"images/state step-rate ratio: {t_images / t_state:.3f}")


if __name__ == "__main__":
    main()
