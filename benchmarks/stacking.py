"""Table 7: PolicyTrim's fewer calls stacked with compute-side speedups (cheaper calls).

For a baseline policy (its trained window, e.g. k = 5) and a PolicyTrim policy (its trained window,
e.g. 15), measured in one run on one machine:

- per-call latency of ONE robot's call (batch 1, median of ``--calls`` calls, timed in blocks
  interleaved across all rows so that load changes on a shared machine hit every row alike), for
  fp32; fewer flow denoising steps (flow heads only); bf16; dynamic int8 quantisation of the
  linear layers (CPU); ``torch.compile`` of the network modules; and the call served through
  `policytrim serve` on loopback with the client's action-chunk broker (batch 1 in process vs the
  served round trip: the serving overhead);
- episodes on Meta-World test states with that variant (calls, steps, success), since precision
  and denoising steps can change the actions; ``torch.compile`` and serving do not change them, so
  their rows reuse the episodes of the same model without them;
- end-to-end wall-clock per successful episode = calls x latency + steps x control period (the
  physics time of a real robot, 12.5 ms per Meta-World step), as `policytrim eval` computes it.

Rows: the baseline; PolicyTrim alone; each compute trick alone on the baseline; the tricks that
helped alone combined on the baseline; PolicyTrim + those tricks (``combined``). Speedups are
relative to the baseline row. A modelled column repeats the wall-clock with a billion-parameter
VLA's call latency (``--vla-latency-ms``, as `policytrim eval --latency-ms`) scaled by each row's
measured latency ratio: a model, labelled as such.

    python benchmarks/stacking.py --baseline runs/demo/pretrain --trimmed runs/demo/train/final/policy
    python benchmarks/stacking.py            # no checkpoints: trains a small flow policy first (~1 min)

Without checkpoints the script BC-trains a flow-head TinyVLA (H = 15, trained window 5) on clean
expert demonstrations of ``--task`` and uses the same network executed at window 15 as the
"PolicyTrim-like" policy (a stand-in that is NOT GRPO-trained; the result says so). Expected
runtime at the defaults on 2 quiet CPU cores: about 5 minutes (most of it torch.compile).
Writes benchmarks/results/stacking.json (top-level ``combined_wallclock_speedup``) and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policytrim.config import EnvConfig, PolicyConfig, PretrainConfig, RunConfig
from policytrim.eval.evaluate import evaluate_policy
from policytrim.machine import describe_machine
from policytrim.policies import load_policy
from policytrim.runtime import torch_threads

TRICKS = ("fewer_steps", "bf16", "int8", "compile")
HELPED = 0.97  # a trick "helped alone" when it cut the baseline's latency by at least 3 %


def build_variant(policy: Any, tricks: tuple[str, ...], fewer_steps: int) -> Any:
    """A copy of ``policy`` with the compute tricks applied (in the order steps, precision, compile)."""
    model = copy.deepcopy(policy)
    if "fewer_steps" in tricks:
        model.flow_steps = fewer_steps
    if "bf16" in tricks:
        model = model.to(torch.bfloat16)
    if "int8" in tricks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if "compile" in tricks:
        for name in ("trunk", "head", "image"):
            if getattr(model, name, None) is not None:
                setattr(model, name, torch.compile(getattr(model, name)))
    return model.eval()


def one_robot_obs(policy: Any, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A batch-1 observation with a state drawn from the policy's normalisation statistics."""
    rng = np.random.default_rng(seed)
    mean, std = policy.state_mean.float().numpy(), policy.state_std.float().numpy()
    state = torch.as_tensor(mean + std * rng.normal(size=mean.shape), dtype=torch.float32).unsqueeze(0)
    return {"state": state}, [policy.text.instructions[0]]


Key = tuple[str, tuple[str, ...]]  # (policy role, tricks); the trick "served" = through the server


def caller(model: Any, obs: dict, instructions: list[str], mode: str) -> Callable[[], Any]:
    """One batch-1 `sample` call of ``model`` (what one robot asks for)."""
    gens = [torch.Generator().manual_seed(0)]
    return lambda: model.sample(obs, instructions, mode, gens)


def served_caller(stack: ExitStack, model: Any, obs: dict, instructions: list[str], mode: str) -> Callable[[], Any]:
    """One round trip through `policytrim serve` on loopback, as the client's broker makes it."""
    from policytrim.serve.client import PolicyClient
    from policytrim.serve.server import PolicyServer, PolicyService, ServeConfig, ServerThread

    running = stack.enter_context(ServerThread(PolicyServer(PolicyService(model, ServeConfig(port=0, mode=mode)))))
    client = stack.enter_context(PolicyClient(running.host, running.port))
    request = {"state": obs["state"][0].numpy(), "prompt": instructions[0]}
    return lambda: client.infer(request)


def time_interleaved(
    callers: dict[Key, Callable[[], Any]], calls: int, rounds: int = 10, warmup: int = 10
) -> dict[Key, float]:
    """Median milliseconds per call of each caller, timed in ``rounds`` interleaved blocks so that
    load changes on a shared machine hit every variant alike."""
    for f in callers.values():
        for _ in range(warmup):
            f()
    keys = list(callers)
    samples: dict[Key, list[float]] = {k: [] for k in keys}
    per_block = max(1, calls // rounds)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            f = callers[k]
            for _ in range(per_block):
                t0 = time.perf_counter()
                f()
                samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def run_episodes(model: Any, window: int, args: argparse.Namespace) -> dict[str, Any]:
    """Success, and per-episode steps and calls on the test states (in-process env)."""
    env_cfg = EnvConfig(tasks=(args.task,), horizon=args.horizon)
    result = evaluate_policy(
        model, env_cfg, args.episodes, window, args.mode, args.seed, num_workers=0, return_outcomes=True
    )
    out = result["outcomes"]
    return {
        "window": window,
        "success": [bool(s) for s in out["success"]],
        "steps": [int(s) for s in out["steps"]],
        "calls": [int(c) for c in out["calls"]],
        "control_period_s": float(result["control_period_s"][args.task]),
    }


def wall_clock_s(ep: dict[str, Any], latency_ms: float) -> float | None:
    """Mean over successful episodes of calls x latency + steps x control period (seconds)."""
    walls = [
        c * latency_ms / 1e3 + t * ep["control_period_s"]
        for ok, c, t in zip(ep["success"], ep["calls"], ep["steps"], strict=True)
        if ok
    ]
    return float(np.mean(walls)) if walls else None


def train_small_policies(args: argparse.Namespace, workdir: Path) -> tuple[Any, Any, str]:
    """BC-train a flow-head TinyVLA (H = 15, window 5) on clean expert demos of ``args.task``."""
    from policytrim.data.collect import collect_demos
    from policytrim.train.bc import pretrain

    cfg = RunConfig(
        env=EnvConfig(tasks=(args.task,), horizon=args.horizon),
        policy=PolicyConfig(head="flow", chunk_size=15, default_window=5, hidden_dim=256, num_layers=3, flow_steps=10),
        pretrain=PretrainConfig(iterations=args.train_iterations, batch_size=256, eval_episodes=0),
    )
    cfg.data.episodes, cfg.data.suboptimal = args.train_episodes, False
    cfg.rollout.num_workers = 0
    cfg.logging.progress = cfg.logging.tensorboard = False
    collect_demos(cfg, workdir / "demos")
    pretrain(cfg, workdir / "demos", workdir / "baseline")
    baseline = load_policy(workdir / "baseline")
    trimmed = load_policy(workdir / "baseline")
    trimmed.default_window = trimmed.chunk_size
    source = (
        "trained by this script: flow-head TinyVLA (H=15, K=10, hidden 256x3) BC-trained "
        f"{args.train_iterations} iterations on "
        f"{args.train_episodes} clean expert demos of {args.task}; the 'PolicyTrim' policy is the SAME "
        "network executed at window 15 "
        "(a stand-in for a trimmed policy, not GRPO-trained); pass --baseline/--trimmed for real checkpoints"
    )
    return baseline, trimmed, source


def measure(args: argparse.Namespace) -> dict[str, Any]:
    machine_before = describe_machine()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline and args.trimmed:
            policies = {"baseline": load_policy(args.baseline), "policytrim": load_policy(args.trimmed)}
            source = f"checkpoints: baseline {args.baseline}, PolicyTrim {args.trimmed}"
        else:
            base, trimmed, source = train_small_policies(args, Path(tmp))
            policies = {"baseline": base, "policytrim": trimmed}
    for p in policies.values():
        p.eval()
    t_policies = time.perf_counter() - t_start
    flow = all(getattr(p, "head_kind", "") == "flow" for p in policies.values())
    obs, instructions = one_robot_obs(policies["baseline"])
    models: dict[Key, Any] = {}
    failures: dict[str, str] = {}

    def build(key: Key) -> bool:
        """Build (and call once: torch.compile fails at the first call) one variant."""
        if key not in models:
            try:
                model = build_variant(policies[key[0]], key[1], args.fewer_steps)
                caller(model, obs, instructions, args.mode)()
                models[key] = model
            except Exception as exc:  # a trick this torch build cannot do is reported, not fatal
                failures["+".join(key[1])] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return key in models

    singles: list[tuple[str, Key]] = [("baseline", ("baseline", ())), ("PolicyTrim alone", ("policytrim", ()))]
    for trick in TRICKS:
        if trick == "fewer_steps" and not flow:
            failures[trick] = "not applicable: the policies have a Gaussian head (no denoising steps)"
        elif trick == "compile" and args.skip_compile:
            failures[trick] = "skipped (--skip-compile)"
        else:
            singles.append((f"{trick} alone", ("baseline", (trick,))))
    singles = [(name, key) for name, key in singles if build(key)]

    # Selection pass: which tricks cut the baseline's latency on their own.
    quick = time_interleaved(
        {k: caller(models[k], obs, instructions, args.mode) for _, k in singles}, max(10, args.calls // 4)
    )
    base_key = ("baseline", ())
    helped = [t for t in TRICKS if quick.get(("baseline", (t,)), float("inf")) < HELPED * quick[base_key]]
    if "bf16" in helped and "int8" in helped:  # two precisions do not stack: keep the faster
        helped.remove("bf16" if quick[("baseline", ("bf16",))] > quick[("baseline", ("int8",))] else "int8")
    rows = list(singles)
    notes: dict[str, str] = {}
    for name, role in (
        ("compute tricks combined", "baseline"),
        ("PolicyTrim + compute tricks (combined)", "policytrim"),
    ):
        key = (role, tuple(helped))
        if not build(key) and "compile" in helped:
            notes[name] = "torch.compile failed on this combination; measured without it"
            key = (role, tuple(t for t in helped if t != "compile"))
            build(key)
        rows.append((name, key))

    # Table pass: every row timed interleaved with every other, served rows included.
    with ExitStack() as stack:
        callers = {key: caller(models[key], obs, instructions, args.mode) for _, key in rows}
        if not args.skip_served:
            for role, name in (
                ("baseline", "baseline served (loopback, broker)"),
                ("policytrim", "PolicyTrim served (loopback, broker)"),
            ):
                key = (role, ("served",))
                callers[key] = served_caller(stack, models[(role, ())], obs, instructions, args.mode)
                rows.append((name, key))
        latency = time_interleaved(callers, args.calls)

    # Episodes: one run per distinct action-changing variant (compile and serving change no action).
    episodes: dict[Key, dict[str, Any]] = {}
    for _, (role, tricks) in rows:
        eager = (role, tuple(t for t in tricks if t not in ("compile", "served")))
        if eager not in episodes:
            model = models.get(eager) or build_variant(policies[role], eager[1], args.fewer_steps)
            episodes[eager] = run_episodes(model, int(policies[role].default_window), args)

    base_ep = episodes[base_key]
    base_latency = latency[base_key]
    base_wall = wall_clock_s(base_ep, base_latency)
    base_vla = wall_clock_s(base_ep, args.vla_latency_ms)
    results = []
    for name, (role, tricks) in rows:
        ep = episodes[(role, tuple(t for t in tricks if t not in ("compile", "served")))]
        lat, role_fp32 = latency[(role, tricks)], latency[(role, ())]
        served = "served" in tricks
        # compute tricks scale the VLA's latency by their measured ratio; serving adds its overhead
        vla_ms = args.vla_latency_ms + (lat - role_fp32) if served else args.vla_latency_ms * lat / role_fp32
        wall, vla_wall = wall_clock_s(ep, lat), wall_clock_s(ep, vla_ms)
        ok = [i for i, s in enumerate(ep["success"]) if s]
        note = notes.get(name, "")
        if "compile" in tricks:
            note = note or "episodes of the same model without torch.compile (it does not change actions)"
        if served:
            note = "episodes of the in-process policy (serving does not change actions)"
        results.append(
            {
                "name": name,
                "policy": role,
                "tricks": list(tricks),
                "window": ep["window"],
                "latency_ms": round(lat, 3),
                "latency_speedup": round(base_latency / lat, 3),
                "success_rate": round(float(np.mean(ep["success"])), 3),
                "episodes": len(ep["success"]),
                "calls_per_success": round(float(np.mean([ep["calls"][i] for i in ok])), 2) if ok else None,
                "steps_per_success": round(float(np.mean([ep["steps"][i] for i in ok])), 2) if ok else None,
                "wall_clock_s": round(wall, 4) if wall is not None else None,
                "wallclock_speedup": round(base_wall / wall, 3) if wall and base_wall else None,
                "modelled_vla_wall_clock_s": round(vla_wall, 4) if vla_wall is not None else None,
                "modelled_vla_wallclock_speedup": round(base_vla / vla_wall, 3) if vla_wall and base_vla else None,
                "note": note,
            }
        )
    combined = next(r for r in results if r["name"] == "PolicyTrim + compute tricks (combined)")
    alone = next(r for r in results if r["name"] == "PolicyTrim alone")
    return {
        "benchmark": "stacking (Table 7)",
        "combined_wallclock_speedup": combined["wallclock_speedup"],
        "policytrim_alone_wallclock_speedup": alone["wallclock_speedup"],
        "combined_modelled_vla_wallclock_speedup": combined["modelled_vla_wallclock_speedup"],
        "combined_tricks": combined["tricks"],
        "tricks_that_helped_alone": helped,
        "selection_latency_ms": {"+".join(k[1]) or "fp32": round(v, 3) for k, v in quick.items() if k[0] == "baseline"},
        "not_measured": {
            **failures,
            "pi05": "not measured: no LeRobot pi0.5 adapter is installed in this environment",
            "cuda": "not measured: no CUDA device here (the table is CPU only)",
        },
        "policies": source,
        "settings": {
            "task": args.task,
            "episodes": args.episodes,
            "horizon": args.horizon,
            "mode": args.mode,
            "seed": args.seed,
            "latency_calls": args.calls,
            "fewer_steps": args.fewer_steps,
            "threads": args.threads,
            "batch": 1,
            "vla_latency_ms": args.vla_latency_ms,
            "note": args.note,
        },
        "rows": results,
        "seconds": {"policies": round(t_policies, 1), "total": round(time.perf_counter() - t_start, 1)},
        "machine": {"before": machine_before, "after": describe_machine()},
    }


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# Stacking: fewer calls (PolicyTrim) x cheaper calls (compute-side tricks)",
        "",
        f"Task {s['task']}, {s['episodes']} test episodes per row ({s['mode']} mode), latency = median of "
        f"{s['latency_calls']} batch-1 calls (interleaved across rows) "
        f"on {s['threads']} torch thread(s). Wall-clock per successful episode = calls x latency + steps x "
        "control period.",
        f"Policies: {res['policies']}.",
    ]
    if s["note"]:
        lines += ["", f"**{s['note']}**"]
    lines += [
        "",
        f"**Combined wall-clock speedup: {res['combined_wallclock_speedup']}x** (PolicyTrim alone "
        f"{res['policytrim_alone_wallclock_speedup']}x; "
        f"tricks in the combination: {', '.join(res['combined_tricks']) or 'none helped'}).",
        "",
        "| row | window | latency ms | latency x | success | calls | steps | wall-clock s | wall-clock x "
        f"| modelled VLA ({s['vla_latency_ms']:g} ms) wall-clock x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['name']} | {r['window']} | {r['latency_ms']:.2f} | {r['latency_speedup']:.2f} | "
            f"{r['success_rate']:.2f} | "
            f"{r['calls_per_success']} | {r['steps_per_success']} | {r['wall_clock_s']} | "
            f"{r['wallclock_speedup']} | {r['modelled_vla_wallclock_speedup']} |"
        )
    notes = [f"- {r['name']}: {r['note']}" for r in res["rows"] if r["note"]]
    notes += [f"- {k}: {v}" for k, v in res["not_measured"].items()]
    m = res["machine"]["before"]
    lines += [
        "",
        "Notes:",
        *notes,
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; load average before "
        f"{m['load_average']}, after {res['machine']['after']['load_average']}; {res['seconds']['total']} "
        "s in all.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="", help="baseline checkpoint (its default window is its trained window)")
    parser.add_argument("--trimmed", default="", help="PolicyTrim checkpoint (e.g. runs/demo/train/final/policy)")
    parser.add_argument("--task", default="drawer-close-v3")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--mode", default="sampled", choices=("sampled", "deterministic"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=200, help="timed batch-1 calls per latency measurement")
    parser.add_argument(
        "--fewer-steps", type=int, default=3, help="denoising steps of the 'fewer steps' trick (flow heads)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = one robot's share of a small CPU)")
    parser.add_argument(
        "--vla-latency-ms", type=float, default=80.0, help="modelled billion-parameter VLA call latency"
    )
    parser.add_argument(
        "--train-iterations", type=int, default=3000, help="BC iterations when no checkpoints are given"
    )
    parser.add_argument("--train-episodes", type=int, default=40, help="expert demos when no checkpoints are given")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--note", default="", help="a line written with the results (e.g. 'small check run')")
    parser.add_argument("--out", default="benchmarks/results/stacking.json")
    args = parser.parse_args()
    if bool(args.baseline) != bool(args.trimmed):
        parser.error("pass both --baseline and --trimmed, or neither (then small policies are trained)")
    with torch_threads(args.threads):
        res = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    for r in res["rows"]:
        print(
            f"{r['name']:<42} k={r['window']:<3} {r['latency_ms']:8.2f} ms  calls {r['calls_per_success']} "
            f" SR {r['success_rate']:.2f}  wall x{r['wallclock_speedup']}"
        )
    print(
        f"combined_wallclock_speedup = {res['combined_wallclock_speedup']}  (PolicyTrim alone "
        f"{res['policytrim_alone_wallclock_speedup']}); wrote {out}"
    )


if __name__ == "__main__":
    main()
