"""PolicyTrim on a small SmolVLA (LeRobot's class, local tiny VLM config, random init) from Meta-World
camera images: BC-trained on push-v3 demonstrations, then Stage 1 and Stage 2, evaluated paired.

    .venv-lerobot/bin/python benchmarks/lerobot_smolvla.py [--size full|tiny] [--work runs/lerobot_smolvla]
        [--results benchmarks/results] [--set stage2.epochs=30 ...]

Everything is offline: the VLM directory (tokenizer, processors, SmolVLMConfig) is built locally
(`policytrim.policies.lerobot_tiny`), the untrained SmolVLA is written by LeRobot's save_pretrained,
then the ordinary pipeline runs (`policytrim.pipeline.run_demo` with ``policy.kind=lerobot``):
collect suboptimal expert demonstrations with 64 px images -> BC (LeRobot's flow-matching loss) ->
Stage 1 -> Stage 2 -> baseline / fixed-horizon sweep / Stage 1 / PolicyTrim on the same test states.

Writes RESULTS/lerobot_smolvla.json (``--size tiny`` writes lerobot_smolvla_tiny.json, a plumbing
check, not a result) with the top-level keys calls_speedup, success_rate_drop,
success_rate_drop_ci95, steps_reduction and minutes (per phase and total), plus the summary, the
settings and the machine. Target (issue 13): calls_speedup >= 2 at a success-rate drop <= 2 points.

Expected runtime on 2 otherwise idle cores: ``--size tiny`` ~3 min; ``--size full`` ~2-3 h
(SmolVLA ~45 ms per chunk call on one core, image rendering, 200 BC demos, 2 x 30 epochs of 8 x 8
rollouts; measured tiny-size numbers are in the JSON to rescale from).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from policytrim.config import RunConfig, from_dict, to_dict
from policytrim.machine import describe_machine

TASK = "push-v3"
IMAGE = 64
CHUNK, WINDOW = 15, 5
SIZES = {
    "full": {
        "env": {"tasks": [TASK], "horizon": 200, "image": True, "image_size": IMAGE},
        "policy": {"kind": "lerobot", "chunk_size": CHUNK, "default_window": WINDOW, "flow_noise": 0.5, "train_parts": "all"},
        "data": {"episodes": 200, "suboptimal": True},
        "pretrain": {"iterations": 4000, "batch_size": 32, "lr": 3e-4, "eval_episodes": 0, "val_fraction": 0.1},
        "rollout": {"group_size": 8, "groups_per_epoch": 8, "num_workers": 2},
        "stage1": {"epochs": 30, "lr": 1e-4, "eval_every": 10, "val_episodes": 40, "checkpoint_every": 10},
        "stage2": {"epochs": 30, "lr": 1e-4, "eval_every": 5, "val_episodes": 40, "checkpoint_every": 10},
        "eval": {"episodes": 100, "mode": "sampled"},
        "logging": {"progress": False, "tensorboard": False},
    },
    "tiny": {
        "env": {"tasks": [TASK], "horizon": 60, "image": True, "image_size": IMAGE},
        "policy": {"kind": "lerobot", "chunk_size": CHUNK, "default_window": WINDOW, "flow_noise": 0.5, "train_parts": "all"},
        "data": {"episodes": 4, "suboptimal": True, "keep_failures": True},
        "pretrain": {"iterations": 20, "batch_size": 8, "lr": 3e-4, "eval_episodes": 0, "val_fraction": 0.25},
        "rollout": {"group_size": 2, "groups_per_epoch": 1, "num_workers": 0},
        "stage1": {"epochs": 1, "lr": 1e-4, "eval_every": 1, "val_episodes": 2, "checkpoint_every": 1, "update_epochs": 1},
        # a fixed budget: a 20-iteration BC policy may succeed nowhere to calibrate one on
        "stage2": {"epochs": 1, "lr": 1e-4, "eval_every": 1, "val_episodes": 2, "checkpoint_every": 1, "update_epochs": 1, "budget": 50},
        "eval": {"episodes": 2, "mode": "sampled"},
        "logging": {"progress": False, "tensorboard": False},
    },
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def untrained_smolvla(work: Path, instructions: list[str]) -> Path:
    """The tiny VLM and an untrained SmolVLA written by LeRobot (statistics are placeholders: BC
    replaces them with the demonstrations')."""
    from policytrim.policies.lerobot import dataset_stats
    from policytrim.policies.lerobot_tiny import build_tiny_vlm, tiny_config, write_tiny_policy

    vlm = build_tiny_vlm(work / "vlm", IMAGE, instructions)
    config = tiny_config("smolvla", 39, 4, CHUNK, WINDOW, (IMAGE, IMAGE, 3), vlm_dir=vlm)
    placeholder = dataset_stats(torch.zeros(2, 39), torch.zeros(2, 4), torch.zeros(2, IMAGE, IMAGE, 3, dtype=torch.uint8), "observation.images.corner2")
    return write_tiny_policy(work / "untrained", config, placeholder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--work", default="runs/lerobot_smolvla")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. stage2.epochs=40")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from policytrim.envs.tasks import INSTRUCTIONS
    from policytrim.pipeline import SUMMARY_UNITS, format_summary, run_demo

    settings = SIZES[args.size]
    for item in args.set:
        key, value = item.split("=", 1)
        node: dict = {}
        parts = key.split(".")
        cur = node
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(value)
        settings = merge(settings, node)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    t0 = time.perf_counter()
    source = untrained_smolvla(work / "source", [INSTRUCTIONS[TASK]])
    cfg: RunConfig = from_dict(RunConfig, merge(settings, {"policy": {"lerobot_path": str(source)}}))
    summary = run_demo(cfg, work / "run", overwrite=True)
    wall = time.perf_counter() - t0
    minutes = {k.removesuffix("_s"): round(v / 60.0, 2) for k, v in summary["timings"].items()}
    minutes["wall_clock"] = round(wall / 60.0, 2)
    result = {
        "units": SUMMARY_UNITS,
        "calls_speedup": summary["calls_speedup"],
        "success_rate_drop": summary["success_rate_drop"],
        "success_rate_drop_ci95": summary["success_rate_drop_ci95"],
        "steps_reduction": summary["steps_reduction"],
        "minutes": minutes,
        "size": args.size,
        "policy": "SmolVLA (lerobot 0.6.1 SmolVLAPolicy), tiny local VLM config (llama 2x128, vision 2x64, 64 px), random init, BC then PolicyTrim",
        "baseline": summary["baseline"],
        "stage1": summary["stage1"],
        "policytrim": summary["policytrim"],
        "windows": summary["windows"],
        "stage2_budget": summary["stage2_budget"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "targets": {
            "calls_speedup>=2": summary["calls_speedup"] is not None and summary["calls_speedup"] >= 2,
            "success_rate_drop<=2": summary["success_rate_drop"] <= 2,
        },
        "config": to_dict(cfg),
        "machine": {**machine, "load_average_end": list(os.getloadavg())},
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    name = "lerobot_smolvla.json" if args.size == "full" else f"lerobot_smolvla_{args.size}.json"
    (results / name).write_text(json.dumps(result, indent=2) + "\n")
    print(format_summary(summary))
    print(f"minutes per phase: {minutes}; load {machine['load_average'][0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"results: {results / name}")


if __name__ == "__main__":
    main()
