"""`policytrim report` on every kind of run directory, built from synthetic results in the real
formats (metrics from `summarize`, comparisons from `against_baseline`; no simulator)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

from conftest import tiny_config
from policytrim.cli import main
from policytrim.errors import InputError
from policytrim.eval.compare import against_baseline
from policytrim.eval.metrics import summarize
from policytrim.eval.report import detect_kind, write_report
from policytrim.eval.suite import write_suite
from policytrim.rollout.types import Trajectories

TASKS = ("push-v3", "reach-v3")


def outcomes(rng, window, mean_steps, sr, n=12):
    task = [t for t in TASKS for _ in range(n)]
    success = rng.random(len(task)) < sr
    steps = np.where(success, np.clip(rng.normal(mean_steps, 15, len(task)), 20, 199), 200).astype(int)
    calls = -(-steps // window)
    return {
        "task": task,
        "index": [i % n for i in range(len(task))],
        "success": success.tolist(),
        "steps": steps.tolist(),
        "calls": calls.tolist(),
    }


def metrics_of(o, window, mode):
    n = len(o["task"])
    traj = Trajectories(
        task=o["task"],
        instruction=["x"] * n,
        seed=torch.zeros(n, dtype=torch.long),
        index=torch.tensor(o["index"]),
        group=torch.arange(n),
        window=torch.full((n,), window),
        success=torch.tensor(o["success"]),
        steps=torch.tensor(o["steps"]),
        calls=torch.tensor(o["calls"]),
        horizon=200,
        group_size=1,
    )
    m = summarize(traj, 0.001, 0.0125)
    for entry in [*m["tasks"].values(), m["overall"]]:
        entry.update(mode=mode, seed=0)
    return {"window": window, "mode": mode, "episodes_per_task": 12, "tasks": m["tasks"], "overall": m["overall"]}


def comparison(contenders, mode="sampled", seed=0):
    rng = np.random.default_rng(seed)
    outs = {name: outcomes(rng, k, t, sr) for name, k, t, sr in contenders}
    pols = {name: metrics_of(outs[name], k, mode) for name, k, _, _ in contenders}
    base = contenders[0][0]
    vs = {
        name: {
            "overall": against_baseline(pols[base]["overall"], pols[name]["overall"], outs[base], outs[name]),
            "tasks": {
                t: against_baseline(pols[base]["tasks"][t], pols[name]["tasks"][t], outs[base], outs[name], task=t)
                for t in TASKS
            },
        }
        for name, *_ in contenders[1:]
    }
    return {"baseline": base, "policies": pols, "vs_baseline": vs, "outcomes": outs}


PIPELINE = [
    ("baseline", 5, 120, 0.9),
    ("baseline@k=10", 10, 125, 0.8),
    ("baseline@k=15", 15, 130, 0.6),
    ("temporal_ensembling", 1, 118, 0.9),
    ("stage1", 15, 110, 0.9),
    ("policytrim", 15, 80, 0.9),
]


def suite(contenders, perturb=True):
    s = {
        "format": "policytrim-comparison",
        "episodes_per_task": 12,
        "seed": 0,
        "split": "test",
        "baseline": contenders[0][0],
        "windows": {n: k for n, k, *_ in contenders},
        "modes": {"sampled": comparison(contenders), "deterministic": comparison(contenders, "deterministic", 1)},
        "robustness": {},
    }
    if perturb:
        two = [contenders[0], contenders[-1]]
        s["robustness"]["act_noise_0.3"] = {
            "perturbation": {"name": "act_noise_0.3", "act_noise": 0.3, "description": "actuation noise"},
            "mode": "sampled",
            **comparison(two, seed=2),
        }
    return s


def train_dir(path):
    path.mkdir(parents=True)
    (path / "run.json").write_text(
        json.dumps({"stage": "both", "stages": ["extend", "trim"], "init": "base", "status": "complete"})
    )
    records = [{"stage": "extend", "epoch": 0, "global_epoch": 0, "val_success_rate": 0.8, "val_mean_steps": 120.0}]
    records += [
        {
            "stage": "extend",
            "epoch": e,
            "global_epoch": e,
            "success_rate": 0.8 + 0.01 * e,
            "mean_steps": 120 - e,
            "mean_window": 10.0,
            "reward": 1.2 + 0.02 * e,
            **({"val_success_rate": 0.9, "val_mean_steps": 115.0} if e % 5 == 0 else {}),
        }
        for e in range(1, 11)
    ]
    records += [
        {
            "stage": "trim",
            "epoch": e,
            "global_epoch": 10 + e,
            "success_rate": 0.9,
            "mean_steps": 110 - 2 * e,
            "mean_window": 15.0,
            "reward": 0.5 + 0.01 * e,
            "budget": 150,
        }
        for e in range(1, 11)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    best = {"epoch": 10, "success_rate": 0.9, "mean_steps": 90.0, "calls_per_success": 6.0}
    start = {"success_rate": 0.85, "mean_steps": 120.0, "calls_per_success": 24.0}
    per_window = {
        str(k): {"success_rate": sr, "mean_steps": 120.0, "calls_per_success": 120.0 / k}
        for k, sr in ((5, 0.9), (10, 0.9), (15, 0.89))
    }
    (path / "extend").mkdir()
    (path / "extend" / "result.json").write_text(
        json.dumps(
            {
                "epochs": 10,
                "best": best,
                "start": start,
                "eval_window": 15,
                "window_choice": {
                    "window": 15,
                    "tolerance_points": 2.0,
                    "episodes_per_task": 10,
                    "mode": "sampled",
                    "per_window": per_window,
                },
            }
        )
    )
    (path / "trim").mkdir()
    (path / "trim" / "budget.json").write_text(
        json.dumps({"budget": 150, "source": "calibrated", "mean_steps": 115.0, "success_rate": 0.9, "window": 15})
    )
    (path / "summary.json").write_text(json.dumps({"window": 15}))


def check_report(out, expect_figures):
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) >= expect_figures, [p.name for p in pngs]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"plots/{png.name}" in md
    # self-contained: every image inline, nothing fetched from elsewhere
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in images)
    base64.b64decode(images[0].split(",", 1)[1], validate=True)
    assert "http://" not in page and "https://" not in page
    return md


def test_pipeline_train_eval_and_ablation_dirs(tmp_path):
    demo = tmp_path / "demo"
    train_dir(demo / "train")
    s = suite(PIPELINE)
    write_suite(s, demo / "eval" / "suite")
    head = s["modes"]["sampled"]
    summary = {
        "baseline": head["policies"]["baseline"]["overall"],
        "stage1": head["policies"]["stage1"]["overall"],
        "policytrim": head["policies"]["policytrim"]["overall"],
        **{
            k: head["vs_baseline"]["policytrim"]["overall"][k]
            for k in (
                "calls_speedup",
                "speedup_paper",
                "steps_reduction",
                "success_rate_drop",
                "success_rate_drop_ci95",
            )
        },
        "fixed_horizon_sweep": {"5": head["policies"]["baseline"]["overall"]},
        "per_task": {t: {**head["vs_baseline"]["policytrim"]["tasks"][t]} for t in TASKS},
        "mode": "sampled",
        "episodes_per_task": 12,
        "tasks": list(TASKS),
        "clean_expert_steps": {"push-v3": 61.0, "reach-v3": 48.0},
        "targets": {"calls_speedup": {"target": ">= 3", "measured": 4.1, "met": True}},
        "timings": {"train_s": 100.0},
    }
    (demo / "summary.json").write_text(json.dumps(summary))

    ev = tmp_path / "ev"
    write_suite(suite(PIPELINE[:2] + [("policy", 15, 90, 0.85)]), ev)

    ab = tmp_path / "ab"
    train_dir(ab / "variants" / "full")
    abl = comparison([("none", 5, 120, 0.9), ("extend", 15, 118, 0.88), ("full", 15, 80, 0.9)])
    rows = [
        {
            "name": n,
            "description": n,
            "components": "✓ ✓ ✓",
            "window": abl["policies"][n]["window"],
            "metrics": abl["policies"][n]["overall"],
            "vs_baseline": abl["vs_baseline"].get(n, {}).get("overall"),
            "train_seconds": 60.0,
            **({"run_dir": "variants/full"} if n == "full" else {}),
        }
        for n in abl["policies"]
    ]
    (ab / "ablation.json").write_text(
        json.dumps(
            {
                "init": "base",
                "tasks": ["push-v3"],
                "mode": "sampled",
                "episodes_per_task": 12,
                "variants": rows,
                "timings_s": {"train": 60, "eval": 10},
                "machine": {"load_average_start": [1.0]},
            }
        )
    )
    write_suite({"modes": {"sampled": abl}, "robustness": {}}, ab / "eval")

    assert [detect_kind(d) for d in (demo, demo / "train", ev, ab)] == ["pipeline", "train", "eval", "ablation"]

    md = check_report(write_report([demo], demo / "report").parent, 4)
    for text in (
        "Headline: sampled mode",
        "deterministic mode",
        "Robustness (Table 10)",
        "Stage 1 window choice: **k = 15**",
        "clean expert T",
        "Targets",
        "Per task",
    ):
        assert text in md, text
    assert md.count("| **policytrim** |") == 2  # one row per mode

    assert main(["report", str(demo / "train"), str(ev), str(ab), "--out", str(tmp_path / "all")]) == 0
    md = check_report(tmp_path / "all", 6)
    assert "Training run:" in md and "Evaluation:" in md and "Ablation:" in md and "| full |" in md


def test_unknown_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "r")


def test_filmstrip_state_is_a_typical_pair_of_successes():
    from policytrim.eval.filmstrip import pick_frames, representative_state

    base = {
        "task": ["a"] * 5 + ["b"],
        "index": [0, 1, 2, 3, 4, 0],
        "success": [True, True, False, True, True, True],
        "steps": [100, 120, 200, 90, 150, 80],
    }
    new = {
        "task": ["a"] * 5 + ["b"],
        "index": [0, 1, 2, 3, 4, 0],
        "success": [True, True, True, False, True, True],
        "steps": [60, 110, 70, 200, 100, 80],
    }
    # pairs where both succeeded: index 1 (10 steps saved), 0 (40), 4 (50) -> the median is index 0
    assert representative_state({"b": base, "n": new}, "b", "n", "a") == 0
    assert representative_state({"b": base, "n": new}, "b", "n", "c") is None
    frames = [f"f{i}" for i in range(11)]
    assert [i for i, _ in pick_frames(frames, 3)] == [0, 5, 10]


def test_pareto_plot_of_a_perfect_policy_whose_interval_rounds_below_it(tmp_path):
    from policytrim.eval.plots import pareto_figure

    points = {
        "baseline": {"success_rate": 0.9, "success_ci95": [0.8, 0.95], "calls_per_success": 24.0},
        "trimmed": {"success_rate": 1.0, "success_ci95": [0.96, 1.0 - 1e-12], "calls_per_success": 5.0},
    }
    path = pareto_figure(points, tmp_path / "pareto.png", highlight=["trimmed"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_caption_says_whether_a_frontier_line_is_drawn(tmp_path):
    """A policy with the fewest calls and no policy with a higher SR is the whole frontier: no line
    is drawn and the caption says which policy it is; a trade-off is a line through the policies the
    caption names."""
    from policytrim.eval.plots import pareto_frontier

    cases = {
        "dominated": (
            [("baseline", 5, 120, 0.5), ("policy", 15, 80, 1.0)],
            ["policy"],
            "policy alone is the Pareto frontier (the fewest calls, and no policy has a higher success "
            "rate), so no frontier line is drawn",
        ),
        "traded": (
            [("baseline", 5, 120, 1.0), ("policy", 15, 80, 0.5)],
            ["policy", "baseline"],
            "the line is the Pareto frontier (policy, baseline)",
        ),
    }
    for name, (contenders, frontier, caption) in cases.items():
        s = suite(contenders, perturb=False)
        assert pareto_frontier({n: m["overall"] for n, m in s["modes"]["sampled"]["policies"].items()}) == frontier
        write_suite(s, tmp_path / name)
        md = (write_report([tmp_path / name], tmp_path / name / "report").parent / "report.md").read_text()
        assert caption in md, name
        assert ("no frontier line" if len(frontier) > 1 else "line is the Pareto frontier") not in md, name
    assert (
        pareto_frontier({"never": {"success_rate": 0.0, "success_ci95": [0.0, 0.1], "calls_per_success": None}}) == []
    )


def test_measured_stacking_table_beside_the_modelled_wall_clock(tmp_path):
    """`report --stacking FILE` adds the committed benchmarks/deploy_timing.py table (real result file);
    a file that is not a stacking result is one clear error and no report is written."""
    from pathlib import Path

    stacking = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "stacking.json"
    rows = json.loads(stacking.read_text())["rows"]
    ev = tmp_path / "ev"
    write_suite(suite(PIPELINE[:2]), ev)
    assert main(["report", str(ev), "--out", str(tmp_path / "r"), "--stacking", str(stacking)]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Measured stacking: fewer calls x cheaper calls (Table 7)" in md
    for r in rows:
        assert f"| {r['name']} | {r['mode']} | {r['window']} |" in md, r["name"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"name": "x"}]}))
    with pytest.raises(InputError, match="not a stacking result"):
        write_report([ev], tmp_path / "r2", stacking=bad)
    assert not (tmp_path / "r2" / "report.md").exists()


def test_filmstrip_records_every_frame_of_a_real_rollout(tiny_baseline):
    """The recording env sits on Meta-World's image env, which can skip rendering mid-chunk: the
    recorder must get every frame anyway (T + 1 images for T steps), through the same rollout engine."""
    from policytrim.eval.filmstrip import record_rollouts
    from policytrim.policies import load_policy

    policy = load_policy(tiny_baseline)
    cfg = tiny_config(env={"horizon": 30}).env
    runs = record_rollouts({"bc": (policy, 4)}, cfg, "drawer-close-v3", 0, "sampled", seed=0, size=32)
    run = runs["bc"]
    assert run["steps"] > 0
    assert len(run["frames"]) == run["steps"] + 1
    assert run["frames"][0].shape == (32, 32, 3)
    assert not all((f == run["frames"][0]).all() for f in run["frames"][1:])


def test_stage_decisions_say_what_ran_what_was_compared_and_how_it_stood(tmp_path):
    """A Stage 1 that stopped at epoch 3 of 10 planned is reported as such with its reason; the
    window choice shows the reference it compared against (the entering policy's SR at the shortest
    window) and words a window 13 points above it as above, not 'within 2 points'; the clip
    diagnostics are reported; the curves place Stage 2 right after the 3 epochs Stage 1 ran."""
    from policytrim.eval.plots import stage_offsets

    run = tmp_path / "run"
    run.mkdir()
    meta = {"stage": "both", "stages": ["extend", "trim"], "init": "base", "status": "complete"}
    (run / "run.json").write_text(json.dumps(meta))
    rollouts = {"success_rate": 0.8, "mean_steps": 100.0, "mean_window": 10.0, "reward": 1.2}
    records = [{"stage": "extend", "epoch": 0, "global_epoch": 0, "val_success_rate": 0.8}]
    records += [
        {
            "stage": "extend",
            "epoch": e,
            "global_epoch": e,
            **rollouts,
            "approx_kl": 0.1 * e,
            "approx_kl_max": 0.2 * e,
            "clip_frac_max": 0.1 * e,
            "clip_hard": e == 3,
        }
        for e in (1, 2, 3)
    ]
    diagnostics = {"approx_kl": 0.01, "approx_kl_max": 0.02, "clip_frac_max": 0.05, "clip_hard": False}
    records += [{"stage": "trim", "epoch": e, "global_epoch": 10 + e, **rollouts, **diagnostics} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    m = lambda sr: {"success_rate": sr, "mean_steps": 100.0, "calls_per_success": 10.0}  # noqa: E731
    reason = "reliable: validation SR 0.950 at window 15 is 13.0 points above the entering policy's 0.820 at window 5"
    choice = {
        "window": 15,
        "tolerance_points": 2.0,
        "reference": "baseline",
        "reference_success_rate": 0.82,
        "episodes_per_task": 10,
        "mode": "sampled",
        "per_window": {"15": m(0.95)},
    }
    (run / "extend").mkdir()
    extend = {
        "stage": "extend",
        "epochs": 10,
        "epochs_run": 3,
        "stop_reason": reason,
        "best": {"epoch": 3, **m(0.95)},
        "start": m(0.8),
        "eval_window": 15,
        "window_choice": choice,
    }
    (run / "extend" / "result.json").write_text(json.dumps(extend))
    (run / "trim").mkdir()
    trim = {
        "stage": "trim",
        "epochs": 2,
        "epochs_run": 2,
        "stop_reason": None,
        "best": {"epoch": 2, **m(0.9)},
        "start": m(0.95),
        "eval_window": 15,
        "window": 15,
        "budget": {"budget": 120, "source": "given"},
    }
    (run / "trim" / "result.json").write_text(json.dumps(trim))
    md = (write_report([run], tmp_path / "out").parent / "report.md").read_text()
    assert "Stage 1: 3 of 10 planned epochs run, stopped early (reliable:" in md and "Stage 1: 10 epochs" not in md
    assert "Stage 2: 2 epochs; best checkpoint at epoch 2" in md
    assert "| reference: baseline | 0.820 |" in md  # the reference the choice compared against
    assert "its SR 0.950 is 13.0 points above the reference" in md
    assert "| 15 | 0.950 | 100.0 | 10.0 | 13.0 points above |" in md
    assert "within 2 points of the shortest" not in md
    assert "the clip was hit hard (a step clipped more than 30% of its chunks) in 1 of 3 epochs (3)" in md
    assert "largest approximate KL of an update 0.6 (epoch 3)" in md
    assert stage_offsets(records) == {"extend": 0, "trim": 3}  # not 10, the epochs Stage 1 planned


def test_relation_in_points_says_above_within_or_below():
    from policytrim.eval.paired import relation_in_points

    assert relation_in_points(0.95, 0.82, 2.0) == "13.0 points above"
    assert relation_in_points(0.81, 0.82, 2.0) == "within 2 points of"
    assert relation_in_points(0.84, 0.82, 2.0) == "within 2 points of"
    assert relation_in_points(0.70, 0.82, 2.0) == "12.0 points below"
