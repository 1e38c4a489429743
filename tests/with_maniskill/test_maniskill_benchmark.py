"""`benchmarks/maniskill.py --size tiny` end to end on the real simulator: motion-planned demonstrations, BC,
Stage 1, Stage 2, the adapt stage (adaptor and policy) and both paired suites, then the same command
again (every phase done: nothing recomputed, the same result). Plumbing at a tiny size (3
demonstrations per task, one epoch per stage), not a result. Runs in .venv-maniskill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional_env import require_or_skip

require_or_skip(
    "sapien",
    "maniskill",
    reason="ManiSkill3 is not installed (these tests run in .venv-maniskill: bash scripts/run.sh test-maniskill)",
)
pytestmark = [pytest.mark.maniskill, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")])}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "maniskill.py"), "--size", "tiny"]
    cmd += ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_tiny_benchmark_runs_every_stage_and_resumes_without_recomputing(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "maniskill_tiny.json").read_text())
    assert result["seed"] == 0 and result["tasks"] == ["PickCube-v1", "PushCube-v1"]
    assert result["demonstrations"]["collected"] == {"PickCube-v1": 3, "PushCube-v1": 3}
    assert {"calls_speedup", "steps_reduction", "success_rate_drop", "success_rate_drop_ci95"} <= set(result)
    assert set(result["fixed_window"]) == {
        "calls_speedup",
        "steps_reduction",
        "success_rate_drop",
        "success_rate_drop_ci95",
    }
    adapt = result["adapt"]
    assert adapt["mode_row"] == "adapt_policy" and set(adapt["rows"]) == {"baseline", "policytrim", "adapt_policy"}
    assert "adapt.train_policy=true" in adapt["settings"]
    assert adapt["adapt"]["call_budget"] == 20 and adapt["adapt"]["time"]["epochs"] == 1
    for row in adapt["rows"].values():
        assert set(row["per_task"]) == {"PickCube-v1", "PushCube-v1"} and 0.0 <= row["success_rate"] <= 1.0
    assert {"collect", "pretrain", "train", "eval", "adapt", "adapt_eval", "total"} <= set(result["minutes"])
    assert "Suite 2 (after the adapt stage" in (tmp_path / "results" / "maniskill_tiny.md").read_text()

    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for phase in ("collect", "pretrain", "train", "eval", "adapt"):
        assert f"{phase}: done earlier" in again.stdout + again.stderr, phase
    redone = json.loads((tmp_path / "results" / "maniskill_tiny.json").read_text())
    assert redone["adapt"]["rows"] == adapt["rows"] and redone["fixed_window"] == result["fixed_window"]

    other = _run(tmp_path, "--seed", "1")  # the work directory ran with seed 0
    assert other.returncode == 2 and "ran with seed 0 (data 0, eval 0), not --seed 1" in other.stderr
