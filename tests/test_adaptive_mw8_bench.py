"""The pure parts of `benchmarks/adaptive_mw8.py` (the window adaptor's MW-8 benchmark): its pieces
and phases, continuing a finished run's Stage 2 (`mw8_seeds.extend_stage2`), the H = 15 row taken
from the committed s2x720 results, the executed-window histogram, the training time per stage and
the aggregate over seeds. Seconds; the benchmark itself is not run here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from policytrim.config import to_dict
from policytrim.train.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptive_mw8 as bench  # noqa: E402
from mw8_seeds import extend_stage2  # noqa: E402


def test_stage2_milestones_split_stage2_into_pieces_ending_at_its_total():
    assert bench.stage2_milestones(720, 240) == [240, 480, 720]
    assert bench.stage2_milestones(500, 240) == [240, 480, 500]
    assert bench.stage2_milestones(100, 240) == [100]
    assert bench.stage2_milestones(4, 2) == [2, 4]
    with pytest.raises(ValueError):
        bench.stage2_milestones(0, 240)


def test_pieces_run_every_phase_once_in_order():
    pieces = bench.plan_pieces([240, 480, 720])
    phases = [ph for p in pieces for ph in p.phases]
    assert phases == [
        "collect",
        "pretrain",
        "train_s2_240",
        "train_s2_480",
        "train_s2_720",
        "adapt_only",
        "adapt_policy",
        "eval",
    ]
    assert [p.name for p in pieces] == [
        "bc_stage1_stage2",
        "stage2_to_480",
        "stage2_to_720",
        "adapt_only",
        "adapt_policy_eval",
    ]
    done = {"collect", "pretrain", "train_s2_240", "train_s2_480"}
    assert [p.name for p in bench.pending(pieces, done.__contains__)] == [
        "stage2_to_720",
        "adapt_only",
        "adapt_policy_eval",
    ]
    half = {"adapt_policy"} | set(phases[:6])  # eval missing: its piece is still pending
    assert [p.name for p in bench.pending(pieces, half.__contains__)] == ["adapt_policy_eval"]


def test_train_done_and_extend_stage2_continue_a_finished_run(tmp_path):
    cfg = tiny_config()
    cfg.stage2.epochs = 240
    run = RunDir.create(tmp_path / "train", cfg, {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    assert not bench.train_done(run.path, 240)  # Stage 2 under way
    (run.path / "summary.json").write_text("{}")
    (run.path / "trim").mkdir()
    (run.path / "trim" / "result.json").write_text("{}")
    (run.path / "final" / "policy").mkdir(parents=True)
    assert bench.train_done(run.path, 240) and not bench.train_done(run.path, 480)
    extend_stage2(run.path, 480, note="test")
    again = RunDir.open(run.path)  # the config hash still verifies
    assert again.cfg.stage2.epochs == 480 and again.meta["status"] == "running" and again.meta["note"] == "test"
    assert not (run.path / "summary.json").exists() and not (run.path / "trim" / "result.json").exists()
    assert not (run.path / "final").exists()
    assert bench.train_done(run.path, 240) and not bench.train_done(run.path, 480)
    assert not bench.train_done(tmp_path / "nothing", 240)


def test_full_size_settings_match_the_committed_h15_reference(tmp_path):
    """The H = 15 row is taken, not re-run: the full-size config must equal s2x720's but for H,
    Stage 1's windows, logging and adapt (a real check against the committed files)."""
    for seed in (0, 1, 2):
        source = ROOT / "benchmarks" / "results" / bench.FIXED_H15 / f"seed_{seed}.json"
        committed = json.loads(source.read_text())
        ours = to_dict(bench.seed_config(seed, [], False, tmp_path))
        row = bench.h15_row(committed, ours, source.name)
        assert row["available"], row.get("reason")
        assert row["calls_per_success"] == committed["policytrim"]["calls_per_success"]
        assert row["vs_baseline"]["calls_speedup"] == committed["calls_speedup"]
        assert row["baseline"]["success_rate"] == committed["baseline"]["success_rate"]
        assert ours["policy"]["chunk_size"] == 30 and committed["config"]["policy"]["chunk_size"] == 15
    tiny = to_dict(bench.seed_config(0, [], True, tmp_path))
    row = bench.h15_row(committed, tiny, "s")
    assert not row["available"] and "env.tasks" in row["reason"]
    other = to_dict(bench.seed_config(2, ["eval.episodes=40"], False, tmp_path))
    row = bench.h15_row(committed, other, "s")
    assert not row["available"] and "eval.episodes: 40 vs 50" in row["reason"]
    assert bench.h15_row(None, other, "missing.json") == {
        "available": False,
        "reason": "no committed result missing.json",
    }


def test_config_differences_ignore_free_keys_and_list_unrecorded_ones():
    theirs = {"a": {"x": 1, "y": 2}, "logging": {"out": "p"}, "gone": 3}
    ours = {"a": {"x": 1, "y": 5, "new": 0}, "logging": {"out": "q"}}
    differ, unrecorded = bench.config_differences(theirs, ours, ("logging.",))
    assert differ == ["a.y: 5 vs 2", "gone: absent here"]
    assert unrecorded == ["a.new"]


def test_window_histogram_from_the_trace_or_the_fixed_window():
    trace = {"task": ["t1", "t1", "t2", "t1"], "window": [30, 5, 10, 30], "episode": [0] * 4, "step": [0] * 4}
    assert bench.window_histogram({"window_trace": trace}, {}, 30) == {"t1": {"5": 1, "30": 2}, "t2": {"10": 1}}
    outcomes = {"task": ["t1", "t1", "t2"], "calls": [3, 4, 7]}
    assert bench.window_histogram({}, outcomes, 15) == {"t1": {"15": 7}, "t2": {"15": 7}}


def test_stage_time_sums_epochs_and_validations_of_one_stage():
    records = [
        {"stage": "trim", "epoch": 0, "val_success_rate": 1.0},  # the start validation: no epoch_s
        {"stage": "trim", "epoch": 1, "epoch_s": 2.0, "env_steps": 100},
        {"stage": "trim", "epoch": 2, "epoch_s": 3.0, "val_s": 5.0, "env_steps": 50},
        {"stage": "extend", "epoch": 1, "epoch_s": 7.0, "env_steps": 9},
    ]
    assert bench.stage_time(records, "trim") == {
        "epochs": 2,
        "seconds": 10.0,
        "seconds_per_epoch": 5.0,
        "env_steps": 150,
    }
    assert bench.stage_time(records, "adapt") == {"epochs": 0, "seconds": 0, "seconds_per_epoch": None, "env_steps": 0}


def _row(speedup: float, drop: float, reduction: float = 0.5) -> dict:
    vs = {"calls_speedup": speedup, "steps_reduction": reduction, "success_rate_drop": drop}
    return {"available": True, "success_rate": 0.9, "mean_steps": 50.0, "calls_per_success": 3.0, "window": 30} | {
        "vs_baseline": vs | {"success_rate_drop_ci95": [drop - 2, drop + 2], "paired_episodes": 400}
    }


def _vs_fixed(speedup: float, drop: float) -> dict:
    return {
        "calls_speedup": speedup,
        "steps_reduction": 0.1,
        "success_rate_drop": drop,
        "success_rate_drop_ci95": [0, 1],
    }


def _seed(only: tuple[float, float], joint: tuple[float, float]) -> dict:
    stage = {"epochs": 10, "seconds": 60.0, "seconds_per_epoch": 6.0, "env_steps": 1}
    adapt = stage | {"vs_stage2": {"seconds": 1.0, "seconds_per_epoch": 1.0}}
    return {
        "rows": {
            "baseline": {"available": True, "success_rate": 0.95, "mean_steps": 118.0, "calls_per_success": 24.0},
            "fixed_h15": {"available": False, "reason": "settings differ"},
            "fixed_h30": _row(6.5, 0.0),
            "adapt_only": _row(*only) | {"vs_fixed_h30": _vs_fixed(only[0] / 6.5, only[1])},
            "adapt_policy": _row(*joint) | {"vs_fixed_h30": _vs_fixed(joint[0] / 6.5, joint[1])},
        },
        "training": {"stage1": stage, "stage2": stage, "adapt_only": adapt, "adapt_policy": adapt},
        "machine": {"cpu": "test cpu"},
    }


def test_best_mode_prefers_the_fastest_mode_that_holds_success():
    assert bench.best_mode({"a": {"calls_speedup": 9.0, "success_rate_drop": 0.5}, "b": None}) == "a"
    holds = {
        "a": {"calls_speedup": 7.0, "success_rate_drop": 0.5},
        "b": {"calls_speedup": 9.0, "success_rate_drop": 1.5},
    }
    assert bench.best_mode(holds) == "a"
    neither = {
        "a": {"calls_speedup": 7.0, "success_rate_drop": 3.0},
        "b": {"calls_speedup": 9.0, "success_rate_drop": 1.5},
    }
    assert bench.best_mode(neither) == "b"
    assert bench.best_mode({"a": None}) is None


def test_aggregate_means_the_best_mode_and_decides_the_goal_at_three_seeds():
    two = {"0": _seed((8.0, 0.0), (9.0, 2.0)), "1": _seed((9.0, 1.0), (10.0, 2.0))}
    agg = bench.aggregate(two)
    assert agg["best_mode"] == "adapt_only"  # adapt_policy is faster but loses 2 points
    assert agg["calls_speedup"] == pytest.approx(8.5) and agg["success_rate_drop"] == pytest.approx(0.5)
    assert agg["partial"] is True and agg["goal"]["met"] is None
    assert agg["per_seed"]["1"]["calls_speedup"] == 9.0
    fixed = agg["adaptor_vs_fixed_h30"]["adapt_only"]
    assert fixed == {"calls_speedup": pytest.approx((8.0 + 9.0) / 2 / 6.5), "success_rate_drop": 0.5}
    assert agg["adapt_time_vs_stage2"] == {"adapt_only": 1.0, "adapt_policy": 1.0}
    assert agg["rows"]["fixed_h15"] is None and agg["rows"]["fixed_h30"]["calls_speedup"] == 6.5
    assert agg["seeds"]["0"]["fixed_h15"] == {"available": False, "reason": "settings differ"}
    assert agg["machine"] == ["test cpu"]
    three = two | {"2": _seed((7.0, 0.5), (9.0, 2.0))}
    agg = bench.aggregate(three)
    assert agg["partial"] is False and agg["calls_speedup"] == pytest.approx(8.0) and agg["goal"]["met"] is True
    slow = two | {"2": _seed((6.0, 0.5), (9.0, 2.0))}
    assert bench.aggregate(slow)["goal"]["met"] is False  # 7.67x < 8x
    text = bench.markdown(agg)
    assert "**met**" in text and "not available: settings differ" in text
    with pytest.raises(ValueError):
        bench.aggregate({})


def _metrics(outcomes: dict, window: int, trace: dict | None = None) -> dict:
    """A metrics block per task and overall from per-episode outcomes (the fields the record reads)."""

    def block(idx: list[int]) -> dict:
        ok = [i for i in idx if outcomes["success"][i]]
        mean = lambda key: sum(outcomes[key][i] for i in ok) / len(ok) if ok else None  # noqa: E731
        return {
            "success_rate": len(ok) / len(idx),
            "success_ci95": [0.0, 1.0],
            "mean_steps": mean("steps"),
            "calls_per_success": mean("calls"),
            "window": window,
        }

    tasks = list(dict.fromkeys(outcomes["task"]))
    out = {
        "overall": block(list(range(len(outcomes["task"])))),
        "tasks": {t: block([i for i, x in enumerate(outcomes["task"]) if x == t]) for t in tasks},
    }
    if trace is not None:
        out.update(adaptive_window=True, window_trace=trace)
        out["overall"]["mean_executed_window"] = sum(trace["window"]) / len(trace["window"])
    return out


def test_seed_result_books_every_row_from_the_files_a_seed_wrote(tmp_path):
    """A seed's record from a synthetic work directory: the rows against the baseline (the suite's
    paired numbers), the adaptor rows against fixed_h30 (paired here), against the H = 15 BC, the
    executed windows, the adaptor's windows and the training time per stage."""
    from policytrim.eval.compare import against_baseline

    def episodes(success, steps, calls):
        return {"task": ["a", "a", "b", "b"], "index": [0, 1, 0, 1], "success": success, "steps": steps, "calls": calls}

    outcomes = {
        "baseline": episodes([True, True, True, False], [100, 120, 110, 200], [20, 24, 22, 40]),
        "fixed_h30": episodes([True, True, True, True], [60, 60, 90, 90], [2, 2, 3, 3]),
        "adapt_only": episodes([True, True, True, True], [60, 60, 80, 80], [1, 1, 2, 2]),
        "adapt_policy": episodes([True, False, True, True], [50, 200, 70, 70], [1, 7, 2, 2]),
    }
    windows = {"baseline": 5, "fixed_h30": 30, "adapt_only": 30, "adapt_policy": 30}
    trace = {"task": ["a", "a", "b", "b", "b", "b"], "window": [30, 30, 20, 30, 20, 30]}
    trace |= {"episode": [0] * 6, "step": [0] * 6}
    policies = {n: _metrics(o, windows[n], trace if n == "adapt_only" else None) for n, o in outcomes.items()}
    vs = {
        n: {
            "overall": against_baseline(
                policies["baseline"]["overall"], policies[n]["overall"], outcomes["baseline"], o
            )
        }
        for n, o in outcomes.items()
        if n != "baseline"
    }
    work = tmp_path / "seed_0"
    (work / "eval").mkdir(parents=True)
    suite = {"episodes_per_task": 2, "split": "test", "seed": 0, "windows": windows}
    suite["modes"] = {"sampled": {"baseline": "baseline", "policies": policies, "vs_baseline": vs}}
    (work / "eval" / "comparison.json").write_text(json.dumps(suite))
    (work / "eval" / "outcomes.json").write_text(json.dumps({"modes": {"sampled": outcomes}}))
    lines = {
        "train": [{"stage": "extend", "epoch": 1, "epoch_s": 4.0}]
        + [{"stage": "trim", "epoch": 1, "epoch_s": 10.0}] * 2,
        "adapt_only": [{"stage": "adapt", "epoch": 1, "epoch_s": 5.0}],
        "adapt_policy": [{"stage": "adapt", "epoch": 1, "epoch_s": 8.0, "val_s": 2.0}],
    }
    for name, records in lines.items():
        (work / name).mkdir(exist_ok=True)
        (work / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "adapt_only" / "adapt").mkdir()
    (work / "adapt_only" / "adapt" / "result.json").write_text(
        json.dumps({"adaptor_windows": [5, 10, 20, 30], "call_budget": {"budget": 4}})
    )
    (work / "adapt_policy" / "adapt").mkdir()
    (work / "adapt_policy" / "adapt" / "result.json").write_text(
        json.dumps({"adaptor_windows": None, "call_budget": {"budget": 4}})
    )
    phase = {"seconds": 1.0, "load_before": [0, 0, 0], "load_after": [0, 0, 0]}
    (work / "phases.json").write_text(json.dumps({"eval": phase}))
    (work / "benchmark_config.yaml").write_text("env:\n  tasks: [a, b]\n")
    h15 = {"available": True, "baseline": {"success_rate": 1.0, "calls_per_success": 24.0}}

    record = bench.seed_result(work, 0, h15, {"cpu": "test cpu"})

    rows = record["rows"]
    assert rows["fixed_h15"] is h15 and "vs_baseline" not in rows["baseline"]
    assert rows["fixed_h30"]["vs_baseline"]["calls_speedup"] == pytest.approx(22.0 / 2.5)
    assert rows["adapt_only"]["vs_fixed_h30"]["calls_speedup"] == pytest.approx(2.5 / 1.5)
    assert rows["adapt_only"]["vs_fixed_h30"]["success_rate_drop"] == 0.0
    assert rows["adapt_policy"]["vs_fixed_h30"]["success_rate_drop"] == pytest.approx(25.0)
    assert rows["adapt_only"]["vs_h15_baseline"]["calls_speedup"] == pytest.approx(24.0 / 1.5)
    assert rows["baseline"]["vs_h15_baseline"]["success_rate_drop"] == pytest.approx(25.0)
    assert rows["adapt_only"]["window_histogram"] == {"a": {"30": 2}, "b": {"20": 2, "30": 2}}
    assert rows["fixed_h30"]["window_histogram"] == {"a": {"30": 4}, "b": {"30": 6}}
    assert rows["adapt_only"]["adaptive"] and rows["adapt_only"]["mean_executed_window"] == pytest.approx(160 / 6)
    assert rows["adapt_only"]["adaptor_windows"] == [5, 10, 20, 30] and rows["adapt_policy"]["adaptor_windows"] is None
    assert rows["adapt_only"]["call_budget"] == 4
    training = record["training"]
    assert training["stage2"]["seconds"] == 20.0 and training["stage1"]["epochs"] == 1
    assert training["adapt_only"]["vs_stage2"] == {"seconds": 0.25, "seconds_per_epoch": 0.5}
    assert training["adapt_policy"]["vs_stage2"]["seconds_per_epoch"] == 1.0
    assert record["tasks"] == ["a", "b"] and record["machine"] == {"cpu": "test cpu"} and record["mode"] == "sampled"


def test_adapt_settings_may_change_until_an_adapt_phase_started(tmp_path, capsys):
    path = tmp_path / "seed_0" / "benchmark_config.yaml"
    first = tiny_config()
    assert bench.frozen_config(path, first) == first
    changed = tiny_config()
    changed.adapt.call_coef = 0.3
    assert bench.frozen_config(path, changed, adapt_started=False).adapt.call_coef == 0.3
    assert "call_coef: 0.3" in path.read_text()  # the seed now runs with the new adapt settings
    with pytest.raises(SystemExit) as exc:  # once the adapt stage ran, they are fixed too
        bench.frozen_config(path, first, adapt_started=True)
    assert exc.value.code == 2 and "adapt.call_coef" in capsys.readouterr().err
    other = tiny_config()
    other.adapt.call_coef = 0.3
    other.stage2.epochs = 7
    with pytest.raises(SystemExit):  # anything outside adapt.* never changes
        bench.frozen_config(path, other, adapt_started=False)
