"""The evaluation suite: every policy compared, its baselines, both modes and perturbed conditions,
on the same test states with the same random numbers (SPEC.md, "Evaluation protocol").

    contenders = reference_contenders(base, sweep=True, temporal_ensembling=True)
    contenders.append(Contender("policytrim", trimmed, 15))
    result = run_suite(contenders, env_cfg, episodes=50, modes=("sampled", "deterministic"), seed=0,
                       perturbations=[Perturbation("act_noise_0.3", act_noise=0.3)],
                       robust_names=("baseline", "policytrim"))
    write_suite(result, out_dir)   # comparison.json, outcomes.json, one metrics file per contender

Every comparison is `policytrim.eval.compare.compare` (the first contender is the baseline of the
paired intervals and speedups). Perturbed conditions (`policytrim.eval.robustness`) run the
contenders named in ``robust_names`` through an engine whose envs are wrapped, in the first mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policytrim.errors import InputError
from policytrim.eval.compare import Contender, compare
from policytrim.eval.ensemble import ACT_M, TemporalEnsemble
from policytrim.eval.robustness import Perturbation, PerturbedEnvFactory
from policytrim.eval.units import SUMMARY_UNITS
from policytrim.io import atomic_write_json
from policytrim.rollout.engine import RolloutEngine
from policytrim.runtime import workers_own_cores
from policytrim.windows import WindowPlan

FORMAT = "policytrim-comparison"
TEMPORAL_ENSEMBLING = "temporal_ensembling"


def sweep_windows(top: int, default_window: int, step: int = 5) -> list[int]:
    """The fixed-horizon sweep (Table 11): every window from ``step`` to ``top`` (the policy's
    `window_bound`, H for learned policies) in steps of ``step``, without the default window
    (evaluated as the baseline itself)."""
    return [k for k in range(step, int(top) + 1, step) if k != default_window]


def reference_contenders(
    policy: Any,
    name: str = "baseline",
    window: int = 0,
    sweep: bool = True,
    temporal_ensembling: bool = False,
    m: float = ACT_M,
) -> list[Contender]:
    """The starting policy at its default window (first: the baseline of every comparison), then
    the fixed-horizon sweep ``name@k=K`` and ACT temporal ensembling of the same policy."""
    plan = WindowPlan.for_policy(policy)
    k0 = plan.evaluation(window)
    out = [Contender(name, policy, k0)]
    if sweep:
        out += [Contender(f"{name}@k={k}", policy, k, adaptive=False) for k in sweep_windows(plan.bound, k0)]
    if temporal_ensembling and plan.bound > 1:
        out.append(Contender(TEMPORAL_ENSEMBLING, TemporalEnsemble(policy, m), 1))
    return out


def run_suite(
    contenders: Sequence[Contender],
    env_cfg: Any,
    episodes: int,
    modes: Sequence[str],
    seed: int,
    num_workers: int = 2,
    step_timeout_s: float = 30.0,
    latency_ms: float = 0.0,
    perturbations: Sequence[Perturbation] = (),
    robust_names: Sequence[str] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """``{"format", "episodes_per_task", "seed", "split", "windows", "modes": {mode: comparison},
    "robustness": {name: {"perturbation", "mode", **comparison}}}``; each comparison is
    `compare`'s result, per-episode ``outcomes`` included."""
    contenders = list(contenders)
    if not contenders or not modes:
        raise ValueError("need at least one contender and one mode")
    result: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "episodes_per_task": episodes,
        "seed": seed,
        "split": split,
        "baseline": contenders[0].name,
        "windows": {c.name: c.window for c in contenders},
        "modes": {},
        "robustness": {},
    }
    with workers_own_cores(num_workers):
        with RolloutEngine(env_cfg, num_workers, step_timeout_s) as engine:
            for mode in modes:
                result["modes"][mode] = compare(
                    contenders, env_cfg, episodes, mode, seed, engine, split=split, latency_ms=latency_ms
                )
        names = list(robust_names) if robust_names is not None else [c.name for c in contenders]
        robust = [c for c in contenders if c.name in names]
        for p in perturbations:
            p_cfg = p.env_config(env_cfg)
            with RolloutEngine(p_cfg, num_workers, step_timeout_s, env_factory=PerturbedEnvFactory(p)) as engine:
                comparison = compare(
                    robust, p_cfg, episodes, modes[0], seed, engine, split=split, latency_ms=latency_ms
                )
            result["robustness"][p.name] = {
                "perturbation": {**p.to_dict(), "description": p.describe()},
                "mode": modes[0],
                **comparison,
            }
    return result


def _file_name(name: str) -> str:
    return name.replace("@", "_").replace("=", "")


def write_suite(result: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/comparison.json`` (everything but per-episode outcomes, with the unit of each
    number in ``units``: `policytrim.eval.units.SUMMARY_UNITS`), ``out/outcomes.json``
    (per mode / perturbation and contender: task, index, success, steps, calls) and
    ``out/<mode>/<contender>.json`` (metrics.json-style). Returns ``out``."""
    out = Path(out)
    outcomes: dict[str, Any] = {"modes": {}, "robustness": {}}
    slim = {"units": SUMMARY_UNITS, **{k: v for k, v in result.items() if k not in ("modes", "robustness")}}
    slim["modes"], slim["robustness"] = {}, {}
    for mode, comparison in result["modes"].items():
        outcomes["modes"][mode] = comparison.get("outcomes", {})
        slim["modes"][mode] = {k: v for k, v in comparison.items() if k != "outcomes"}
        for name, metrics in comparison["policies"].items():
            atomic_write_json(out / mode / f"{_file_name(name)}.json", metrics)
    for pname, comparison in result["robustness"].items():
        outcomes["robustness"][pname] = comparison.get("outcomes", {})
        slim["robustness"][pname] = {k: v for k, v in comparison.items() if k != "outcomes"}
    atomic_write_json(out / "comparison.json", slim)
    atomic_write_json(out / "outcomes.json", outcomes)
    return out


def evaluate_suite(
    cfg: Any,
    policy: Any,
    window: int,
    out: str | Path,
    name: str,
    baseline: Any = None,
    sweep: bool = False,
    temporal_ensembling: bool = False,
    m: float = ACT_M,
    modes: Sequence[str] = (),
    perturbations: Sequence[Perturbation] = (),
) -> dict[str, Any]:
    """`policytrim eval` with references: ``policy`` at ``window`` against ``baseline`` (a policy
    at its own default window; None: ``policy`` itself at ``window`` is the reference), optionally
    the fixed-horizon sweep and ACT temporal ensembling of the starting policy, in every mode of
    ``modes`` (default ``cfg.eval.mode``; the first is the headline) and under each perturbation
    (baseline and policy only). Writes `write_suite`'s files and ``out/metrics.json`` (``policy``
    in the headline mode, its ``policy`` field set to ``name``). Returns `run_suite`'s result."""
    if any(p.needs_image for p in perturbations) and not cfg.env.image:
        raise InputError(
            "--blur-sigma and --occlusion perturb image observations: evaluate an image policy with --env.image true"
        )
    for p in perturbations:  # a LIBERO-PRO scene the tasks lack fails here, before any episode runs
        p.env_config(cfg.env)
    out = Path(out)
    modes = tuple(dict.fromkeys(modes)) or (cfg.eval.mode,)
    if baseline is not None:
        contenders = reference_contenders(
            baseline, "baseline", sweep=sweep, temporal_ensembling=temporal_ensembling, m=m
        )
        contenders.append(Contender("policy", policy, window))
    else:
        contenders = reference_contenders(
            policy, "policy", window, sweep=sweep, temporal_ensembling=temporal_ensembling, m=m
        )
    robust = [c.name for c in contenders if c.name in ("baseline", "policy")]
    result = run_suite(
        contenders,
        cfg.env,
        cfg.eval.episodes,
        modes,
        cfg.eval.seed,
        cfg.rollout.num_workers,
        cfg.rollout.step_timeout_s,
        cfg.eval.latency_ms,
        perturbations,
        robust,
    )
    write_suite(result, out)
    atomic_write_json(out / "metrics.json", dict(result["modes"][modes[0]]["policies"]["policy"], policy=name))
    return result
