"""Success rate and steps of the scripted LIBERO experts (`policytrim.policies.libero_expert`).

Each episode: the state-only adapter (``env.libero_state=objects``) reset to one of a task's 50
init states (the published protocol's order: init state i for episode i, seed 7, 10 settle
steps), then the expert through the policy contract (``ExpertPolicy.sample``, window 1) until the
goal holds or the suite's openpi horizon (220 Spatial, 280 Object, 300 Goal, 520 LIBERO-10) ends it.

Resumable and one process: every task's episodes go to ``<workdir>/<suite>__<task>.json`` as they
finish; states already there are skipped, so a run can be stopped and continued, or widened with a
larger ``--states``; a task measured with another version of the expert's source is measured
again. Tasks the experts do not script (goals needing Close: two LIBERO-10 tasks) are
recorded as unsupported, not as failures. The summary (``--summary-only`` rebuilds it from the
work dir) goes to ``benchmarks/results/libero_experts.json`` and ``.md``: per suite and task the
success rate and mean steps of the successful episodes, the init states measured, the machine and
the raw rate of env steps (expert included) and the reset time. It says ``partial: true`` until
every task of every suite asked for has all 50 init states.

    MUJOCO_GL=egl .venv-libero/bin/python benchmarks/libero_experts.py --states 5
    MUJOCO_GL=egl .venv-libero/bin/python benchmarks/libero_experts.py --suites libero_object --states 50
    # the full table in pieces of at most an hour each (rerun the same command until it says nothing left)
    MUJOCO_GL=egl .venv-libero/bin/python benchmarks/libero_experts.py --suites libero_object,libero_spatial,\
        libero_goal,libero_10 --states 50 --max-minutes 60 --workdir /path/to/work
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from policytrim.config import EnvConfig
from policytrim.envs import initial_states, make_env
from policytrim.envs.base import OBS_STATE
from policytrim.envs.libero import INIT_STATES_PER_TASK, suite_tasks
from policytrim.errors import InputError
from policytrim.io import atomic_write_json
from policytrim.machine import describe_machine
from policytrim.policies.expert import ExpertPolicy

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("libero_object", "libero_spatial", "libero_goal", "libero_10")


@functools.cache
def expert_version() -> str:
    """SHA-256 (12 hex) of the expert's source: episodes measured with another version are re-run."""
    import policytrim.policies.libero_expert as module

    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:12]


def task_file(workdir: Path, address: str) -> Path:
    return workdir / (address.replace("/", "__") + ".json")


def run_task(address: str, states: int, workdir: Path, deadline: float = math.inf) -> dict:
    """Measure the missing init states 0..states-1 of one task (none started past ``deadline``, a
    `time.monotonic` time); returns its record."""
    path = task_file(workdir, address)
    record = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("expert_version") != expert_version():
        record = {"task": address, "expert_version": expert_version(), "episodes": {}}
    todo = [i for i in range(states) if str(i) not in record["episodes"]]
    if not todo or record.get("unsupported") or time.monotonic() >= deadline:
        return record
    cfg = EnvConfig(suite="libero", tasks=(address,), libero_state="objects", libero_published_test=True)
    policy = ExpertPolicy((address,))
    env = make_env(cfg, address)
    try:
        try:
            policy._expert_for(env.instruction)
        except InputError as exc:  # a goal the experts do not script
            record["unsupported"] = str(exc)
            atomic_write_json(path, record)
            return record
        for i in todo:
            if time.monotonic() >= deadline:
                print(f"{address}: --max-minutes reached, init states from {i} left for the next run", flush=True)
                break
            t0 = time.perf_counter()
            obs = env.reset(initial_states(address, cfg.test_seed, 1, start=i)[0])
            t1 = time.perf_counter()
            success, steps = False, 0
            while steps < cfg.horizon and not success:
                state = torch.from_numpy(obs[OBS_STATE]).unsqueeze(0)
                action = policy.sample({OBS_STATE: state}, [env.instruction]).actions[0, 0].numpy()
                obs, success = env.step(action)
                steps += 1
            t2 = time.perf_counter()
            record["episodes"][str(i)] = {
                "success": bool(success),
                "steps": steps,
                "reset_s": round(t1 - t0, 3),
                "run_s": round(t2 - t1, 3),
            }
            record["horizon"] = cfg.horizon
            atomic_write_json(path, record)
            print(
                f"{address} init {i}: {'success' if success else 'FAIL'} in {steps} steps ({t2 - t0:.1f} s)", flush=True
            )
    finally:
        env.close()
    return record


def summarise(workdir: Path, suites: tuple[str, ...]) -> dict:
    out: dict = {"suites": {}, "machine": describe_machine()}
    steps_total, run_s, reset_s = 0, 0.0, []
    partial = False
    for suite in suites:
        tasks, all_eps = {}, []
        for task in suite_tasks(suite):
            path = task_file(workdir, task.address)
            record = json.loads(path.read_text()) if path.is_file() else {"episodes": {}}
            if record.get("unsupported"):
                tasks[task.name] = {"unsupported": record["unsupported"]}
                partial = True
                continue
            eps = list(record["episodes"].values())
            partial |= len(eps) < INIT_STATES_PER_TASK  # includes tasks not measured at all
            if not eps:
                tasks[task.name] = {"not_measured": True}
                continue
            all_eps += eps
            ok = [e for e in eps if e["success"]]
            tasks[task.name] = {
                "expert_version": record.get("expert_version"),
                "success_rate": len(ok) / len(eps),
                "mean_steps": float(np.mean([e["steps"] for e in ok])) if ok else None,
                "init_states": len(eps),
                "failed_init_states": sorted(int(k) for k, e in record["episodes"].items() if not e["success"]),
            }
            steps_total += sum(e["steps"] for e in eps)
            run_s += sum(e["run_s"] for e in eps)
            reset_s += [e["reset_s"] for e in eps]
        ok = [e for e in all_eps if e["success"]]
        measured = [t for t in tasks.values() if "init_states" in t]
        out["suites"][suite] = {
            "success_rate": len(ok) / len(all_eps) if all_eps else None,
            "mean_steps": float(np.mean([e["steps"] for e in ok])) if ok else None,
            "episodes": len(all_eps),
            "tasks_measured": len(measured),
            "tasks_unsupported": sum("unsupported" in t for t in tasks.values()),
            "init_states_per_task": [
                min((t["init_states"] for t in measured), default=0),
                max((t["init_states"] for t in measured), default=0),
            ],
            "tasks": tasks,
        }
    out["partial"] = partial
    out["steps_per_s"] = steps_total / run_s if run_s else None
    out["reset_s_median"] = float(np.median(reset_s)) if reset_s else None
    return out


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [
        "# Scripted LIBERO experts",
        "",
        (
            "**Partial**: not every task has all 50 init states measured (see `init states`)."
            if summary["partial"]
            else "All 50 init states of every task."
        ),
        "",
        "| suite | task | SR | mean steps (successes) | init states | failed init states |",
        "|---|---|---:|---:|---:|---|",
    ]
    for suite, s in summary["suites"].items():
        for name, t in s["tasks"].items():
            if "unsupported" in t or "not_measured" in t:
                lines.append(f"| {suite} | {name} | {'not scripted' if 'unsupported' in t else 'not measured'} | | | |")
                continue
            steps = f"{t['mean_steps']:.0f}" if t["mean_steps"] is not None else "-"
            lines.append(
                f"| {suite} | {name} | {t['success_rate']:.2f} | {steps} | {t['init_states']} | "
                f"{t['failed_init_states']} |"
            )
        if s["episodes"]:
            lo, hi = s["init_states_per_task"]
            steps = f"{s['mean_steps']:.0f}" if s["mean_steps"] is not None else "-"
            lines.append(
                f"| **{suite}** | all ({s['tasks_measured']} tasks) | **{s['success_rate']:.3f}** | {steps} | "
                f"{lo}-{hi} per task | |"
            )
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average'][0]:.1f}). "
        f"Raw rate {summary['steps_per_s']:.1f} env steps/s with the expert, one process; "
        f"median reset {summary['reset_s_median']:.2f} s "
        "(seed, reset as `env.libero_reset` says (fast by default), init state, 10 settle steps; "
        "state only, no renderer).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", default=",".join(SUITES[:3]), help="comma-separated, measured in this order")
    p.add_argument("--states", type=int, default=INIT_STATES_PER_TASK, help="init states 0..N-1 of every task")
    p.add_argument("--tasks", default="", help="only these task indices of each suite (comma-separated)")
    p.add_argument("--workdir", type=Path, default=RESULTS / "libero_experts")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="start no episode after this many minutes (0: no limit); run again to go on where it stopped",
    )
    args = p.parse_args()
    suites = tuple(s for s in args.suites.split(",") if s)
    if not 1 <= args.states <= INIT_STATES_PER_TASK:
        p.error(f"--states must be in [1, {INIT_STATES_PER_TASK}]")
    if args.max_minutes < 0:
        p.error("--max-minutes must be >= 0")
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else math.inf
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        only = {int(i) for i in args.tasks.split(",") if i}
        for suite in suites:
            for task in suite_tasks(suite):
                if not only or task.index in only:
                    run_task(task.address, args.states, args.workdir, deadline)
    summary = summarise(args.workdir, suites)
    atomic_write_json(RESULTS / "libero_experts.json", summary)
    (RESULTS / "libero_experts.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
