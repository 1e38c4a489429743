"""`policytrim ablate`: ablations and sensitivity sweeps from ONE starting checkpoint, everything
else equal, evaluated together on the same test states (paired) into one table.

Variants (the paper's tables in brackets):

==================  ===========================================================  =================
name                what is trained                                              paper
==================  ===========================================================  =================
none                nothing: the starting policy at its default window           Tables 5, 6, 9
extend              Stage 1 only (reliable chunk extension), at its chosen k     Tables 5, 9
trim_no_stability   Stage 2 only at the default window, stability_coef = 0       Tables 5, 9
trim                Stage 2 only at the default window (step-saving + stability) Tables 5, 9
full                Stage 1 then Stage 2 at Stage 1's window (PolicyTrim)        Tables 5, 9
fixed_k<K>          Stage 1 with the single window K (fixed alpha = K/H)         Table 6
group_size_<G>      Stage 2 of full with G rollouts per group                    Tables 8, 12
budget_<B>          Stage 2 of full with budget multiplier beta_B = B            Table 12
stability_<S>       Stage 2 of full with stability coefficient lambda_s = S      Table 12
==================  ===========================================================  =================

Shared work, so the grid costs less: ``full`` and the sweeps start Stage 2 from the ``extend``
variant's Stage 1 policy at its chosen window (the same Stage 1 that ``full`` would run), so
``extend`` is trained first whenever one of them is asked for. The group-size sweep keeps the
rollouts per epoch equal (groups per epoch x G constant), as the paper's fixed global batch does.
Finished variants in an existing output directory are reused (``--overwrite`` starts afresh), so a
grid can be grown one variant at a time.

Output::

    OUT/ablation.json   the table's data (per variant: what was trained, window, metrics, paired
                        comparison with `none`, training time, run directory; "units" names the
                        unit of each number: `policytrim.eval.units.SUMMARY_UNITS`)
    OUT/ablation.md     the table
    OUT/variants/NAME/  one `policytrim train` run directory per trained variant
    OUT/eval/           the paired comparison (`policytrim.eval.suite` format)
    OUT/report/         `policytrim report OUT`
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policytrim.config import RunConfig, from_dict, to_dict
from policytrim.errors import InputError
from policytrim.eval.units import SUMMARY_UNITS
from policytrim.io import atomic_write_bytes, atomic_write_json, read_json

if TYPE_CHECKING:
    from policytrim.train.decisions import TrainSummary

FORMAT = "policytrim-ablation"
NAMED = ("none", "extend", "trim_no_stability", "trim", "full")
PATTERNS = {
    "fixed_k": re.compile(r"^fixed_k(\d+)$"),
    "group_size": re.compile(r"^group_size_(\d+)$"),
    "budget": re.compile(r"^budget_(\d+(?:\.\d+)?)$"),
    "stability": re.compile(r"^stability_(\d+(?:\.\d+)?)$"),
}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table."""

    name: str
    description: str
    stage: str | None  # None: no training; extend | trim
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted RunConfig keys
    after_stage1: bool = False  # Stage 2 from the `extend` variant's policy at its chosen window
    components: str = ""  # Table 5 marks: extension / step-saving / group-anchored stability


def parse_variant(name: str) -> Variant:
    """The variant called ``name`` (module docstring); unknown names raise InputError."""
    if name == "none":
        return Variant("none", "no training (starting policy, default window)", None, components="✗ ✗ ✗")
    if name == "extend":
        return Variant("extend", "Stage 1 only: reliable chunk extension", "extend", components="✓ ✗ ✗")
    if name == "trim_no_stability":
        return Variant(
            "trim_no_stability",
            "Stage 2 only, step-saving reward without stability penalty",
            "trim",
            {"stage2.stability_coef": 0.0, "stage2.window": 0},
            components="✗ ✓ ✗",
        )
    if name == "trim":
        return Variant(
            "trim",
            "Stage 2 only: step-saving + group-anchored stability",
            "trim",
            {"stage2.window": 0},
            components="✗ ✓ ✓",
        )
    if name == "full":
        return Variant("full", "Stage 1 then Stage 2 (PolicyTrim)", "trim", after_stage1=True, components="✓ ✓ ✓")
    if m := PATTERNS["fixed_k"].match(name):
        k = int(m.group(1))
        return Variant(name, f"Stage 1 with one fixed window k = {k} (fixed alpha)", "extend", {"stage1.windows": [k]})
    if m := PATTERNS["group_size"].match(name):
        g = int(m.group(1))
        if g < 2:
            raise InputError(f"ablation variant {name}: group size must be >= 2")
        return Variant(
            name,
            f"full, Stage 2 with group size G = {g} (same rollouts per epoch)",
            "trim",
            {"rollout.group_size": g},
            after_stage1=True,
        )
    if m := PATTERNS["budget"].match(name):
        return Variant(
            name,
            f"full, Stage 2 with budget multiplier {float(m.group(1)):g}",
            "trim",
            {"stage2.budget_multiplier": float(m.group(1))},
            after_stage1=True,
        )
    if m := PATTERNS["stability"].match(name):
        return Variant(
            name,
            f"full, Stage 2 with stability coefficient {float(m.group(1)):g}",
            "trim",
            {"stage2.stability_coef": float(m.group(1))},
            after_stage1=True,
        )
    raise InputError(
        f"unknown ablation variant {name!r}; known: {', '.join(NAMED)}, fixed_k<K> (e.g. fixed_k15), "
        "group_size_<G> (e.g. group_size_16), "
        "budget_<B> (e.g. budget_1.1), stability_<S> (e.g. stability_0.05)"
    )


def variant_config(cfg: RunConfig, variant: Variant, out: Path, stage1_window: int = 0) -> RunConfig:
    """The run config of a variant: ``cfg`` with the variant's overrides (everything else equal)."""
    data = to_dict(cfg)
    for key, value in variant.overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if "rollout.group_size" in variant.overrides:  # same rollouts per epoch as the reference grid
        total = cfg.rollout.group_size * cfg.rollout.groups_per_epoch
        data["rollout"]["groups_per_epoch"] = max(1, round(total / variant.overrides["rollout.group_size"]))
    if variant.after_stage1:
        data["stage2"]["window"] = int(stage1_window)
    data["logging"]["out"] = str(out)
    return from_dict(RunConfig, data)


def plan(names: Sequence[str]) -> list[Variant]:
    """The variants to run, in order, with ``extend`` added (and first) when another needs it."""
    variants = [parse_variant(n) for n in dict.fromkeys(names)]
    if any(v.after_stage1 for v in variants) and not any(v.name == "extend" for v in variants):
        variants.insert(0, parse_variant("extend"))
    order = {"none": 0, "extend": 1}
    return sorted(variants, key=lambda v: order.get(v.name, 2))


def estimate_minutes(cfg: RunConfig, variant: Variant, steps_per_s: float = 1500.0, mean_steps: float = 120.0) -> float:
    """Rough training time at ``steps_per_s`` environment steps per second (a busy 2-core machine
    steps ~1,200-2,500 with the policy in the loop) and ``mean_steps`` per episode, validations included."""
    if variant.stage is None:
        return 0.0
    scfg = cfg.stage1 if variant.stage == "extend" else cfg.stage2
    tasks = len(cfg.env.tasks)
    rollouts = scfg.epochs * cfg.rollout.groups_per_epoch * cfg.rollout.group_size
    validations = (
        (scfg.epochs // scfg.eval_every + 2 + (3 if variant.stage == "extend" else 1)) * scfg.val_episodes * tasks
    )
    return (rollouts + validations) * mean_steps / steps_per_s / 60.0


def describe_variants(cfg: RunConfig, names: Sequence[str]) -> str:
    lines = [f"{'variant':<20} {'trains':<8} {'~minutes':>8}  description"]
    for v in plan(names):
        lines.append(f"{v.name:<20} {v.stage or '-':<8} {estimate_minutes(cfg, v):>8.1f}  {v.description}")
    lines.append(
        f"(estimates at 1,500 env steps/s and 120 steps per episode; Stage 1 {cfg.stage1.epochs} epochs, "
        f"Stage 2 {cfg.stage2.epochs} epochs, "
        f"{cfg.rollout.groups_per_epoch} groups x G={cfg.rollout.group_size} per epoch, tasks: "
        f"{', '.join(cfg.env.tasks)})"
    )
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"[ablate] {message}", flush=True)


def _train_variant(
    cfg: RunConfig, variant: Variant, init: str, run_dir: Path, stage1_window: int
) -> tuple[TrainSummary, bool]:
    """The variant's run summary and whether it was reused (a completed run directory) instead of trained."""
    from policytrim.train.decisions import TrainSummary
    from policytrim.train.grpo import train
    from policytrim.train.rundir import RunDir

    vcfg = variant_config(cfg, variant, run_dir, stage1_window)
    if (run_dir / "summary.json").is_file():
        return TrainSummary.from_json(RunDir.open(run_dir).read_json("summary.json")), True
    if (run_dir / "run.json").is_file():
        return train(vcfg, resume=str(run_dir)), False
    return train(vcfg, variant.stage, init), False


def run_ablation(
    cfg: RunConfig,
    init: str | Path,
    names: Sequence[str],
    out: str | Path,
    overwrite: bool = False,
    robustness: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train every variant from ``init`` into ``out/variants/NAME``, evaluate all of them and the
    starting policy on the same test states (paired, ``cfg.eval``), write the table. Returns the
    content of ``out/ablation.json``."""
    from policytrim.eval.compare import Contender
    from policytrim.eval.suite import reference_contenders, run_suite, write_suite
    from policytrim.policies import load_policy
    from policytrim.preflight import check_preconditions

    out = Path(out)
    check_preconditions(cfg, out)
    init = str(init)
    variants = plan(names)  # validates names before anything is written
    base = load_policy(init)  # validates the checkpoint
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cores": os.cpu_count(), "load_average_start": list(os.getloadavg())}
    records: dict[str, dict[str, Any]] = {}
    stage1_window, stage1_policy = 0, ""
    t_train = time.perf_counter()
    for v in variants:
        rec: dict[str, Any] = {
            "name": v.name,
            "description": v.description,
            "stage": v.stage,
            "overrides": v.overrides,
            "components": v.components,
            "after_stage1": v.after_stage1,
        }
        if v.stage is None:
            rec.update(window=base.default_window, policy=init, train_seconds=0.0)
            records[v.name] = rec
            continue
        run_dir = out / "variants" / v.name
        start = stage1_policy if v.after_stage1 else init
        if v.after_stage1 and not start:
            raise InputError(f"variant {v.name} needs the extend variant's Stage 1 policy")
        _say(f"{v.name}: {v.description} (load {os.getloadavg()[0]:.2f})")
        t0 = time.perf_counter()
        summary, reused = _train_variant(cfg, v, start, run_dir, stage1_window)
        seconds = time.perf_counter() - t0
        previous = (_read(out / "ablation.json") or {}).get("variants", [])
        if reused:
            seconds = next((p.get("train_seconds", 0.0) for p in previous if p["name"] == v.name), 0.0)
        trained = load_policy(run_dir / "final" / "policy")  # its spec carries the window it was trained for
        rec.update(
            run_dir=str(run_dir.relative_to(out)),
            policy=str(run_dir / "final" / "policy"),
            window=trained.default_window,
            train_seconds=seconds,
            init=start,
        )
        if v.stage == "extend":
            rec["window_choice"] = summary.extend.window_choice.to_json()
        if summary.trim is not None:
            rec["budget"] = summary.trim.budget_evidence.to_json()
        records[v.name] = rec
        if v.name == "extend":
            stage1_window, stage1_policy = trained.default_window, str(run_dir / "final" / "policy")
        _say(f"{v.name}: trained in {seconds / 60:.1f} min, window {trained.default_window}")
    train_seconds = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    _say(
        f"evaluating {len(records)} variants on {cfg.eval.episodes} test states per task ({cfg.eval.mode} mode, paired)"
    )
    contenders = reference_contenders(base, "none", sweep=True)
    for name, rec in records.items():
        if name != "none":
            contenders.append(Contender(name, load_policy(rec["policy"]), rec["window"]))
    suite = run_suite(
        contenders,
        cfg.env,
        cfg.eval.episodes,
        (cfg.eval.mode,),
        cfg.eval.seed,
        cfg.rollout.num_workers,
        cfg.rollout.step_timeout_s,
        cfg.eval.latency_ms,
        list(robustness),
        None,
    )
    write_suite(suite, out / "eval")
    comparison = suite["modes"][cfg.eval.mode]
    rows = []
    for c in contenders:
        rec = records.get(c.name) or {
            "name": c.name,
            "description": f"no training, fixed window k = {c.window} (Table 11)",
            "stage": None,
            "components": "",
            "train_seconds": 0.0,
        }
        rec = dict(
            rec,
            window=c.window,
            metrics=comparison["policies"][c.name]["overall"],
            tasks=comparison["policies"][c.name]["tasks"],
        )
        rec["vs_baseline"] = comparison["vs_baseline"].get(c.name, {}).get("overall")
        rows.append(rec)
    result = {
        "format": FORMAT,
        "version": 1,
        "units": dict(SUMMARY_UNITS),
        "init": init,
        "tasks": list(cfg.env.tasks),
        "mode": cfg.eval.mode,
        "episodes_per_task": cfg.eval.episodes,
        "eval_seed": cfg.eval.seed,
        "horizon": cfg.env.horizon,
        "variants": rows,
        "config": to_dict(cfg),
        "timings_s": {"train": train_seconds, "eval": time.perf_counter() - t_eval},
        "machine": {**machine, "load_average_end": list(os.getloadavg())},
    }
    atomic_write_json(out / "ablation.json", result)
    atomic_write_bytes(out / "ablation.md", (format_table(result) + "\n").encode())
    return result


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path, missing_ok=True)


def _f(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    """The ablation table in Markdown (the paper's columns SR, steps, window, speedup, plus the
    measured calls, the paired SR interval and the training time)."""
    lines = [
        f"Ablation from `{result['init']}` on {', '.join(result['tasks'])}: {result['episodes_per_task']} "
        f"test states per task, {result['mode']} mode, paired (same states and random numbers for every "
        "row).",
        "",
        "| variant | ext / step / stab | what was trained | k | SR [95% CI] | SR drop, points [paired 95% "
        "CI] | steps T | calls C | calls speedup | paper speedup | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        m, vs = v["metrics"], v.get("vs_baseline")
        lo, hi = m["success_ci95"]
        drop = (
            f"{vs['success_rate_drop']:+.1f} [{vs['success_rate_drop_ci95'][0]:+.1f}, "
            f"{vs['success_rate_drop_ci95'][1]:+.1f}]"
            if vs
            else "(reference)"
        )
        lines.append(
            f"| {v['name']} | {v.get('components') or ''} | {v['description']} | {v['window']} | "
            f"{_f(m['success_rate'], '.3f')} [{lo:.2f}, {hi:.2f}] | {drop} | {_f(m['mean_steps'], '.1f')} "
            "| "
            f"{_f(m['calls_per_success'], '.1f')} | {_f(vs['calls_speedup'], '.2f') if vs else '1.00'} | "
            f"{_f(vs['speedup_paper'], '.2f') if vs else '1.00'} | "
            f"{(v.get('train_seconds') or 0) / 60:.1f} |"
        )
    t = result.get("timings_s", {})
    lines += [
        "",
        f"Training {t.get('train', 0) / 60:.1f} min, evaluation {t.get('eval', 0) / 60:.1f} min; load "
        f"average at start {result['machine']['load_average_start'][0]:.2f}, at end "
        f"{result['machine']['load_average_end'][0]:.2f} ({result['machine']['cores']} cores).",
    ]
    return "\n".join(lines)
