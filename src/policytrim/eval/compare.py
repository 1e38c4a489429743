"""Several policies on the same test states with the same random numbers, against a baseline.

Every contender is rolled out by the same engine on states 0..episodes-1 of the split for each
task, with the same evaluation seed, so trajectory i of every contender starts from the same state
and draws from the same random-number stream: differences are the policies', not noise. The
success-rate difference to the baseline gets a paired 95% interval (`policytrim.eval.paired`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policytrim import objective
from policytrim.eval.evaluate import evaluate_policy
from policytrim.eval.paired import paired_difference
from policytrim.policies import ChunkPolicy
from policytrim.rollout.engine import RolloutEngine


@dataclass
class Contender:
    """A policy executed at one window, under a name used in tables and JSON."""

    name: str
    policy: ChunkPolicy
    window: int
    adaptive: bool = True
    """Whether a policy carrying a window adaptor executes its choices (false: ``window``, fixed)."""


def paired_outcomes(
    base: dict[str, list], new: dict[str, list], task: str | None = None
) -> tuple[list[bool], list[bool]]:
    """Successes of the episodes both runs completed (keyed by task and state index)."""
    key = lambda o, i: (o["task"][i], o["index"][i])  # noqa: E731
    new_by_key = {key(new, i): new["success"][i] for i in range(len(new["task"]))}
    pairs = [
        (base["success"][i], new_by_key[key(base, i)])
        for i in range(len(base["task"]))
        if key(base, i) in new_by_key and (task is None or base["task"][i] == task)
    ]
    return [bool(b) for b, _ in pairs], [bool(n) for _, n in pairs]


def against_baseline(
    base: dict[str, Any],
    new: dict[str, Any],
    base_out: dict[str, list],
    new_out: dict[str, list],
    task: str | None = None,
) -> dict[str, Any]:
    """SPEC's comparison of ``new`` against ``base`` (metric blocks of one task or overall), with
    the per-episode outcomes of both runs for the paired interval and the measured calls."""
    b, n = paired_outcomes(base_out, new_out, task)
    paired = paired_difference(b, n)
    out: dict[str, Any] = {
        "success_rate_drop": 100.0 * (base["success_rate"] - new["success_rate"]),
        "success_rate_drop_ci95": [-100.0 * paired["hi"], -100.0 * paired["lo"]],
        "paired_episodes": paired["n"],
        "calls_speedup": None,
        "speedup_paper": None,
        "steps_reduction": None,
    }

    def calls(o: dict[str, Any]) -> list[int]:
        return [
            c for c, s, t in zip(o["calls"], o["success"], o["task"], strict=True) if s and (task is None or t == task)
        ]

    if calls(base_out) and calls(new_out):
        out["calls_speedup"] = objective.calls_speedup(calls(base_out), calls(new_out))
    if base["mean_steps"] and new["mean_steps"]:
        out["speedup_paper"] = objective.speedup(base["mean_steps"], base["window"], new["mean_steps"], new["window"])
        out["steps_reduction"] = 1.0 - new["mean_steps"] / base["mean_steps"]
    return out


def compare(
    contenders: list[Contender],
    env_cfg,
    episodes: int,
    mode: str,
    seed: int,
    engine: RolloutEngine,
    split: str = "test",
    latency_ms: float = 0.0,
) -> dict[str, Any]:
    """Evaluate every contender (the first is the baseline) on the same states and noise.

    Returns ``{"baseline": name, "policies": {name: metrics.json-style dict}, "vs_baseline":
    {name: {"overall": comparison, "tasks": {task: comparison}}}, "outcomes": per-episode lists}``.
    """
    results: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}
    for c in contenders:
        metrics = evaluate_policy(
            c.policy,
            env_cfg,
            episodes,
            c.window,
            mode,
            seed,
            split=split,
            engine=engine,
            latency_ms=latency_ms,
            return_outcomes=True,
            adaptive=c.adaptive,
        )
        outcomes[c.name] = metrics.pop("outcomes")
        results[c.name] = metrics
    base_name = contenders[0].name
    base, base_out = results[base_name], outcomes[base_name]
    vs: dict[str, Any] = {}
    for c in contenders[1:]:
        new, new_out = results[c.name], outcomes[c.name]
        vs[c.name] = {
            "overall": against_baseline(base["overall"], new["overall"], base_out, new_out),
            "tasks": {
                t: against_baseline(base["tasks"][t], new["tasks"][t], base_out, new_out, task=t)
                for t in new["tasks"]
                if t in base["tasks"]
            },
        }
    return {"baseline": base_name, "policies": results, "vs_baseline": vs, "outcomes": outcomes}
