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

from pathlib import Path
from typing import Any

import torch

from policytrim import progress
from policytrim.envs import check_episodes, env_tasks, initial_states, split_seed
from policytrim.errors import InputError
from policytrim.eval.metrics import summarize
from policytrim.io import atomic_write_json
from policytrim.policies.adaptor import adaptor_of
from policytrim.rollout.engine import RolloutEngine
from policytrim.runtime import workers_own_cores
from policytrim.windows import WindowPlan

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
    adaptive: bool = True,
) -> dict[str, Any]:
    """Metrics of ``policy`` on states 0..episodes-1 of ``split`` for each task of ``env_cfg``.

    window 0 means the policy's default window. Without ``engine`` a temporary one is made with
    ``num_workers`` workers. With ``return_outcomes`` the result also holds ``"outcomes"``: the
    per-episode lists ``task``, ``index``, ``success``, ``steps``, ``calls`` (for paired comparisons).

    A policy carrying a window adaptor (`policytrim.policies.adaptor.adaptor_of`) executes the window
    it chooses at every call, up to its largest (``window`` is then that bound), unless ``adaptive``
    is false (a fixed window forced, e.g. ``--window K``). The result then says ``adaptive_window``
    and holds ``mean_executed_window`` per task and overall, and ``window_trace``: every call's task,
    episode, step and window (the report's window-vs-time plot).
    """
    adaptor = adaptor_of(policy) if adaptive else None
    window = max(adaptor.windows) if adaptor is not None else WindowPlan.for_policy(policy).evaluation(window)
    if episodes < 1:
        raise InputError(f"episodes must be >= 1, got {episodes}")
    check_episodes(env_cfg, split, episodes)
    tasks = env_tasks(env_cfg)
    state_seed = split_seed(env_cfg, split)
    starts = [s for task in tasks for s in initial_states(task, state_seed, episodes)]
    windows = torch.full((len(starts), 1), window, dtype=torch.long)
    own = engine is None
    if engine is None:
        engine = RolloutEngine(env_cfg, num_workers=num_workers, step_timeout_s=step_timeout_s)
    try:
        phase = {"val": "validation", "test": "evaluation"}.get(split, f"{split} episodes")
        with progress.episodes(f"{phase} (k={window}, {mode})", len(starts)):
            traj = engine.run(
                policy, starts, 1, windows, mode, seed, record_chunks=adaptor is not None, adaptor=adaptor
            )
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
    if adaptor is not None:
        result["adaptive_window"] = True
        result.update(executed_windows(traj, result))
    if return_outcomes:
        result["outcomes"] = {
            "task": list(traj.task),
            "index": traj.index.tolist(),
            "success": traj.success.tolist(),
            "steps": traj.steps.tolist(),
            "calls": traj.calls.tolist(),
        }
    return result


def executed_windows(traj: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Adds ``mean_executed_window`` (mean window chosen per call) to each task's and the overall
    metrics of ``result``; returns ``{"window_trace": {"task", "episode", "step", "window"}}``, one
    entry per call (``step``: the env step the call was made at)."""
    chunk_task = [traj.task[i] for i in traj.chunk_traj.tolist()]
    chosen = traj.chunk_window.float()
    for task, entry in result["tasks"].items():
        mine = torch.tensor([t == task for t in chunk_task], dtype=torch.bool)
        entry["mean_executed_window"] = chosen[mine].mean().item() if bool(mine.any()) else None
    result["overall"]["mean_executed_window"] = chosen.mean().item() if chosen.numel() else None
    steps = torch.zeros_like(traj.chunk_rows)
    for i in range(traj.num_trajectories):  # chunks are ordered by (trajectory, position)
        mine = torch.nonzero(traj.chunk_traj == i).flatten()
        steps[mine] = torch.cumsum(traj.chunk_rows[mine], 0) - traj.chunk_rows[mine]
    return {
        "window_trace": {
            "task": chunk_task,
            "episode": traj.index[traj.chunk_traj].tolist(),
            "step": steps.tolist(),
            "window": traj.chunk_window.tolist(),
        }
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as a plain-text table (one row per task and overall)."""
    head = (
        f"{'task':<28} {'episodes':>8} {'SR':>6} {'95% CI':>13} {'mean T':>7} {'k':>3} {'calls/succ':>10} "
        f"{'wall-clock s':>12}"
    )
    lines = [head, "-" * len(head)]
    rows = [*metrics["tasks"].items(), ("overall", metrics["overall"])]
    for name, m in rows:
        lo, hi = m["success_ci95"]
        lines.append(
            f"{name:<28} {m['episodes']:>8} {_fmt(m['success_rate'], '.2f'):>6} {f'[{lo:.2f}, {hi:.2f}]':>13} "
            f"{_fmt(m['mean_steps'], '.1f'):>7} {str(m['window']):>3} "
            f"{_fmt(m['calls_per_success'], '.1f'):>10} {_fmt(m['wall_clock_s'], '.2f'):>12}"
        )
    lines.append(
        f"mode {metrics['mode']}, horizon {metrics['horizon']}, seed {metrics['seed']}, {metrics['split']} "
        f"states (seed {metrics['state_seed']}), "
        f"latency {metrics['latency_ms']:.2f} ms ({metrics['latency_source']})"
        + (f", {metrics['dropped_groups']} episodes dropped (simulator faults)" if metrics["dropped_groups"] else "")
    )
    return "\n".join(lines)


def load_eval_policy(cfg: Any, source: str) -> Any:
    """The policy to evaluate: 'expert' (the scripted experts for ``cfg.env``'s tasks), a
    checkpoint directory or a `policytrim train` run directory (`resolve_checkpoint`), on
    ``cfg.device`` in eval mode. It acts at its spec's default window: the one it was trained for."""
    from policytrim.policies import load_policy

    policy = load_policy(resolve_checkpoint(source), env_tasks(cfg.env))
    if isinstance(policy, torch.nn.Module):
        policy = policy.to(cfg.device).eval()
    return policy


def evaluate_to_dir(
    cfg: Any, policy: Any, window: int, out: str | Path, name: str, adaptive: bool = True
) -> dict[str, Any]:
    """Evaluate ``policy`` at ``window`` (0: its own; its window adaptor's choices when it carries one,
    unless ``adaptive`` is false) on ``cfg.eval.episodes`` test states per task and write
    ``out/metrics.json`` (its ``policy`` field is ``name``). Returns the metrics."""
    with workers_own_cores(cfg.rollout.num_workers, cfg.device):
        with RolloutEngine(
            cfg.env, cfg.rollout.num_workers, cfg.rollout.step_timeout_s, backend=cfg.rollout.backend, ray=cfg.ray
        ) as engine:
            metrics = evaluate_policy(
                policy,
                cfg.env,
                cfg.eval.episodes,
                window,
                cfg.eval.mode,
                cfg.eval.seed,
                "test",
                engine=engine,
                latency_ms=cfg.eval.latency_ms,
                adaptive=adaptive,
            )
    metrics["policy"] = name
    atomic_write_json(Path(out) / "metrics.json", metrics)
    return metrics


def resolve_checkpoint(source: str) -> str:
    """A checkpoint directory as given, or the trained policy of a `policytrim train` run directory
    (``RUN/final/policy``, whose spec carries the window its training chose)."""
    run = Path(source)
    if source != "expert" and (run / "final" / "policy").is_dir() and (run / "summary.json").is_file():
        return str(run / "final" / "policy")
    return source
