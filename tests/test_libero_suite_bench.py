"""The parts of `benchmarks/libero_suite.py` (PolicyTrim per LIBERO suite) that run without LIBERO: its
settings validate for every suite, a piece stopped at an epoch boundary resumes to the run an
uninterrupted one gives (on Meta-World, tiny), the training-time summary and the targets. The
benchmark itself is not run here (tests/test_libero_pipeline.py runs the same commands on LIBERO)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from policytrim.config import RunConfig, from_dict, load_config, preset_path, to_dict
from policytrim.io import read_jsonl
from policytrim.train.grpo import TrainerSeams, train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import libero_suite as bench  # noqa: E402
from mw8 import merge  # noqa: E402


@pytest.mark.parametrize("suite", bench.SUITES)
@pytest.mark.parametrize("size", ["full", "tiny"])
def test_settings_validate_for_every_suite_with_the_papers_windows(suite, size):
    data = merge(to_dict(load_config(preset_path("demo"))), bench.settings(suite, size))
    cfg = from_dict(RunConfig, data)  # validated when built: task names, windows, split sizes
    assert (cfg.policy.chunk_size, cfg.policy.default_window) == (15, 5)
    assert list(cfg.stage1.windows) == ([10, 15] if suite == "libero_10" else [5, 10, 15])
    assert cfg.env.suite == "libero" and not cfg.env.image and cfg.env.libero_state == "objects"
    assert cfg.eval.episodes <= 10 and cfg.stage1.val_episodes <= 10 and cfg.stage2.val_episodes <= 10
    if size == "full":
        assert cfg.env.horizon == bench.HORIZON[suite] and cfg.stage1.checkpoint_every == 1
        assert cfg.stage2.checkpoint_every == 1 and cfg.rollout.num_workers == 2


def _outcomes(records):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]


@pytest.mark.slow
def test_a_piece_stopped_at_an_epoch_boundary_resumes_to_the_uninterrupted_run(tiny_baseline, tmp_path):
    stage = dict(epochs=3, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3)
    cfg = tiny_config(stage1=stage, stage2=stage)
    whole = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, out=str(tmp_path / "whole")))
    train(whole, "extend", str(tiny_baseline))

    records: list[dict] = []
    started: dict[str, float] = {}
    seams = TrainerSeams(
        engine_factory=bench.deadline_engine(lambda: len(records) >= 2, started), on_record=records.append
    )
    piece = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, out=str(tmp_path / "piece")))
    with pytest.raises(bench.PieceOver):  # the start validation and epoch 1 logged, then time is up
        train(piece, "extend", str(tiny_baseline), seams=seams)
    run = tmp_path / "piece"
    assert "train" in started and [r["epoch"] for r in records] == [0, 1]
    assert (run / "extend" / "epoch_000001").is_dir() and not (run / "summary.json").exists()
    assert not (run / "extend" / "epoch_000002").exists()  # epoch 2 never started: nothing to lose

    train(cfg, resume=str(run))
    assert (run / "summary.json").is_file()
    assert _outcomes(read_jsonl(run / "metrics.jsonl")) == _outcomes(read_jsonl(tmp_path / "whole" / "metrics.jsonl"))


def test_epoch_time_sums_epochs_and_validations_per_stage():
    parts = dict(rollout_s=8.0, rollout_policy_s=1.0, update_s=1.0, rollout_reset_s=6.0, rollout_env_s=9.0)
    records = [
        {"stage": "extend", "epoch": 0, "val_success_rate": 0.5},  # the start validation: no epoch_s
        {"stage": "extend", "epoch": 1, "epoch_s": 10.0, "env_steps": 100, **parts},
        {"stage": "extend", "epoch": 2, "epoch_s": 20.0, "env_steps": 300, "val_s": 30.0, **parts},
        {"stage": "trim", "epoch": 1, "epoch_s": 6.0, "env_steps": 50},
    ]
    out = bench.epoch_time(records)
    ext = out["extend"]
    assert (ext["epochs"], ext["mean_epoch_s"], ext["mean_env_steps"], ext["validations"]) == (2, 15.0, 200.0, 1)
    assert ext["mean_val_s"] == 30.0 and ext["minutes"] == 1.0 and ext["mean_rollout_reset_s"] == 6.0
    assert out["trim"]["minutes"] == 0.1 and out["trim"]["mean_val_s"] is None
    assert "mean_rollout_env_s" not in out["trim"]  # a record without the parts (an older run)


def test_targets_per_suite():
    met = {"calls_speedup": 4.2, "success_rate_drop": 0.8}
    assert bench.targets("libero_object", met) == {"calls_speedup>=4": True, "success_rate_drop<=1": True}
    assert bench.targets("libero_object", {**met, "success_rate_drop": 1.5})["success_rate_drop<=1"] is False
    assert bench.targets("libero_goal", {"calls_speedup": 2.5, "success_rate_drop": 2.0}) == {
        "calls_speedup>=2.5": True,
        "success_rate_drop<=2": True,
    }
    assert not bench.targets("libero_10", {"calls_speedup": None, "success_rate_drop": 0.0})["calls_speedup>=2.5"]


def test_libero_pro_table_shows_scored_and_refused_scenes():
    """benchmarks/libero_pro.py's table: a scored scene gives both SRs, the paired interval and the
    calls speedup; a refused one (an instruction the policy cannot read) says why and is not scored."""
    import libero_pro

    comparison = {
        "policies": {
            name: {"overall": {"success_rate": sr, "mean_steps": t, "window": k, "calls_per_success": c}}
            for name, sr, t, k, c in (("baseline", 0.8, 190.0, 5, 40.0), ("policytrim", 0.75, 170.0, 10, 20.0))
        },
        "vs_baseline": {
            "policytrim": {
                "overall": {
                    "success_rate_drop": 5.0,
                    "success_rate_drop_ci95": [-1.0, 11.0],
                    "calls_speedup": 2.0,
                    "steps_reduction": 0.105,
                }
            }
        },
    }
    scored = libero_pro.comparison_row(comparison)
    assert scored["baseline"]["success_rate"] == 0.8 and scored["calls_speedup"] == 2.0
    result = {
        "suite": "libero_spatial",
        "windows": {"baseline": 5, "policytrim": 10},
        "episodes": 10,
        "mode": "sampled",
        "horizon": 280,
        "rows": {"swap": scored, "lan": {"refused": "instruction 'lift ...' has words this policy never saw (lift)"}},
        "described": {"swap": "objects' positions exchanged", "lan": "a paraphrased instruction"},
        "paper_table10": libero_pro.PAPER_TABLE10,
        "minutes": {"swap": 9.0, "lan": 0.2},
        "machine": {"cpu": "test", "cores": 2, "load_average_end": [1.0]},
    }
    text = libero_pro.markdown(result)
    assert "| swap | 0.80 -> 0.75 | +5.0 (-1.0 .. +11.0) | 190.0 -> 170.0 | 40.0 -> 20.0 | 2.00x |" in text
    assert "| lan | refused: instruction 'lift ...' has words this policy never saw (lift) |" in text
