"""The stage objects (window assignment, Stage 2's window, outcomes' JSON) and which stages a policy
family supports, with the trainer's refusal of the others."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tests.test_policies import make_policy

from conftest import tiny_config
from policytrim.cli import main
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.errors import InputError
from policytrim.policies.base import supported_stages
from policytrim.policies.expert import ExpertPolicy
from policytrim.policies.tinyvla import TinyVLA
from policytrim.train.decisions import BudgetCalibration, Validation, WindowChoice
from policytrim.train.stages import Stage1, Stage2, StageOutcome
from policytrim.windows import WindowPlan


def _policy(cfg) -> TinyVLA:
    return TinyVLA.from_config(cfg.policy, 39, 4, [INSTRUCTIONS["drawer-close-v3"]])


def _stage1(cfg, policy=None) -> Stage1:
    return Stage1(cfg, WindowPlan.for_run(policy or _policy(cfg), cfg))


def test_stage1_windows_and_assignment():
    cfg = tiny_config()  # H = 8, k_1 = 4
    stage = _stage1(cfg)
    assert stage.windows == (4, 6, 8) and stage.eval_window == 8
    assert stage.assign_windows(2, 4).tolist() == [[4, 6, 8, 4], [4, 6, 8, 4]]  # slot j: windows[j mod M]
    # k_1 comes from the config, not from a post-trained policy's own (chosen) window
    trained = _policy(cfg)
    trained.mark_trained("extend", 8)
    assert _stage1(cfg, trained).windows == (4, 6, 8)
    cfg.stage1.windows = (4, 8, 9)
    with pytest.raises(InputError, match=r"stage1.windows \(4, 8, 9\): the longest must be in \[1, 8\]"):
        _stage1(cfg)


def test_stage2_window_precedence_and_bounds():
    cfg = tiny_config()
    policy = _policy(cfg)
    plan = WindowPlan.for_run(policy, cfg)
    assert plan.stage2() == 4  # the policy's own (trained) window
    assert plan.stage2(6) == 6  # Stage 1's choice
    cfg.stage2.window = 8
    assert WindowPlan.for_run(policy, cfg).stage2(6) == 8  # the user's
    stage = Stage2(cfg, 8, BudgetCalibration(90, "given"))
    assert stage.assign_windows(3, 2).tolist() == [[8, 8]] * 3 and stage.epoch_record() == {"budget": 90}
    stage.begin(policy)
    assert (policy.default_window, policy.trained_stage, policy.step_budget) == (8, "trim", 90.0)
    cfg.stage2.window = 0
    policy.max_window = 3  # a policy that may not execute the chosen window
    with pytest.raises(InputError, match=r"stage2.window must be in \[1, 3\]"):
        WindowPlan.for_run(policy, cfg, ("trim",)).stage2(6)


def test_outcomes_round_trip_through_result_json():
    metrics = Validation({"success_rate": 0.75, "calls_per_success": 12.0}, epoch=2)
    choice = WindowChoice(6, 2.0, "policy", 0.75, 4, "val", "sampled", {6: Validation({"success_rate": 0.75})})
    extend = StageOutcome("extend", 3, 8, 6, metrics, metrics, window_choice=choice)
    trim = StageOutcome("trim", 3, 6, 6, metrics, metrics, budget=90, budget_evidence=BudgetCalibration(90, "given"))
    common = {"stage", "epochs", "epochs_run", "stop_reason", "best", "start", "eval_window"}
    assert set(extend.to_json()) == common | {"window_choice"}
    assert set(trim.to_json()) == common | {"window", "budget"}
    assert extend.to_json()["epochs_run"] == 3 and extend.to_json()["stop_reason"] is None  # ran every epoch
    assert extend.to_json()["window_choice"]["per_window"] == {"6": {"success_rate": 0.75}}
    assert trim.to_json()["budget"] == {"budget": 90, "source": "given"}
    assert extend.to_json()["best"] == {"epoch": 2, "success_rate": 0.75, "calls_per_success": 12.0}
    given = BudgetCalibration(90, "given")
    stopped = StageOutcome(
        "trim", 30, 6, 6, metrics, metrics, budget=90, budget_evidence=given, epochs_run=20, stop_reason="patience: 2"
    )
    for outcome in (extend, trim, stopped):
        assert StageOutcome.from_json(outcome.to_json()).to_json() == outcome.to_json()
    assert StageOutcome.from_json(stopped.to_json()) == stopped
    assert StageOutcome.from_json(extend.to_json()) == dataclasses.replace(extend, epochs_run=3)


def test_stopping_rules():
    """Patience (both stages) and Stage 1's reliability rule, never before min_epochs."""
    cfg = tiny_config(
        stage1=dict(patience=2, min_epochs=10, stop_when_reliable=True, tolerance_points=2.0), stage2=dict(patience=3)
    )
    stage1 = _stage1(cfg)  # windows 4 6 8
    reference = Validation({"success_rate": 0.90})  # the entering policy at window 4
    val = lambda sr: Validation({"success_rate": sr})  # noqa: E731
    assert stage1.stop_reason(5, val(0.95), 0, reference) is None  # reliable, but before min_epochs
    assert stage1.stop_reason(10, val(0.87), 0, reference) is None  # 3 points below: not yet
    reason = stage1.stop_reason(10, val(0.881), 0, reference)
    assert reason.startswith("reliable:") and "window 8" in reason and "window 4" in reason
    assert "is within 2 points of the entering" in reason
    assert "is 5.0 points above the entering" in stage1.stop_reason(10, val(0.95), 0, reference)  # not "within"
    assert stage1.stop_reason(20, val(0.5), 2, reference).startswith("patience: 2")
    assert stage1.stop_reason(20, val(0.5), 1, reference) is None
    assert stage1.stop_reason(20, val(0.95), 0, None) is None  # no reference: the rule is off
    cfg.stage1.stop_when_reliable = False
    assert _stage1(cfg).reference(_policy(cfg), engine=None) is None  # nothing measured when off
    stage2 = Stage2(cfg, 8, BudgetCalibration(90, "given"))
    assert stage2.stop_reason(1, val(1.0), 2, None) is None and stage2.stop_reason(1, val(1.0), 3, None).startswith(
        "patience: 3"
    )
    cfg.stage2.patience = 0
    assert stage2.stop_reason(100, val(0.0), 99, None) is None  # 0: never


TINY = [
    "--env.tasks",
    "reach-v3",
    "--env.horizon",
    "12",
    "--rollout.num-workers",
    "0",
    "--rollout.group-size",
    "2",
    "--rollout.groups-per-epoch",
    "1",
    "--stage2.epochs",
    "1",
    "--stage2.val-episodes",
    "1",
    "--stage2.budget",
    "12",
    "--logging.no-progress",
    "--logging.no-tensorboard",
]


def test_stage_1_needs_a_chunk_longer_than_the_window():
    assert make_policy("token_ar", chunk_size=6, default_window=2).supported_stages == ("extend", "trim")
    assert make_policy("token_ar", chunk_size=2, default_window=2).supported_stages == ("trim",)  # OpenVLA-style
    assert make_policy("gaussian", chunk_size=3, default_window=3).supported_stages == ("trim",)
    assert supported_stages(ExpertPolicy()) == ("trim",)


def policy_flags(spec):
    return [
        "--policy.head",
        spec["head"],
        "--policy.chunk-size",
        str(spec["chunk_size"]),
        "--policy.default-window",
        str(spec["default_window"]),
        "--policy.hidden-dim",
        str(spec["hidden_dim"]),
        "--policy.num-layers",
        str(spec["num_layers"]),
        "--policy.token-dim",
        str(spec["token_dim"]),
        "--policy.token-layers",
        str(spec["token_layers"]),
    ]


@pytest.mark.parametrize("stage", ["extend", "both"])
def test_train_refuses_stage_1_for_an_exact_k_decoder_in_one_line_and_writes_nothing(tmp_path, capsys, stage):
    policy = make_policy("token_ar", chunk_size=2, default_window=2, token_dim=16, token_layers=1)
    policy.save_pretrained(tmp_path / "ar")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--init",
                str(tmp_path / "ar"),
                "--stage",
                stage,
                "--out",
                str(out),
                *policy_flags(policy.spec()),
                *TINY,
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot run Stage 1 (extend)" in err[0] and "--stage trim" in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_trim_runs_on_an_exact_k_autoregressive_decoder(tmp_path, capsys):
    """The Table 3 path: an autoregressive token policy with H = k runs Stage 2 on real Meta-World."""
    policy = make_policy("token_ar", chunk_size=2, default_window=2, token_dim=16, token_layers=1)
    spec = policy.spec()
    # a policy for reach-v3's 39-dim state and its instruction
    spec.update(
        state_dim=39,
        state_mean=[0.0] * 39,
        state_std=[1.0] * 39,
        instructions=[INSTRUCTIONS["reach-v3"]],
        vocabulary=None,
    )
    spec.pop("vocabulary")
    TinyVLA.from_spec(spec).save_pretrained(tmp_path / "ar")
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--init", str(tmp_path / "ar"), "--stage", "trim", "--out", str(out), *policy_flags(spec), *TINY]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == ["trim"] and summary["window"] == 2
    assert "trim: best at epoch" in capsys.readouterr().out


def test_window_choice_against_the_policy_or_the_baseline(monkeypatch):
    """The same validations (a fake `validate`: SR 0.97 / 0.955 / 0.91 at k = 4 / 6 / 8) give k = 6
    against the policy's own SR at k_1 and the longest window against a baseline of 0.92; the
    baseline rule validates from the longest window down and stops at the first that holds; when none
    holds, the lower of the two references decides."""
    import policytrim.train.stages as stages

    cfg = tiny_config()  # windows 4 6 8, tolerance 2 points
    sr = {4: 0.97, 6: 0.955, 8: 0.91}
    calls = []

    def fake_validate(policy, cfg, window, engine, episodes, seed=None):
        calls.append(window)
        return Validation({"success_rate": sr[window], "mean_steps": 50.0, "calls_per_success": 10.0}, {})

    monkeypatch.setattr(stages, "validate", fake_validate)
    own, validations = stages.choose_window(None, cfg, (4, 6, 8), engine=None)
    assert own.window == 6 and own.reference == "policy"  # 0.955 >= 0.97 - 0.02 > 0.91
    assert sorted(calls) == [4, 6, 8] and sorted(validations) == [4, 6, 8]
    calls.clear()
    known = {8: Validation({"success_rate": 0.91, "mean_steps": 50.0, "calls_per_success": 8.0}, {})}
    sr_of = lambda value: Validation({"success_rate": value})  # noqa: E731
    vs_baseline, _ = stages.choose_window(None, cfg, (4, 6, 8), engine=None, known=known, baseline=sr_of(0.92))
    assert vs_baseline.window == 8 and calls == [] and list(vs_baseline.per_window) == [8]  # 0.91 >= 0.90: no more
    # none holds against a baseline of 0.99: the lower reference decides, the policy's own 0.97 at k = 4
    strict, _ = stages.choose_window(None, cfg, (4, 6, 8), engine=None, known=known, baseline=sr_of(0.99))
    assert (strict.window, strict.reference, strict.reference_success_rate) == (6, "policy", 0.97) and calls == [4, 6]
    sr[4] = 0.85  # Stage 1 left k = 4 below the baseline and below k = 8: the longest window holds against it
    calls.clear()
    worse, _ = stages.choose_window(None, cfg, (4, 6, 8), engine=None, known=known, baseline=sr_of(0.99))
    assert worse.window == 8 and worse.reference_success_rate == 0.85 and calls == [4]


def test_a_fresh_window_choice_validates_with_its_own_random_numbers(monkeypatch):
    """stage1.fresh_choice: the choice measures the longest window again, with a seed of its own (the
    best checkpoint's validation there is the highest of the stage's: reusing it favours long windows),
    the entering policy's reference included, and records that seed; without it the best checkpoint's
    validation is reused and every validation uses eval.seed. A fake `validate` gives the best of the
    stage's validations 0.95 at k = 8 and a fresh one 0.80 against 0.96 at k = 4."""
    import policytrim.train.stages as stages

    calls = []

    def fake_validate(policy, cfg, window, engine, episodes, seed=None):
        calls.append((window, seed))
        sr = {4: 0.96, 6: 0.95, 8: 0.80}[window]
        return Validation({"success_rate": sr, "mean_steps": 50.0, "calls_per_success": 10.0}, {"t:0": True})

    monkeypatch.setattr(stages, "validate", fake_validate)
    best = Validation({"success_rate": 0.95, "mean_steps": 40.0, "calls_per_success": 5.0}, {"t:0": True}, epoch=3)
    start = Validation({"success_rate": 0.90})
    outcomes = {}
    for fresh in (False, True):
        cfg = tiny_config()  # windows 4 6 8, tolerance 2 points
        cfg.stage1.fresh_choice = fresh
        seed = stages.choice_seed(cfg)
        assert (seed is None) == (not fresh) and seed != cfg.eval.seed
        stage = _stage1(cfg)
        calls.clear()
        outcome = stage.conclude(_policy(cfg), None, 5, best, start)
        outcomes[fresh] = outcome.window_choice
        assert sorted(calls) == [(4, seed), (6, seed)] + ([(8, seed)] if fresh else [])
        assert outcome.window_choice.seed == seed
        assert WindowChoice.from_json(json.loads(json.dumps(outcome.window_choice.to_json()))) == outcome.window_choice
    assert outcomes[False].window == 8 and outcomes[False].per_window[8].success_rate == 0.95  # reused: biased
    assert outcomes[True].window == 6 and outcomes[True].per_window[8].success_rate == 0.80  # 0.80 < 0.96 - 0.02
    cfg = tiny_config()
    cfg.stage1.fresh_choice, cfg.stage1.window_reference = True, "baseline"
    calls.clear()
    reference = _stage1(cfg).reference(_policy(cfg), None)
    assert calls == [(4, stages.choice_seed(cfg))] and reference.success_rate == 0.96


def test_an_adapt_stage_from_a_policy_without_successes_needs_the_users_call_budget(monkeypatch):
    """As Stage 2 with ``stage2.budget``: a given ``adapt.call_budget`` (no step term) starts the stage from
    a policy that succeeded nowhere (its start validation, SR 0, is what the best checkpoint keeps up
    with); calibrating one, or a step budget beside it, refuses with what to give. A fake `validate`."""
    import policytrim.train.stages as stages

    none = Validation(
        {"episodes": 4, "success_rate": 0.0, "mean_steps": None, "calls_per_success": None}, {"t:0": False}
    )
    monkeypatch.setattr(stages, "validate", lambda policy, cfg, window, engine, episodes, seed=None: none)
    cfg = tiny_config()
    policy = _policy(cfg)
    with pytest.raises(InputError, match=r"succeeded in none of 4 validation episodes.*give adapt.call_budget"):
        stages.calibrate_call_budget(policy, cfg, engine=None)
    cfg.adapt.call_budget = 20
    budget = stages.calibrate_call_budget(policy, cfg, engine=None)
    assert (budget.budget, budget.success_rate, budget.mean_calls, budget.start) == (20, 0.0, None, none)
    assert "given by the user" in budget.source
    cfg.adapt.step_coef = 0.5  # a step budget needs the steps of successes
    with pytest.raises(InputError, match="give adapt.call_budget"):
        stages.calibrate_call_budget(policy, cfg, engine=None)
