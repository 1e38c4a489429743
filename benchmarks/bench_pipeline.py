"""What the pipeline benchmarks (pixels.py, heads.py) share: config building and one policy's
pretrain -> PolicyTrim (the stages it supports) -> paired test evaluation, each phase skipped when its
output exists (training resumes from its last checkpoint), timed with its load (`mw8.Phases`)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mw8 import Phases, assign, merge
from policytrim.config import RunConfig, from_dict, load_config, preset_path, to_dict
from policytrim.machine import describe_machine


def build_config(preset: str, overrides: list[dict[str, Any]], assignments: list[str], work: Path) -> RunConfig:
    """The preset, then each dict of ``overrides`` merged in order, then ``key=value`` assignments;
    the learner on a CUDA GPU when torch sees one."""
    data = to_dict(load_config(preset_path(preset)))
    for extra in overrides:
        data = merge(data, extra)
    assign(data, assignments)
    data["logging"]["out"] = str(work)
    if torch.cuda.is_available():
        data["device"] = "cuda"
    return from_dict(RunConfig, data)


def frozen_config(path: Path, make: Any) -> RunConfig:
    """The config a resumed benchmark ran with (``path``), or ``make()`` written there."""
    if path.is_file():
        return from_dict(RunConfig, yaml.safe_load(path.read_text()))
    cfg = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg


def collect(cfg: RunConfig, demos: Path, phases: Phases) -> None:
    from policytrim.data.collect import collect_demos

    phases.run(
        "collect",
        lambda: (demos / "meta.json").is_file(),
        lambda: collect_demos(cfg, demos, overwrite=True, progress=cfg.logging.progress),
    )


def policy_pipeline(
    cfg: RunConfig, demos: Path, work: Path, phases: Phases, prefix: str = "", seams: Any = None
) -> dict[str, Any]:
    """BC from ``demos`` into work/baseline, the stages the policy supports into work/train, the
    paired test evaluation into work/ (baseline, fixed-horizon sweep, Stage 1, PolicyTrim).
    ``seams``: the trainer's `TrainerSeams` (libero.py stops a piece of training through its hook).
    Returns the evaluation summary with ``stages``, ``timings_s`` and ``device``."""
    from policytrim.experiments.demo import evaluate_pipeline
    from policytrim.policies import load_policy
    from policytrim.policies.base import supported_stages
    from policytrim.train.bc import pretrain
    from policytrim.train.grpo import train

    baseline, run = work / "baseline", work / "train"
    phases.run(
        f"{prefix}pretrain",
        lambda: (baseline / "config.json").is_file(),
        lambda: pretrain(cfg, demos, baseline, overwrite=True),
    )
    stages = supported_stages(load_policy(baseline))
    stage = "both" if len(stages) == 2 else stages[0]

    def run_train() -> None:
        if (run / "run.json").is_file():
            train(cfg, resume=str(run), seams=seams)
        else:
            out = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, out=str(run)))
            train(out, stage, str(baseline), seams=seams)

    phases.run(f"{prefix}train", lambda: (run / "summary.json").is_file(), run_train)

    def run_eval() -> None:
        summary = evaluate_pipeline(cfg, baseline, run, work)
        (work / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")

    phases.run(f"{prefix}eval", lambda: (work / "summary.json").is_file(), run_eval)
    summary = json.loads((work / "summary.json").read_text())
    pretrain_metrics = json.loads((baseline / "pretrain_metrics.json").read_text())
    timings = {
        k[len(prefix) :]: round(p["seconds"], 1)
        for k, p in phases.data.items()
        if k.startswith(prefix) and k[len(prefix) :] in ("pretrain", "train", "eval")
    }
    return {
        **summary,
        "stages": list(stages),
        "timings_s": timings,
        "bc_train_seconds": pretrain_metrics["train_seconds"],
        "parameters": pretrain_metrics["parameters"],
        "device": cfg.device,
    }


def machine_record(work: Path) -> dict[str, Any]:
    """The machine, first written when the benchmark started (kept across resumes), and the load now."""
    path = work / "machine.json"
    if not path.is_file():
        path.write_text(json.dumps({**describe_machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return {**json.loads(path.read_text()), "load_average_end": list(os.getloadavg())}


def write_results(results: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """RESULTS/NAME.json (``result``) and RESULTS/NAME.md (``markdown``), also printed."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (results / f"{name}.md").write_text(markdown)
    print(markdown)


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
