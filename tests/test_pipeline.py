"""The demo pipeline end to end at a tiny size on real Meta-World, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config
from policytrim.config import to_dict
from policytrim.pipeline import SUMMARY_KEYS


@pytest.mark.slow
def test_demo_command_writes_summary_and_report(tmp_path):
    stage = dict(epochs=1, eval_every=1, val_episodes=3, checkpoint_every=1)
    cfg = tiny_config(stage1=stage, stage2=stage, eval=dict(episodes=4))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", "demo", "--config", str(config), "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
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
    assert (out / "report" / "report.html").is_file()
    # running again without --overwrite refuses and keeps the results
    again = subprocess.run([sys.executable, "-m", "policytrim.cli", "demo", "--config", str(config), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary
