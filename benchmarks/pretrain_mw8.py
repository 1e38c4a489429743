"""MW-8 behaviour-cloning benchmark: collect suboptimal demos, pretrain ONE instruction-conditioned
multi-task TinyVLA, evaluate it on held-out TEST initial states.

Targets (issue 4): average success rate >= 80% in sampled mode at k = 5 with H = 15, pretraining
<= 10 minutes on 2 cores. Settings come from the ``mw8`` preset (src/policytrim/configs/mw8.yaml);
flags override single values for tuning runs.

    .venv/bin/python benchmarks/pretrain_mw8.py [--episodes 50] [--work runs/bench_mw8]
        [--demos DIR (reuse a collected dataset)] [--set pretrain.iterations=8000 ...]

Writes benchmarks/results/pretrain_mw8.json and .md (per task: SR with 95% Wilson interval in
sampled and deterministic mode, mean steps and calls over successful episodes; wall times of
collection and pretraining; machine and load).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import yaml

from policytrim.config import RunConfig, from_dict, load_config, preset_path, to_dict
from policytrim.machine import describe_machine


def override(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    data = to_dict(cfg)
    for item in assignments:
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    return from_dict(RunConfig, data)


def per_task(metrics: dict) -> dict:
    """Normalise evaluate_policy's output to {task: {sr, ci, n, mean_steps, mean_calls}}."""
    out = {}
    for task, m in metrics["tasks"].items():
        out[task] = {
            "success_rate": m["success_rate"],
            "ci95": list(m["success_ci95"]),
            "episodes": int(m["episodes"]),
            "mean_steps": m.get("mean_steps"),
            "mean_calls": m.get("calls_per_success"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="test episodes per task per mode")
    parser.add_argument("--work", default="runs/bench_mw8", help="working directory (demos, checkpoint)")
    parser.add_argument("--demos", default="", help="reuse this collected dataset instead of collecting")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. pretrain.iterations=8000")
    parser.add_argument("--out", default="benchmarks/results/pretrain_mw8")
    parser.add_argument("--no-write", action="store_true", help="print only (tuning runs)")
    args = parser.parse_args()

    from policytrim.data.collect import collect_demos
    from policytrim.eval.evaluate import evaluate_policy
    from policytrim.train.bc import pretrain

    cfg = override(load_config(preset_path("mw8")), args.set)
    cfg.logging.progress = False
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": describe_machine(), "load_average_start": list(os.getloadavg()), "config": to_dict(cfg)}

    demos = Path(args.demos) if args.demos else work / "demos"
    if not args.demos:
        t0 = time.perf_counter()
        collect_demos(cfg, demos)
        result["collect_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"collected demos in {result['collect_seconds']} s")
    result["demos"] = str(demos)

    cfg.pretrain.eval_episodes = 0  # the test-state evaluation below replaces the validation check
    t0 = time.perf_counter()
    metrics = pretrain(cfg, demos, work / "policy", overwrite=True)
    result["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
    result["pretrain_train_loop_seconds"] = metrics["train_seconds"]
    result["torch_threads"] = metrics["torch_threads"]
    result["load_average_after_pretrain"] = list(os.getloadavg())
    result["val_loss"] = {"initial": metrics["initial_val_loss"], "final": metrics["final_val_loss"]}
    result["frames"], result["parameters"] = metrics["frames"], metrics["parameters"]
    print(
        f"pretrained in {result['pretrain_seconds']} s; val loss {metrics['initial_val_loss']:.3f} -> "
        f"{metrics['final_val_loss']:.3f}"
    )

    from policytrim.policies import load_policy

    policy = load_policy(work / "policy")
    window = policy.default_window
    result["window"], result["chunk_size"] = window, policy.chunk_size
    for mode in ("sampled", "deterministic"):
        t0 = time.perf_counter()
        ev = evaluate_policy(
            policy,
            cfg.env,
            episodes=args.episodes,
            window=window,
            mode=mode,
            seed=cfg.eval.seed,
            split="test",
            num_workers=cfg.rollout.num_workers,
        )
        tasks = per_task(ev)
        sr = sum(t["success_rate"] for t in tasks.values()) / len(tasks)
        result[mode] = {
            "average_success_rate": sr,
            "per_task": tasks,
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "overall": ev.get("overall"),
        }
        print(f"{mode}: average SR {sr:.3f}")
        for task, t in tasks.items():
            print(f"  {task:26s} SR {t['success_rate']:.2f}  steps {t['mean_steps']}  calls {t['mean_calls']}")
    result["load_average_end"] = list(os.getloadavg())
    if args.no_write:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out}.json and .md")


def _fmt(x, spec=".1f"):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(r: dict) -> str:
    s, d = r["sampled"], r["deterministic"]
    lines = [
        "# MW-8 behaviour cloning: one multi-task TinyVLA",
        "",
        f"Test initial states (seed {r['config']['env']['test_seed']}), "
        f"{next(iter(s['per_task'].values()))['episodes']} episodes per task and mode, "
        f"window k = {r['window']}, H = {r['chunk_size']}, horizon {r['config']['env']['horizon']}. Steps "
        "and calls: means over successful episodes.",
        "",
        "| task | SR sampled [95% CI] | steps | calls | SR deterministic [95% CI] | steps | calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in s["per_task"]:
        a, b = s["per_task"][task], d["per_task"][task]
        lines.append(
            f"| {task} | {a['success_rate']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] | "
            f"{_fmt(a['mean_steps'])} | {_fmt(a['mean_calls'])} "
            f"| {b['success_rate']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}] | {_fmt(b['mean_steps'])} "
            f"| {_fmt(b['mean_calls'])} |"
        )
    lines.append(f"| **average** | **{s['average_success_rate']:.3f}** | | | **{d['average_success_rate']:.3f}** | | |")
    lines += [
        "",
        f"- Demonstration collection: {_fmt(r.get('collect_seconds'))} s; pretraining (BC, incl. data "
        f"loading and saving): **{r['pretrain_seconds']} s** "
        f"(training loop {r['pretrain_train_loop_seconds']} s, {r.get('torch_threads', '?')} torch "
        f"thread(s)); {r['parameters']} parameters; {r['frames']['train']} training frames.",
        f"- Validation loss {r['val_loss']['initial']:.3f} → {r['val_loss']['final']:.3f}.",
        f"- Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}; "
        f"load average at start {r['load_average_start'][0]:.2f}, "
        f"after pretraining {r['load_average_after_pretrain'][0]:.2f}.",
        f"- Settings: the `mw8` preset (policy {json.dumps(r['config']['policy'])}, pretrain "
        f"{json.dumps(r['config']['pretrain'])}, data episodes {r['config']['data']['episodes']}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
