"""The config handling of `benchmarks/adaptive_smolvla.py` (the window adaptor on a frozen SmolVLA):
the adapt run takes its source run's settings and Stage 2's rhythm, adaptor only; a work directory
started with other settings is refused without touching it. The benchmark itself needs LeRobot and a
trained SmolVLA and is not run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from policytrim.config import to_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptive_smolvla as bench  # noqa: E402


def source_run(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    (source / "train").mkdir(parents=True)
    cfg = tiny_config(stage2={"epochs": 60, "eval_every": 6, "val_episodes": 48, "checkpoint_every": 6})
    cfg.adapt.train_policy = True  # the source's own adapt settings must not leak into the adaptor-only run
    (source / "train" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return source


def test_the_adapt_run_is_adaptor_only_at_stage2s_rhythm_with_the_sources_other_settings(tmp_path):
    source, work = source_run(tmp_path), tmp_path / "work"
    cfg = bench.adapt_config(source, work, [])
    a = cfg.adapt
    assert (a.epochs, a.eval_every, a.val_episodes, a.checkpoint_every) == (60, 6, 48, 6)
    assert a.train_policy is False
    assert cfg.logging.out == str(work / "adapt_only")
    assert cfg.env.tasks == ("drawer-close-v3",) and cfg.policy.chunk_size == 8
    changed = bench.adapt_config(source, work, ["adapt.epochs=30", "eval.episodes=5"])
    assert (changed.adapt.epochs, changed.eval.episodes) == (30, 5)
    with pytest.raises(KeyError):
        bench.adapt_config(source, work, ["nosection.epochs=3"])


def test_a_work_dir_started_with_other_settings_is_refused_and_left_alone(tmp_path, capsys):
    source, work = source_run(tmp_path), tmp_path / "work"
    work.mkdir()
    path = work / "benchmark_config.yaml"
    first = bench.frozen_config(path, bench.adapt_config(source, work, []))
    written = path.read_text()
    assert bench.frozen_config(path, bench.adapt_config(source, work, [])) == first
    older = yaml.safe_load(written)
    del older["rollout"]["delay"]  # a file from before a config field existed: it ran at the default
    path.write_text(yaml.safe_dump(older, sort_keys=False))
    assert bench.frozen_config(path, bench.adapt_config(source, work, [])) == first
    path.write_text(written)
    with pytest.raises(SystemExit) as exc:
        bench.frozen_config(path, bench.adapt_config(source, work, ["adapt.epochs=30"]))
    assert exc.value.code == 2
    assert "other settings" in capsys.readouterr().err
    assert path.read_text() == written


def test_the_hand_written_rule_row_chooses_by_the_hand_to_object_distance():
    """rule_far: the trained window while the hand (state 0:3) is beyond the radius from the object
    (state 4:7), the long window within it; no log-prob of its own (it is not trained)."""
    import torch

    rule = bench.HandObjectRule(15, far=10, near=15, radius=0.15)
    assert rule.windows == (10, 15)
    state = torch.zeros(3, 39)
    state[0, 4:7] = torch.tensor([0.0, 0.2, 0.0])  # 20 cm away
    state[1, 4:7] = torch.tensor([0.1, 0.0, 0.0])  # 10 cm
    state[2, 0:3] = state[2, 4:7] = torch.tensor([0.3, 0.6, 0.02])  # at the object
    windows, logp = rule.sample(state, torch.zeros(3, 15, 4), "sampled")
    assert windows.tolist() == [10, 15, 15] and logp.tolist() == [0.0, 0.0, 0.0]


def test_the_reward_column_is_eq9_without_its_stability_term():
    """Budget 10, lambda_c 0.5: a success with 4 calls earns (1 + 0.5 * 0.6) / 1.5, one over budget
    (1 + 0) / 1.5, a failure 0; no budget, no column."""
    outcomes = {"success": [True, True, False], "calls": [4, 12, 3], "steps": [40, 100, 200]}
    expected = ((1 + 0.5 * 0.6) / 1.5 + 1 / 1.5 + 0.0) / 3
    assert bench.reward_of(outcomes, 10, 0.5) == pytest.approx(expected, rel=1e-6)
    assert bench.reward_of(outcomes, None, 0.5) is None
