"""The demo pipeline end to end at a tiny size on real Meta-World, through the CLI; the units its
summary names for every number (no simulator)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config
from policytrim.config import to_dict
from policytrim.eval.compare import Contender
from policytrim.eval.suite import write_suite
from policytrim.experiments.demo import SUMMARY_KEYS, SUMMARY_UNITS, comparison_summary
from policytrim.io import atomic_write_json
from test_report import PIPELINE, suite


def numbers_without_unit(node, path="", key="", parent=""):
    """Paths of the numbers in a JSON document whose field has no unit in SUMMARY_UNITS: neither
    the field itself (a sweep entry's ``vs_baseline_<field>`` counts as ``<field>``) nor its parent
    (``timings.collect_s`` takes ``timings``' unit)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in numbers_without_unit(v, f"{path}.{k}", str(k), key)]
    if isinstance(node, list):
        return [p for v in node for p in numbers_without_unit(v, path, key, parent)]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [] if key.removeprefix("vs_baseline_") in SUMMARY_UNITS or parent in SUMMARY_UNITS else [path]
    return []


def test_summary_and_comparison_name_the_unit_of_every_number(tmp_path):
    """The headline summary of a paired comparison in the real formats (synthetic outcomes, no
    simulator) and the suite's comparison.json carry "units" covering every number in them."""
    s = suite(PIPELINE)
    sweep = [Contender(name, None, window) for name, window, *_ in PIPELINE if name.startswith("baseline")]
    atomic_write_json(tmp_path / "summary.json", comparison_summary(s["modes"]["sampled"], sweep))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["units"] == SUMMARY_UNITS
    assert numbers_without_unit(summary) == []
    units = summary["units"]
    assert units["success_rate"].startswith("fraction") and units["steps_reduction"].startswith(
        "fraction of the baseline's mean steps"
    )
    assert units["success_rate_drop"].startswith("percentage points (baseline - policy)") and units[
        "calls_speedup"
    ].startswith("ratio")
    write_suite(s, tmp_path / "suite")
    comparison = json.loads((tmp_path / "suite" / "comparison.json").read_text())
    assert comparison["units"] == SUMMARY_UNITS and comparison["robustness"]  # perturbation parameters too
    assert numbers_without_unit(comparison) == []
    # the check is not vacuous: a number of a field without a unit is reported
    assert numbers_without_unit({**summary, "per_task": {"push-v3": {"mystery": 1.5}}}) == [".per_task.push-v3.mystery"]


@pytest.mark.slow
def test_demo_command_writes_summary_and_report(tmp_path):
    stage = dict(epochs=1, eval_every=1, val_episodes=3, checkpoint_every=1)
    cfg = tiny_config(stage1=stage, stage2=stage, eval=dict(episodes=4))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", "demo", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["units"] == SUMMARY_UNITS and numbers_without_unit(summary) == []
    for name in ("baseline", "stage1", "policytrim"):
        assert summary[name]["episodes"] == 4 and summary[name]["mode"] == "sampled"
    assert summary["baseline"]["window"] == 4 and summary["policytrim"]["window"] == summary["windows"]["policytrim"]
    lo, hi = summary["success_rate_drop_ci95"]
    assert lo <= summary["success_rate_drop"] <= hi
    assert set(summary["fixed_horizon_sweep"]) == {"4", "5"}  # the default window and 5..H in steps of 5 (H = 8)
    assert summary["peak_rss_mb"] > 0 and summary["timings"]["total_s"] > 0
    phases = summary["peak_rss_mb_per_phase"]
    assert set(phases) == {"collect", "pretrain", "train", "eval"} and max(phases.values()) <= summary["peak_rss_mb"]
    assert "PolicyTrim vs baseline" in result.stdout and str(out / "summary.json") in result.stdout
    collected = summary["demonstrations"]["collected"]  # what BC trained on, said on stderr too
    assert set(collected) == set(summary["tasks"]) and all(1 <= n <= cfg.data.episodes for n in collected.values())
    assert "demonstrations per task: " + ", ".join(f"{t} {n}" for t, n in collected.items()) in result.stderr
    assert (out / "report" / "report.html").is_file()
    # running again without --overwrite refuses and keeps the results
    again = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", "demo", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary
