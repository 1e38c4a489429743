"""Policy families under PolicyTrim (the paper's Table 3, measured here): the same MW-8
demonstrations, one TinyVLA per action head, each through behaviour cloning and PolicyTrim.

    gaussian        diagonal Gaussian, H = 15, k = 5                    Stage 1 + Stage 2
    flow            flow matching (K = 10, Flow-SDE log-probs), H = 15  Stage 1 + Stage 2
    token_parallel  256 bins/dim, placeholder queries (OpenVLA-OFT), H = 15   Stage 1 + Stage 2
    token_ar        256 bins/dim, autoregressive (OpenVLA), H = k = 5   Stage 2 only (it decodes
                    exactly the window it executes: Stage 1 has no longer chunk to extend into)

    .venv/bin/python benchmarks/heads.py [--work runs/heads_bench] [--heads gaussian flow ...]
        [--set stage2.epochs=200 ...] [--tiny] [--table]

Per head: SR, steps, window and calls of the BC baseline and of PolicyTrim on 50 paired test states
per task (sampled mode), the calls speedup, Stage 1's window choice and whether Stage 1 helped (it
chose a longer window than the baseline's and its SR stayed within 2 points of the baseline's).
Resumable: the demonstrations are collected once; each head's result is written to
``benchmarks/results/heads/<head>.json`` as it lands and a finished head is not run again; within a
head, every phase is skipped when its output exists (training resumes from its last checkpoint).
The table (heads.md / heads.json) is rebuilt from the result files after every head.

Measured on a 2-core AMD EPYC (3,530 raw env steps/s): collection 2.3 min, the Gaussian head 55 min
(BC 1.8, training 51, evaluation 2.2), the flow head 53 min (BC 2.8, training 48, evaluation 2.2).
On a 2-core Intel Xeon (3,950 raw env steps/s): collection 1.9 min, token_parallel 62 min (BC 5.9,
training 54, evaluation 2.2), token_ar 42 min (BC 3.6, Stage 2 only 37, evaluation 0.9). About
3.5-4 hours for all four.
``--tiny``: a ~3 minute check of the script (writes into WORK only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench_pipeline import build_config, collect, fmt, frozen_config, machine_record, policy_pipeline
from mw8 import Phases
from policytrim.experiments.demo import SUMMARY_UNITS

HEADS: dict[str, dict[str, Any]] = {
    "gaussian": {"policy": {"head": "gaussian", "std_mode": "state"}},
    "flow": {"policy": {"head": "flow", "flow_steps": 10}},
    "token_parallel": {"policy": {"head": "token_parallel"}, "pretrain": {"batch_size": 64}},
    "token_ar": {"policy": {"head": "token_ar", "chunk_size": 5, "default_window": 5}, "pretrain": {"batch_size": 64}},
}
# The token heads' BC runs at batch 64 (the others at the preset's 256): their transformer over H·A
# tokens costs ~30x the Gaussian head per chunk (measured on 2 shared cores: 1.05 s vs 31 ms per
# batch-256 iteration for token_parallel at H = 15), and 10000 iterations at batch 256 would take
# about half an hour per head.
# Shared by every head, fixed before measuring: MW-8's demonstrations and BC settings (mw8 preset),
# MW-8's trainer settings with fewer epochs (4 heads must fit an afternoon), 50 test states per task.
TRAINER: dict[str, Any] = {
    "rollout": {"group_size": 8, "groups_per_epoch": 16, "num_workers": 2},
    "stage1": {"epochs": 60, "lr": 3e-4, "eval_every": 10, "val_episodes": 25, "checkpoint_every": 10},
    "stage2": {
        "epochs": 120,
        "lr": 1e-4,
        "eval_every": 10,
        "val_episodes": 25,
        "checkpoint_every": 10,
        "tolerance_points": 2.0,
    },
    "eval": {"episodes": 50, "mode": "sampled"},
    "logging": {"progress": False, "tensorboard": False},
}
TINY: dict[str, Any] = {
    "env": {"tasks": ["drawer-close-v3", "reach-v3"], "horizon": 60},
    "data": {"episodes": 3, "suboptimal": False},
    "policy": {"hidden_dim": 32, "num_layers": 1, "token_dim": 16, "token_layers": 1, "flow_steps": 3},
    "pretrain": {"iterations": 20, "batch_size": 16, "eval_episodes": 0},
    "rollout": {"group_size": 2, "groups_per_epoch": 1, "num_workers": 0},
    "stage1": {"epochs": 1, "val_episodes": 1},
    "stage2": {"epochs": 1, "val_episodes": 1, "budget": 60},
    "eval": {"episodes": 1},
}
STAGE1_TOLERANCE_POINTS = 2.0


def stage1_verdict(summary: dict[str, Any]) -> str:
    """Whether Stage 1 helped: a longer window than the baseline's at an SR within the tolerance."""
    if "extend" not in summary["stages"]:
        return "n/a (H = k: Stage 2 only)"
    k0, k1 = summary["baseline"]["window"], summary["stage1"]["window"]
    vs = summary["stage1_vs_baseline"] or {}
    drop = vs.get("success_rate_drop")
    if k1 <= k0:
        return f"no (kept k = {k0})"
    if vs.get("calls_speedup") is None:
        return f"undetermined (k {k0} -> {k1}, no successful test episode to count calls)"
    if drop is not None and drop > STAGE1_TOLERANCE_POINTS:
        return f"no (k {k0} -> {k1} lost {drop:.1f} SR points)"
    return f"yes (k {k0} -> {k1}, {fmt(vs.get('calls_speedup'), '.2f')}× fewer calls)"


def head_result(head: str, summary: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "baseline",
        "stage1",
        "policytrim",
        "calls_speedup",
        "speedup_paper",
        "steps_reduction",
        "success_rate_drop",
        "success_rate_drop_ci95",
        "stage1_vs_baseline",
        "stage1_window_choice",
        "stage2_budget",
        "per_task",
        "stages",
        "timings_s",
        "bc_train_seconds",
        "parameters",
        "device",
        "episodes_per_task",
        "mode",
    )
    return {"head": head, **{k: summary.get(k) for k in keep}, "stage1_helped": stage1_verdict(summary)}


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| head | H | stages | BC SR | BC steps | BC k | BC calls | Stage 1 helped | PolicyTrim SR | steps "
        "| k | calls | calls speedup | SR drop (points) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, p = r["baseline"], r["policytrim"]
        lines.append(
            f"| {r['head']} | {r['chunk_size']} | {' + '.join(r['stages'])} | {b['success_rate']:.3f} | "
            f"{fmt(b['mean_steps'], '.1f')} | {b['window']} | "
            f"{fmt(b['calls_per_success'], '.1f')} | {r['stage1_helped']} | {p['success_rate']:.3f} | "
            f"{fmt(p['mean_steps'], '.1f')} | {p['window']} | "
            f"{fmt(p['calls_per_success'], '.1f')} | {fmt(r['calls_speedup'], '.2f')}× | "
            f"{r['success_rate_drop']:+.1f} |"
        )
    return lines


# The paper's Table 3 (LIBERO, real VLAs), beside the head of the same decoding family: SR (%),
# steps, executed chunk length, speedup (its formula). Its flow-matching (pi0.5, GR00T) results are in
# Tables 1/2 (no Table 3 row).
PAPER_TABLE3: tuple[tuple[str, str, str], ...] = (
    (
        "token_parallel",
        "OpenVLA-OFT (parallel decoding, re-pretrained with a longer chunk)",
        "S1+S2: SR 98.6 -> 98.8, steps 111.2 -> 65.4, k 8 -> 14, 2.97x",
    ),
    ("token_ar", "OpenVLA (autoregressive)", "S2 only: SR 84.7 -> 87.0, steps 113.5 -> 80.6, 1.41x"),
)


def write_table(results_dir: Path, tiny: bool) -> None:
    """heads.md / heads.json from every finished head's result file (heads may land in different
    sessions, on different machines: each row's machine is its own)."""
    per_head = results_dir / "heads"
    done = [json.loads((per_head / f"{h}.json").read_text()) for h in HEADS if (per_head / f"{h}.json").is_file()]
    if not done:
        raise SystemExit(f"no finished head in {per_head}")
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores" for r in done})
    lines = [
        "# Action heads under PolicyTrim (MW-8 demonstrations, one TinyVLA per head)",
        "",
        f"{done[0]['episodes_per_task']} paired test states per task, {done[0]['mode']} mode; each head: "
        "BC then the stages it supports. "
        "Stage 1 helped = it chose a longer window than the baseline's with SR within 2 points.",
        "",
        *table(done),
        "",
        "The paper's Table 3 (LIBERO, 7 B-parameter VLAs) for the same decoding family:",
        "",
        "| head | paper's model | paper's result |",
        "|---|---|---|",
        *(f"| {head} | {model} | {row} |" for head, model, row in PAPER_TABLE3),
        "",
        "Wall time per head (s): "
        + "; ".join(f"{r['head']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) for r in done),
        "Machine: "
        + "; ".join(
            f"{r['head']}: {r['machine']['cpu']}, {r['machine']['cores']} cores, load "
            f"{r['machine']['load_average']} at start"
            for r in done
        )
        if len(machines) > 1
        else f"Machine: {machines[0]}, learner on {done[0]['device']}; load "
        f"{done[0]['machine']['load_average']} at start.",
        "Commands: " + "; ".join(sorted({f"`{r.get('command', '(not recorded)')}`" for r in done})),
    ]
    (results_dir / "heads.md").write_text("\n".join(lines) + "\n")
    (results_dir / "heads.json").write_text(
        json.dumps({"units": SUMMARY_UNITS, "heads": done, "trainer": TRAINER, "tiny": tiny}, indent=2, default=float)
        + "\n"
    )
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/heads_bench")
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every head, e.g. stage2.epochs=200")
    parser.add_argument(
        "--tiny", action="store_true", help="a few-minute check of the script; results go to WORK/results"
    )
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument(
        "--table", action="store_true", help="only rebuild heads.md / heads.json from the finished heads' files"
    )
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_dir = work / "results" if args.tiny else Path(args.results)
    per_head = results_dir / "heads"
    per_head.mkdir(parents=True, exist_ok=True)
    if args.table:
        write_table(results_dir, args.tiny)
        return
    shared = [TRAINER] + ([TINY] if args.tiny else [])
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    phases = Phases(work, "heads")
    machine_record(work)  # the machine and load at the start, kept across resumes
    collect(build_config("mw8", shared, args.set, work), work / "demos", phases)
    for head in args.heads:
        out = per_head / f"{head}.json"
        if out.is_file():
            print(f"[heads] {head}: done earlier ({out})", flush=True)
            continue
        head_work = work / head
        cfg = frozen_config(
            head_work / "benchmark_config.yaml",
            lambda: build_config("mw8", shared + [HEADS[head]], args.set, head_work),  # noqa: B023 - called at once
        )
        summary = policy_pipeline(cfg, work / "demos", head_work, phases, prefix=f"{head}/")
        result = {
            **head_result(head, summary),
            "chunk_size": cfg.policy.chunk_size,
            "tasks": list(cfg.env.tasks),
            "config": HEADS[head],
            "machine": machine_record(work),
            "command": command,
        }
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"[heads] {head}: wrote {out}", flush=True)

        write_table(results_dir, args.tiny)


if __name__ == "__main__":
    main()
