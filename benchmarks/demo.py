"""Time the embedded demo end to end and keep its result files.

    .venv/bin/python benchmarks/demo.py [--work runs/demo_bench] [--results benchmarks/results]

Runs `policytrim demo` (the `demo` preset) into WORK, then copies summary.json (with the wall
time of each phase, peak memory and the machine) to RESULTS/demo.json and the report to
RESULTS/report_demo/. Targets (issue 5): calls_speedup >= 2 with success_rate_drop <= 2 points
(sampled mode, test states); the whole demo <= 15 minutes and <= 3 GB peak memory on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from policytrim.config import load_config, preset_path
from policytrim.eval.report import write_report
from policytrim.experiments.demo import format_summary, run_demo
from policytrim.machine import describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/demo_bench")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    cfg = load_config(preset_path("demo"))
    cfg.logging.progress = False
    machine = describe_machine()
    t0 = time.perf_counter()
    summary = run_demo(cfg, args.work, overwrite=True)
    wall = time.perf_counter() - t0
    results = Path(args.results)
    report = write_report([Path(args.work)], results / "report_demo")
    summary.update(
        wall_clock_s=wall,
        machine={**machine, "load_average_end": list(os.getloadavg())},
        command="policytrim demo (preset demo)",
    )
    summary["targets"] = {
        "calls_speedup>=2": summary["calls_speedup"] is not None and summary["calls_speedup"] >= 2,
        "success_rate_drop<=2": summary["success_rate_drop"] <= 2,
        "wall_clock<=15min": wall <= 900,
        "peak_memory<=3GB": summary["peak_rss_mb"] <= 3072,
    }
    (results / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))
    print(
        f"wall clock {wall / 60:.1f} min, peak memory {summary['peak_rss_mb']:.0f} MB, load "
        f"{machine['load_average'][0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"results: {results / 'demo.json'}, report: {report}")
    shutil.rmtree(Path(args.work) / "demos", ignore_errors=True)


if __name__ == "__main__":
    main()
