"""PolicyTrim on LIBERO (the paper's Table 1, our side): per suite, one multi-task state policy (TinyVLA,
H = 15, window 5) BC-trained on the scripted experts' suboptimal demonstrations, then Stage 1 (windows
5 / 10 / 15; LIBERO-10: 10 / 15, as the paper) and Stage 2, evaluated paired on the test init states.

    MUJOCO_GL=egl PYTHONPATH=src .venv-libero/bin/python benchmarks/libero_suite.py --suite libero_object
        [--size full|tiny] [--work runs/libero_object] [--results benchmarks/results]
        [--max-minutes 85] [--set stage2.epochs=40 ...]

State observations (``env.image=false``, ``env.libero_state=objects``: proprioception + the task's object
poses, a fixed layout per suite; `policytrim.envs.libero`), state-only envs without a renderer.
Horizon: openpi's per-suite maximum steps (Object 280, Goal 300, LIBERO-10 520), Spatial 280 as
LeRobot's; not the paper's 160 / 160 / 240 / 400, because the suboptimal demonstrations (the
suboptimality model slows the experts down: ~177 steps on an Object task vs ~106 clean) would not fit.

Pipeline (each phase skipped when its output exists; `bench_pipeline`): the suite's tasks the experts
script (`policytrim.policies.libero_expert.task_plan`; a task it refuses, e.g. a drawer of LIBERO-Goal,
is left out and named in the result) -> `policytrim collect` (``data.on_shortfall=warn``: a task the
experts leave short trains on fewer demonstrations, named in the result) -> BC -> Stage 1 -> Stage 2 ->
baseline at k = 5 / fixed-window sweep / Stage 1 / PolicyTrim on the same 10 test init states per task.

Pieces: a session may end any time, so the benchmark runs in pieces. ``--max-minutes M`` stops at the
first epoch boundary after M minutes of training (every epoch is checkpointed: nothing is lost) or
before a phase that starts after M minutes, and exits with status 3; the same command continues it.
Each phase but training is shorter than ~20 minutes at the full size.

Writes RESULTS/libero_<suite>.json + .md (``--size full`` only, when the run has finished; ``tiny``
writes WORK/libero_<suite>_tiny.json, a plumbing check, not a result): ``calls_speedup``,
``steps_reduction``, ``success_rate_drop`` (+ paired CI) as the other benchmarks write them, per-task
rows, the paper's rows for the suite (pi0.5, OpenVLA-OFT, GR00T), the tasks left out or short, minutes
per phase, the time of a training epoch and where it goes (env resets, env steps, policy calls,
update), and the machine. Targets (issue 32): Object >= 4x fewer calls at an SR drop <= 1 point;
every suite >= 2.5x at <= 2 points.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mw8 import Phases

SUITES = ("libero_object", "libero_spatial", "libero_goal", "libero_10")
HORIZON = {"libero_object": 280, "libero_spatial": 280, "libero_goal": 300, "libero_10": 520}
WINDOWS = {"libero_10": [10, 15]}  # the paper's LIBERO-10 runs start Stage 1 at the longer windows
TARGETS = {"libero_object": (4.0, 1.0)}  # suite -> (calls_speedup at least, SR drop at most); others (2.5, 2.0)
PIECE_OVER = 3  # exit status of a piece stopped by --max-minutes

# Table 1 of the paper, per suite: model -> row -> [SR %, steps, window, speedup]
PAPER = {
    "libero_spatial": {
        "pi0.5": {"baseline": [97.8, 108.3, 5, 1.0], "policytrim": [97.8, 59.8, 15, 5.43]},
        "openvla-oft": {"baseline": [98.6, 111.2, 8, 1.0], "policytrim": [98.8, 62.1, 8, 1.79]},
        "gr00t": {"baseline": [91.4, 67.2, 5, 1.0], "policytrim": [92.0, 56.6, 10, 2.37]},
    },
    "libero_object": {
        "pi0.5": {"baseline": [99.1, 125.0, 5, 1.0], "policytrim": [98.5, 64.3, 15, 5.83]},
        "openvla-oft": {"baseline": [98.5, 135.2, 8, 1.0], "policytrim": [98.5, 68.8, 8, 1.97]},
        "gr00t": {"baseline": [95.0, 71.3, 5, 1.0], "policytrim": [95.3, 65.5, 10, 2.18]},
    },
    "libero_goal": {
        "pi0.5": {"baseline": [98.7, 110.6, 5, 1.0], "policytrim": [98.8, 63.5, 15, 5.23]},
        "openvla-oft": {"baseline": [97.7, 118.6, 8, 1.0], "policytrim": [98.0, 66.9, 8, 1.77]},
        "gr00t": {"baseline": [84.2, 63.3, 5, 1.0], "policytrim": [86.3, 60.8, 10, 2.08]},
    },
    "libero_10": {
        "pi0.5": {"baseline": [93.0, 249.8, 5, 1.0], "policytrim": [93.3, 171.8, 10, 2.91]},
        "openvla-oft": {"baseline": [92.9, 249.3, 8, 1.0], "policytrim": [93.1, 178.3, 8, 1.40]},
        "gr00t": {"baseline": [86.1, 177.9, 5, 1.0], "policytrim": [89.2, 165.9, 10, 2.14]},
    },
}


def settings(suite: str, size: str) -> dict[str, Any]:
    """The overrides laid on the demo preset (its BC and trainer settings) for ``suite`` at ``size``.

    full, fixed before measuring: 50 suboptimal demonstrations per task (the train split has 30 init
    states; further attempts wrap around with other perturbations; at most 80 attempts, so a task the
    experts rarely solve costs ~4 min, not the 160 attempts of the default), 4 groups of G = 8 per epoch (tasks
    round robin), 50 + 50 epochs at most, 10 validation states per task every 10 epochs, every epoch
    checkpointed (pieces lose nothing), the 10 test init states of every task.

    The first LIBERO-Object run (2026-12-06, hard resets) had 25 + 25 epochs and 5 validation states
    per task every 5 epochs: Stage 1's window-15 validation success stayed at 0.44-0.58 for all 25
    epochs, and its window choice (10) rested on 50 validation episodes per window (+-13 points),
    while 72 of an epoch's 79 summed env-seconds were resets. With the fast reset an epoch costs about
    half, so the second run trains twice as long in about the same time and validates on twice the
    states, half as often.

    Estimated duration of the Object suite on 2 cores, from what one LIBERO training epoch cost here
    (AMD EPYC, 2 cores, load ~7 from other jobs, one env worker: 8 trajectories of 280 steps, 57 s:
    env resets 23.7 s (3.0 s each), env steps 33.0 s (68 steps/s), policy calls 0.08 s), with 200
    steps per trajectory and ~4 s per trajectory (73 steps/s and 1.2 s per reset on a free core;
    ~6 s at the loaded rates): collect 500 demos ~15 min, BC 10000 iterations ~2 min (11 ms each at
    batch 256), an epoch of 32 trajectories on 2 workers ~65 s (~95 s loaded), a validation of 50
    episodes ~100 s; Stage 1 25 epochs + ~9 validations ~41 min, Stage 2 25 epochs + ~6 validations
    ~36 min, the paired test evaluation (5 policies x 100 episodes) ~16 min: ~1.8 h on free cores,
    ~2.7 h at this machine's load. Goal and Spatial about the same per task; LIBERO-10 ~2x (520 steps)."""
    env = {
        "suite": "libero",
        "tasks": [suite],
        "image": False,
        "libero_state": "objects",
        "libero_max_steps": "env",
        "horizon": HORIZON[suite],
    }
    windows = WINDOWS.get(suite, [5, 10, 15])
    if size == "full":
        return {
            "env": env,
            "data": {"episodes": 50, "suboptimal": True, "on_shortfall": "warn", "max_attempts": 80},
            "policy": {"chunk_size": 15, "default_window": 5},
            "pretrain": {"iterations": 10000, "batch_size": 256, "lr": 1e-3, "eval_episodes": 0},
            "rollout": {"group_size": 8, "groups_per_epoch": 4, "num_workers": 2},
            "stage1": {
                "epochs": 50,
                "eval_every": 10,
                "val_episodes": 10,
                "min_epochs": 10,
                "checkpoint_every": 1,
                "windows": windows,
                "fresh_choice": True,  # after LIBERO-Spatial's best-of-six k = 15 (SPEC: fresh evidence)
            },
            "stage2": {"epochs": 50, "eval_every": 10, "val_episodes": 10, "checkpoint_every": 1},
            "eval": {"episodes": 10, "mode": "sampled"},
            "logging": {"progress": False, "tensorboard": False},
        }
    # tiny: 2 tasks, 2 demonstrations each (collected at the suite's horizon), rollouts of 80 steps, 1 epoch
    # per stage of one group of 2, one env worker
    return {
        "env": {**env, "horizon": 80},
        "data": {"episodes": 2, "suboptimal": True, "on_shortfall": "warn", "max_attempts": 4},
        "policy": {"chunk_size": 15, "default_window": 5},
        "pretrain": {"iterations": 50, "batch_size": 32, "eval_episodes": 0, "val_fraction": 0.25},
        "rollout": {"group_size": 2, "groups_per_epoch": 1, "num_workers": 1},
        "stage1": {
            "epochs": 1,
            "eval_every": 1,
            "val_episodes": 1,
            "min_epochs": 1,
            "update_epochs": 1,
            "checkpoint_every": 1,
            "windows": windows,
        },
        "stage2": {"epochs": 1, "eval_every": 1, "val_episodes": 1, "update_epochs": 1, "budget": 80},
        "eval": {"episodes": 2, "mode": "sampled"},
        "logging": {"progress": False, "tensorboard": False},
    }


def scripted_tasks(suite: str, size: str) -> dict[str, Any]:
    """The suite's tasks whose experts build a plan (``tasks``) and the others with the reason
    (``left_out``); tiny keeps the first two scripted tasks."""
    import importlib

    from policytrim.envs.libero import suite_tasks
    from policytrim.errors import InputError
    from policytrim.policies.libero_expert import task_plan

    try:  # a missing simulator is not a task the experts refuse
        importlib.import_module("libero.libero.benchmark")
    except ImportError as exc:
        raise SystemExit(f"libero_suite.py: LIBERO does not import ({exc}); run it in .venv-libero") from None
    tasks, left_out = [], {}
    for task in suite_tasks(suite):
        if size == "tiny" and len(tasks) == 2:
            break
        try:
            task_plan(task.address)
        except InputError as exc:
            left_out[task.address] = str(exc)
            continue
        tasks.append(task.address)
    if not tasks:
        raise SystemExit(f"libero_suite.py: the scripted experts plan none of {suite}'s tasks: {left_out}")
    return {"tasks": tasks, "left_out": left_out}


class PieceOver(Exception):
    """--max-minutes ran out at an epoch boundary (the epoch before was checkpointed)."""


def deadline_engine(time_up: Callable[[], bool], started: dict[str, float]) -> Any:
    """An engine factory for `TrainerSeams` whose engine raises `PieceOver` instead of starting a
    training epoch's rollout once ``time_up()``: the trainer checkpoints every epoch (checkpoint_every
    = 1) before the next one's rollout, so stopping there loses no work. Records in ``started["train"]``
    when training started (time.monotonic)."""
    from policytrim.rollout.engine import RolloutEngine

    class DeadlineEngine(RolloutEngine):
        def run(self, policy, starts, group_size, windows, mode, *args, **kwargs):  # noqa: ANN001 - as RolloutEngine
            if mode == "train" and time_up():
                raise PieceOver
            return super().run(policy, starts, group_size, windows, mode, *args, **kwargs)

    def factory(*args: Any, **kwargs: Any) -> RolloutEngine:
        started.setdefault("train", time.monotonic())
        return DeadlineEngine(*args, **kwargs)

    return factory


def epoch_time(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage, from metrics.jsonl: epochs, mean seconds per epoch and its parts (wall: rollout,
    policy calls within it, update; worker seconds summed over env workers: resets, env steps),
    env steps per epoch, validations and their mean seconds, and the stage's minutes (epochs +
    validations; the start validation and the window choice / budget calibration not included)."""
    out: dict[str, Any] = {}
    for stage in ("extend", "trim"):
        rows = [r for r in records if r.get("stage") == stage and "epoch_s" in r]
        if not rows:
            continue
        vals = [r["val_s"] for r in rows if "val_s" in r]
        parts = ("epoch_s", "rollout_s", "rollout_policy_s", "update_s", "rollout_reset_s", "rollout_env_s")
        parts += ("env_steps",)
        out[stage] = {
            "epochs": len(rows),
            **{
                f"mean_{key}": round(statistics.fmean(r[key] for r in rows), 3)
                for key in parts
                if all(key in r for r in rows)
            },
            "validations": len(vals),
            "mean_val_s": round(statistics.fmean(vals), 2) if vals else None,
            "minutes": round((sum(r["epoch_s"] for r in rows) + sum(vals)) / 60.0, 2),
        }
    return out


def targets(suite: str, result: dict[str, Any]) -> dict[str, bool]:
    speedup, drop = TARGETS.get(suite, (2.5, 2.0))
    calls = result["calls_speedup"]
    return {
        f"calls_speedup>={speedup:g}": calls is not None and round(calls, 9) >= speedup,
        f"success_rate_drop<={drop:g}": round(result["success_rate_drop"], 9) <= drop,
    }


def markdown(result: dict[str, Any]) -> str:
    from bench_pipeline import fmt

    s = result["summary"]
    rows = [("BC baseline", s["baseline"]), ("Stage 1", s.get("stage1")), ("PolicyTrim", s["policytrim"])]
    base_calls = s["baseline"]["calls_per_success"]
    lines = [
        f"# PolicyTrim on LIBERO ({result['suite']}, state observations)",
        "",
        f"{len(result['tasks'])} tasks, one multi-task TinyVLA (H = 15); {result['episodes']} paired test init "
        f"states per task ({result['mode']} actions), horizon {result['horizon']}. Generated by "
        "benchmarks/libero_suite.py.",
        "",
        "| policy | SR | steps | window | calls per success | calls speedup |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        if row is None:
            continue
        speedup = base_calls / row["calls_per_success"] if base_calls and row["calls_per_success"] else None
        lines.append(
            f"| {name} | {row['success_rate']:.3f} | {fmt(row['mean_steps'], '.1f')} | {row['window']} | "
            f"{fmt(row['calls_per_success'], '.1f')} | {fmt(speedup, '.2f')}x |"
        )
    ci = result["success_rate_drop_ci95"]
    lines += [
        "",
        f"SR drop {result['success_rate_drop']:+.1f} points (paired 95% CI {ci[0]:+.1f} .. {ci[1]:+.1f}); steps "
        f"-{fmt(result['steps_reduction'] and 100 * result['steps_reduction'], '.0f')}%; calls speedup "
        f"{fmt(result['calls_speedup'], '.2f')}x. Targets: "
        f"{'met' if all(result['targets'].values()) else 'NOT met'} ({result['targets']}).",
        "",
        "| task | SR BC -> Stage 1 -> PolicyTrim | steps BC -> PolicyTrim | demos |",
        "|---|---|---|---:|",
    ]
    collected = result["demonstrations"].get("collected") or {}
    for task, r in result["per_task"].items():
        bb, s1, pp = r.get("baseline", {}), r.get("stage1", {}), r.get("policytrim", {})
        lines.append(
            f"| {task.split('/', 1)[-1]} | {fmt(bb.get('success_rate'), '.2f')} -> "
            f"{fmt(s1.get('success_rate'), '.2f')} -> {fmt(pp.get('success_rate'), '.2f')} | "
            f"{fmt(bb.get('mean_steps'), '.1f')} -> {fmt(pp.get('mean_steps'), '.1f')} | {collected.get(task, '-')} |"
        )
    lines += ["", "Paper, Table 1 (SR %, steps, window, speedup):", ""]
    lines += ["| model | baseline | PolicyTrim |", "|---|---|---|"]
    for model, paper in result["paper"].items():
        lines.append(f"| {model} | {paper['baseline']} | {paper['policytrim']} |")
    short = result["demonstrations"].get("short_of_requested") or {}
    lines += [
        "",
        f"Tasks left out (no scripted expert): {result['left_out'] or 'none'}. Tasks short of demonstrations: "
        f"{short or 'none'}.",
        "",
        f"Minutes per phase: {result['minutes']}. Training epochs: {result['epoch_time']}.",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}, {result['machine'].get('cores', '?')} cores; load "
        f"{result['machine'].get('load_average', ['?'])[0]} at the start, "
        f"{result['machine']['load_average_end'][0]:.2f} at the end.",
    ]
    return "\n".join(lines) + "\n"


def record(
    suite: str, size: str, cfg: Any, work: Path, summary: dict[str, Any], phases: Phases, plan: dict[str, Any]
) -> dict[str, Any]:
    """The result file's content from a finished run's work directory."""
    from bench_pipeline import machine_record
    from policytrim.io import read_jsonl

    pieces = json.loads((work / "train_pieces.json").read_text()) if (work / "train_pieces.json").is_file() else []
    seconds = {"collect": phases.data["collect"]["seconds"], **summary["timings_s"]}
    seconds["train"] += sum(pieces)  # the pieces stopped by --max-minutes before the one that finished
    minutes = {k: round(v / 60.0, 2) for k, v in seconds.items()}
    minutes["total"] = round(sum(seconds.values()) / 60.0, 2)
    collection = json.loads((work / "demos" / "meta.json").read_text())["collection"]
    result = {
        "calls_speedup": summary["calls_speedup"],
        "steps_reduction": summary["steps_reduction"],
        "success_rate_drop": summary["success_rate_drop"],
        "success_rate_drop_ci95": summary["success_rate_drop_ci95"],
        "suite": suite,
        "size": size,
        "tasks": list(cfg.env.tasks),
        "left_out": plan["left_out"],
        "horizon": cfg.env.horizon,
        "episodes": cfg.eval.episodes,
        "mode": summary["mode"],
        "per_task": {
            task: {row: rows[row] for row in ("baseline", "stage1", "policytrim") if row in rows}
            for task, rows in summary["per_task"].items()
        },
        "summary": {k: summary.get(k) for k in ("baseline", "stage1", "policytrim")},
        "fixed_horizon_sweep": summary.get("fixed_horizon_sweep"),
        "windows": summary.get("windows"),
        "stage1_window_choice": summary.get("stage1_window_choice"),
        "stage2_budget": summary.get("stage2_budget"),
        "demonstrations": {
            k: collection.get(k) for k in ("collected", "attempts", "expert_successes", "short_of_requested")
        },
        "paper": PAPER[suite],
        "minutes": minutes,
        "train_pieces": len(pieces) + 1,
        "epoch_time": epoch_time(read_jsonl(work / "train" / "metrics.jsonl")),
        "phases": phases.data,
        "machine": machine_record(work),
        "command": " ".join(["benchmarks/libero_suite.py", *sys.argv[1:]]),
    }
    result["targets"] = targets(suite, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--work", default="", help="work directory (default runs/<suite>[_tiny])")
    parser.add_argument("--results", default="", help="default: benchmarks/results (full), the work directory (tiny)")
    parser.add_argument(
        "--max-minutes", type=float, default=70.0, help="stop training after M minutes of this piece (exit 3)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (only when WORK is new)")
    args = parser.parse_args()

    from bench_pipeline import build_config, collect, frozen_config, machine_record, policy_pipeline
    from policytrim.train.grpo import TrainerSeams

    t_start = time.monotonic()
    deadline = t_start + 60.0 * args.max_minutes
    name = args.suite if args.size == "full" else f"{args.suite}_tiny"
    work = Path(args.work or f"runs/{name}")
    bench = {"suite": args.suite, "size": args.size, "set": args.set}
    if (work / "bench.json").is_file():  # a run under way: its own tasks and config
        if json.loads((work / "bench.json").read_text()) != bench:
            print(
                f"libero_suite.py: {work} was started with {(work / 'bench.json').read_text().strip()}; "
                "use a new --work"
            )
            raise SystemExit(2)
        plan = json.loads((work / "tasks.json").read_text())
        cfg = frozen_config(work / "config.yaml", lambda: None)
    else:  # everything checked before anything is written
        plan = scripted_tasks(args.suite, args.size)
        overrides = copy.deepcopy(settings(args.suite, args.size))
        overrides["env"]["tasks"] = plan["tasks"]
        try:
            cfg = build_config("demo", [overrides], args.set, work)
        except (KeyError, ValueError, TypeError) as exc:  # a bad --set; ConfigError is a ValueError
            print(f"libero_suite.py: bad --set {' '.join(args.set)}: {exc}")
            raise SystemExit(2) from None
        work.mkdir(parents=True, exist_ok=True)
        (work / "tasks.json").write_text(json.dumps(plan, indent=2) + "\n")
        frozen_config(work / "config.yaml", lambda: cfg)
        (work / "bench.json").write_text(json.dumps(bench) + "\n")  # last: the run exists
    machine_record(work)
    phases = Phases(work, name)

    def check_time(phase: str) -> None:
        if time.monotonic() > deadline:
            print(f"[{name}] --max-minutes {args.max_minutes:g} reached before {phase}; run the same command again")
            raise SystemExit(PIECE_OVER)

    check_time("collect")
    # the demonstrations at the suite's horizon (tiny's rollouts are shorter: the untrained policy fails)
    collect(
        dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, horizon=HORIZON[args.suite])), work / "demos", phases
    )
    check_time("pretrain")
    started: dict[str, float] = {}
    seams = TrainerSeams(engine_factory=deadline_engine(lambda: time.monotonic() > deadline, started))
    try:
        summary = policy_pipeline(cfg, work / "demos", work, phases, seams=seams)
    except PieceOver:
        pieces_path = work / "train_pieces.json"
        pieces = json.loads(pieces_path.read_text()) if pieces_path.is_file() else []
        pieces.append(round(time.monotonic() - started["train"], 1))
        pieces_path.write_text(json.dumps(pieces) + "\n")
        print(f"[{name}] --max-minutes {args.max_minutes:g} reached in training (checkpointed); run the same command")
        raise SystemExit(PIECE_OVER) from None
    result = record(args.suite, args.size, cfg, work, summary, phases, plan)
    results = Path(args.results or ("benchmarks/results" if args.size == "full" else str(work)))
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (results / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
