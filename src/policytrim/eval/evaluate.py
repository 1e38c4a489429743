"""Evaluation on held-out initial states (`policytrim eval`): one trajectory per state, paired.

Every policy evaluated with the same ``seed`` sees the same test states and the same per-trajectory
random numbers (`policytrim.rollout.engine.trajectory_seed`), so differences between policies are
not noise. ``metrics.json``::

    {"format": "policytrim-metrics", "version": 1, "policy": ..., "split": "test", "state_seed",
     "episodes_per_task", "window", "mode", "seed", "horizon", "latency_ms", "latency_source",
     "measured_latency_ms", "control_period_s": {task: s}, "dropped_groups",
     "tasks": {task: METRICS}, "overall": METRICS}

    METRICS = {"episodes", "success_rate", "success_ci95": [lo, hi], "mean_steps", "window",
               "calls_per_success", "wall_clock_s", "mode", "horizon", "seed"}

``mean_steps``, ``calls_per_success`` and ``wall_clock_s`` average over successful episodes (null
without any). Wall clock per successful episode = C x latency + T x control period, where the latency
is the measured mean seconds per batched policy call (``latency_source: "measured"``) or the user's
``--latency-ms`` (``"given"``, e.g. 80 ms for a billion-parameter VLA on a GPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from policytrim.envs import env_tasks, initial_states, split_seed
from policytrim.errors import InputError
from policytrim.eval.metrics import summarize
from policytrim.io import atomic_write_json
from policytrim.rollout.engine import RolloutEngine

FORMAT, VERSION = "policytrim-metrics", 1


def evaluate_policy(
    policy: Any,
    env_cfg: Any,
    episodes: int,
    window: int,
    mode: str,
    seed: int,
    split: str = "test",
    engine: RolloutEngine | None = None,
    latency_ms: float = 0.0,
    num_workers: int = 2,
    step_timeout_s: float = 30.0,
    return_outcomes: bool = False,
) -> dict[str, Any]:
    """Metrics of ``policy`` on states 0..episodes-1 of ``split`` for each task of ``env_cfg``.

    window 0 means the policy's default window. Without ``engine`` a temporary one is made with
    ``num_workers`` workers. With ``return_outcomes`` the result also holds ``"outcomes"``: the
    per-episode lists ``task``, ``index``, ``success``, ``steps``, ``calls`` (for paired comparisons).
    """
    window = int(window) or int(policy.default_window)
    max_window = min(int(policy.max_window), int(policy.chunk_size))
    if not 1 <= window <= max_window:
        extra = " (scripted experts act in closed loop: window 1)" if max_window == 1 else ""
        raise InputError(f"window must be in [1, {max_window}] for this policy{extra}, got {window}")
    if episodes < 1:
        raise InputError(f"episodes must be >= 1, got {episodes}")
    tasks = env_tasks(env_cfg)
    state_seed = split_seed(env_cfg, split)
    starts = [s for task in tasks for s in initial_states(task, state_seed, episodes)]
    windows = torch.full((len(starts), 1), window, dtype=torch.long)
    own = engine is None
    if engine is None:
        engine = RolloutEngine(env_cfg, num_workers=num_workers, step_timeout_s=step_timeout_s)
    try:
        traj = engine.run(policy, starts, 1, windows, mode, seed, record_chunks=False)
        periods = {t: engine.control_period_s(t) for t in dict.fromkeys(traj.task)}
    finally:
        if own:
            engine.close()
    measured = traj.policy_seconds / traj.policy_batches if traj.policy_batches else 0.0
    latency_s = latency_ms / 1000.0 if latency_ms > 0 else measured
    metrics = summarize(traj, latency_s, periods)
    for entry in [*metrics["tasks"].values(), metrics["overall"]]:
        entry.update(mode=mode, seed=seed)
    result = {
        "format": FORMAT,
        "version": VERSION,
        "policy": policy.spec().get("kind") if hasattr(policy, "spec") else type(policy).__name__,
        "split": split,
        "state_seed": state_seed,
        "episodes_per_task": episodes,
        "window": window,
        "mode": mode,
        "seed": seed,
        "horizon": traj.horizon,
        "latency_ms": latency_s * 1000.0,
        "latency_source": "given" if latency_ms > 0 else "measured",
        "measured_latency_ms": measured * 1000.0,
        "control_period_s": periods,
        "dropped_groups": traj.dropped_groups,
        "tasks": metrics["tasks"],
        "overall": metrics["overall"],
    }
    if return_outcomes:
        result["outcomes"] = {
            "task": list(traj.task),
            "index": traj.index.tolist(),
            "success": traj.success.tolist(),
            "steps": traj.steps.tolist(),
            "calls": traj.calls.tolist(),
        }
    return result


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as a plain-text table (one row per task and overall)."""
    head = f"{'task':<28} {'episodes':>8} {'SR':>6} {'95% CI':>13} {'mean T':>7} {'k':>3} {'calls/succ':>10} {'wall-clock s':>12}"
    lines = [head, "-" * len(head)]
    rows = [*metrics["tasks"].items(), ("overall", metrics["overall"])]
    for name, m in rows:
        lo, hi = m["success_ci95"]
        lines.append(
            f"{name:<28} {m['episodes']:>8} {_fmt(m['success_rate'], '.2f'):>6} {f'[{lo:.2f}, {hi:.2f}]':>13} "
            f"{_fmt(m['mean_steps'], '.1f'):>7} {str(m['window']):>3} {_fmt(m['calls_per_success'], '.1f'):>10} {_fmt(m['wall_clock_s'], '.2f'):>12}"
        )
    lines.append(
        f"mode {metrics['mode']}, horizon {metrics['horizon']}, seed {metrics['seed']}, {metrics['split']} states (seed {metrics['state_seed']}), "
        f"latency {metrics['latency_ms']:.2f} ms ({metrics['latency_source']})"
        + (f", {metrics['dropped_groups']} episodes dropped (simulator faults)" if metrics["dropped_groups"] else "")
    )
    return "\n".join(lines)


def eval_command(args: Any) -> int:
    """`policytrim eval`: args is a `policytrim.cli.EvalCmd`."""
    from policytrim.cli import run_config
    from policytrim.policies import load_policy

    cfg = run_config(args)
    out = Path(cfg.logging.out) / "metrics.json"
    if out.exists() and not args.overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    checkpoint, trained_window = resolve_checkpoint(args.checkpoint)
    policy = load_policy(checkpoint, env_tasks(cfg.env))
    if isinstance(policy, torch.nn.Module):
        policy = policy.to(cfg.device).eval()
    if cfg.device == "cpu" and cfg.rollout.num_workers >= (os.cpu_count() or 1):
        torch.set_num_threads(1)  # the env workers own the cores (see policytrim.rollout.engine)
    window = int(args.window) or trained_window or int(policy.default_window)
    max_window = min(int(policy.max_window), int(policy.chunk_size))
    if not 1 <= window <= max_window:
        extra = "; the scripted experts act in closed loop with window 1" if max_window == 1 else ""
        raise InputError(f"--window must be in [1, {max_window}] for this policy{extra}, got {window}")
    if _wants_comparison(args):
        return _compare_command(args, cfg, policy, window)
    with RolloutEngine(cfg.env, cfg.rollout.num_workers, cfg.rollout.step_timeout_s, backend=cfg.rollout.backend, ray=cfg.ray) as engine:
        metrics = evaluate_policy(policy, cfg.env, cfg.eval.episodes, window, cfg.eval.mode, cfg.eval.seed, "test", engine=engine, latency_ms=cfg.eval.latency_ms)
    metrics["policy"] = str(args.checkpoint)
    atomic_write_json(out, metrics)
    from policytrim.eval.report import write_report

    report = write_report([out.parent], out.parent)
    print(format_table(metrics))
    print(f"wrote {out}, {out.parent / 'report.md'} and {report}")
    return 0


def resolve_checkpoint(source: str) -> tuple[str, int]:
    """A checkpoint directory as given, or the trained policy of a `policytrim train` run directory
    (``RUN/final/policy``) with the window its training chose (0 = the policy's default)."""
    run = Path(source)
    summary = run / "summary.json"
    if source != "expert" and (run / "final" / "policy").is_dir() and summary.is_file():
        return str(run / "final" / "policy"), int(json.loads(summary.read_text()).get("window") or 0)
    return source, 0


def _wants_comparison(args: Any) -> bool:
    flags = ("baseline", "sweep", "temporal_ensembling", "obs_noise", "act_noise", "blur_sigma", "occlusion")
    return any(getattr(args, f, None) for f in flags) or len(getattr(args, "modes", ()) or ()) > 1


def _compare_command(args: Any, cfg: Any, policy: Any, window: int) -> int:
    """`policytrim eval` with baselines, several modes or perturbations: one paired suite
    (`policytrim.eval.suite`) written to OUT (comparison.json, outcomes.json, per-mode metrics,
    metrics.json of --policy in the headline mode) plus report.md / report.html."""
    from policytrim.eval.compare import Contender
    from policytrim.eval.report import write_report
    from policytrim.eval.robustness import Perturbation
    from policytrim.eval.suite import reference_contenders, run_suite, write_suite
    from policytrim.policies import load_policy

    out = Path(cfg.logging.out)
    modes = tuple(dict.fromkeys(args.modes)) or (cfg.eval.mode,)
    if args.baseline:
        base = load_policy(resolve_checkpoint(args.baseline)[0], env_tasks(cfg.env))
        if isinstance(base, torch.nn.Module):
            base = base.to(cfg.device).eval()
        contenders = reference_contenders(base, "baseline", sweep=args.sweep, temporal_ensembling=args.temporal_ensembling, m=args.ensemble_m)
        contenders.append(Contender("policy", policy, window))
    else:
        contenders = reference_contenders(policy, "policy", window, sweep=args.sweep, temporal_ensembling=args.temporal_ensembling, m=args.ensemble_m)
    perturbations = [Perturbation(f"obs_noise_{v:g}", obs_noise=v) for v in args.obs_noise]
    perturbations += [Perturbation(f"act_noise_{v:g}", act_noise=v) for v in args.act_noise]
    perturbations += [Perturbation(f"blur_sigma_{v:g}", blur_sigma=v) for v in args.blur_sigma]
    perturbations += [Perturbation(f"occlusion_{v:g}", occlusion=v) for v in args.occlusion]
    if any(p.needs_image for p in perturbations) and not cfg.env.image:
        raise InputError("--blur-sigma and --occlusion perturb image observations: evaluate an image policy with --env.image true")
    robust = [c.name for c in contenders if c.name in ("baseline", "policy")]
    result = run_suite(contenders, cfg.env, cfg.eval.episodes, modes, cfg.eval.seed, cfg.rollout.num_workers, cfg.rollout.step_timeout_s, cfg.eval.latency_ms, perturbations, robust)
    write_suite(result, out)
    metrics = dict(result["modes"][modes[0]]["policies"]["policy"], policy=str(args.checkpoint))
    atomic_write_json(out / "metrics.json", metrics)
    report = write_report([out], out)
    for mode in modes:
        comparison = result["modes"][mode]
        print(f"== {mode} mode ==")
        for name, m in comparison["policies"].items():
            o = m["overall"]
            vs = comparison["vs_baseline"].get(name, {}).get("overall")
            extra = f"  SR drop {vs['success_rate_drop']:+.1f} [{vs['success_rate_drop_ci95'][0]:+.1f}, {vs['success_rate_drop_ci95'][1]:+.1f}], calls speedup {_fmt(vs['calls_speedup'], '.2f')}" if vs else "  (baseline)"
            print(f"{name:<22} k={str(o['window']):<3} SR {_fmt(o['success_rate'], '.3f')}  T {_fmt(o['mean_steps'], '.1f')}  C {_fmt(o['calls_per_success'], '.1f')}{extra}")
    for pname, r in result["robustness"].items():
        print(f"== {pname} ({r['perturbation']['description']}) ==")
        for name, m in r["policies"].items():
            o = m["overall"]
            print(f"{name:<22} SR {_fmt(o['success_rate'], '.3f')}  T {_fmt(o['mean_steps'], '.1f')}  C {_fmt(o['calls_per_success'], '.1f')}")
    print(f"wrote {out / 'comparison.json'}, {out / 'metrics.json'}, {out / 'report.md'} and {report}")
    return 0
