"""The two-stage trainer end to end on real Meta-World (tiny), and its resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import run_windows, tiny_config
from policytrim.cli import main
from policytrim.errors import InputError
from policytrim.io import read_jsonl
from policytrim.policies import load_policy
from policytrim.train.decisions import Validation
from policytrim.train.grpo import train
from policytrim.train.stages import fewest_calls_without_loss, most_successful, significant_loss


def small_run_config(out, **stage_overrides):
    stage = dict(epochs=3, eval_every=1, val_episodes=4, checkpoint_every=1, lr=1e-3)
    stage.update(stage_overrides)
    cfg = tiny_config(stage1=stage, stage2=stage)
    cfg.logging.out = str(out)
    return cfg


@pytest.mark.slow
def test_both_stages_end_to_end_and_resume(tiny_baseline, tmp_path):
    cfg = small_run_config(tmp_path / "run")
    summary = train(cfg, "both", str(tiny_baseline))
    run = tmp_path / "run"

    # metrics: a validation record (epoch 0) and one record per epoch, per stage, each once
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("extend", e) for e in range(4)] + [
        ("trim", e) for e in range(4)
    ]
    for r in records[1:4] + records[5:]:
        for key in (
            "success_rate",
            "mean_window",
            "valid_group_frac",
            "clip_frac",
            "approx_kl",
            "logp_gap",
            "reward",
            "val_success_rate",
        ):
            assert key in r, key
        assert r["logp_gap"] < 1e-3, "rollout and learner disagree on log-probs"
        # where the epoch went: policy calls within the rollout's wall time, env steps and resets in the workers
        assert 0 < r["rollout_policy_s"] < r["rollout_s"] and r["rollout_env_s"] > 0 and r["rollout_reset_s"] > 0
        assert 0 < r["update_s"] < r["epoch_s"] and r["rollout_s"] < r["epoch_s"]
    ws, g = run_windows(cfg), cfg.rollout.group_size
    assert {r["mean_window"] for r in records[1:4]} == {
        sum(ws[j % len(ws)] for j in range(g)) / g
    }  # slot j gets windows[j mod M]
    assert all("reward_step_saving" in r and r["budget"] == summary.trim.budget for r in records[5:])

    # stage decisions are recorded with their evidence
    choice = summary.extend.window_choice
    assert choice.window in run_windows(cfg) and set(choice.per_window) == set(run_windows(cfg))
    assert summary.trim.budget > 0 and "calibrated" in summary.trim.budget_evidence.source
    on_disk = json.loads((run / "summary.json").read_text())  # the summary's JSON, keys as always
    assert on_disk == summary.to_json() and on_disk["trim"]["budget"]["budget"] == summary.trim.budget
    assert list(on_disk) == ["run_dir", "init", "stages", "logging", "extend", "trim", "window"]

    # every parameter that received gradient changed during Stage 1
    reference = load_policy(run / "extend" / "reference" / "policy")
    trained = load_policy(run / "extend" / "epoch_000003" / "policy")
    unchanged = [
        n
        for (n, p), q in zip(reference.named_parameters(), trained.parameters(), strict=True)
        if p.requires_grad and torch.equal(p, q)
    ]
    assert not unchanged, f"parameters that did not move: {unchanged}"

    # the final checkpoint loads and acts
    policy = load_policy(run / "final" / "policy")
    obs = {"state": torch.zeros(2, 39)}
    sample = policy.sample(
        obs, [policy.spec()["instructions"][0]] * 2, "sampled", [torch.Generator().manual_seed(i) for i in range(2)]
    )
    assert sample.actions.shape == (2, policy.chunk_size, 4) and torch.isfinite(sample.actions).all()

    # the trained policies carry their windows: final/policy acts at Stage 1's choice, with its budget
    chosen = choice.window
    assert (policy.default_window, policy.trained_stage, policy.step_budget) == (chosen, "trim", summary.trim.budget)
    stage1 = load_policy(run / "extend" / "best" / "policy")
    assert (stage1.default_window, stage1.trained_stage, stage1.step_budget) == (chosen, "extend", None)
    assert load_policy(run / "extend" / "reference" / "policy").default_window == cfg.policy.default_window
    eval_out = tmp_path / "eval"
    flags = [
        "--env.tasks",
        "drawer-close-v3",
        "--env.horizon",
        "120",
        "--rollout.num-workers",
        "0",
        "--eval.episodes",
        "2",
        "--logging.no-progress",
    ]
    assert main(["eval", "--policy", str(run / "final" / "policy"), "--out", str(eval_out), *flags]) == 0
    assert json.loads((eval_out / "metrics.json").read_text())["window"] == chosen

    # resume: pretend the run died after Stage 2's epoch 2 checkpoint (the older of the two a stage
    # keeps; epoch 1's was removed when epoch 3's was written), then continue it
    original = {(r["stage"], r["epoch"]): r for r in records}
    trim = run / "trim"
    assert sorted(p.name for p in trim.glob("epoch_*")) == ["epoch_000002", "epoch_000003"]
    shutil.rmtree(trim / "epoch_000003")
    (trim / "LATEST").write_text("epoch_000002")
    for name in ("trim/result.json", "summary.json"):
        (run / name).unlink()
    train(cfg, resume=str(run))
    resumed = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in resumed] == [(s, e) for s, e in original]  # no duplicates, no gaps
    for key in ("success_rate", "mean_steps", "reward", "loss", "val_success_rate"):
        again = {(r["stage"], r["epoch"]): r for r in resumed}
        for epoch in (3,):  # same seed, same config: the same numbers as the uninterrupted run
            assert again[("trim", epoch)][key] == pytest.approx(original[("trim", epoch)][key], nan_ok=True), (
                key,
                epoch,
            )
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_stopping_rules_stop_and_resume_and_validations_are_reused(tiny_baseline, tmp_path):
    """Stage 1 stops at its first validation once long windows are reliable (a generous tolerance
    makes that certain), Stage 2 after ``patience`` stale validations; both record why, a resumed
    stopped stage trains no further, and Stage 2 starts from Stage 1's validation of the chosen
    window instead of measuring it again."""
    cfg = small_run_config(tmp_path / "run", epochs=6)
    cfg.stage1.stop_when_reliable, cfg.stage1.tolerance_points, cfg.stage1.min_epochs = True, 100.0, 2
    cfg.stage1.window_reference = "baseline"
    cfg.stage2.patience = 1
    summary = train(cfg, "both", str(tiny_baseline))
    run = tmp_path / "run"
    extend, trim = summary.extend, summary.trim
    assert extend.epochs == 6 and extend.epochs_run == 2 and extend.stop_reason.startswith("reliable:")
    records = read_jsonl(run / "metrics.jsonl")
    # patience 1: Stage 2 stops at its first validation without a new best (if one comes before epoch 6)
    trim_records = [r for r in records if r["stage"] == "trim" and r["epoch"] > 0]
    assert len(trim_records) == trim.epochs_run
    if trim.epochs_run < 6:
        assert trim.stop_reason.startswith("patience: 1") and trim_records[-1]["stopped"] == trim.stop_reason
    else:
        assert trim.stop_reason is None
    assert [r["epoch"] for r in records if r["stage"] == "extend"] == [0, 1, 2]
    assert records[2]["stopped"] == extend.stop_reason and "success_rate_k4" in records[1] and "val_s" in records[1]
    # against the entering policy's SR at k_1 (tolerance 100 points): the longest window holds, and
    # the best checkpoint's validation there is all the choice needs
    window = extend.window_choice.window
    assert window == run_windows(cfg)[-1] and list(extend.window_choice.per_window) == [window]
    assert extend.window_choice.reference == "baseline"
    chosen = extend.window_choice.per_window[window]
    assert trim.start.metrics == chosen.metrics  # reused, not measured again
    assert trim.budget_evidence.mean_steps == chosen.mean_steps
    # resume after a stage stopped early but before its result was written: nothing more is trained
    for name in ("trim/result.json", "summary.json"):
        (run / name).unlink()
    again = train(cfg, resume=str(run))
    assert (again.trim.epochs_run, again.trim.stop_reason) == (trim.epochs_run, trim.stop_reason)
    assert [(r["stage"], r["epoch"]) for r in read_jsonl(run / "metrics.jsonl")] == [
        (r["stage"], r["epoch"]) for r in records
    ]
    shutil.rmtree(run / "trim")
    for name in ("extend/result.json", "summary.json"):
        (run / name).unlink()
    again = train(cfg, resume=str(run))
    assert (again.extend.epochs_run, again.extend.stop_reason) == (2, extend.stop_reason)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["stage"] == "extend"] == [0, 1, 2]


@pytest.mark.slow
def test_a_fresh_window_choice_measures_every_window_again_and_stage2_its_own_start(tiny_baseline, tmp_path):
    """stage1.fresh_choice end to end: the choice validates every window (the longest too) with its
    own seed and records it; Stage 2 measures its start at the chosen window with eval.seed (what its
    validations pair with) instead of reusing the choice's, so the start equals a validation of
    Stage 1's policy made now with eval.seed."""
    from policytrim.rollout.engine import RolloutEngine
    from policytrim.train.stages import choice_seed, validate

    cfg = small_run_config(tmp_path / "run", epochs=2)
    cfg.stage1.fresh_choice = True
    summary = train(cfg, "both", str(tiny_baseline))
    choice = summary.extend.window_choice
    assert choice.seed == choice_seed(cfg) and choice.seed is not None
    assert sorted(choice.per_window) == list(run_windows(cfg))  # reference: the policy's own k_1
    extended = load_policy(tmp_path / "run" / "extend" / "best" / "policy")
    with RolloutEngine(cfg.env, num_workers=0) as engine:
        start = validate(extended, cfg, choice.window, engine, cfg.stage2.val_episodes)
        fresh = validate(extended, cfg, choice.window, engine, cfg.stage1.val_episodes, choice.seed)
    outcome = lambda val: {k: v for k, v in val.metrics.items() if k != "wall_clock_s"}  # noqa: E731
    assert outcome(summary.trim.start) == outcome(start)
    assert outcome(choice.per_window[choice.window]) == outcome(fresh) != outcome(start)


def test_bad_init_and_existing_run_dir_write_nothing(tiny_baseline, tmp_path):
    cfg = small_run_config(tmp_path / "run")
    with pytest.raises(InputError, match="does not exist"):
        train(cfg, "both", str(tmp_path / "missing"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="already exists.*--resume.*--overwrite"):
        train(cfg, "both", str(tiny_baseline))
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"
    with pytest.raises(InputError, match="not a policytrim run directory"):
        train(cfg, resume=str(tmp_path / "run"))


def _val(successes: list[bool], calls: float) -> Validation:
    """A validation result as `validate` returns it (made up: the selection rule is pure)."""
    by_state = {f"push-v3:{i}": ok for i, ok in enumerate(successes)}
    return Validation({"success_rate": sum(successes) / len(successes), "calls_per_success": calls}, by_state)


def test_stage2_selection_needs_a_significant_loss_to_reject():
    start = _val([True] * 70 + [False] * 2, 22.0)
    noisy = _val([True] * 68 + [False] * 4, 18.0)  # -2.8 points: beyond 2 points, but 2 discordant pairs is noise
    real = _val([True] * 60 + [False] * 12, 12.0)  # -13.9 points: 10 states lost, none gained
    assert not significant_loss(noisy, start, 2.0)
    assert significant_loss(real, start, 2.0)
    assert not significant_loss(real, start, 20.0)  # within the tolerance
    assert fewest_calls_without_loss(noisy, start, start, 2.0)  # fewer calls, no significant loss
    assert not fewest_calls_without_loss(real, noisy, start, 2.0)  # fewer calls, but lost success
    # without per-state outcomes (older checkpoints) only the point tolerance applies
    bare = noisy.without_outcomes()
    assert significant_loss(bare, start, 2.0)
    # Stage 1 keeps the highest SR at the longest window
    assert most_successful(start, noisy) and not most_successful(noisy, start)
    # adapt.loss_rule tolerance: a drop beyond the tolerance counts even when it is not significant
    assert significant_loss(noisy, start, 2.0, "tolerance")
    assert not significant_loss(noisy, start, 5.0, "tolerance")
    assert not fewest_calls_without_loss(noisy, start, start, 2.0, "tolerance")  # the start keeps its place


def test_rollout_parts_split_the_workers_time_into_resets_and_steps():
    from policytrim.train.grpo import rollout_parts

    timing = {"wall": 9.0, "policy": 1.5, "worker": 12.0, "worker_reset": 4.0, "requests": 30.0}
    assert rollout_parts(timing) == {"rollout_policy_s": 1.5, "rollout_reset_s": 4.0, "rollout_env_s": 8.0}
    assert rollout_parts({}) == {"rollout_policy_s": 0.0, "rollout_reset_s": 0.0, "rollout_env_s": 0.0}
