"""The window adaptor on a frozen LeRobot SmolVLA (issue 35, "Measure": the adaptor-only mode on the
LeRobot SmolVLA benchmark): calls and success rate against the same SmolVLA at its fixed windows.

Starts from a finished `lerobot_smolvla.py` work directory (SOURCE: its BC policy ``baseline/`` and its
PolicyTrim policy ``train/final/policy``, chunk H = 15, trained window k). The adapt stage runs in the
adaptor-only mode (``adapt.train_policy = false``): the SmolVLA's weights stay as they are, only the
small window adaptor (choosing 5, 10 or 15 actions per call) is trained by GRPO, with SOURCE's rollout
settings and Stage 2's rhythm (``adapt.epochs`` = Stage 2's epochs, its validation every / episodes
and checkpoints; the adaptor at ``adapt.lr`` 1e-3). Then one paired suite on the test states
(SOURCE's ``eval.episodes``, sampled mode, the same random numbers for every row):

    baseline       BC executing k = 5 (the reference)
    fixed          the PolicyTrim policy at its trained window (what the adaptor starts from)
    fixed_k15      the PolicyTrim policy executing every predicted action (k = H = 15)
    adapt_only     the PolicyTrim policy with the trained adaptor (its per-call choices)
    rule_far       a HAND-WRITTEN reference, not learned: the PolicyTrim policy executing its trained
                   window while the hand is more than 15 cm from the object and H = 15 actions
                   otherwise, read from the privileged Meta-World state (hand xyz 0:3, object xyz
                   4:7): whether states exist where the long window is safe, which a learned adaptor
                   could find

    .venv-lerobot/bin/python benchmarks/adaptive_smolvla.py --source runs/lerobot_smolvla_long
        [--work runs/adaptive_smolvla] [--results benchmarks/results] [--set adapt.epochs=30 ...]

Resumable (phases ``adapt`` and ``eval`` are skipped when done; training resumes from its last
checkpoint). Writes RESULTS/NAME.json + .md (``--name``, default adaptive_smolvla): every row with
calls, steps, SR and the paired 95% interval of its SR drop against the baseline, the mean reward
the adapt stage would pay it (eq 9 without the stability term: which row the reward prefers), the adaptor's
paired comparison with ``fixed``, the executed-window histogram, and the adapt stage's training time
beside SOURCE's Stage 2 (seconds of epochs + validations from the two runs' metrics.jsonl; both on
this machine, with the load each ran under).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from adaptive_mw8 import evaluate_contenders, frozen_config, row_of, stage_time
from bench_pipeline import fmt, machine_record
from mw8 import Phases, assign
from policytrim.config import RunConfig, from_dict, to_dict
from policytrim.io import read_jsonl

ROWS = ("baseline", "fixed", "fixed_k15", "adapt_only", "rule_far")
RULE_RADIUS = 0.15  # metres, hand to object: rule_far's threshold


class HandObjectRule:
    """rule_far's window choice: ``far`` actions while the hand is more than ``radius`` from the object,
    ``near`` within it (Meta-World state: hand xyz at 0:3, object xyz at 4:7). A fixed rule in the
    adaptor's place (`policytrim.policies.adaptor.WindowAdaptor.sample`'s signature), never trained."""

    def __init__(self, chunk_size: int, far: int, near: int, radius: float = RULE_RADIUS):
        self.chunk_size, self.far, self.near, self.radius = int(chunk_size), int(far), int(near), float(radius)
        self.windows = tuple(sorted({self.far, self.near}))

    def sample(self, state: Any, chunk: Any, mode: str, generators: Any = None) -> tuple[Any, Any]:
        import torch

        distance = torch.linalg.vector_norm(state[:, 0:3] - state[:, 4:7], dim=1)
        windows = torch.where(distance > self.radius, self.far, self.near).long()
        return windows, torch.zeros(len(windows))


def fail(message: str) -> NoReturn:
    """Bad input: one line, exit code 2, nothing written."""
    print(f"adaptive_smolvla: {message}", file=sys.stderr)
    raise SystemExit(2)


def adapt_config(source: Path, work: Path, extra: list[str]) -> RunConfig:
    """SOURCE's training config with the adapt stage set to Stage 2's rhythm, adaptor only, into WORK/adapt_only."""
    cfg = from_dict(RunConfig, yaml.safe_load((source / "train" / "config.yaml").read_text()))
    s2 = cfg.stage2
    adapt = dataclasses.replace(
        cfg.adapt,
        epochs=s2.epochs,
        eval_every=s2.eval_every,
        val_episodes=s2.val_episodes,
        checkpoint_every=s2.checkpoint_every,
        tolerance_points=s2.tolerance_points,
        train_policy=False,
    )
    cfg = dataclasses.replace(cfg, adapt=adapt, logging=dataclasses.replace(cfg.logging, out=str(work / "adapt_only")))
    return from_dict(RunConfig, assign(to_dict(cfg), extra))


def run_eval(cfg: RunConfig, source: Path, work: Path) -> None:
    from policytrim.eval.compare import Contender
    from policytrim.policies import load_policy
    from policytrim.policies.adaptor import attach_adaptor

    base = load_policy(source / "baseline")
    trimmed = load_policy(source / "train" / "final" / "policy")
    adapted = load_policy(work / "adapt_only" / "final" / "policy")
    contenders = [
        Contender("baseline", base, base.default_window),
        Contender("fixed", trimmed, trimmed.default_window),
        Contender("fixed_k15", trimmed, int(trimmed.chunk_size)),
        Contender("adapt_only", adapted, adapted.default_window),
    ]
    ruled = load_policy(source / "train" / "final" / "policy")
    attach_adaptor(ruled, HandObjectRule(ruled.chunk_size, far=ruled.default_window, near=ruled.chunk_size))
    contenders.append(Contender("rule_far", ruled, ruled.default_window))
    evaluate_contenders(cfg, contenders, work / "eval")


def reward_of(outcomes: dict[str, list], budget: float | None, call_coef: float) -> float | None:
    """Mean of eq 9's reward over ``outcomes``' episodes without its stability term (which needs the
    training groups): S (1 + lambda_c E_C) / (1 + lambda_c), E_C = max(0, (B_C - C) / B_C). It shows
    which row the reward prefers, e.g. whether a call saving outweighs a success loss."""
    if not budget:
        return None
    import torch

    from policytrim.objective import adapt_reward_terms

    success = torch.tensor(outcomes["success"], dtype=torch.bool)[None]
    calls, steps = (torch.tensor(outcomes[k], dtype=torch.float32)[None] for k in ("calls", "steps"))
    terms = adapt_reward_terms(success, calls, steps, float(budget), call_coef=call_coef, stability_coef=0.0)
    return float(terms.reward.mean())


def result(source: Path, work: Path, machine: dict[str, Any]) -> dict[str, Any]:
    """The record of the finished run: rows, the adaptor against ``fixed``, training times, phases."""
    from policytrim.eval.compare import against_baseline

    comparison_all = json.loads((work / "eval" / "comparison.json").read_text())
    outcomes_all = json.loads((work / "eval" / "outcomes.json").read_text())
    mode = next(iter(comparison_all["modes"]))
    comparison, outcomes = comparison_all["modes"][mode], outcomes_all["modes"][mode]
    windows = comparison_all["windows"]
    rows = {name: row_of(name, comparison, outcomes, windows) for name in ROWS if name in comparison["policies"]}
    keys = ("calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95")
    fixed = comparison["policies"]["fixed"]["overall"]
    for name in ("adapt_only", "rule_far"):  # runs evaluated before the rule row have none
        if name in comparison["policies"]:
            vs = against_baseline(fixed, comparison["policies"][name]["overall"], outcomes["fixed"], outcomes[name])
            rows[name]["vs_fixed"] = {k: vs[k] for k in keys}
    adapt_result = json.loads((work / "adapt_only" / "adapt" / "result.json").read_text())
    rows["adapt_only"]["adaptor_windows"] = adapt_result.get("adaptor_windows")
    rows["adapt_only"]["call_budget"] = (adapt_result.get("call_budget") or {}).get("budget")
    config = yaml.safe_load((work / "benchmark_config.yaml").read_text())
    budget = rows["adapt_only"]["call_budget"]
    for name, row in rows.items():  # what the adapt stage's reward would pay each row, on average
        row["mean_reward_no_stability"] = reward_of(outcomes[name], budget, config["adapt"]["call_coef"])
    stage2 = stage_time(read_jsonl(source / "train" / "metrics.jsonl"), "trim")
    adapt_metrics = read_jsonl(work / "adapt_only" / "metrics.jsonl")
    adapt = stage_time(adapt_metrics, "adapt")
    validations = [  # the adapt stage's validations, epoch 0 = the entering policy at its fixed window
        {"epoch": r["epoch"]}
        | {k: r.get(f"val_{k}") for k in ("success_rate", "calls_per_success", "mean_executed_window")}
        for r in adapt_metrics
        if r.get("stage") == "adapt" and "val_success_rate" in r
    ]
    source_phases = json.loads((source / "phases.json").read_text())
    phases = json.loads((work / "phases.json").read_text())
    top = rows["adapt_only"]["vs_baseline"]
    return {
        "benchmark": "window adaptor, adaptor only, on a frozen LeRobot SmolVLA (issue 35)",
        "calls_speedup": top["calls_speedup"],
        "steps_reduction": top["steps_reduction"],
        "success_rate_drop": top["success_rate_drop"],
        "success_rate_drop_ci95": top["success_rate_drop_ci95"],
        "against": "the BC SmolVLA executing k = 5, paired on the test states",
        "adaptor_vs_fixed": rows["adapt_only"]["vs_fixed"],
        "best_epoch": adapt_result.get("best", {}).get("epoch"),
        "validations": validations,
        "mode": mode,
        "episodes_per_task": comparison_all["episodes_per_task"],
        "split": comparison_all["split"],
        "eval_seed": comparison_all["seed"],
        "rows": rows,
        "training": {
            "stage2": stage2 | {"load": source_phases.get("train", {}).get("load_before")},
            "adapt_only": adapt | {"load": phases.get("adapt", {}).get("load_before")},
            "adapt_vs_stage2_seconds_per_epoch": (
                adapt["seconds_per_epoch"] / stage2["seconds_per_epoch"]
                if adapt["seconds_per_epoch"] and stage2["seconds_per_epoch"]
                else None
            ),
        },
        "phases_s": {k: p["seconds"] for k, p in phases.items()},
        "phases_load": {k: {"before": p["load_before"], "after": p["load_after"]} for k, p in phases.items()},
        "source": str(source),
        "config": config,
        "machine": machine,
    }


def rule_lines(vs: dict[str, Any] | None) -> list[str]:
    """The Markdown paragraph of rule_far against the fixed window (none when the run has no such row)."""
    if not vs:
        return []
    ci = vs["success_rate_drop_ci95"]
    return [
        "",
        f"rule_far (hand-written, not learned: the trained window while the hand is more than "
        f"{RULE_RADIUS * 100:.0f} cm from the object, else H) against the same fixed window (paired): "
        f"{vs['calls_speedup']:.2f}x fewer calls, SR drop {vs['success_rate_drop']:+.1f} points "
        f"[{ci[0]:+.1f}, {ci[1]:+.1f}].",
    ]


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# The window adaptor on a frozen LeRobot SmolVLA (adaptor only)",
        "",
        f"push-v3 from 64 px images, {res['episodes_per_task']} paired test episodes per row ({res['mode']} mode), "
        f"against {res['against']}. Policies from `{res['source']}`.",
        "",
        "| row | SR | steps | calls/success | window | calls speedup | steps reduction "
        "| SR drop, points [paired 95% CI] | adapt reward (no stability term) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in ROWS if n in res["rows"]]:
        r = res["rows"][name]
        vs = r.get("vs_baseline") or {}
        ci = vs.get("success_rate_drop_ci95")
        window = f"adaptive, mean {r['mean_executed_window']:.1f}" if r.get("mean_executed_window") else r["window"]
        lines.append(
            f"| {name} | {r['success_rate']:.3f} | {r['mean_steps']:.1f} | {fmt(r['calls_per_success'], '.2f')} | "
            f"{window} | {fmt(vs.get('calls_speedup'), '.2f')} | {fmt(vs.get('steps_reduction'), '.0%')} | "
            + (f"{vs['success_rate_drop']:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "-")
            + f" | {fmt(r.get('mean_reward_no_stability'), '.3f')} |"
        )
    a = res["adaptor_vs_fixed"]
    ci = a["success_rate_drop_ci95"]
    t = res["training"]
    hist = res["rows"]["adapt_only"]["window_histogram"]
    lines += [
        "",
        f"The adaptor against the policy it started from at its fixed window (paired): "
        f"**{a['calls_speedup']:.2f}x fewer calls**, steps {fmt(a['steps_reduction'], '.0%')} fewer, "
        f"SR drop {a['success_rate_drop']:+.1f} points [{ci[0]:+.1f}, {ci[1]:+.1f}]. Adaptor windows: "
        f"{res['rows']['adapt_only'].get('adaptor_windows')}; executed windows (calls per window): "
        + "; ".join(f"{task}: " + ", ".join(f"{w}: {n}" for w, n in h.items()) for task, h in hist.items())
        + ".",
        *rule_lines(res["rows"].get("rule_far", {}).get("vs_fixed")),
        "",
        f"Adapt-stage validations (epoch: SR, calls per success, mean executed window; the chosen checkpoint "
        f"is epoch {res.get('best_epoch')}): "
        + "; ".join(
            f"{v['epoch']}: {v['success_rate']:.3f}, {fmt(v['calls_per_success'], '.2f')}, "
            f"{fmt(v['mean_executed_window'], '.1f')}"
            for v in res.get("validations", [])
        )
        + ".",
        "",
        f"Training time (epochs + validations): Stage 2 {t['stage2']['epochs']} epochs, "
        f"{t['stage2']['seconds'] / 60:.1f} min ({fmt(t['stage2']['seconds_per_epoch'], '.1f')} s/epoch, load "
        f"{fmt((t['stage2']['load'] or [None])[0], '.1f')} at its start); adapt stage {t['adapt_only']['epochs']} "
        f"epochs, {t['adapt_only']['seconds'] / 60:.1f} min ({fmt(t['adapt_only']['seconds_per_epoch'], '.1f')} "
        f"s/epoch, load {fmt((t['adapt_only']['load'] or [None])[0], '.1f')}): "
        f"{fmt(t['adapt_vs_stage2_seconds_per_epoch'], '.2f')}x Stage 2's time per epoch.",
        "",
        f"Machine: {res['machine'].get('cpu')}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="runs/lerobot_smolvla_long", help="a finished lerobot_smolvla.py work dir")
    ap.add_argument("--work", default="runs/adaptive_smolvla")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--name", default="adaptive_smolvla", help="result file name (RESULTS/NAME.json + .md)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides of the adapt run, e.g. adapt.epochs=30")
    args = ap.parse_args()
    source, work = Path(args.source), Path(args.work)
    for need in ("baseline/config.json", "train/config.yaml", "train/final/policy/config.json", "phases.json"):
        if not (source / need).is_file():
            fail(f"--source {source} is not a finished lerobot_smolvla.py work dir: {source / need} is missing")
    work.mkdir(parents=True, exist_ok=True)
    try:
        wanted = adapt_config(source, work, args.set)
    except (KeyError, TypeError, ValueError) as exc:  # a bad key or value (InputError is a ValueError)
        fail(f"bad --set {' '.join(args.set)}: {exc}")
    cfg = frozen_config(work / "benchmark_config.yaml", wanted)
    machine_record(work)
    phases = Phases(work, tag="adaptive_smolvla")

    def adapt() -> None:
        from policytrim.train.grpo import train

        run = work / "adapt_only"
        if (run / "run.json").is_file():
            train(cfg, resume=str(run))
        else:
            train(cfg, "adapt", str(source / "train" / "final" / "policy"))

    phases.run("adapt", lambda: (work / "adapt_only" / "summary.json").is_file(), adapt)
    phases.run("eval", lambda: (work / "eval" / "outcomes.json").is_file(), lambda: run_eval(cfg, source, work))
    res = result(source, work, machine_record(work))
    res["command"] = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    (results / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
