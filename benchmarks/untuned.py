"""The demo preset, unchanged, on Meta-World tasks it was not tuned on (issue 18: the recipe must not
be tuned to its tasks).

Runs `policytrim demo --preset demo --tasks ...` (resumable: a finished run is reused) and writes
benchmarks/results/untuned.json and untuned.md: per task and overall, the baseline (BC, k = 5), the
same policy at k = 15 without training (does the task lose success at long windows?), Stage 1 and
PolicyTrim, paired on the same test states; the stages' epochs run and stop reasons; wall-clock with
the machine and its raw simulator rate.

    .venv/bin/python benchmarks/untuned.py --work runs/untuned \
        --tasks peg-insert-side-v3 sweep-into-v3 coffee-push-v3 hammer-v3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_speed import raw_simulator_rate  # noqa: E402
from policytrim.config import load_config, preset_path  # noqa: E402
from policytrim.machine import describe_machine  # noqa: E402

DEFAULT_TASKS = ("peg-insert-side-v3", "sweep-into-v3", "coffee-push-v3", "hammer-v3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/untuned")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--results", default="benchmarks/results")
    args = ap.parse_args()

    from policytrim.experiments.demo import run_demo

    work = Path(args.work)
    load = os.getloadavg()
    if not (work / "summary.json").is_file():
        cfg = load_config(preset_path("demo"))
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, tasks=tuple(args.tasks)))
        cfg.logging.progress = False
        run_demo(cfg, work, overwrite=True)
    summary = json.loads((work / "summary.json").read_text())
    train = json.loads((work / "train" / "summary.json").read_text())
    untrained15 = json.loads((work / "eval" / "baseline_k15.json").read_text())
    per_task: dict[str, Any] = {}
    for task, t in summary["per_task"].items():
        per_task[task] = {
            "baseline_success_rate": t["baseline"]["success_rate"],
            "untrained_k15_success_rate": untrained15["tasks"][task]["success_rate"],
            "stage1_success_rate": t["stage1"]["success_rate"],
            "policytrim_success_rate": t["policytrim"]["success_rate"],
            "baseline_mean_steps": t["baseline"]["mean_steps"],
            "policytrim_mean_steps": t["policytrim"]["mean_steps"],
            **{k: t[k] for k in ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95")},
        }
    result = {
        "machine": describe_machine(),
        "raw_simulator_steps_per_s": raw_simulator_rate(),
        "load_before": load,
        "preset": "demo",
        "tasks": args.tasks,
        "minutes": summary["timings"]["total_s"] / 60.0,
        "window": summary["windows"]["policytrim"],
        **{k: summary[k] for k in ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95")},
        "units": summary.get("units"),
        "untrained_k15_success_rate": untrained15["overall"]["success_rate"],
        "baseline_success_rate": summary["baseline"]["success_rate"],
        "policytrim_success_rate": summary["policytrim"]["success_rate"],
        "stages": {
            s: {k: train[s].get(k) for k in ("epochs", "epochs_run", "stop_reason")}
            | {"best_epoch": train[s]["best"]["epoch"]}
            for s in ("extend", "trim")
        },
        "window_choice": {k: v for k, v in train["extend"]["window_choice"].items() if k != "per_window"},
        "per_task": per_task,
    }
    out = Path(args.results)
    (out / "untuned.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# The demo preset on Meta-World tasks it was not tuned on",
        "",
        f"`policytrim demo --preset demo --tasks {' '.join(args.tasks)}`; machine "
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores, raw simulator "
        f"{result['raw_simulator_steps_per_s']:,.0f} env steps/s, load before {load[0]:.2f}; "
        f"{result['minutes']:.1f} min end to end. Sampled mode, "
        f"{summary['episodes_per_task']} paired test states per task. SR drop = baseline − PolicyTrim in "
        "points (paired 95% CI).",
        "",
        "| task | BC SR (k = 5) | BC SR at k = 15, untrained | Stage 1 SR | PolicyTrim SR | steps BC → "
        "PolicyTrim | calls speedup | SR drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, t in per_task.items():
        lo, hi = t["success_rate_drop_ci95"]
        lines.append(
            f"| {task} | {t['baseline_success_rate']:.2f} | {t['untrained_k15_success_rate']:.2f} | "
            f"{t['stage1_success_rate']:.2f} | {t['policytrim_success_rate']:.2f} | "
            f"{t['baseline_mean_steps']:.0f} → {t['policytrim_mean_steps']:.0f} | "
            f"{t['calls_speedup']:.2f}× | {t['success_rate_drop']:+.1f} [{lo:+.1f}, {hi:+.1f}] |"
        )
    lo, hi = result["success_rate_drop_ci95"]
    lines += [
        f"| **all** | {result['baseline_success_rate']:.2f} | {result['untrained_k15_success_rate']:.2f} | "
        f"| {result['policytrim_success_rate']:.2f} | "
        f"−{100 * result['steps_reduction']:.0f}% | **{result['calls_speedup']:.2f}×** | "
        f"{result['success_rate_drop']:+.1f} [{lo:+.1f}, {hi:+.1f}] |",
        "",
        f"Window chosen: {result['window']}. Stage 1: {result['stages']['extend']['epochs_run']} of "
        f"{result['stages']['extend']['epochs']} epochs "
        f"(best at {result['stages']['extend']['best_epoch']}; stop: "
        f"{result['stages']['extend']['stop_reason'] or 'none'}); Stage 2: "
        f"{result['stages']['trim']['epochs_run']} of {result['stages']['trim']['epochs']} (best at "
        f"{result['stages']['trim']['best_epoch']}).",
    ]
    (out / "untuned.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
