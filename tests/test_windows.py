"""The run's window plan (`policytrim.windows`): one resolver of "0 / unset", one bound check, every
window a run executes decided once from the loaded policy and the config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import tiny_config
from policytrim.errors import InputError
from policytrim.windows import WindowPlan, check_window, default_windows, resolve, resolve_window


def policy(chunk_size=8, default_window=4, max_window=None):
    return SimpleNamespace(
        chunk_size=chunk_size,
        default_window=default_window,
        max_window=chunk_size if max_window is None else max_window,
    )


def test_default_windows_follow_spec():
    assert default_windows(5, 15) == (5, 10, 15)
    assert default_windows(5, 10) == (5, 8, 10)
    assert default_windows(10, 10) == (10,)


def test_the_one_resolver_and_bound_check():
    assert resolve(0, 4, 8) == resolve(None, 4, 8) == 4 and resolve(6, 4, 8) == 6
    with pytest.raises(
        InputError, match=r"--window must be in \[1, 8\] for this policy \(its chunk size is 8\), got 9"
    ):
        resolve(9, 4, 8, "--window", 8)
    with pytest.raises(InputError, match="closed loop with window 1"):
        check_window(2, 1)
    assert resolve_window(policy(max_window=6)) == 4
    with pytest.raises(InputError, match=r"window must be in \[1, 6\]"):
        resolve_window(policy(max_window=6), 8)


def test_plan_of_a_run_k1_from_the_config_stage2_precedence_and_bounds():
    cfg = tiny_config()  # H = 8, k_1 = 4
    trained = policy(default_window=8)  # a policy PolicyTrim already trained at k = 8
    plan = WindowPlan.for_run(trained, cfg)
    assert plan.stage1 == (4, 6, 8)  # k_1 is the behaviour-cloned window of the config
    assert (plan.policy_window, plan.bound, plan.evaluation(), plan.evaluation(5)) == (8, 8, 8, 5)
    assert plan.stage2() == 8 and plan.stage2(6) == 6  # no choice: the policy's own; else Stage 1's
    cfg.stage2.window = 5
    assert WindowPlan.for_run(trained, cfg).stage2(6) == 5  # the user's wins
    assert WindowPlan.for_run(trained, cfg, ("trim",)).stage1 == ()
    # a policy that may execute at most 6 of its 8 actions: Stage 1's 8 and a stage2.window of 7 are refused
    cfg.stage2.window = 7
    with pytest.raises(InputError, match=r"stage1.windows \(4, 6, 8\): the longest must be in \[1, 6\]"):
        WindowPlan.for_run(policy(max_window=6), cfg)
    with pytest.raises(InputError, match=r"stage2.window must be in \[1, 6\]"):
        WindowPlan.for_run(policy(max_window=6), cfg, ("trim",))
    assert WindowPlan.for_run(policy(max_window=6), tiny_config(), ("trim",)).stage2(6) == 6
    assert WindowPlan.for_run(trained, cfg).to_json() == {
        "chunk_size": 8,
        "bound": 8,
        "policy_window": 8,
        "stage1": [4, 6, 8],
        "stage2_given": 7,
    }
