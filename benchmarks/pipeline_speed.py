"""The demo pipeline's wall-clock, old code vs new, measured side by side on one machine.

Runs `policytrim demo` (same preset, same seed) once with each source tree, one after the other and
alone on the machine, unless the run directory already holds a finished run (resumable: run it again
after an interruption), then writes the comparison: minutes per phase, the headline results of both
runs, peak memory, the load before each run and the raw simulator rate of this machine (one process
stepping Meta-World's push-v3 with zero actions), so the times can be compared across machines.

    .venv/bin/python benchmarks/pipeline_speed.py --old-src ../old/src --old-commit 059a5dc \
        --old-run runs/speed-old --new-run runs/speed-new --out benchmarks/results/pipeline_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from policytrim.machine import describe_machine

HEADLINE = ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95")


def raw_simulator_rate(steps: int = 3000) -> float:
    """Env steps/s of one process stepping push-v3 (no policy, no engine, no rendering)."""
    import numpy as np

    from policytrim.envs.base import InitialState
    from policytrim.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv("push-v3", horizon=10**6)
    try:
        env.reset(InitialState("push-v3", 0, 0))
        action = np.zeros(4)
        t = time.perf_counter()
        for _ in range(steps):
            env.step(action, observe=False)
        return steps / (time.perf_counter() - t)
    finally:
        env.close()


def run_demo(label: str, src: Path, out: Path, preset: str) -> dict[str, Any]:
    """`policytrim demo` with the package from ``src`` into ``out`` (skipped when already done)."""
    summary = out / "summary.json"
    record = out.parent / f"{out.name}.timing.json"
    if summary.is_file() and record.is_file():
        return json.loads(record.read_text())
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    load = os.getloadavg()
    t = time.perf_counter()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from policytrim.cli import main; sys.exit(main(sys.argv[1:]))",
        "demo",
        "--preset",
        preset,
        "--out",
        str(out),
        "--overwrite",
        "--logging.no-progress",
    ]
    print(f"[{label}] {' '.join(cmd[3:])} (PYTHONPATH={src})", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True)
    info = {
        "label": label,
        "src": str(src),
        "wall_s": time.perf_counter() - t,
        "load_before": load,
        "load_after": os.getloadavg(),
    }
    record.write_text(json.dumps(info, indent=2))
    return info


def describe(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    train = json.loads((run / "train" / "summary.json").read_text())
    return {
        **info,
        "minutes": summary["timings"]["total_s"] / 60.0,
        "timings_s": summary["timings"],
        "peak_rss_mb": summary.get("peak_rss_mb"),
        **{k: summary[k] for k in HEADLINE},
        "success_rate": {name: summary[name]["success_rate"] for name in ("baseline", "stage1", "policytrim")},
        "mean_steps": {name: summary[name]["mean_steps"] for name in ("baseline", "stage1", "policytrim")},
        "windows": summary["windows"],
        "stage_epochs_run": {s: train[s].get("epochs_run", train[s]["epochs"]) for s in ("extend", "trim")},
        "stage_stop_reason": {s: train[s].get("stop_reason") for s in ("extend", "trim")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", required=True, type=Path, help="src/ of the old code (a worktree of the old commit)")
    ap.add_argument("--old-commit", required=True)
    ap.add_argument("--new-src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--new-commit", default="")
    ap.add_argument("--old-run", required=True, type=Path)
    ap.add_argument("--new-run", required=True, type=Path)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--out", default="benchmarks/results/pipeline_speed.json")
    args = ap.parse_args()
    new_commit = (
        args.new_commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=args.new_src
        ).stdout.strip()
    )

    runs = {}
    for label, src, out in (("old", args.old_src, args.old_run), ("new", args.new_src, args.new_run)):
        runs[label] = describe(out, run_demo(label, src, out, args.preset))
    rate = raw_simulator_rate()
    old, new = runs["old"], runs["new"]
    result = {
        "machine": describe_machine(),
        "raw_simulator_steps_per_s": rate,
        "preset": args.preset,
        "old_commit": args.old_commit,
        "new_commit": new_commit,
        "old_minutes": old["minutes"],
        "new_minutes": new["minutes"],
        "new_over_old": new["minutes"] / old["minutes"],
        "old": old,
        "new": new,
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2))

    def row(name: str, f: Any) -> str:
        return f"| {name} | {f(old)} | {f(new)} |"

    phases = ("collect_s", "pretrain_s", "train_s", "eval_s")
    lines = [
        "# Pipeline wall-clock: old vs new code (`policytrim demo`, same preset and seed)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; raw simulator "
        f"{rate:,.0f} env steps/s (one process, push-v3).",
        f"Old: main @ {args.old_commit}; new: @ {new_commit}. Each run alone on the machine, one after the other.",
        "",
        "| | old | new |",
        "|---|---|---|",
        row("**total minutes**", lambda r: f"**{r['minutes']:.1f}**"),
        *[row(p[:-2] + " s", lambda r, p=p: f"{r['timings_s'][p]:.0f}") for p in phases],
        row("load before the run (1 / 5 / 15 min)", lambda r: " / ".join(f"{x:.2f}" for x in r["load_before"])),
        row("calls speedup", lambda r: f"{r['calls_speedup']:.2f}×"),
        row("steps reduction", lambda r: f"{100 * r['steps_reduction']:.1f}%"),
        row(
            "SR drop, points (paired 95% CI)",
            lambda r: (
                f"{r['success_rate_drop']:+.1f} [{r['success_rate_drop_ci95'][0]:+.1f}, "
                f"{r['success_rate_drop_ci95'][1]:+.1f}]"
            ),
        ),
        row(
            "SR baseline / Stage 1 / PolicyTrim",
            lambda r: " / ".join(f"{r['success_rate'][n]:.3f}" for n in ("baseline", "stage1", "policytrim")),
        ),
        row("window chosen", lambda r: str(r["windows"]["policytrim"])),
        row(
            "Stage 1 / Stage 2 epochs run",
            lambda r: f"{r['stage_epochs_run']['extend']} / {r['stage_epochs_run']['trim']}",
        ),
        row("peak memory (MB, all processes)", lambda r: f"{r['peak_rss_mb']:,.0f}"),
        "",
        f"New / old wall-clock: **{result['new_over_old']:.2f}**.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
