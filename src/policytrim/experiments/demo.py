"""The whole PolicyTrim pipeline in one call (`policytrim demo`):

    collect expert demonstrations -> behaviour cloning (baseline) -> Stage 1 -> Stage 2
    -> evaluate baseline, the fixed-horizon sweep, Stage 1 and PolicyTrim on the same test states
    -> summary.json (+ the report)

Output directory::

    OUT/demos/        the demonstration dataset          OUT/baseline/   the BC checkpoint
    OUT/train/        the training run (both stages)     OUT/eval/       metrics of every policy
    OUT/summary.json  headline numbers (SPEC.md)         OUT/report/     tables and plots

summary.json mixes units under names kept for its readers: ``success_rate`` is a fraction,
``success_rate_drop`` is in percentage points and ``steps_reduction`` a fraction of the baseline's
mean steps. Its ``units`` object (`SUMMARY_UNITS`) names the unit of every number in the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policytrim.config import RunConfig
from policytrim.errors import InputError
from policytrim.eval.units import SUMMARY_UNITS
from policytrim.io import atomic_write_json
from policytrim.machine import PeakMemory

if TYPE_CHECKING:
    from policytrim.train.decisions import TrainSummary

SUMMARY_KEYS = (
    "baseline",
    "stage1",
    "policytrim",
    "calls_speedup",
    "speedup_paper",
    "steps_reduction",
    "success_rate_drop",
    "success_rate_drop_ci95",
)


def evaluate_pipeline(
    cfg: RunConfig,
    baseline_dir: Path,
    run_dir: Path,
    out: Path,
    mode: str | None = None,
    deterministic: bool = False,
    temporal_ensembling: bool = False,
    robustness: Sequence[Any] = (),
    clean_expert: bool = False,
    filmstrips: int = 0,
) -> dict[str, Any]:
    """Baseline at its default window, the fixed-horizon sweep (baseline at k = 5, 10, ... H),
    Stage 1 at its chosen window and PolicyTrim, paired on test states. Returns the summary.

    Optional, in the same run on the same states: ACT temporal ensembling of the baseline (a
    reference for calls), the deterministic mode beside the headline mode, perturbed conditions
    (`policytrim.eval.robustness.Perturbation` or dicts of its fields; baseline vs PolicyTrim) and
    the clean scripted experts' steps per task (for scale), and ``filmstrips`` before/after
    filmstrips (the tasks with the largest and smallest steps reduction, on a typical test state).
    Everything lands in ``out/eval/suite/`` (`policytrim.eval.suite.write_suite`), the headline
    comparison also in ``out/eval/``, filmstrips in ``out/eval/filmstrips/``."""
    from policytrim.eval.compare import Contender
    from policytrim.eval.robustness import Perturbation, perturbation_from_dict
    from policytrim.eval.suite import TEMPORAL_ENSEMBLING, reference_contenders, run_suite, write_suite
    from policytrim.policies import load_policy

    mode = mode or cfg.eval.mode
    train_summary = _train_summary(run_dir)
    base = load_policy(baseline_dir)
    contenders = reference_contenders(base, "baseline", sweep=True, temporal_ensembling=temporal_ensembling)
    if train_summary.extend is not None:  # each trained policy's spec carries the window it was trained for
        stage1 = load_policy(run_dir / "extend" / "best" / "policy")
        contenders.append(Contender("stage1", stage1, stage1.default_window))
    final = load_policy(run_dir / "final" / "policy")
    contenders.append(Contender("policytrim", final, final.default_window))
    modes = [mode] + ([m for m in ("sampled", "deterministic") if m != mode][:1] if deterministic else [])
    perturbations = [p if isinstance(p, Perturbation) else perturbation_from_dict(dict(p)) for p in robustness]
    suite = run_suite(
        contenders,
        cfg.env,
        cfg.eval.episodes,
        modes,
        cfg.eval.seed,
        cfg.rollout.num_workers,
        cfg.rollout.step_timeout_s,
        latency_ms=cfg.eval.latency_ms,
        perturbations=perturbations,
        robust_names=("baseline", "policytrim"),
    )
    write_suite(suite, out / "eval" / "suite")
    result = suite["modes"][mode]
    for name, metrics in result["policies"].items():
        atomic_write_json(out / "eval" / f"{name.replace('@', '_').replace('=', '')}.json", metrics)
    atomic_write_json(
        out / "eval" / "comparison.json",
        {"units": SUMMARY_UNITS, **{k: v for k, v in result.items() if k != "outcomes"}},
    )
    summary: dict[str, Any] = comparison_summary(result, [c for c in contenders if c.name.startswith("baseline")])
    summary.update(
        {
            "mode": mode,
            "split": "test",
            "episodes_per_task": cfg.eval.episodes,
            "eval_seed": cfg.eval.seed,
            "windows": {c.name: c.window for c in contenders},
            "stage2_budget": _decision_json(train_summary.trim, "budget_evidence"),
            "stage1_window_choice": _decision_json(train_summary.extend, "window_choice"),
        }
    )
    if temporal_ensembling and TEMPORAL_ENSEMBLING in result["policies"]:
        summary["temporal_ensembling"] = {
            **result["policies"][TEMPORAL_ENSEMBLING]["overall"],
            "vs_baseline": result["vs_baseline"][TEMPORAL_ENSEMBLING]["overall"],
        }
    for other in modes[1:]:
        summary[other] = comparison_summary(
            suite["modes"][other], [c for c in contenders if c.name.startswith("baseline")]
        )
    if perturbations:
        summary["robustness"] = {
            name: {
                "perturbation": r["perturbation"],
                "mode": r["mode"],
                "baseline": r["policies"]["baseline"]["overall"],
                "policytrim": r["policies"]["policytrim"]["overall"],
                **{
                    k: r["vs_baseline"]["policytrim"]["overall"][k]
                    for k in (
                        "calls_speedup",
                        "speedup_paper",
                        "steps_reduction",
                        "success_rate_drop",
                        "success_rate_drop_ci95",
                    )
                },
            }
            for name, r in suite["robustness"].items()
        }
    if clean_expert:
        from policytrim.eval.evaluate import evaluate_policy

        expert = evaluate_policy(
            load_policy("expert", tuple(cfg.env.tasks)),
            cfg.env,
            cfg.eval.episodes,
            1,
            "deterministic",
            cfg.eval.seed,
            "test",
            num_workers=cfg.rollout.num_workers,
            step_timeout_s=cfg.rollout.step_timeout_s,
        )
        atomic_write_json(out / "eval" / "clean_expert.json", expert)
        summary["clean_expert_steps"] = {task: m["mean_steps"] for task, m in expert["tasks"].items()}
        summary["clean_expert"] = expert["overall"]
    if filmstrips:
        summary["filmstrips"] = _filmstrips(
            cfg, contenders, result, summary, mode, out / "eval" / "filmstrips", filmstrips
        )
    return summary


def _filmstrips(
    cfg: RunConfig,
    contenders: list[Any],
    result: dict[str, Any],
    summary: dict[str, Any],
    mode: str,
    out: Path,
    count: int,
) -> dict[str, Any]:
    """Baseline vs PolicyTrim on a typical test state of the tasks with the largest and the
    smallest steps reduction (`policytrim.eval.filmstrip`)."""
    from policytrim.eval.filmstrip import filmstrip, representative_state

    by_name = {c.name: c for c in contenders}
    ranked = sorted(summary["per_task"], key=lambda t: -(summary["per_task"][t].get("steps_reduction") or -1.0))
    tasks = list(dict.fromkeys(ranked[:1] + ranked[-1:] + ranked))[:count]
    done: dict[str, Any] = {}
    for task in tasks:
        index = representative_state(result["outcomes"], "baseline", "policytrim", task)
        if index is None:
            continue
        policies = {name: (by_name[name].policy, by_name[name].window) for name in ("baseline", "policytrim")}
        done[task] = {
            "index": index,
            "rollouts": filmstrip(policies, cfg.env, task, index, mode, cfg.eval.seed, out / f"{task}.png"),
        }
    return done


def comparison_summary(result: dict[str, Any], sweep: list[Any]) -> dict[str, Any]:
    """SUMMARY_KEYS, the fixed-horizon sweep and per-task numbers of one paired comparison
    (`policytrim.eval.compare.compare`'s result; ``sweep``: the baseline's contenders), with the
    unit of each number in ``units`` (`SUMMARY_UNITS`)."""
    vs = result["vs_baseline"]["policytrim"]["overall"]
    return {
        "units": dict(SUMMARY_UNITS),
        "baseline": result["policies"]["baseline"]["overall"],
        "stage1": result["policies"]["stage1"]["overall"] if "stage1" in result["policies"] else None,
        "policytrim": result["policies"]["policytrim"]["overall"],
        **{
            k: vs[k]
            for k in (
                "calls_speedup",
                "speedup_paper",
                "steps_reduction",
                "success_rate_drop",
                "success_rate_drop_ci95",
            )
        },
        "stage1_vs_baseline": result["vs_baseline"].get("stage1", {}).get("overall"),
        "fixed_horizon_sweep": {
            str(c.window): {
                **result["policies"][c.name]["overall"],
                **{
                    f"vs_baseline_{k}": v
                    for k, v in (result["vs_baseline"].get(c.name, {}).get("overall") or {}).items()
                },
            }
            for c in sweep
        },
        "per_task": {
            task: {
                "baseline": result["policies"]["baseline"]["tasks"][task],
                **({"stage1": result["policies"]["stage1"]["tasks"][task]} if "stage1" in result["policies"] else {}),
                "policytrim": result["policies"]["policytrim"]["tasks"][task],
                **result["vs_baseline"]["policytrim"]["tasks"][task],
            }
            for task in result["policies"]["policytrim"]["tasks"]
        },
    }


def _decision_json(outcome: Any, name: str) -> dict[str, Any] | None:
    """The JSON of a stage outcome's decision record ``name`` (None: no such stage or record)."""
    record = getattr(outcome, name, None) if outcome is not None else None
    return None if record is None else record.to_json()


def _train_summary(run_dir: Path) -> TrainSummary:
    from policytrim.train.decisions import TrainSummary
    from policytrim.train.rundir import RunDir

    summary = RunDir.open(run_dir).read_json("summary.json")
    if summary is None:
        raise InputError(f"{run_dir} has no summary.json: the training run did not complete")
    return TrainSummary.from_json(summary)


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run_demo(cfg: RunConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole pipeline into ``out`` and return the summary (also ``out/summary.json``)."""
    from policytrim.data.collect import collect_demos
    from policytrim.preflight import check_preconditions
    from policytrim.train.bc import pretrain
    from policytrim.train.grpo import train

    out = Path(out)
    check_preconditions(cfg, out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"output directory {out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with PeakMemory() as memory:  # this process and its env workers together

        @contextlib.contextmanager
        def phase(name: str, message: str) -> Iterator[None]:
            """Time a phase into ``timings[name_s]`` and attribute its peak memory to it."""
            memory.phase = name
            t = time.perf_counter()
            _say(message)
            yield
            timings[f"{name}_s"] = time.perf_counter() - t

        with phase(
            "collect",
            f"collecting {cfg.data.episodes} {'suboptimal' if cfg.data.suboptimal else 'clean'} expert "
            f"demonstrations per task for {', '.join(cfg.env.tasks)}",
        ):
            demos = collect_demos(cfg, out / "demos", progress=cfg.logging.progress)
            collected = demos.meta["collection"]["collected"]
            wanted = cfg.data.episodes
            short = "".join(
                f"; warning: {t} has only {n} of the {wanted} requested" for t, n in collected.items() if n < wanted
            )
            _say("demonstrations per task: " + ", ".join(f"{t} {n}" for t, n in collected.items()) + short)
        with phase("pretrain", f"behaviour cloning ({cfg.pretrain.iterations} iterations)"):
            pretrain(cfg, out / "demos", out / "baseline")
        with phase("train", f"Stage 1 ({cfg.stage1.epochs} epochs) and Stage 2 ({cfg.stage2.epochs} epochs)"):
            train_cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, out=str(out / "train")))
            train(train_cfg, "both", str(out / "baseline"))
        with phase(
            "eval",
            f"evaluating baseline, fixed-horizon sweep, Stage 1 and PolicyTrim on {cfg.eval.episodes} test "
            f"states per task ({cfg.eval.mode} mode, paired)",
        ):
            summary = evaluate_pipeline(cfg, out / "baseline", out / "train", out)
    timings["total_s"] = time.perf_counter() - t_all
    summary["timings"] = timings
    summary["peak_rss_mb"] = memory.peak_mb
    summary["peak_rss_mb_per_phase"] = memory.phase_peaks_mb
    summary["tasks"] = list(cfg.env.tasks)
    summary["horizon"] = cfg.env.horizon
    summary["demonstrations"] = {**dataclasses.asdict(cfg.data), "collected": collected}
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The demo's closing table."""

    def f(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    head = f"{'policy':<16} {'SR':>6} {'steps':>7} {'window':>6} {'calls':>7} {'calls speedup':>13}"
    lines = [head, "-" * len(head)]
    base_calls = summary["baseline"]["calls_per_success"]
    rows = [("baseline", summary["baseline"])]
    rows += [
        (f"fixed k={k}", m)
        for k, m in summary["fixed_horizon_sweep"].items()
        if int(k) != summary["baseline"]["window"]
    ]
    if summary.get("stage1"):
        rows.append(("Stage 1", summary["stage1"]))
    rows.append(("PolicyTrim", summary["policytrim"]))
    for name, m in rows:
        speed = base_calls / m["calls_per_success"] if base_calls and m["calls_per_success"] else None
        lines.append(
            f"{name:<16} {f(m['success_rate'], '.3f'):>6} {f(m['mean_steps'], '.1f'):>7} "
            f"{str(m['window']):>6} {f(m['calls_per_success'], '.1f'):>7} {f(speed, '.2f'):>13}"
        )
    lo, hi = summary["success_rate_drop_ci95"]
    lines.append(
        f"PolicyTrim vs baseline: {f(summary['calls_speedup'], '.2f')}x fewer calls, paper speedup "
        f"{f(summary['speedup_paper'], '.2f')}x, "
        f"steps -{100 * (summary['steps_reduction'] or 0):.0f}%, SR drop "
        f"{summary['success_rate_drop']:+.1f} points (paired 95% CI [{lo:+.1f}, {hi:+.1f}])"
    )
    lines.append(
        f"{summary['mode']} mode, {summary['episodes_per_task']} test states per task, horizon {summary.get('horizon')}"
    )
    return "\n".join(lines)
