"""The stage objects without a simulator: window assignment, Stage 2's window, outcomes' JSON."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.errors import InputError
from policytrim.policies.chunk import TinyVLA
from policytrim.train.stages import Stage1, Stage2, StageOutcome


def _policy(cfg) -> TinyVLA:
    return TinyVLA.from_config(cfg.policy, 39, 4, [INSTRUCTIONS["drawer-close-v3"]])


def test_stage1_windows_and_assignment():
    cfg = tiny_config()  # H = 8, k_1 = 4
    stage = Stage1(cfg, _policy(cfg))
    assert stage.windows == cfg.stage1_windows == (4, 6, 8) and stage.eval_window == 8
    assert stage.assign_windows(2, 4).tolist() == [[4, 6, 8, 4], [4, 6, 8, 4]]  # slot j: windows[j mod M]
    # k_1 comes from the config, not from a post-trained policy's own (chosen) window
    trained = _policy(cfg)
    trained.mark_trained("extend", 8)
    assert Stage1(cfg, trained).windows == (4, 6, 8)


def test_stage2_window_precedence_and_bounds():
    cfg = tiny_config()
    policy = _policy(cfg)
    chosen = StageOutcome("extend", 1, 8, 6, {}, {}, window_choice={"window": 6})
    assert Stage2.window_for(cfg, policy) == 4  # the policy's own (trained) window
    assert Stage2.window_for(cfg, policy, chosen) == 6  # Stage 1's choice
    cfg.stage2.window = 8
    assert Stage2.window_for(cfg, policy, chosen) == 8  # the user's
    stage = Stage2(cfg, 8, {"budget": 90, "source": "given"})
    assert stage.assign_windows(3, 2).tolist() == [[8, 8]] * 3 and stage.epoch_record() == {"budget": 90}
    stage.begin(policy)
    assert (policy.default_window, policy.trained_stage, policy.step_budget) == (8, "trim", 90.0)
    cfg.stage2.window = 0
    policy.max_window = 3  # a policy that may not execute the chosen window
    with pytest.raises(InputError, match=r"stage2.window must be in \[1, 3\]"):
        Stage2.window_for(cfg, policy, chosen)


def test_outcomes_round_trip_through_result_json():
    metrics = {"epoch": 2, "success_rate": 0.75, "calls_per_success": 12.0}
    extend = StageOutcome("extend", 3, 8, 6, metrics, metrics, window_choice={"window": 6, "per_window": {}})
    trim = StageOutcome("trim", 3, 6, 6, metrics, metrics, budget=90, budget_evidence={"budget": 90, "source": "given"})
    assert set(extend.to_json()) == {"stage", "epochs", "best", "start", "eval_window", "window_choice"}
    assert set(trim.to_json()) == {"stage", "epochs", "best", "start", "eval_window", "window", "budget"}
    for outcome in (extend, trim):
        assert StageOutcome.from_json(outcome.to_json()) == outcome
