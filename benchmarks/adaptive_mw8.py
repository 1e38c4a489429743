"""MW-8 with a window per call (issue 35, "Measure"): fixed windows at H = 15 and H = 30 against the
window adaptor at H = 30, adaptor only (policy frozen) and adaptor + policy, per seed, paired on the
test states of the BC baseline at k = 5.

Rows of one seed (every H = 30 row evaluated in one paired suite on the mw8 test split, 50 states per
task, sampled mode, the seed's `eval.seed`):

    baseline       BC at H = 30 executing k = 5 (the reference of every H = 30 row)
    fixed_h15      PolicyTrim at H = 15: NOT re-run, taken from the committed
                   results/mw8_seeds_s2x720/seed_S.json when its config matches this benchmark's
                   (bar the chunk size, Stage 1's windows, logging and adapt); its own BC at k = 5
                   is its reference, on the same test states and random numbers
    fixed_h30      PolicyTrim at H = 30: Stage 1 with windows 5/10/20/30, Stage 2 for 720 epochs
    adapt_only     the adapt stage from fixed_h30's Stage 2 policy, the policy frozen
    adapt_policy   the adapt stage from the same policy, adaptor and policy trained together
                   (the adaptor at adapt.lr = 1e-3 in both modes, the policy at Stage 2's 1e-4:
                   adapt.policy_lr; at long windows 3e-4 already cost Stage 2 success, mw8.py)

Why 5/10/20/30: Stage 1 assigns windows to the 8 slots of a group round robin, so 4 windows get 2
rollouts each; with 5/10/.../30 the longest windows would get one rollout per group. The adaptor
still chooses among 5, 10, ..., 30 (`adapt.windows` empty).
Why the adaptor starts from Stage 2's policy: it then competes with nothing but its own entering
policy, fixed_h30 (the adapt stage keeps that policy without an adaptor when no adaptor beats it), so
adapt_* - fixed_h30 is what the adaptor adds; and the frozen mode is the one for a deployed policy,
which is the post-trained one.

Per seed the work runs in pieces, one invocation each (`--pieces N` runs N), every phase resumable
(run the same command again after an interruption; training resumes from its last checkpoint):

    piece 1  collect + BC (H = 30) + Stage 1 + Stage 2 epochs 1-240     estimate 40-55 min
    piece 2  Stage 2 epochs 241-480                                     estimate ~35 min
    piece 3  Stage 2 epochs 481-720                                     estimate ~35 min
    piece 4  adapt stage, adaptor only (240 epochs)                     estimate <= 35 min
    piece 5  adapt stage, adaptor + policy (240 epochs), paired eval    estimate ~40 min

The durations are ESTIMATES for the 2-core Xeon alone, derived from the committed mw8_seeds timings
(collect 2.4-2.8 min, BC 1.4-1.6 min, Stage 1 + 240 Stage 2 epochs 33-36 min: mw8_seeds/seed_*.json;
Stage 2 epochs 481-720 in 32-35 min: mw8_seeds_s2x720/seed_{1,2}.json; mw8.py's evaluation phase, 17
evaluations of 400 test episodes, 7-9 min, so ~2-3 min for this one's 4). Stage 1 at H = 30 may run
to its 100 epochs instead of stopping at ~30 (+10 min); the adapt stage was never measured before,
its rollouts cost about a late Stage 2 epoch and its frozen-policy update less. A shared machine
takes longer (mw8_seeds_s2long: Stage 1 + 480 Stage 2 epochs in 54 min for seed 0, 95 min for seed
1 under load). A seed is ~3-3.5 hours, 3 seeds ~10 hours.

    .venv/bin/python benchmarks/adaptive_mw8.py --seed 0              # the next piece of seed 0
    .venv/bin/python benchmarks/adaptive_mw8.py --seed 0 --pieces 2   # the next two
    .venv/bin/python benchmarks/adaptive_mw8.py --seed 0 --status     # pieces done and pending
    .venv/bin/python benchmarks/adaptive_mw8.py --aggregate           # the summary of finished seeds
    .venv/bin/python benchmarks/adaptive_mw8.py --size tiny --seed 0 --pieces 5 --work /tmp/amw8
                                        # the whole thing at a tiny size (2 tasks, minutes, one worker;
                                        # results under WORK/results, never benchmarks/results)

A finished seed writes results/adaptive_mw8/seed_S.json and the aggregate results/adaptive_mw8.json +
.md: top-level calls_speedup, steps_reduction, success_rate_drop = means over finished seeds of the
best adaptor mode against the BC baseline at k = 5 (best: the highest mean calls speedup among the
modes whose mean SR drop is <= 1 point, else the smallest mean SR drop), per-seed values, the other
rows, the goal (>= 8x fewer calls at an SR drop <= 1 point, mean of 3 seeds) and whether it is met,
`partial` while fewer than 3 seeds finished, the machine. Each row carries calls, steps and SR with
the paired 95% interval of its SR drop, the executed-window histogram per task (calls per window);
the adaptor rows also their paired comparison with fixed_h30, and each seed the training time of the
adapt stage against Stage 2's (sums of the epochs' and validations' wall seconds in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mw8 import TRAINER, Phases, build_config
from mw8_seeds import extend_stage2, seed_sets
from policytrim.config import RunConfig, from_dict, to_dict
from policytrim.io import read_jsonl

HERE = Path(__file__).resolve().parent
HORIZON = 30
FIXED_H15 = "mw8_seeds_s2x720"  # the committed H = 15 variant (its folder of per-seed results)
STAGE2_PIECE_EPOCHS = 240
MODES = {"adapt_only": False, "adapt_policy": True}  # adapt.train_policy of each adaptor mode
ROWS = ("baseline", "fixed_h15", "fixed_h30", *MODES)
GOAL = {"calls_speedup": 8.0, "success_rate_drop": 1.0, "seeds": 3}
# On top of mw8.py's trainer settings, the seed and mw8_seeds' recipe. Stage 2 runs as long as the
# H = 15 reference (s2x720); the adapt stage gets Stage 2's validation and checkpoint rhythm.
SETTINGS = (
    f"policy.chunk_size={HORIZON}",
    "stage1.windows=[5,10,20,30]",
    "stage2.epochs=720",
    "adapt.epochs=240",
    "adapt.eval_every=10",
    "adapt.val_episodes=25",
    "adapt.checkpoint_every=10",
    "adapt.tolerance_points=1.0",
    f"adapt.policy_lr={TRAINER['stage2']['lr']}",
)
# --size tiny: the same code paths in minutes (2 tasks, few demos / iterations / epochs, one worker)
TINY = (
    "env.tasks=[reach-v3,drawer-close-v3]",
    "env.horizon=100",
    "data.episodes=8",
    "data.suboptimal=false",
    "pretrain.iterations=150",
    "pretrain.eval_episodes=0",
    "policy.hidden_dim=64",
    "policy.num_layers=2",
    "rollout.num_workers=1",
    "rollout.group_size=4",
    "rollout.groups_per_epoch=2",
    "stage1.epochs=2",
    "stage1.min_epochs=0",
    "stage1.eval_every=1",
    "stage1.val_episodes=2",
    "stage1.checkpoint_every=1",
    "stage2.epochs=4",
    "stage2.eval_every=1",
    "stage2.val_episodes=2",
    "stage2.checkpoint_every=1",
    "adapt.epochs=2",
    "adapt.eval_every=1",
    "adapt.val_episodes=2",
    "adapt.checkpoint_every=1",
    "eval.episodes=3",
)
TINY_STAGE2_PIECE_EPOCHS = 2
# config keys that may differ from the committed H = 15 run's (prefixes of dotted keys)
H15_FREE = ("logging.", "adapt.", "policy.chunk_size", "stage1.windows")


# ---------------------------------------------------------------------------------------------
# pieces and phases (pure)


@dataclasses.dataclass(frozen=True)
class Piece:
    """One invocation's work: phases run in order, each resumable; ``minutes``: the estimate."""

    name: str
    phases: tuple[str, ...]
    minutes: str


def stage2_milestones(total: int, per_piece: int) -> list[int]:
    """Stage 2's epoch count at the end of each piece: per_piece, 2 per_piece, ..., total."""
    if total < 1 or per_piece < 1:
        raise ValueError(f"need total >= 1 and per_piece >= 1, got {total}, {per_piece}")
    return [*range(per_piece, total, per_piece), total]


def plan_pieces(milestones: Sequence[int]) -> list[Piece]:
    """The pieces of one seed (module docstring) for Stage 2 ending at ``milestones``."""
    train = [f"train_s2_{e}" for e in milestones]
    pieces = [Piece("bc_stage1_stage2", ("collect", "pretrain", train[0]), "40-55")]
    pieces += [Piece(f"stage2_to_{e}", (name,), "~35") for e, name in zip(milestones[1:], train[1:], strict=True)]
    return pieces + [
        Piece("adapt_only", ("adapt_only",), "<= 35"),
        Piece("adapt_policy_eval", ("adapt_policy", "eval"), "~40"),
    ]


def pending(pieces: Sequence[Piece], done: Callable[[str], bool]) -> list[Piece]:
    """The pieces with a phase not done yet, in order."""
    return [p for p in pieces if not all(done(phase) for phase in p.phases)]


# ---------------------------------------------------------------------------------------------
# one seed's phases


def seed_config(seed: int, extra: Sequence[str], tiny: bool, work: Path) -> RunConfig:
    """The config of seed ``seed``: mw8.py's, the seed and mw8_seeds' recipe, SETTINGS, TINY, ``extra``."""
    return build_config(seed_sets(seed, [*SETTINGS, *(TINY if tiny else ()), *extra]), work)


def frozen_config(path: Path, cfg: RunConfig, adapt_started: bool = True) -> RunConfig:
    """The config a seed started with (``path``), which ``cfg`` must equal; written when absent. Until
    an adapt phase has started (``adapt_started`` false) the ``adapt.*`` settings may still change:
    the new ones are written and used (nothing before the adapt stage reads them)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return cfg
    frozen = from_dict(RunConfig, yaml.safe_load(path.read_text()))
    if to_dict(frozen) != to_dict(cfg):
        free = () if adapt_started else ("adapt.",)
        differ = config_differences(to_dict(frozen), to_dict(cfg), free)[0]
        if differ:
            fail(f"{path.parent} was started with other settings ({', '.join(differ[:5])}); use another --work")
        path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return cfg
    return frozen


def train_done(run: Path, epochs: int) -> bool:
    """Whether the fixed-window run ``run`` finished Stage 2 at >= ``epochs`` (or was extended past it)."""
    if not (run / "run.json").is_file():
        return False
    from policytrim.train.rundir import RunDir

    have = RunDir.open(run).cfg.stage2.epochs
    return have > epochs or (have == epochs and (run / "summary.json").is_file())


def run_fixed(cfg: RunConfig, work: Path, epochs: int) -> None:
    """Stage 1 + Stage 2 to ``epochs`` into WORK/train: a new run, a resumed one, or a finished one extended."""
    from policytrim.train.grpo import train
    from policytrim.train.rundir import RunDir

    run = work / "train"
    if not (run / "run.json").is_file():
        short = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, epochs=epochs))
        train(
            dataclasses.replace(short, logging=dataclasses.replace(cfg.logging, out=str(run))),
            "both",
            str(work / "baseline"),
        )
        return
    if RunDir.open(run).cfg.stage2.epochs < epochs:
        if not (run / "summary.json").is_file():
            train(cfg, resume=str(run))  # the previous piece, interrupted
        extend_stage2(run, epochs)
    train(cfg, resume=str(run))


def run_adapt(cfg: RunConfig, work: Path, mode: str) -> None:
    """The adapt stage in ``mode`` from WORK/train's final (Stage 2's best) policy into WORK/<mode>."""
    from policytrim.train.grpo import train

    run = work / mode
    if (run / "run.json").is_file():
        train(cfg, resume=str(run))
        return
    adapt = dataclasses.replace(cfg.adapt, train_policy=MODES[mode])
    mine = dataclasses.replace(cfg, adapt=adapt, logging=dataclasses.replace(cfg.logging, out=str(run)))
    train(mine, "adapt", str(work / "train" / "final" / "policy"))


def run_eval(cfg: RunConfig, work: Path) -> None:
    """Every H = 30 row on the same test states and random numbers: WORK/eval/ (`write_suite`)."""
    from policytrim.eval.compare import Contender
    from policytrim.policies import load_policy

    base = load_policy(work / "baseline")
    contenders = [Contender("baseline", base, base.default_window)]
    for name, path in (("fixed_h30", "train"), *((m, m) for m in MODES)):
        policy = load_policy(work / path / "final" / "policy")
        contenders.append(Contender(name, policy, policy.default_window))
    evaluate_contenders(cfg, contenders, work / "eval")


def evaluate_contenders(cfg: RunConfig, contenders: Sequence[Any], out: Path) -> None:
    """One paired suite of ``contenders`` (`policytrim.eval.compare.Contender`) on the test states,
    cfg's eval episodes, mode and seed, written to ``out`` (`write_suite`)."""
    from policytrim.eval.suite import run_suite, write_suite

    suite = run_suite(
        contenders,
        cfg.env,
        cfg.eval.episodes,
        [cfg.eval.mode],
        cfg.eval.seed,
        cfg.rollout.num_workers,
        cfg.rollout.step_timeout_s,
    )
    write_suite(suite, out)


def run_phases(
    cfg: RunConfig, work: Path, pieces: Sequence[Piece], milestones: Sequence[int], estimates: bool = True
) -> None:
    """Run ``pieces`` in order; every phase is skipped when its output exists (`mw8.Phases`)."""
    from policytrim.data.collect import collect_demos
    from policytrim.train.bc import pretrain

    phases = Phases(work, tag="adaptive_mw8")
    actions: dict[str, tuple[Callable[[], bool], Callable[[], Any]]] = {
        "collect": (
            lambda: (work / "demos" / "meta.json").is_file(),
            lambda: collect_demos(cfg, work / "demos", overwrite=True),
        ),
        "pretrain": (
            lambda: (work / "baseline" / "config.json").is_file(),
            lambda: pretrain(cfg, work / "demos", work / "baseline", overwrite=True),
        ),
        **{
            f"train_s2_{e}": (lambda e=e: train_done(work / "train", e), lambda e=e: run_fixed(cfg, work, e))
            for e in milestones
        },
        **{m: (lambda m=m: (work / m / "summary.json").is_file(), lambda m=m: run_adapt(cfg, work, m)) for m in MODES},
        "eval": (lambda: (work / "eval" / "outcomes.json").is_file(), lambda: run_eval(cfg, work)),
    }
    for piece in pieces:
        estimate = f" (estimate {piece.minutes} min)" if estimates else ""
        print(f"[adaptive_mw8] piece {piece.name}{estimate}", flush=True)
        for name in piece.phases:
            done, fn = actions[name]
            phases.run(name, done, fn)


def phase_done(work: Path, name: str) -> bool:
    """Whether phase ``name`` is recorded as finished in WORK/phases.json."""
    path = work / "phases.json"
    return path.is_file() and name in json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# one seed's record (pure functions of the files a seed wrote)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    theirs: dict[str, Any], ours: dict[str, Any], free: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(``key: ours vs theirs`` for every key both configs hold with different values, the keys
    ``theirs`` does not record); keys starting with a prefix in ``free`` are left out."""
    a, b = flatten(theirs), flatten(ours)
    keys = [k for k in sorted(set(a) | set(b)) if not k.startswith(tuple(free))]
    differ = [f"{k}: {b[k]!r} vs {a[k]!r}" for k in keys if k in a and k in b and a[k] != b[k]]
    differ += [f"{k}: absent here" for k in keys if k in a and k not in b]
    return differ, [k for k in keys if k in b and k not in a]


def h15_row(committed: dict[str, Any] | None, ours: dict[str, Any], source: str) -> dict[str, Any]:
    """The fixed-window H = 15 row from a committed s2x720 seed result (``committed``: its JSON,
    None when that seed has none), or why it is not available: its config must equal ``ours`` but
    for `H15_FREE`; keys the older file does not record are listed, not held against it."""
    if committed is None:
        return {"available": False, "reason": f"no committed result {source}"}
    differ, unrecorded = config_differences(committed["config"], ours, H15_FREE)
    if differ:
        return {"available": False, "reason": f"settings differ from {source}: " + "; ".join(differ[:6])}
    base, new = committed["baseline"], committed["policytrim"]
    return {
        "available": True,
        "source": source,
        "unrecorded_keys": unrecorded,
        "success_rate": new["success_rate"],
        "success_ci95": new["success_ci95"],
        "mean_steps": new["mean_steps"],
        "calls_per_success": new["calls_per_success"],
        "window": new["window"],
        "vs_baseline": {k: committed[k] for k in ("calls_speedup", "steps_reduction", "success_rate_drop")}
        | {"success_rate_drop_ci95": committed["success_rate_drop_ci95"]},
        "baseline": {k: base[k] for k in ("success_rate", "success_ci95", "mean_steps", "calls_per_success", "window")},
        "window_histogram": None,  # the committed file has no per-call record
    }


def window_histogram(metrics: dict[str, Any], outcomes: dict[str, list], window: int) -> dict[str, dict[str, int]]:
    """Calls per executed window and task, over every episode: from the adaptor's per-call trace
    (``metrics["window_trace"]``), else every call of ``outcomes`` at the fixed ``window``."""
    out: dict[str, dict[str, int]] = {}
    trace = metrics.get("window_trace")
    if trace:
        for task, w in zip(trace["task"], trace["window"], strict=True):
            out.setdefault(task, {})
            out[task][str(w)] = out[task].get(str(w), 0) + 1
    else:
        for task, calls in zip(outcomes["task"], outcomes["calls"], strict=True):
            out.setdefault(task, {})
            out[task][str(window)] = out[task].get(str(window), 0) + int(calls)
    return {task: dict(sorted(h.items(), key=lambda kv: int(kv[0]))) for task, h in out.items()}


def stage_time(records: Sequence[dict[str, Any]], stage: str) -> dict[str, Any]:
    """Training time of ``stage`` from a run's metrics.jsonl records: epochs, seconds (every
    epoch's ``epoch_s`` plus every validation's ``val_s``), seconds per epoch, env steps."""
    mine = [r for r in records if r.get("stage") == stage and "epoch_s" in r]
    seconds = sum(r["epoch_s"] + r.get("val_s", 0.0) for r in mine)
    return {
        "epochs": len(mine),
        "seconds": seconds,
        "seconds_per_epoch": seconds / len(mine) if mine else None,
        "env_steps": sum(r.get("env_steps", 0) for r in mine),
    }


def row_of(name: str, comparison: dict[str, Any], outcomes: dict[str, Any], windows: dict[str, Any]) -> dict[str, Any]:
    """One H = 30 row of a suite's comparison (``comparison["vs_baseline"]`` holds its paired numbers)."""
    metrics = comparison["policies"][name]
    overall = metrics["overall"]
    row = {
        "available": True,
        **{k: overall[k] for k in ("success_rate", "success_ci95", "mean_steps", "calls_per_success")},
        "window": windows[name],
        "adaptive": bool(metrics.get("adaptive_window")),
        "mean_executed_window": overall.get("mean_executed_window"),
        "window_histogram": window_histogram(metrics, outcomes[name], windows[name]),
        "per_task": {
            t: {k: m[k] for k in ("success_rate", "mean_steps", "calls_per_success")}
            | ({"mean_executed_window": m.get("mean_executed_window")} if "mean_executed_window" in m else {})
            for t, m in metrics["tasks"].items()
        },
    }
    if name in comparison["vs_baseline"]:
        vs = comparison["vs_baseline"][name]["overall"]
        keys = ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95", "paired_episodes")
        row["vs_baseline"] = {k: vs[k] for k in keys}
    return row


def seed_result(work: Path, seed: int, h15: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """Seed ``seed``'s record from its work directory (the eval suite, the training runs, phases)."""
    from policytrim.eval.compare import against_baseline

    comparison_all = json.loads((work / "eval" / "comparison.json").read_text())
    outcomes_all = json.loads((work / "eval" / "outcomes.json").read_text())
    mode = next(iter(comparison_all["modes"]))
    comparison, outcomes = comparison_all["modes"][mode], outcomes_all["modes"][mode]
    windows = comparison_all["windows"]
    rows: dict[str, Any] = {"fixed_h15": h15}
    for name in ("baseline", "fixed_h30", *MODES):
        rows[name] = row_of(name, comparison, outcomes, windows)
    fixed = comparison["policies"]["fixed_h30"]
    for m in MODES:  # what the adaptor adds to the policy it started from, paired
        vs = against_baseline(
            fixed["overall"], comparison["policies"][m]["overall"], outcomes["fixed_h30"], outcomes[m]
        )
        rows[m]["vs_fixed_h30"] = {
            k: vs[k] for k in ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95")
        }
        result = json.loads((work / m / "adapt" / "result.json").read_text())
        rows[m]["adaptor_windows"] = result.get("adaptor_windows")
        rows[m]["call_budget"] = (result.get("call_budget") or {}).get("budget")
    if h15.get("available"):  # the H = 30 rows against the H = 15 BC at k = 5: same states, not paired per episode
        ref = h15["baseline"]
        for name in ("baseline", "fixed_h30", *MODES):
            r = rows[name]
            rows[name]["vs_h15_baseline"] = {
                "calls_speedup": ref["calls_per_success"] / r["calls_per_success"] if r["calls_per_success"] else None,
                "success_rate_drop": 100.0 * (ref["success_rate"] - r["success_rate"]),
            }
    records = {name: read_jsonl(work / name / "metrics.jsonl") for name in ("train", *MODES)}
    training = {"stage1": stage_time(records["train"], "extend"), "stage2": stage_time(records["train"], "trim")}
    training.update({m: stage_time(records[m], "adapt") for m in MODES})
    for m in MODES:
        s2, a = training["stage2"], training[m]
        training[m]["vs_stage2"] = {
            "seconds": a["seconds"] / s2["seconds"] if s2["seconds"] else None,
            "seconds_per_epoch": (
                a["seconds_per_epoch"] / s2["seconds_per_epoch"]
                if a["seconds_per_epoch"] and s2["seconds_per_epoch"]
                else None
            ),
        }
    phases = json.loads((work / "phases.json").read_text())
    cfg = yaml.safe_load((work / "benchmark_config.yaml").read_text())
    return {
        "seed": seed,
        "mode": mode,
        "episodes_per_task": comparison_all["episodes_per_task"],
        "split": comparison_all["split"],
        "eval_seed": comparison_all["seed"],
        "tasks": list(cfg["env"]["tasks"]),
        "horizon": HORIZON,
        "rows": rows,
        "training": training,
        "phases_s": {k: p["seconds"] for k, p in phases.items()},
        "phases_load": {k: {"before": p["load_before"], "after": p["load_after"]} for k, p in phases.items()},
        "machine": machine,
        "config": cfg,
    }


# ---------------------------------------------------------------------------------------------
# aggregate (pure)

HEADLINE = ("calls_speedup", "steps_reduction", "success_rate_drop")
PAIR = ("calls_speedup", "success_rate_drop")  # an adaptor mode against fixed_h30, averaged over seeds


def row_means(seeds: dict[str, dict[str, Any]], row: str) -> dict[str, Any] | None:
    """Means over the seeds holding ``row`` of its numbers against the BC baseline at k = 5."""
    have = [
        s["rows"][row]["vs_baseline"]
        for s in seeds.values()
        if s["rows"][row].get("available") and "vs_baseline" in s["rows"][row]
    ]
    if not have:
        return None
    out: dict[str, Any] = {
        k: statistics.fmean(v[k] for v in have) for k in HEADLINE if all(v[k] is not None for v in have)
    }
    return out | {"seeds": len(have)}


def best_mode(means: dict[str, dict[str, Any] | None], max_drop: float = GOAL["success_rate_drop"]) -> str | None:
    """The adaptor mode with the highest mean calls speedup among those with a mean SR drop <=
    ``max_drop``; when none holds SR, the one with the smallest mean SR drop."""
    have = {m: v for m, v in means.items() if v and "calls_speedup" in v and "success_rate_drop" in v}
    if not have:
        return None
    holding = [m for m, v in have.items() if v["success_rate_drop"] <= max_drop]
    if holding:
        return max(holding, key=lambda m: have[m]["calls_speedup"])
    return min(have, key=lambda m: have[m]["success_rate_drop"])


def aggregate(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """adaptive_mw8.json from the finished seeds' records (module docstring)."""
    if not seeds:
        raise ValueError("no finished seed")
    means = {row: row_means(seeds, row) for row in ROWS if row != "baseline"}
    best = best_mode({m: means[m] for m in MODES})
    top = means[best] if best else {}
    partial = len(seeds) < GOAL["seeds"]
    met = None
    if not partial and best:
        met = top["calls_speedup"] >= GOAL["calls_speedup"] and top["success_rate_drop"] <= GOAL["success_rate_drop"]
    machines = sorted({json.dumps(s["machine"].get("cpu")) for s in seeds.values()})
    return {
        "benchmark": "MW-8, window adaptor at H = 30 (issue 35)",
        **{k: top.get(k) for k in HEADLINE},
        "best_mode": best,
        "best_mode_rule": (
            f"highest mean calls_speedup among adaptor modes with mean success_rate_drop <= "
            f"{GOAL['success_rate_drop']:g} point; else the smallest mean success_rate_drop"
        ),
        "against": "BC at H = 30 executing k = 5, paired on the test states (fixed_h15: its own BC at H = 15, k = 5)",
        "goal": {
            "calls_speedup": f">= {GOAL['calls_speedup']:g}",
            "success_rate_drop": f"<= {GOAL['success_rate_drop']:g} point",
            "over": f"{GOAL['seeds']} seeds",
            "met": met,
        },
        "partial": partial,
        "finished_seeds": len(seeds),
        "per_seed": {k: (s["rows"][best] or {}).get("vs_baseline") for k, s in seeds.items()} if best else None,
        "rows": means,
        "adaptor_vs_fixed_h30": {
            m: {k: statistics.fmean(s["rows"][m]["vs_fixed_h30"][k] for s in seeds.values()) for k in PAIR}
            for m in MODES
            if all(s["rows"][m]["vs_fixed_h30"][k] is not None for s in seeds.values() for k in PAIR)
        },
        "adapt_time_vs_stage2": {
            m: statistics.fmean(s["training"][m]["vs_stage2"]["seconds"] for s in seeds.values())
            for m in MODES
            if all(s["training"][m]["vs_stage2"]["seconds"] is not None for s in seeds.values())
        },
        "seeds": {
            k: {row: _seed_row(s["rows"][row]) for row in ROWS} | {"training": s["training"]} for k, s in seeds.items()
        },
        "machine": [json.loads(m) for m in machines],
        "machines_per_seed": {k: s["machine"] for k, s in seeds.items()},
    }


def _seed_row(row: dict[str, Any]) -> dict[str, Any]:
    if not row.get("available"):
        return {"available": False, "reason": row.get("reason")}
    keep = (
        "success_rate",
        "mean_steps",
        "calls_per_success",
        "window",
        "mean_executed_window",
        "vs_baseline",
        "vs_fixed_h30",
        "vs_h15_baseline",
        "adaptor_windows",
        "window_histogram",
    )
    return {k: row[k] for k in keep if k in row}


def markdown(agg: dict[str, Any]) -> str:
    """adaptive_mw8.md: the rows per seed, the means, the goal, the training time."""

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"# MW-8, window adaptor at H = 30: {agg['finished_seeds']} seed(s) finished"
        + (" (partial)" if agg["partial"] else ""),
        "",
        f"Against {agg['against']}. Best adaptor mode: **{agg['best_mode']}** ({agg['best_mode_rule']}).",
        "",
        "| seed | row | SR | steps | calls/success | window | calls speedup | steps reduction "
        "| SR drop, points [paired 95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in agg["seeds"].items():
        for row in ROWS:
            r = s[row]
            if not r.get("available", True) and "reason" in r:
                lines.append(f"| {k} | {row} | not available: {r['reason']} | | | | | | |")
                continue
            vs = r.get("vs_baseline") or {}
            ci = vs.get("success_rate_drop_ci95")
            window = r.get("window")
            if r.get("mean_executed_window"):
                window = f"adaptive, mean {r['mean_executed_window']:.1f}"
            elif row in MODES:  # the adapt stage kept its entering policy: no adaptor beat the fixed window
                window = f"{window} (no adaptor kept)"
            lines.append(
                f"| {k} | {row} | {f(r.get('success_rate'), '.3f')} | {f(r.get('mean_steps'), '.1f')} | "
                f"{f(r.get('calls_per_success'), '.2f')} | {window} | {f(vs.get('calls_speedup'), '.2f')} | "
                f"{f(vs.get('steps_reduction'), '.0%')} | {f(vs.get('success_rate_drop'), '+.1f')}"
                + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
                + " |"
            )
    lines += ["", "Means over seeds (against each row's BC at k = 5):", ""]
    lines += ["| row | calls speedup | steps reduction | SR drop, points | seeds |", "|---|---|---|---|---|"]
    for row, m in agg["rows"].items():
        if m:
            lines.append(
                f"| {row} | {f(m.get('calls_speedup'), '.2f')} | {f(m.get('steps_reduction'), '.0%')} | "
                f"{f(m.get('success_rate_drop'), '+.1f')} | {m['seeds']} |"
            )
    g = agg["goal"]
    verdict = "not decided (fewer than 3 seeds)" if g["met"] is None else ("met" if g["met"] else "NOT met")
    lines += [
        "",
        f"Goal: calls speedup {g['calls_speedup']} at an SR drop {g['success_rate_drop']}, mean of {g['over']}: "
        f"**{verdict}** (best mode: {f(agg['calls_speedup'], '.2f')}x, SR drop {f(agg['success_rate_drop'], '+.1f')}).",
        "",
        "What the adaptor adds to fixed_h30 (paired, mean over seeds): "
        + "; ".join(
            f"{m} {v['calls_speedup']:.2f}x fewer calls, SR drop {v['success_rate_drop']:+.1f} points"
            for m, v in agg["adaptor_vs_fixed_h30"].items()
        )
        + ".",
        "",
        "Training time (seconds of epochs + validations; the adapt stage against Stage 2; mean ratio of the "
        "totals: " + ", ".join(f"{m} {v:.2f}" for m, v in agg["adapt_time_vs_stage2"].items()) + "):",
        "",
        "| seed | Stage 2: epochs, min, s/epoch | "
        + " | ".join(f"{m}: epochs, min, s/epoch, x Stage 2 per epoch" for m in MODES)
        + " |",
        "|---|---|" + "---|" * len(MODES),
    ]
    for k, s in agg["seeds"].items():
        t = s["training"]
        cells = [
            f"{t['stage2']['epochs']}, {t['stage2']['seconds'] / 60:.1f}, {f(t['stage2']['seconds_per_epoch'], '.2f')}"
        ]
        cells += [
            f"{t[m]['epochs']}, {t[m]['seconds'] / 60:.1f}, {f(t[m]['seconds_per_epoch'], '.2f')}, "
            f"{f(t[m]['vs_stage2']['seconds_per_epoch'], '.2f')}"
            for m in MODES
        ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Executed windows per task (calls per window, all test episodes):", ""]
    for k, s in agg["seeds"].items():
        for row in ("fixed_h30", *MODES):
            hist = s[row].get("window_histogram") or {}
            text = "; ".join(f"{t}: " + ", ".join(f"{w}:{n}" for w, n in h.items()) for t, h in hist.items())
            lines.append(f"- seed {k}, {row}: {text}")
    cpus = ", ".join(str(m) for m in agg["machine"])
    lines += ["", f"Machine: {cpus}. Per-seed files: `adaptive_mw8/seed_S.json`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def fail(message: str) -> NoReturn:
    """Bad input: one line, exit code 2, nothing written (named after the running script: adaptive_smolvla
    shares `frozen_config`)."""
    print(f"{Path(sys.argv[0]).stem}: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_aggregate(results: Path) -> dict[str, Any]:
    folder = results / "adaptive_mw8"
    seeds = {p.stem.split("_")[1]: json.loads(p.read_text()) for p in sorted(folder.glob("seed_*.json"))}
    if not seeds:
        fail(f"no finished seed in {folder}")
    agg = aggregate(seeds)
    (results / "adaptive_mw8.json").write_text(json.dumps(agg, indent=2) + "\n")
    text = markdown(agg)
    (results / "adaptive_mw8.md").write_text(text)
    print(text)
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="the seed to work on")
    ap.add_argument("--pieces", type=int, default=1, help="how many pending pieces of the seed to run (default 1)")
    ap.add_argument("--status", action="store_true", help="print the seed's pieces, done and pending, and stop")
    ap.add_argument("--aggregate", action="store_true", help="write adaptive_mw8.json / .md from the finished seeds")
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument(
        "--work", default="", help="working directory (default runs/adaptive_mw8, tiny: runs/adaptive_mw8_tiny)"
    )
    ap.add_argument("--results", default="", help="default benchmarks/results (tiny: WORK/results)")
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides for the seed, e.g. adapt.epochs=120")
    args = ap.parse_args()
    tiny = args.size == "tiny"
    work_root = Path(args.work or ("runs/adaptive_mw8_tiny" if tiny else "runs/adaptive_mw8"))
    results = Path(args.results) if args.results else (work_root / "results" if tiny else HERE / "results")
    if args.seed is None:
        if not args.aggregate:
            ap.error("give --seed S (or --aggregate)")
        write_aggregate(results)
        return
    if args.pieces < 1:
        ap.error(f"--pieces must be >= 1, got {args.pieces}")
    work = work_root / f"seed_{args.seed}"
    try:
        wanted = seed_config(args.seed, args.set, tiny, work)
    except KeyError as exc:
        fail(f"bad --set {' '.join(args.set)}: no config section {exc}")
    except (TypeError, ValueError) as exc:  # ValueError: the config's InputError too
        fail(f"bad --set {' '.join(args.set)}: {exc}")
    adapt_started = any((work / mode / "run.json").is_file() for mode in MODES)
    cfg = frozen_config(work / "benchmark_config.yaml", wanted, adapt_started)
    milestones = stage2_milestones(cfg.stage2.epochs, TINY_STAGE2_PIECE_EPOCHS if tiny else STAGE2_PIECE_EPOCHS)
    pieces = plan_pieces(milestones)
    todo = pending(pieces, lambda phase: phase_done(work, phase))
    if args.status:
        for p in pieces:
            state = "pending" if p in todo else "done"
            print(f"{p.name:<20} {state:<8} phases {', '.join(p.phases)} (estimate {p.minutes} min)")
        return
    from policytrim.machine import describe_machine

    machine_path = work / "machine.json"
    if not machine_path.is_file():
        machine_path.write_text(json.dumps(describe_machine(), indent=2) + "\n")
    run_phases(cfg, work, todo[: args.pieces], milestones, estimates=not tiny)
    left = pending(pieces, lambda phase: phase_done(work, phase))
    if left:
        print(f"[adaptive_mw8] seed {args.seed}: {len(left)} piece(s) left, next {left[0].name}; run again to go on")
        return
    source = HERE / "results" / FIXED_H15 / f"seed_{args.seed}.json"
    committed = json.loads(source.read_text()) if source.is_file() else None
    h15 = h15_row(committed, to_dict(cfg), f"{FIXED_H15}/seed_{args.seed}.json")
    record = seed_result(work, args.seed, h15, json.loads(machine_path.read_text()))
    record["command"] = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    (results / "adaptive_mw8").mkdir(parents=True, exist_ok=True)
    (results / "adaptive_mw8" / f"seed_{args.seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    write_aggregate(results)


if __name__ == "__main__":
    main()
