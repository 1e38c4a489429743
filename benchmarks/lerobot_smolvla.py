"""PolicyTrim on a small SmolVLA (LeRobot's class, local tiny VLM config, random init) from Meta-World
camera images: BC-trained on push-v3 demonstrations, then Stage 1 and Stage 2, evaluated paired.

    .venv-lerobot/bin/python benchmarks/lerobot_smolvla.py [--size full|tiny] [--work runs/lerobot_smolvla]
        [--results benchmarks/results] [--set stage2.epochs=30 ...]

Everything is offline: the VLM directory (tokenizer, processors, SmolVLMConfig) is built locally
by the test fixture ``tests/lerobot_tiny.py`` (this script puts ``tests/`` on ``sys.path``: the fixture
is not part of the library), the untrained SmolVLA is written by LeRobot's save_pretrained,
then the ordinary pipeline runs (`bench_pipeline.policy_pipeline` with ``policy.kind=lerobot``):
collect suboptimal expert demonstrations with 64 px images -> BC (LeRobot's flow-matching loss) ->
Stage 1 -> Stage 2 -> baseline / fixed-horizon sweep / Stage 1 / PolicyTrim on the same test states.

Every phase is skipped when its output exists and training resumes from its last checkpoint, so an
interrupted run continues when the same command is run again (WORK/benchmark_settings.json keeps
the settings it started with; WORK/phases.json the wall time and load of each phase).

Writes RESULTS/lerobot_smolvla.json (``--size full``; other sizes write lerobot_smolvla_SIZE.json:
``long`` is the same benchmark with more data, epochs and test states, ``tiny`` a plumbing check,
not a result) with the top-level keys calls_speedup, success_rate_drop, success_rate_drop_ci95,
steps_reduction and minutes (per phase and total), plus the summary, the settings and the machine.
Target (issue 13): calls_speedup >= 2 at a success-rate drop <= 2 points.

Measured on 2 otherwise idle cores (Xeon, Meta-World 3,100 env steps/s): ``--size tiny`` 0.5 min;
``--size full`` 19 min (collect 3.3, BC 4.7, both stages 8.9, eval 2.1; ~13 s per GRPO epoch of
32 rollouts); ``--size long`` 50 min (collect 5.7, BC 16.4, both stages 22.7, eval 5.5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mw8 import Phases, assign, merge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/lerobot_tiny.py: the tiny builds
from policytrim.config import RunConfig, from_dict, to_dict

TASK = "push-v3"
IMAGE = 64
CHUNK, WINDOW = 15, 5


SIZES: dict[str, dict] = {
    # Sized to finish in under 2 hours on 2 cores (fixed before measuring; it took 19 min): 150 demonstrations,
    # 4 groups of G = 8 per epoch, the demo preset's Stage 1 rules (stop once k = 15 is as reliable as
    # the BC policy at k = 5, from epoch 8), 24 epochs per stage at most, 100 paired test states.
    "full": {
        "env": {"tasks": [TASK], "horizon": 200, "image": True, "image_size": IMAGE},
        "policy": {
            "kind": "lerobot",
            "chunk_size": CHUNK,
            "default_window": WINDOW,
            "flow_noise": 0.5,
            "train_parts": "all",
        },
        "data": {"episodes": 150, "suboptimal": True},
        "pretrain": {"iterations": 4000, "batch_size": 32, "lr": 3e-4, "eval_episodes": 0, "val_fraction": 0.1},
        "rollout": {"group_size": 8, "groups_per_epoch": 4, "num_workers": 2},
        "stage1": {
            "epochs": 24,
            "lr": 1e-4,
            "eval_every": 4,
            "val_episodes": 32,
            "checkpoint_every": 4,
            "stop_when_reliable": True,
            "min_epochs": 8,
            "window_reference": "baseline",
        },
        "stage2": {"epochs": 24, "lr": 1e-4, "eval_every": 4, "val_episodes": 32, "checkpoint_every": 4},
        "eval": {"episodes": 100, "mode": "sampled"},
        "logging": {"progress": False, "tensorboard": False},
    },
    "tiny": {
        "env": {"tasks": [TASK], "horizon": 60, "image": True, "image_size": IMAGE},
        "policy": {
            "kind": "lerobot",
            "chunk_size": CHUNK,
            "default_window": WINDOW,
            "flow_noise": 0.5,
            "train_parts": "all",
        },
        "data": {"episodes": 4, "suboptimal": True, "keep_failures": True},
        "pretrain": {"iterations": 20, "batch_size": 8, "lr": 3e-4, "eval_episodes": 0, "val_fraction": 0.25},
        "rollout": {"group_size": 2, "groups_per_epoch": 1, "num_workers": 0},
        "stage1": {
            "epochs": 1,
            "lr": 1e-4,
            "eval_every": 1,
            "val_episodes": 2,
            "checkpoint_every": 1,
            "update_epochs": 1,
        },
        # a fixed budget: a 20-iteration BC policy may succeed nowhere to calibrate one on
        "stage2": {
            "epochs": 1,
            "lr": 1e-4,
            "eval_every": 1,
            "val_episodes": 2,
            "checkpoint_every": 1,
            "update_epochs": 1,
            "budget": 50,
        },
        "eval": {"episodes": 2, "mode": "sampled"},
        "logging": {"progress": False, "tensorboard": False},
    },
}

# More of everything, fixed after the `full` run (BC SR 0.77 there, paired interval +-11 points):
# 300 demonstrations, 3x the BC iterations, 8 groups per epoch, up to 40 + 60 epochs, 48 validation
# and 300 paired test states (it took 50 min on 2 cores).
SIZES["long"] = merge(
    SIZES["full"],
    {
        "data": {"episodes": 300},
        "pretrain": {"iterations": 12000},
        "rollout": {"groups_per_epoch": 8},
        "stage1": {"epochs": 40, "val_episodes": 48, "min_epochs": 12},
        "stage2": {"epochs": 60, "eval_every": 6, "val_episodes": 48, "checkpoint_every": 6},
        "eval": {"episodes": 300},
    },
)


def untrained_smolvla(work: Path, instructions: list[str]) -> Path:
    """The tiny VLM and an untrained SmolVLA written by LeRobot (statistics are placeholders: BC
    replaces them with the demonstrations')."""
    from lerobot_tiny import build_tiny_vlm, tiny_config, write_tiny_policy
    from policytrim.policies.lerobot import dataset_stats

    vlm = build_tiny_vlm(work / "vlm", IMAGE, instructions)
    config = tiny_config("smolvla", 39, 4, CHUNK, WINDOW, (IMAGE, IMAGE, 3), vlm_dir=vlm)
    placeholder = dataset_stats(
        torch.zeros(2, 39),
        torch.zeros(2, 4),
        torch.zeros(2, IMAGE, IMAGE, 3, dtype=torch.uint8),
        "observation.images.corner2",
    )
    return write_tiny_policy(work / "untrained", config, placeholder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--work", default="runs/lerobot_smolvla")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument(
        "--set", nargs="*", default=[], help="config overrides, e.g. stage2.epochs=40 (only when WORK is new)"
    )
    args = parser.parse_args()
    run(
        args.size,
        Path(args.work),
        Path(args.results),
        args.set,
        " ".join(["benchmarks/lerobot_smolvla.py", *sys.argv[1:]]),
    )


def run(size: str, work: Path, results: Path, overrides: Sequence[str] = (), command: str = "") -> Path:
    """The whole benchmark at ``size`` in ``work`` (resumable: finished phases are skipped); writes and
    returns its result file in ``results``. WORK/baseline and WORK/train/final/policy are the BC
    baseline and the PolicyTrim policy (`deploy_timing.py --train` times them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench_pipeline import collect, machine_record, policy_pipeline
    from policytrim.envs.tasks import INSTRUCTIONS
    from policytrim.experiments.demo import SUMMARY_UNITS, format_summary
    from policytrim.machine import PeakMemory

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    settings = assign(copy.deepcopy(SIZES[size]), list(overrides))
    frozen = work / "benchmark_settings.json"
    if frozen.is_file():  # a resumed run keeps the settings it started with
        started = json.loads(frozen.read_text())
        if (overrides or size != started["size"]) and started["settings"] != settings:
            raise SystemExit(
                f"error: {work} holds a run started with other settings ({frozen}); resume it without "
                "--set/--size, or pass a new --work"
            )
        settings = started["settings"]
    else:
        frozen.write_text(json.dumps({"size": size, "settings": settings}, indent=2) + "\n")
    machine_record(work)
    phases = Phases(work, "lerobot_smolvla")
    source = work / "source" / "untrained"
    if not (source / "config.json").is_file():
        untrained_smolvla(work / "source", [INSTRUCTIONS[TASK]])
    cfg: RunConfig = from_dict(
        RunConfig, merge(settings, {"policy": {"lerobot_path": str(source)}, "logging": {"out": str(work)}})
    )
    memory_path = work / "peak_rss_mb.json"
    peaks: dict[str, float] = json.loads(memory_path.read_text()) if memory_path.is_file() else {}
    with (
        PeakMemory() as memory
    ):  # this process and its env workers; phases done in an earlier invocation keep their record
        memory.phase = "collect"
        collect(cfg, work / "demos", phases)
        memory.phase = "policy"
        summary = policy_pipeline(cfg, work / "demos", work, phases)
    for name, mb in memory.phase_peaks_mb.items():
        peaks[name] = max(peaks.get(name, 0.0), round(mb, 1))
    memory_path.write_text(json.dumps(peaks, indent=2) + "\n")
    machine = machine_record(work)
    seconds = {"collect": phases.data["collect"]["seconds"], **summary["timings_s"]}
    minutes = {k: round(v / 60.0, 2) for k, v in seconds.items()}
    minutes["total"] = round(sum(seconds.values()) / 60.0, 2)
    result = {
        "units": SUMMARY_UNITS,
        "calls_speedup": summary["calls_speedup"],
        "success_rate_drop": summary["success_rate_drop"],
        "success_rate_drop_ci95": summary["success_rate_drop_ci95"],
        "steps_reduction": summary["steps_reduction"],
        "minutes": minutes,
        "size": size,
        "policy": "SmolVLA (lerobot 0.6.1 SmolVLAPolicy), tiny local VLM config (llama 2x128, vision 2x64, 64 px), "
        "random init, BC then PolicyTrim",
        "parameters": summary["parameters"],
        "speedup_paper": summary["speedup_paper"],
        "baseline": summary["baseline"],
        "fixed_horizon_sweep": summary["fixed_horizon_sweep"],
        "stage1": summary["stage1"],
        "policytrim": summary["policytrim"],
        "windows": summary["windows"],
        "stage1_window_choice": summary.get("stage1_window_choice"),
        "stage2_budget": summary["stage2_budget"],
        "episodes": cfg.eval.episodes,
        "mode": summary["mode"],
        "peak_rss_mb": peaks,
        "phases": phases.data,
        "targets": {
            # rounded: 6 of 300 episodes is 2.0000000000000018 points in floating point
            "calls_speedup>=2": summary["calls_speedup"] is not None and round(summary["calls_speedup"], 9) >= 2,
            "success_rate_drop<=2": round(summary["success_rate_drop"], 9) <= 2,
        },
        "config": to_dict(cfg),
        "machine": machine,
        "command": command,
    }
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    name = "lerobot_smolvla.json" if size == "full" else f"lerobot_smolvla_{size}.json"
    (results / name).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(format_summary({**summary, "horizon": cfg.env.horizon}))
    print(
        f"minutes per phase: {minutes}; load {machine['load_average'][0]:.2f} at the start -> "
        f"{machine['load_average_end'][0]:.2f}"
    )
    print(f"results: {results / name}")
    return results / name


if __name__ == "__main__":
    main()
