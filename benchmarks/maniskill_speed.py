"""ManiSkill3 through policytrim's adapter on one core: speed, and how many motion-planned demonstrations survive.

One process pinned to one core (torch and OpenMP at one thread), per task:

- ``build_s``: building the adapter (the first task also pays ManiSkill's import);
- ``reset_ms``: median adapter reset (seeded ManiSkill reset + the contact-refresh substep) over
  ``--resets`` distinct addresses;
- ``steps_per_s``: adapter steps/s with uniform random ``pd_ee_delta_pose`` actions in [-1, 1]
  (``--steps`` steps from one reset; no policy, no engine);
- ``*_cpu_*``: the same per CPU second of this process (``time.process_time``): on a shared, loaded
  machine wall time measures the other processes too, CPU time what one free core would give;
- demonstrations for addresses (task, seed 0, 0..``--demos``-1) by
  `policytrim.envs.maniskill_demos`: ``planner_success_rate`` (ManiSkill's motion planner in
  ``pd_joint_pos`` reported success), ``conversion_success_rate`` (of the planned ones, the
  conversion to ``pd_ee_delta_pose`` succeeded in our adapter), ``kept_rate`` (of all addresses:
  planned, converted and the open-loop replay in the reused adapter succeeded),
  ``replay_identical_rate`` (of the kept ones, the replay observed exactly the recorded
  observations), mean steps and seconds per demonstration.

Default size: a few minutes on a loaded 2-core machine (PegInsertionSide dominates):

    .venv-maniskill/bin/python benchmarks/maniskill_speed.py [--demos 5] [--steps 200] [--resets 5]

Writes ``benchmarks/results/maniskill_speed.json`` and ``.md`` with the machine description.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("PickCube-v1", "PushCube-v1", "StackCube-v1", "PullCube-v1", "PegInsertionSide-v1")


def measure_task(task: str, steps: int, resets: int, demos: int) -> dict:
    from policytrim.envs.base import InitialState
    from policytrim.envs.maniskill import ManiSkillEnv
    from policytrim.envs.maniskill_demos import MotionPlanDemonstrator

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = ManiSkillEnv(task)
    build_s = time.perf_counter() - t0
    reset_ms, reset_cpu_ms = [], []
    for i in range(resets):
        t, c = time.perf_counter(), time.process_time()
        env.reset(InitialState(task, 0, 1000 + i))
        reset_ms.append(1000 * (time.perf_counter() - t))
        reset_cpu_ms.append(1000 * (time.process_time() - c))
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    env.reset(InitialState(task, 0, 2000))
    t, c = time.perf_counter(), time.process_time()
    for a in actions:
        env.step(a)
    steps_per_s = steps / (time.perf_counter() - t)
    steps_per_cpu_s = steps / (time.process_time() - c)
    state_dim = env.layout.size  # before the padding to STATE_WIDTH
    env.close()

    demonstrator = MotionPlanDemonstrator(task)
    c = time.process_time()
    try:
        results = [demonstrator.demonstrate(InitialState(task, 0, i)) for i in range(demos)]
    finally:
        demonstrator.close()
    demo_cpu_s = time.process_time() - c
    planned = [d for d in results if d.planned]
    converted = [d for d in planned if d.converted]
    kept = [d for d in results if d.success]
    return {
        "state_dim": state_dim,
        "build_s": round(build_s, 2),
        "reset_ms": round(statistics.median(reset_ms), 1),
        "reset_cpu_ms": round(statistics.median(reset_cpu_ms), 1),
        "steps_per_s": round(steps_per_s, 1),
        "steps_per_cpu_s": round(steps_per_cpu_s, 1),
        "demos_tried": demos,
        "planner_successes": len(planned),
        "planner_success_rate": round(len(planned) / demos, 3) if demos else None,
        "conversion_successes": len(converted),
        "conversion_success_rate": round(len(converted) / len(planned), 3) if planned else None,
        "kept": len(kept),
        "kept_rate": round(len(kept) / demos, 3) if demos else None,
        "replay_identical_rate": round(sum(d.replay_identical for d in kept) / len(kept), 3) if kept else None,
        "mean_plan_steps": round(float(np.mean([d.plan_steps for d in planned])), 1) if planned else None,
        "mean_demo_steps": round(float(np.mean([len(d.actions) for d in kept])), 1) if kept else None,
        "max_demo_steps": int(max(len(d.actions) for d in kept)) if kept else None,
        "seconds_per_demo": round(sum(d.plan_seconds + d.convert_seconds for d in results) / max(demos, 1), 2),
        "cpu_seconds_per_demo": round(demo_cpu_s / demos, 2) if demos else None,
    }


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    lines = [
        "# ManiSkill3 through policytrim's adapter (one core)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average at start {m['load_average'][0]:.1f}; "
        f"ManiSkill {out['maniskill']}, SAPIEN {out['sapien']}, control mode {out['control_mode']}, "
        f"render-material stand-in {'on' if out['render_material_stand_in'] else 'off'}. "
        f"Total {out['wall_s']:.0f} s. Generated by benchmarks/maniskill_speed.py.",
        "",
        "| task | state dim | reset ms (CPU ms) | steps/s (per CPU s) | planner ok | converted ok | kept "
        "| replay identical | demo steps (mean / max) | s per demo (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, r in out["tasks"].items():
        lines.append(
            f"| {task} | {r['state_dim']} | {r['reset_ms']} ({r['reset_cpu_ms']}) | "
            f"{r['steps_per_s']} ({r['steps_per_cpu_s']}) | "
            f"{r['planner_successes']}/{r['demos_tried']} | {r['conversion_successes']}/{r['planner_successes']} | "
            f"{r['kept']}/{r['demos_tried']} | {r['replay_identical_rate']} | "
            f"{r['mean_demo_steps']} / {r['max_demo_steps']} | {r['seconds_per_demo']} ({r['cpu_seconds_per_demo']}) |"
        )
    lines += [
        "",
        "planner ok: ManiSkill's motion planner (pd_joint_pos) reported success; converted ok: of those, the",
        "pd_ee_delta_pose conversion succeeded in our adapter; kept: planned, converted and an open-loop replay",
        "in the reused adapter succeeded; replay identical: share of kept replays that observed exactly the",
        "recorded observations (PhysX keeps solver state across resets; see policytrim.envs.maniskill).",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--steps", type=int, default=200, help="timed random-action steps per task")
    p.add_argument("--resets", type=int, default=5, help="timed resets per task")
    p.add_argument("--demos", type=int, default=5, help="addresses planned and converted per task")
    p.add_argument("--out", default=str(RESULTS / "maniskill_speed.json"))
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from policytrim.envs.maniskill import CONTROL_MODE, patch_render_material_if_no_device
    from policytrim.machine import describe_machine

    machine = describe_machine()
    stand_in = patch_render_material_if_no_device()
    import mani_skill
    import sapien

    t0 = time.perf_counter()
    tasks = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        tasks[task] = measure_task(task, args.steps, args.resets, args.demos)
        print(task, json.dumps(tasks[task]), flush=True)
    out = {
        "machine": machine,
        "cores_used": 1,
        "maniskill": mani_skill.__version__,
        "sapien": sapien.__version__,
        "control_mode": CONTROL_MODE,
        "render_material_stand_in": stand_in,
        "settings": {"steps": args.steps, "resets": args.resets, "demos": args.demos, "demo_seed": 0},
        "wall_s": round(time.perf_counter() - t0, 1),
        "tasks": tasks,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    write_markdown(out, path.with_suffix(".md"))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
