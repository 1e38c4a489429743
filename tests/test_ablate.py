"""`policytrim ablate`: variants map onto the trainer's config with everything else equal; a tiny
grid end to end on real Meta-World (shared Stage 1, one paired table, reuse of finished variants)."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config
from policytrim.cli import main
from policytrim.errors import InputError
from policytrim.experiments.ablate import parse_variant, plan, run_ablation, variant_config


def test_variants_map_onto_the_trainer(tmp_path):
    cfg = tiny_config()
    assert parse_variant("none").stage is None
    assert parse_variant("extend").stage == "extend"
    nostab = variant_config(cfg, parse_variant("trim_no_stability"), tmp_path)
    assert nostab.stage2.stability_coef == 0.0 and nostab.stage2.window == 0
    assert variant_config(cfg, parse_variant("trim"), tmp_path).stage2.stability_coef == cfg.stage2.stability_coef
    assert variant_config(cfg, parse_variant("fixed_k6"), tmp_path).stage1.windows == (6,)
    full = variant_config(cfg, parse_variant("full"), tmp_path, stage1_window=8)
    assert full.stage2.window == 8 and parse_variant("full").after_stage1
    g = variant_config(cfg, parse_variant("group_size_8"), tmp_path, 8)
    assert g.rollout.group_size * g.rollout.groups_per_epoch == cfg.rollout.group_size * cfg.rollout.groups_per_epoch
    b = variant_config(cfg, parse_variant("budget_1.1"), tmp_path, 8)
    s = variant_config(cfg, parse_variant("stability_0.05"), tmp_path, 8)
    assert b.stage2.budget_multiplier == 1.1 and s.stage2.stability_coef == 0.05
    # everything else equal
    assert to_plain(b, "stage2.budget_multiplier") == to_plain(full, "stage2.budget_multiplier")
    assert [v.name for v in plan(["budget_1.1", "none"])] == ["none", "extend", "budget_1.1"]
    with pytest.raises(InputError, match="unknown ablation variant"):
        parse_variant("bogus")


def to_plain(cfg, drop):
    from policytrim.config import to_dict

    data = to_dict(cfg)
    section, key = drop.split(".")
    data[section].pop(key)
    data["logging"].pop("out")
    return data


@pytest.mark.slow
def test_tiny_grid_end_to_end(tiny_baseline, tmp_path):
    stage = dict(epochs=1, eval_every=1, val_episodes=2, checkpoint_every=1)
    cfg = tiny_config(stage1=stage, stage2=stage, eval=dict(episodes=2))
    out = tmp_path / "abl"
    result = run_ablation(cfg, tiny_baseline, ["none", "trim_no_stability", "full"], out)
    names = [v["name"] for v in result["variants"]]
    assert names[:2] == ["none", "none@k=5"] and {"extend", "trim_no_stability", "full"} <= set(names)
    rows = {v["name"]: v for v in result["variants"]}
    assert rows["full"]["init"].endswith("variants/extend/final/policy")  # Stage 1 shared
    assert rows["full"]["window"] == rows["extend"]["window"] == rows["extend"]["window_choice"]["window"]
    assert rows["trim_no_stability"]["window"] == 4 and rows["none"]["vs_baseline"] is None
    for name in ("extend", "trim_no_stability", "full"):
        assert rows[name]["metrics"]["episodes"] == 2 and rows[name]["vs_baseline"]["paired_episodes"] == 2
    assert "| full |" in (out / "ablation.md").read_text()
    saved = json.loads((out / "ablation.json").read_text())
    assert [v["name"] for v in saved["variants"]] == names
    # a second call reuses finished variants (no retraining) and the CLI writes the report
    mtime = (out / "variants" / "full" / "summary.json").stat().st_mtime
    args = [
        "ablate",
        "--init",
        str(tiny_baseline),
        "--variants",
        "none",
        "full",
        "--out",
        str(out),
        "--tasks",
        "drawer-close-v3",
        "--env.horizon",
        "120",
        "--policy.chunk-size",
        "8",
        "--policy.default-window",
        "4",
        "--rollout.num-workers",
        "0",
        "--rollout.group-size",
        "4",
        "--rollout.groups-per-epoch",
        "2",
        "--eval.episodes",
        "2",
        "--logging.no-progress",
        "--logging.no-tensorboard",
    ]
    assert main(args) == 0
    assert (out / "variants" / "full" / "summary.json").stat().st_mtime == mtime
    assert (out / "report" / "report.html").is_file()
