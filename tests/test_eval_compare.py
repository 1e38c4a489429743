"""`policytrim eval` with baselines, both modes and a perturbation: one paired suite, JSON and
Markdown, on real Meta-World (tiny)."""

from __future__ import annotations

import json

import pytest

from policytrim.cli import main
from policytrim.experiments.demo import SUMMARY_UNITS
from test_demo import numbers_without_unit


@pytest.mark.slow
def test_eval_suite_cli(tiny_baseline, tmp_path):
    out = tmp_path / "ev"
    args = [
        "eval",
        "--policy",
        str(tiny_baseline),
        "--baseline",
        str(tiny_baseline),
        "--window",
        "8",
        "--sweep",
        "--temporal-ensembling",
        "--modes",
        "sampled",
        "deterministic",
        "--act-noise",
        "0.3",
        "--tasks",
        "drawer-close-v3",
        "--env.horizon",
        "120",
        "--episodes",
        "3",
        "--rollout.num-workers",
        "0",
        "--latency-ms",
        "80",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert set(comp["modes"]) == {"sampled", "deterministic"}
    assert comp["units"] == SUMMARY_UNITS and numbers_without_unit(comp) == []
    sampled = comp["modes"]["sampled"]
    assert list(sampled["policies"]) == ["baseline", "baseline@k=5", "temporal_ensembling", "policy"]
    outcomes = json.loads((out / "outcomes.json").read_text())["modes"]["sampled"]
    assert outcomes["baseline"]["index"] == outcomes["policy"]["index"]  # paired: the same states
    te = sampled["policies"]["temporal_ensembling"]["overall"]
    if te["calls_per_success"] is not None:
        assert te["calls_per_success"] == te["mean_steps"]  # one call per step
    assert outcomes["temporal_ensembling"]["calls"] == outcomes["temporal_ensembling"]["steps"]
    vs = sampled["vs_baseline"]["policy"]["overall"]
    assert {"success_rate_drop", "success_rate_drop_ci95", "calls_speedup", "speedup_paper", "steps_reduction"} <= set(
        vs
    )
    assert sampled["policies"]["policy"]["latency_ms"] == 80.0 and sampled["policies"]["policy"]["window"] == 8
    rob = comp["robustness"]["act_noise_0.3"]
    assert list(rob["policies"]) == ["baseline", "policy"] and rob["perturbation"]["act_noise"] == 0.3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["window"] == 8 and metrics["mode"] == "sampled"
    md = (out / "report.md").read_text()
    assert "Headline: sampled mode" in md and "deterministic mode" in md and "Robustness" in md
