"""Evaluation: Wilson interval and summaries against hand values; the eval CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from policytrim.config import EnvConfig
from policytrim.errors import InputError
from policytrim.eval.evaluate import evaluate_policy
from policytrim.eval.metrics import summarize, wilson_interval
from policytrim.policies.expert import ExpertPolicy
from policytrim.rollout.types import Trajectories

KEYS = {
    "episodes",
    "success_rate",
    "success_ci95",
    "mean_steps",
    "window",
    "calls_per_success",
    "wall_clock_s",
    "mode",
    "horizon",
    "seed",
}


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (1, 1, 0.2065, 1.0), (0, 0, 0.0, 1.0)],
)
def test_wilson_interval_textbook_values(k, n, lo, hi):
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def make_traj(task, success, steps, calls, window, horizon=200):
    n = len(task)
    return Trajectories(
        task=list(task),
        instruction=["x"] * n,
        seed=torch.zeros(n, dtype=torch.long),
        index=torch.arange(n),
        group=torch.arange(n),
        window=torch.tensor(window),
        success=torch.tensor(success),
        steps=torch.tensor(steps),
        calls=torch.tensor(calls),
        horizon=horizon,
        group_size=1,
    )


def test_summarize_hand_computed():
    traj = make_traj(
        ["a", "a", "a", "b"], [True, False, True, False], [40, 200, 60, 200], [8, 40, 12, 40], [5, 5, 5, 5]
    )
    out = summarize(traj, latency_s=0.1, control_period_s={"a": 0.0125, "b": 0.02})
    a = out["tasks"]["a"]
    assert a["episodes"] == 3 and a["success_rate"] == pytest.approx(2 / 3)
    assert a["mean_steps"] == 50 and a["calls_per_success"] == 10 and a["window"] == 5
    # wall clock per successful episode: C x latency + T x control period, averaged
    assert a["wall_clock_s"] == pytest.approx(((8 * 0.1 + 40 * 0.0125) + (12 * 0.1 + 60 * 0.0125)) / 2)
    assert a["success_ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    b = out["tasks"]["b"]
    assert (
        b["success_rate"] == 0
        and b["mean_steps"] is None
        and b["calls_per_success"] is None
        and b["wall_clock_s"] is None
    )
    overall = out["overall"]
    assert overall["episodes"] == 4 and overall["success_rate"] == 0.5 and overall["mean_steps"] == 50


def test_summarize_mixed_windows_listed():
    traj = make_traj(["a", "a"], [True, True], [10, 20], [10, 2], [1, 10])
    assert summarize(traj, 0.0, 0.01)["overall"]["window"] == [1, 10]


def test_evaluate_policy_in_process_and_expert_window():
    cfg = EnvConfig(tasks=("reach-v3",))
    m = evaluate_policy(ExpertPolicy(cfg.tasks), cfg, 2, 1, "sampled", 3, split="val", num_workers=0, latency_ms=80.0)
    assert m["split"] == "val" and m["state_seed"] == 1 and m["latency_source"] == "given" and m["latency_ms"] == 80.0
    o = m["overall"]
    assert KEYS <= set(o) and o["episodes"] == 2 and o["success_rate"] == 1.0 and o["seed"] == 3
    assert o["wall_clock_s"] == pytest.approx(o["calls_per_success"] * 0.08 + o["mean_steps"] * 0.0125)
    with pytest.raises(InputError, match="window 1"):
        evaluate_policy(ExpertPolicy(cfg.tasks), cfg, 2, 2, "sampled", 0, num_workers=0)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "policytrim.cli", "eval", *args], capture_output=True, text=True)


def test_eval_cli_writes_metrics_json(tmp_path):
    out = tmp_path / "ev"
    args = ["--policy", "expert", "--tasks", "reach-v3,push-v3", "--episodes", "2", "--window", "1", "--out", str(out)]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"reach-v3", "push-v3"}
    for entry in [*metrics["tasks"].values(), metrics["overall"]]:
        assert KEYS <= set(entry), KEYS - set(entry)
        assert entry["window"] == 1 and entry["horizon"] == 200 and entry["mode"] == "sampled" and entry["seed"] == 0
        assert len(entry["success_ci95"]) == 2
    assert (
        metrics["overall"]["episodes"] == 4 and metrics["split"] == "test" and metrics["latency_source"] == "measured"
    )
    assert "overall" in result.stdout and "reach-v3" in result.stdout

    again = cli(*args)  # refuses to overwrite: one line, exit 2, nothing written
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_eval_cli_bad_window_is_one_line_and_writes_nothing(tmp_path):
    result = cli(
        "--policy", "expert", "--tasks", "reach-v3", "--episodes", "1", "--window", "3", "--out", str(tmp_path / "x")
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "window 1" in result.stderr and not (tmp_path / "x").exists()
