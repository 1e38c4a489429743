"""The parts of `benchmarks/maniskill.py` that run without ManiSkill: its settings (with the adapt stage's)
validate, and the summary over seeds takes means, spreads and the issue's targets from the per-seed
files (fake per-seed results, written here). The benchmark itself is not run here: it needs
`.venv-maniskill` and about 45 minutes a seed (tests/test_maniskill.py runs the adapter and `collect`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from policytrim.config import RunConfig, from_dict, load_config, preset_path, to_dict
from policytrim.eval.paired import paired_difference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import maniskill as bench  # noqa: E402
import maniskill_adapt  # noqa: E402
from mw8 import assign, merge  # noqa: E402


@pytest.mark.parametrize("size", ["full", "tiny"])
def test_the_recipe_with_its_adapt_stage_validates(size):
    data = merge(to_dict(load_config(preset_path("demo"))), bench.SIZES[size])
    assign(data, ["seed=2", "data.seed=2", "eval.seed=2", *maniskill_adapt.ADAPT, *bench.ADAPT[size]])
    cfg = from_dict(RunConfig, data)  # validated when built
    assert cfg.adapt.train_policy and cfg.adapt.policy_lr == pytest.approx(1e-4)
    assert (cfg.seed, cfg.data.seed, cfg.eval.seed) == (2, 2, 2)
    assert cfg.adapt.epochs == (30 if size == "full" else 1)
    assert maniskill_adapt.mode_of(cfg) == "adapt_policy"


def _fake_seed(speedup: float, steps: float, drop: float, fixed_speedup: float = 3.1, only_base: int = 1) -> dict:
    """A per-seed result with just the fields the summary reads (a fake: no run behind it)."""
    return {
        "calls_speedup": speedup,
        "steps_reduction": steps,
        "success_rate_drop": drop,
        "success_rate_drop_ci95": [drop - 8.0, drop + 8.0],
        "fixed_window": {
            "calls_speedup": fixed_speedup,
            "steps_reduction": 0.08,
            "success_rate_drop": 2.5,
            "success_rate_drop_ci95": [-5.0, 10.0],
        },
        "summary": {"policytrim": {"window": 15}},
        "adapt": {
            "mode_row": "adapt_policy",
            # 20 paired episodes: both succeed in 8, only the baseline in ONLY_BASE, only the final policy in 1
            "paired_success": {
                "baseline": [True] * (8 + only_base) + [False] * (12 - only_base),
                "final": [True] * 8 + [False] * only_base + [True] + [False] * (11 - only_base),
            },
            "rows": {
                "baseline": {"success_rate": 0.45, "mean_steps": 150.0},
                "adapt_policy": {"success_rate": 0.45 - drop / 100, "mean_steps": 150.0 * (1 - steps)},
            },
        },
        "minutes": {"total": 42.0},
        "machine": {"cpu": "fake"},
    }


def _write(results: Path, seed: int, record: dict) -> None:
    folder = results / "maniskill_seeds"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed_{seed}.json").write_text(json.dumps(record))


def test_the_summary_over_seeds_judges_the_targets_only_on_three(tmp_path):
    _write(tmp_path, 0, _fake_seed(3.3, 0.16, -2.5))
    _write(tmp_path, 1, _fake_seed(2.7, 0.10, 1.5, fixed_speedup=2.9, only_base=3))
    two = bench.aggregate(tmp_path)
    assert two["finished_seeds"] == 2 and two["targets_met"] is None
    assert two["calls_speedup"] == pytest.approx(3.0) and two["success_rate_drop"] == pytest.approx(-0.5)
    assert two["fixed_window"]["calls_speedup"] == pytest.approx(3.0)
    assert two["spread"]["calls_speedup"]["min"] == 2.7 and two["spread"]["calls_speedup"]["max"] == 3.3
    # pooled: 40 pairs, both 16, only the baseline 1 + 3, only the final policy 2
    pooled = paired_difference([True] * 20 + [False] * 20, [True] * 16 + [False] * 4 + [True] * 2 + [False] * 18)
    assert two["paired_episodes_pooled"] == 40 == pooled["n"]
    assert two["success_rate_drop_ci95_pooled"] == [-100 * pooled["hi"], -100 * pooled["lo"]]
    md = (tmp_path / "maniskill.md").read_text()
    assert "fewer than 3 seeds finished" in md and "| 1 | 2.70x | 10% | +1.5 [-6.5, +9.5] | 0.450 -> 0.435 |" in md

    _write(tmp_path, 2, _fake_seed(3.3, 0.13, 1.0))
    three = bench.aggregate(tmp_path)
    assert three["targets_met"] == {"calls_speedup>=3": True, "success_rate_drop<=1": True}
    assert sorted(three["seeds"]) == ["0", "1", "2"]

    _write(tmp_path, 2, _fake_seed(3.3, 0.13, 5.0))  # mean drop (−2.5 + 1.5 + 5.0) / 3 = 1.33 points
    assert bench.aggregate(tmp_path)["targets_met"] == {"calls_speedup>=3": True, "success_rate_drop<=1": False}
    assert "success_rate_drop<=1 NOT met" in (tmp_path / "maniskill.md").read_text()
