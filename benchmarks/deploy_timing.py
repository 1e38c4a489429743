"""Seconds per success on the robot's clock: PolicyTrim x compute-side tricks x asynchronous execution
(the paper's Table 7 question, measured on a policy whose calls cost something).

For a baseline policy (at its trained window) and a PolicyTrim policy (at its trained window), each
row runs ``--episodes`` paired Meta-World test episodes through `policytrim.eval.realtime`:
actions at the task's control period (Meta-World: frame_skip 5 x 2.5 ms = 12.5 ms), each policy call
(batch 1, in process, ``--threads`` torch threads) at its measured wall-clock latency, and the
simulator's own computation not counted as robot time. Every row runs twice:

- ``sync``: the arm waits for every call;
- ``async``: the next chunk is requested when ``threshold`` actions remain, with threshold =
  ceil(median latency / control period) (the smallest that hides a typical call; capped at
  window - 1), stale actions skipped, dry queues counted.

Rows: baseline; PolicyTrim; the baseline with each compute trick alone (``steps=N`` for each value
of ``--flow-steps``: fewer denoising steps, flow policies only; ``bf16``; ``int8``: dynamic int8
linear layers; ``compile``: torch.compile of the network); the best combination (the tricks whose
row beat the baseline's sync seconds per success at a success-rate drop within ``--sr-tolerance``
points); PolicyTrim + that combination (``--no-tricks``: none of these compute-trick rows). ``--variant
NAME=DIR`` (repeatable) adds another PolicyTrim checkpoint, timed like ``--trimmed`` (e.g. one trained
with ``rollout.delay``, and its control). Success rates are paired against the baseline's sync row
(same states, same random numbers: Newcombe's interval). Optional ``--delays``: SR under a
controlled staleness d (async, latency = d control periods, threshold d: every chunk is d actions
old when it starts) for the baseline, PolicyTrim and each variant.

    # the demo's policies (TinyVLA), or the LeRobot SmolVLA of lerobot_smolvla.py in .venv-lerobot:
    python benchmarks/deploy_timing.py --baseline runs/demo/pretrain --trimmed runs/demo/train/final/policy
    .venv-lerobot/bin/python benchmarks/deploy_timing.py --baseline runs/lerobot_smolvla_long/baseline \\
        --trimmed runs/lerobot_smolvla_long/train/final/policy --task push-v3 --image --flow-steps 5 2
    # or let it train that SmolVLA first (lerobot_smolvla.py's pipeline at that size, resumable, into
    # --train-work, default runs/lerobot_smolvla_SIZE; task push-v3 and 64 px images follow from it):
    .venv-lerobot/bin/python benchmarks/deploy_timing.py --train long --flow-steps 5 2

Policies: exactly one of ``--train SIZE`` (tiny | full | long: ``lerobot_smolvla.py --size SIZE``; that
script's docstring gives each size's time: full 19 min, long 50 min on 2 idle cores; its result file
goes into the train work dir) and ``--baseline DIR --trimmed DIR`` (your own checkpoints).

Resumable: each (row, mode) result is kept in ``--work`` and skipped when present (same settings).
Writes ``--out`` (default benchmarks/results/stacking.json, the file `policytrim report --stacking`
reads; this script replaced the earlier stacking.py, which modelled the robot's time). JSON:
``combined_wallclock_speedup`` = the best PolicyTrim stack's seconds per success against the
synchronous baseline's, among the rows within ``--sr-tolerance`` points; ``combined_success_rate_drop``
in points, paired, for that same stack (both None when no PolicyTrim row qualifies); ``best_row``: the
fastest row of either policy within the tolerance. A Markdown table beside it, with the machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policytrim.config import EnvConfig
from policytrim.envs.base import InitialState
from policytrim.envs.metaworld import MetaWorldEnv
from policytrim.eval.paired import paired_difference
from policytrim.eval.realtime import DeployTiming, policy_infer, run_timed_episode, summarize_timed
from policytrim.machine import describe_machine
from policytrim.policies import load_policy
from policytrim.policies.precision import PRECISIONS, to_precision
from policytrim.runtime import torch_threads

DEFAULT_TASK, DEFAULT_IMAGE_SIZE = "drawer-close-v3", 64


def set_flow_steps(model: Any, steps: int) -> None:
    """Fewer denoising steps: TinyVLA's ``flow_steps``; a LeRobot flow VLA's config."""
    if getattr(model, "head_kind", None) == "flow":
        model.flow_steps = steps
        return
    config = getattr(getattr(model, "policy", None), "config", None)
    for name in ("num_steps", "num_inference_steps"):
        if config is not None and hasattr(config, name):
            setattr(config, name, steps)
            return
    raise ValueError("not a flow policy: it has no denoising steps")


def build_variant(policy: Any, tricks: tuple[str, ...]) -> Any:
    """A copy of ``policy`` with the tricks applied (steps, then precision, then compile); ``policy``
    itself is left as it was."""
    precisions = [t for t in tricks if t in PRECISIONS]
    if len(precisions) > 1:
        raise ValueError(f"one precision at a time, got {', '.join(precisions)}")
    model = copy.deepcopy(policy)
    for trick in tricks:
        if trick.startswith("steps="):
            set_flow_steps(model, int(trick.split("=", 1)[1]))
    for precision in precisions:
        model = to_precision(model, precision)
    if "compile" in tricks:
        for name in ("trunk", "head", "image", "policy"):
            if isinstance(getattr(model, name, None), nn.Module):
                setattr(model, name, torch.compile(getattr(model, name)))
    return model.eval()


class Runner:
    """Runs (row, mode) episode sets on the same test states, caching each in the work dir."""

    def __init__(self, args: argparse.Namespace, policies: dict[str, Any]):
        self.args, self.policies = args, policies
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.models: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.failures: dict[str, str] = {}
        self.env = MetaWorldEnv(args.task, args.horizon, image=args.image, image_size=args.image_size)
        self.states = [InitialState(args.task, EnvConfig().test_seed, i) for i in range(args.episodes)]
        self.settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "note")}

    def model(self, role: str, tricks: tuple[str, ...]) -> Any | None:
        key = (role, tricks)
        if key not in self.models:
            try:
                model = build_variant(self.policies[role], tricks)
                policy_infer(model, self.args.mode, 0)(
                    self.env.reset(self.states[0]), self.env.instruction
                )  # compile fails here, if at all
                self.models[key] = model
            except Exception as exc:  # a trick this model or torch build cannot do is reported, not fatal
                self.failures["+".join(tricks)] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                return None
        return self.models[key]

    def median_latency_s(self, model: Any, calls: int = 30) -> float:
        infer = policy_infer(model, self.args.mode, 0)
        obs = self.env.reset(self.states[0])
        for _ in range(3):
            infer(obs, self.env.instruction)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            infer(obs, self.env.instruction)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def run(
        self, name: str, role: str, tricks: tuple[str, ...], mode: str, *, delay: int | None = None
    ) -> dict[str, Any] | None:
        tag = hashlib.sha256(
            json.dumps([name, role, tricks, mode, delay, self.settings], default=str).encode()
        ).hexdigest()[:16]
        cache = self.work / f"{tag}.json"
        if cache.exists():
            return json.loads(cache.read_text())
        model = self.model(role, tricks)
        if model is None:
            return None
        window = int(self.policies[role].default_window)
        period = float(self.env.control_period_s)
        latency = self.median_latency_s(model)
        if delay is not None:
            timing = DeployTiming(
                window=window, mode="async", threshold=min(delay, window - 1), latency_s=delay * period
            )
        elif mode == "async":
            timing = DeployTiming(
                window=window, mode="async", threshold=min(window - 1, max(1, math.ceil(latency / period)))
            )
        else:
            timing = DeployTiming(window=window, mode="sync")
        started = time.perf_counter()
        episodes = [
            run_timed_episode(self.env, policy_infer(model, self.args.mode, seed=1000 + s.index), s, timing)
            for s in self.states
        ]
        out = {
            "name": name,
            "policy": role,
            "tricks": list(tricks),
            "mode": mode,
            "delay_steps": delay,
            "window": window,
            "threshold": timing.threshold,
            "median_latency_ms": round(1e3 * latency, 3),
            "control_period_s": period,
            **summarize_timed(episodes),
            "success": [e.success for e in episodes],
            "wall_s": round(time.perf_counter() - started, 1),
        }
        cache.write_text(json.dumps(out) + "\n")
        return out


def best_combination(rows: list[dict[str, Any]], base: dict[str, Any], tolerance: float) -> tuple[str, ...]:
    """Tricks whose sync row beat the baseline's seconds per success within the SR tolerance; of the
    step counts and of the precisions, the best one each."""
    good: list[dict[str, Any]] = []
    if base["seconds_per_success"] is None:  # the baseline succeeded nowhere: nothing to be faster than
        return ()
    for r in rows:
        if (
            r["policy"] != "baseline"
            or len(r["tricks"]) != 1
            or r["mode"] != "sync"
            or r["seconds_per_success"] is None
        ):
            continue
        drop = -100 * paired_difference(base["success"], r["success"])["diff"]
        if r["seconds_per_success"] < base["seconds_per_success"] and drop <= tolerance:
            good.append(r)
    chosen: list[str] = []
    for family in (lambda t: t.startswith("steps="), lambda t: t in PRECISIONS, lambda t: t == "compile"):
        members = [r for r in good if family(r["tricks"][0])]
        if members:
            chosen.append(min(members, key=lambda r: r["seconds_per_success"])["tricks"][0])
    return tuple(chosen)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    machine_before = describe_machine()
    policies = {"baseline": load_policy(args.baseline), "policytrim": load_policy(args.trimmed)}
    variants = [(name, f"policytrim:{name}") for name, _ in args.variant]
    policies.update({f"policytrim:{name}": load_policy(path) for name, path in args.variant})
    for p in policies.values():
        p.eval()
    runner = Runner(args, policies)
    singles = (
        []
        if args.no_tricks
        else [(f"steps={n}",) for n in args.flow_steps]
        + [(precision,) for precision in PRECISIONS]
        + ([] if args.skip_compile else [("compile",)])
    )
    plan = [("baseline", "baseline", ()), ("PolicyTrim", "policytrim", ())]
    plan += [(name, role, ()) for name, role in variants]
    plan += [(f"baseline + {t[0]}", "baseline", t) for t in singles]
    rows: list[dict[str, Any]] = []
    for name, role, tricks in plan:
        for mode in ("sync", "async"):
            r = runner.run(name, role, tricks, mode)
            if r is not None:
                rows.append(r)
                print(
                    f"{name:<32} {mode:<5} k={r['window']:<3} {r['median_latency_ms']:8.2f} ms  SR "
                    f"{r['success_rate']:.3f}  "
                    f"s/success {_num(r['seconds_per_success'])}  idle/ep {r['idle_s_per_episode']:.3f} s  "
                    f"calls {r['calls_per_episode']:.1f}",
                    flush=True,
                )
    base = next(r for r in rows if r["name"] == "baseline" and r["mode"] == "sync")
    combo = best_combination(rows, base, args.sr_tolerance)
    if combo:
        for name, role in (("baseline + best tricks", "baseline"), ("PolicyTrim + best tricks", "policytrim")):
            for mode in ("sync", "async"):
                r = runner.run(name, role, combo, mode)
                if r is not None:
                    rows.append(r)
    delays = []
    for d in args.delays:
        for name, role in (("baseline", "baseline"), ("PolicyTrim", "policytrim"), *variants):
            r = runner.run(f"{name} delay {d}", role, (), "async", delay=d)
            if r is not None:
                delays.append(r)
    for r in rows + delays:
        pd = paired_difference(base["success"], r["success"])
        r["success_rate_drop"] = round(-100 * pd["diff"], 2)
        r["success_rate_drop_ci95"] = [round(-100 * pd["hi"], 2), round(-100 * pd["lo"], 2)]
        r["seconds_per_success_speedup"] = (
            round(base["seconds_per_success"] / r["seconds_per_success"], 3)
            if r["seconds_per_success"] and base["seconds_per_success"]
            else None
        )
    candidates = [
        r
        for r in rows
        if r["policy"].startswith("policytrim")
        and r["seconds_per_success_speedup"]
        and r["success_rate_drop"] <= args.sr_tolerance
    ]
    best = max(candidates, key=lambda r: r["seconds_per_success_speedup"], default=None)
    within = [r for r in rows if r["seconds_per_success_speedup"] and r["success_rate_drop"] <= args.sr_tolerance]
    best_any = max(within, key=lambda r: r["seconds_per_success_speedup"], default=None)
    runner.env.close()
    return {
        "benchmark": "deployment timing (Table 7, on the robot's clock)",
        "combined_wallclock_speedup": best["seconds_per_success_speedup"] if best else None,
        "combined_success_rate_drop": best["success_rate_drop"] if best else None,
        "combined_row": {"name": best["name"], "mode": best["mode"], "tricks": best["tricks"]} if best else None,
        # the fastest row of either policy within the SR tolerance (the baseline's own stack when no
        # PolicyTrim row qualifies)
        "best_row": {
            k: best_any[k] for k in ("name", "mode", "tricks", "seconds_per_success_speedup", "success_rate_drop")
        }
        if best_any
        else None,
        "best_compute_tricks": list(combo),
        "rows": [{k: v for k, v in r.items() if k != "success"} for r in rows],
        "delay_rows": [{k: v for k, v in r.items() if k != "success"} for r in delays],
        "not_measured": runner.failures,
        "settings": {**runner.settings, "note": args.note},
        "machine": {"before": machine_before, "after": describe_machine()},
    }


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# Seconds per success on the robot's clock",
        "",
        f"Task {s['task']}, {s['episodes']} paired test episodes per row ({s['mode']} mode), policies "
        f"{s['baseline']} (baseline) and "
        f"{s['trimmed']} (PolicyTrim); calls at their measured latency on {s['threads']} torch thread(s), "
        "actions at the control period." + "".join(f" Variant {name}: {path}." for name, path in s.get("variant", [])),
        "",
        (
            f"**Best PolicyTrim stack: {res['combined_row']} — {res['combined_wallclock_speedup']}x seconds per "
            f"success against the synchronous baseline, success-rate drop {res['combined_success_rate_drop']} "
            "points (paired).**"
            if res["combined_row"]
            else f"**No PolicyTrim row stays within {s['sr_tolerance']} points of the synchronous baseline's "
            "success rate, so there is no combined speedup.**"
        ),
        "",
        f"Fastest row of either policy within the tolerance: {res['best_row']}.",
        "",
        "| row | mode | k | threshold | latency ms | SR | SR drop [95% CI] | s / success | x | moving s | "
        "idle s | calls | dry | stale |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"] + res["delay_rows"]:
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['window']} | {r['threshold']} | "
            f"{r['median_latency_ms']:.2f} | {r['success_rate']:.3f} | "
            f"{r['success_rate_drop']} {r['success_rate_drop_ci95']} | {_num(r['seconds_per_success'])} | "
            f"{r['seconds_per_success_speedup']} | "
            f"{r['moving_s_per_episode']:.3f} | {r['idle_s_per_episode']:.3f} | "
            f"{r['calls_per_episode']:.1f} | {r['dry_events_per_episode']:.1f} | {r['mean_staleness']:.1f} "
            "|"
        )
    lines += (
        ["", "Not measured:"] + [f"- {k}: {v}" for k, v in res["not_measured"].items()] if res["not_measured"] else []
    )
    m = res["machine"]["before"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; load average before "
        f"{m['load_average']}, after {res['machine']['after']['load_average']}.",
        "",
    ]
    return "\n".join(lines)


def check_policy_args(args: argparse.Namespace, trained_task: str, trained_image_size: int) -> str | None:
    """What is wrong with the policy flags (None: nothing); fills in the task and image size. Exactly one
    of --train and --baseline/--trimmed; --train fixes the task and the image size to the trained ones."""
    own = args.baseline is not None or args.trimmed is not None
    if args.train is not None and own:
        return "give --train SIZE or --baseline/--trimmed (your own checkpoints), not both"
    if args.train is None and args.train_work is not None:
        return "--train-work is where --train SIZE trains; give --train too"
    if args.train is None and (args.baseline is None or args.trimmed is None):
        return "give --train SIZE (train the LeRobot SmolVLA first), or both --baseline and --trimmed"
    if args.train is not None:
        for flag, given, trained in (
            ("--task", args.task, trained_task),
            ("--image-size", args.image_size, trained_image_size),
        ):
            if given is not None and given != trained:
                return f"--train times the SmolVLA of lerobot_smolvla.py, trained with {flag} {trained}; got {given}"
        args.task, args.image_size, args.image = trained_task, trained_image_size, True
    else:
        args.task = DEFAULT_TASK if args.task is None else args.task
        args.image_size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
    return None


def parse_variants(args: argparse.Namespace) -> str | None:
    """What is wrong with the --variant flags (None: nothing); turns them into (name, directory) pairs."""
    pairs = []
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not (sep and name.strip() and path):
            return f"--variant takes NAME=DIR (a name for its rows and a policy checkpoint directory), got {item!r}"
        if not (Path(path) / "config.json").is_file():
            return f"--variant {name}: {path} is not a policy checkpoint directory (no config.json)"
        if name.strip() in ("baseline", "PolicyTrim") or name.strip() in [n for n, _ in pairs]:
            return f"--variant names must be unique and not baseline or PolicyTrim, got {name!r} again"
        pairs.append((name.strip(), path))
    args.variant = pairs
    return None


def train_policies(args: argparse.Namespace) -> None:
    """Run lerobot_smolvla.py's pipeline at size ``args.train`` in ``args.train_work`` (finished phases are
    skipped) and time its BC baseline and its PolicyTrim policy."""
    import lerobot_smolvla

    work = Path(args.train_work or f"runs/lerobot_smolvla_{args.train}")
    started = time.perf_counter()
    lerobot_smolvla.run(
        args.train, work, work, command=f"benchmarks/deploy_timing.py --train {args.train} --train-work {work}"
    )
    args.train_work = str(work)
    args.baseline, args.trimmed = str(work / "baseline"), str(work / "train" / "final" / "policy")
    print(f"trained in {time.perf_counter() - started:.0f} s: {args.baseline}, {args.trimmed}", flush=True)


def main() -> None:
    from lerobot_smolvla import IMAGE, SIZES, TASK

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="baseline checkpoint (executed at its trained window)")
    parser.add_argument("--trimmed", help="PolicyTrim checkpoint (e.g. RUN/final/policy)")
    parser.add_argument(
        "--train",
        choices=sorted(SIZES),
        help="train lerobot_smolvla.py's SmolVLA at this size first and time its baseline and PolicyTrim policy",
    )
    parser.add_argument("--train-work", help="work dir of --train (resumable; default runs/lerobot_smolvla_SIZE)")
    parser.add_argument("--task", help=f"Meta-World task (default {DEFAULT_TASK}; --train: {TASK})")
    parser.add_argument("--image", action="store_true", help="image observations (for image policies)")
    parser.add_argument("--image-size", type=int, help=f"(default {DEFAULT_IMAGE_SIZE}; --train: {IMAGE})")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--mode", default="sampled", choices=("sampled", "deterministic"))
    parser.add_argument(
        "--flow-steps",
        type=int,
        nargs="*",
        default=[5, 2],
        help="denoising steps of the 'fewer steps' rows (flow policies)",
    )
    parser.add_argument("--delays", type=int, nargs="*", default=[], help="controlled staleness rows (actions)")
    parser.add_argument(
        "--sr-tolerance", type=float, default=2.0, help="points of SR a trick or stack may lose and still count"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = one robot's share of a small CPU)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another PolicyTrim checkpoint, timed like --trimmed (sync, async, every --delays); repeatable",
    )
    parser.add_argument("--no-tricks", action="store_true", help="leave out the compute-trick rows")
    parser.add_argument("--work", default="runs/deploy_timing")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default="benchmarks/results/stacking.json")
    args = parser.parse_args()
    problem = check_policy_args(args, TASK, IMAGE) or parse_variants(args)
    if problem is not None:
        parser.error(problem)
    if args.train is not None:
        train_policies(args)
    with torch_threads(args.threads):
        res = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(
        f"combined_wallclock_speedup = {res['combined_wallclock_speedup']} at an SR drop of "
        f"{res['combined_success_rate_drop']} points; wrote {out}"
    )


if __name__ == "__main__":
    main()
