"""The adapt stage (`policytrim train --stage adapt`) end to end on real Meta-World at a tiny size: the
frozen mode leaves the policy bit-identical and moves only the window adaptor, adaptor + policy moves
both, a kill -9 then resume equals the uninterrupted run, and the trained policy loads with its adaptor
and evaluates with a window per call (``--window K`` still forces a fixed one)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_config
from policytrim.cli import main
from policytrim.config import AdaptConfig, to_dict
from policytrim.io import KILL_AT_ENV, read_jsonl
from policytrim.policies import load_policy
from policytrim.policies.adaptor import ADAPTOR_DIR, adaptor_of
from policytrim.train.decisions import CallBudget, StageOutcome, TrainSummary, Validation
from policytrim.train.logger import TIMING_KEYS
from policytrim.train.rundir import ADDED_LATER, STAGES_OF, RunDir
from policytrim.train.stages import adaptor_windows

STAGE = {"epochs": 2, "eval_every": 1, "val_episodes": 2, "checkpoint_every": 1, "update_epochs": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop(KILL_AT_ENV, None)
EVAL_FLAGS = [
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


def write_config(path: Path, **adapt) -> Path:
    cfg = tiny_config(adapt={**STAGE, **adapt})
    cfg.eval.latency_ms = 1.0  # a given latency: the wall-clock estimate in val_* is then exact
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def train(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = ENV if kill_at is None else {**ENV, KILL_AT_ENV: kill_at}
    cmd = [sys.executable, "-m", "policytrim.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def tensors(directory: Path) -> dict[str, list]:
    return {k: v.tolist() for k, v in sorted(load_file(str(directory / "model.safetensors")).items())}


def outcome(run: Path) -> dict:
    """What an adapt run decided and produced (timings dropped)."""
    metrics = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(run / "metrics.jsonl")]
    out = {
        "metrics": json.dumps(metrics, sort_keys=True),
        "result": json.loads((run / "adapt" / "result.json").read_text()),
    }
    final = run / "final" / "policy"
    out["policy"] = tensors(final)
    out["adaptor"] = tensors(final / ADAPTOR_DIR) if (final / ADAPTOR_DIR).is_dir() else None
    return out


@pytest.fixture(scope="module")
def frozen_run(tiny_baseline, tmp_path_factory) -> Path:
    """An uninterrupted adapt run, adaptor only (the policy frozen), 2 epochs."""
    root = tmp_path_factory.mktemp("adapt")
    config = write_config(root / "config.yaml")
    result = train(
        ["--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(root / "run")]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapt: call budget" in result.stdout
    return root / "run"


def test_frozen_mode_trains_the_adaptor_only_and_resumes_exactly(frozen_run, tiny_baseline, tmp_path):
    run = frozen_run
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("adapt", e) for e in range(3)]
    for r in records[1:]:
        assert r["logp_gap"] < 1e-5 and r["call_budget"] > 0 and "reward_call_saving" in r
        assert r["mean_executed_window"] <= r["mean_window"]  # the bound
    budget = json.loads((run / "adapt" / "budget.json").read_text())
    assert budget["window"] == 4 and budget["budget"] >= budget["mean_calls"] and budget["start"]["success_by_state"]

    # the frozen policy is bit-identical in every checkpoint; the adaptor it carries has moved
    for name in ("epoch_000001", "epoch_000002"):
        assert tensors(run / "adapt" / name / "policy") == tensors(tiny_baseline)
    fresh = tensors(run / "adapt" / "epoch_000001" / "policy" / ADAPTOR_DIR)
    last = tensors(run / "adapt" / "epoch_000002" / "policy" / ADAPTOR_DIR)
    assert fresh != last
    result = json.loads((run / "adapt" / "result.json").read_text())
    final = run / "final" / "policy"
    assert (final / ADAPTOR_DIR).is_dir() == (result["best"]["epoch"] > 0)  # epoch 0: the entering policy, no adaptor
    assert tensors(final) == tensors(tiny_baseline)
    if (final / ADAPTOR_DIR).is_dir():  # the windows the best adaptor executes, plotted by the report
        windows = json.loads((run / "adapt" / "windows.json").read_text())
        assert windows["adaptive_window"] is True and windows["split"] == "val"
        report = tmp_path / "report"
        assert main(["report", str(run), "--out", str(report)]) == 0
        assert (report / "plots" / "train_executed_windows.png").is_file()

    # killed (kill -9) in epoch 2's update, after epoch 1's checkpoint; resumed: the same run
    again = tmp_path / "run"
    args = [
        "--config",
        str(run.parent / "config.yaml"),
        "--stage",
        "adapt",
        "--init",
        str(tiny_baseline),
        "--out",
        str(again),
    ]
    killed = train(args, kill_at="update.step:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (again / "adapt" / "epoch_000001").is_dir() and not (again / "adapt" / "result.json").exists()
    resumed = train(["--resume", str(again)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(again) == outcome(run)


def test_adaptor_and_policy_mode_moves_both(tiny_baseline, tmp_path):
    config = write_config(tmp_path / "config.yaml", epochs=1, train_policy=True)
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(run)])
        == 0
    )
    checkpoint = run / "adapt" / "epoch_000001" / "policy"
    assert tensors(checkpoint) != tensors(tiny_baseline)
    policy = load_policy(checkpoint)
    assert adaptor_of(policy).windows == adaptor_windows((), 4, 8) == (4, 5, 8)


def test_policy_lr_trains_the_policy_at_its_own_rate(tiny_baseline, tmp_path):
    """adapt.policy_lr: the policy in a parameter group of its own (Adam moves a weight by about its
    learning rate per step), the adaptor at adapt.lr."""
    config = write_config(tmp_path / "config.yaml", epochs=1, train_policy=True, policy_lr=1e-6)
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(run)])
        == 0
    )
    checkpoint = run / "adapt" / "epoch_000001"
    groups = json.loads((checkpoint / "trainer_state.json").read_text())["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [AdaptConfig().lr, 1e-6]
    before, after = tensors(tiny_baseline), tensors(checkpoint / "policy")
    moved = max(abs(a - b) for k in before for a, b in zip(_flat(after[k]), _flat(before[k]), strict=True))
    assert 0 < moved < 1e-4  # STAGE["update_epochs"] = 2 Adam steps at 1e-6, not at adapt.lr = 1e-3


def _flat(value) -> list[float]:
    return [x for v in value for x in _flat(v)] if isinstance(value, list) else [value]


def test_trained_policy_loads_with_its_adaptor_and_evaluates_per_call(frozen_run, tmp_path):
    final = frozen_run / "final" / "policy"
    if not (final / ADAPTOR_DIR).is_dir():  # the tiny run kept the entering policy: use its last checkpoint
        final = frozen_run / "adapt" / "epoch_000002" / "policy"
    policy = load_policy(final)
    assert adaptor_of(policy) is not None and policy.default_window == 4

    out = tmp_path / "eval"
    assert main(["eval", "--policy", str(final), "--out", str(out), *EVAL_FLAGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    trace = metrics["window_trace"]
    assert metrics["adaptive_window"] is True and metrics["window"] == max(adaptor_of(policy).windows)
    assert set(trace["window"]) <= set(adaptor_of(policy).windows) and len(trace["window"]) == len(trace["step"])
    executed = metrics["overall"]["mean_executed_window"]
    assert executed == pytest.approx(sum(trace["window"]) / len(trace["window"]))
    calls = sum(1 for t in trace["episode"])  # one trace entry per call
    assert calls >= metrics["overall"]["episodes"]

    assert (out / "plots" / "eval_executed_windows.png").is_file()  # the report of the evaluation shows them

    fixed = tmp_path / "fixed"  # --window K forces a fixed window: the adaptor is not used
    assert main(["eval", "--policy", str(final), "--out", str(fixed), "--window", "8", *EVAL_FLAGS]) == 0
    metrics = json.loads((fixed / "metrics.json").read_text())
    assert "adaptive_window" not in metrics and metrics["window"] == 8 and "window_trace" not in metrics


def test_bad_adapt_settings_are_one_line_and_write_nothing(tiny_baseline, tmp_path, capsys):
    out = tmp_path / "run"
    bad = (("--adapt.initial-mass", "1.5"), ("--adapt.windows", "8 4"), ("--adapt.call-coef", "-1"))
    for flag, value in (*bad, ("--adapt.policy-lr", "2")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(out), flag, *value.split()])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "adapt." in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_a_run_made_before_the_adapt_stage_opens_with_its_defaults(tmp_path):
    cfg = tiny_config()
    RunDir.create(tmp_path / "run", cfg, {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del data["adapt"]  # as a run written by a version without the adapt stage
    text = yaml.safe_dump(data, sort_keys=False).encode()
    (tmp_path / "run" / "config.yaml").write_bytes(text)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    meta["config_sha256"] = hashlib.sha256(text).hexdigest()
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    assert RunDir.open(tmp_path / "run").cfg.adapt == AdaptConfig()


@pytest.mark.parametrize("section, key", sorted(ADDED_LATER))
def test_a_run_made_before_a_setting_existed_opens_with_what_it_ran_with(tmp_path, section, key):
    """adapt.policy_lr (one rate), env.libero_reset, rollout.delay, adapt.scale_advantages: a run
    directory written before the setting existed resumes with the value it ran with."""
    RunDir.create(tmp_path / "run", tiny_config(), {"stage": "adapt", "stages": ["adapt"], "init": "x"})
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del data[section][key]  # as a run written before the setting existed
    text = yaml.safe_dump(data, sort_keys=False).encode()
    (tmp_path / "run" / "config.yaml").write_bytes(text)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    meta["config_sha256"] = hashlib.sha256(text).hexdigest()
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    assert getattr(getattr(RunDir.open(tmp_path / "run").cfg, section), key) == ADDED_LATER[section, key]


def test_call_budget_and_adapt_outcome_round_trip_through_json():
    start = Validation({"success_rate": 0.5, "calls_per_success": 10.0}, {"t:0": True, "t:1": False})
    budget = CallBudget(13, "calibrated", None, 10.0, 40.0, 0.5, 4, "sampled", 2, start=start)
    assert CallBudget.from_json(json.loads(json.dumps(budget.to_json()))) == budget
    best = Validation({"success_rate": 0.5, "calls_per_success": 8.0}, epoch=2)
    outcome = StageOutcome(
        "adapt", 3, 8, 4, best, start.without_outcomes(), epochs_run=3, call_budget=budget, adaptor_windows=(4, 5, 8)
    )
    again = StageOutcome.from_json(json.loads(json.dumps(outcome.to_json())))
    assert again == outcome and again.window == 4
    summary = TrainSummary("run", "init", ("adapt",), (), 4, adapt=outcome)
    assert TrainSummary.from_json(json.loads(json.dumps(summary.to_json()))).adapt == outcome


def test_stage_all_runs_extend_trim_then_adapt_on_one_epoch_axis(tmp_path):
    cfg = tiny_config(stage1={"epochs": 3}, stage2={"epochs": 5})
    meta = {"stage": "all", "stages": list(STAGES_OF["all"]), "init": "x"}
    run = RunDir.create(tmp_path / "run", cfg, meta)
    assert RunDir.open(tmp_path / "run").meta["stage"] == "all"
    assert [run.global_epoch(s, 1) for s in ("extend", "trim", "adapt")] == [1, 4, 9]


@pytest.mark.parametrize("scale", [True, False])
def test_scale_advantages_reaches_the_update(tiny_baseline, tmp_path, scale):
    """adapt.scale_advantages: eq 3 with the group's std (every group with signal gets unit-variance
    advantages), or A = R - mean (each group's advantages as spread as its rewards, |A| < 1)."""
    from policytrim.train import grpo

    seen = []

    def update(policy, ref, optimizer, traj, advantages, valid, cfg, **options):
        seen.append((advantages.clone(), valid.clone(), traj.group_size))
        return grpo.grpo_update(policy, ref, optimizer, traj, advantages, valid, cfg, **options)

    cfg = tiny_config(adapt={**STAGE, "epochs": 1, "scale_advantages": scale})
    cfg.logging.out = str(tmp_path / "run")
    grpo.train(cfg, "adapt", str(tiny_baseline), seams=grpo.TrainerSeams(update=update))
    ((advantages, valid, g),) = seen
    groups = advantages.reshape(-1, g)[valid.reshape(-1, g).all(dim=1)]
    assert len(groups), "no group with signal: the check below would be vacuous"
    stds = groups.std(dim=1, unbiased=True)
    if scale:
        torch.testing.assert_close(stds, torch.ones_like(stds), atol=1e-4, rtol=0)
    else:
        assert (groups.abs() < 1).all() and (stds < 0.99).all()
        torch.testing.assert_close(groups.sum(dim=1), torch.zeros(len(groups)), atol=1e-5, rtol=0)


def test_initial_window_sets_where_the_fresh_adaptor_starts(tiny_baseline):
    """adapt.initial_window: the fresh adaptor holds initial_mass on that window (added to its windows
    when not among them), the trained window stays a choice; 0 keeps the trained window; one beyond
    the chunk is refused."""
    from policytrim.errors import InputError
    from policytrim.train.stages import build_adaptor

    policy = load_policy(tiny_baseline)  # H = 8, trained window 4
    state, chunk = torch.zeros(1, policy.state_dim), torch.zeros(1, 8, policy.action_dim)
    for initial, windows, start in ((0, (2, 4, 8), 4), (8, (2, 4, 8), 8), (3, (2, 3, 4, 8), 3)):
        cfg = tiny_config(adapt={**STAGE, "windows": (2, 8), "initial_window": initial, "initial_mass": 0.7})
        adaptor = build_adaptor(policy, cfg)
        assert adaptor.windows == windows and adaptor.initial_window == start
        probs = torch.softmax(adaptor.logits(state, chunk), dim=-1)[0]
        assert probs[windows.index(start)].item() == pytest.approx(0.7, abs=1e-6)
    with pytest.raises(InputError, match="initial_window 9 exceeds"):
        build_adaptor(policy, tiny_config(adapt={**STAGE, "initial_window": 9}))


def test_common_noise_reaches_the_training_rollouts(tiny_baseline, tmp_path, monkeypatch):
    """adapt.common_noise: the adapt stage's training rollouts run with common noise (validations
    do not), and the stage trains through them."""
    from policytrim.rollout.engine import RolloutEngine

    seen = []
    real_run = RolloutEngine.run

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("common_noise", False))
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(RolloutEngine, "run", spy)
    config = write_config(tmp_path / "config.yaml", epochs=1, common_noise=True)
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(run)]
    assert main(args) == 0
    assert True in seen and False in seen  # the epoch's rollouts with it, the validations without
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r.get("stage") == "adapt"][-1] == 1


@pytest.mark.parametrize("normalized", [True, False])
def test_length_normalized_sets_the_updates_chunk_norm(tiny_baseline, tmp_path, monkeypatch, normalized):
    """adapt.length_normalized false: the update divides each trajectory's chunk terms by
    ceil(horizon / smallest adaptor window) (Dr. GRPO's constant); true: eq 4's 1/C_i (None)."""
    from policytrim import objective

    seen = []
    real_loss = objective.grpo_loss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("chunk_norm"))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(objective, "grpo_loss", spy)
    config = write_config(tmp_path / "config.yaml", epochs=1, length_normalized=normalized)
    cfg = yaml.safe_load(config.read_text())
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(run)]
    assert main(args) == 0
    smallest = json.loads((run / "adapt" / "result.json").read_text())["adaptor_windows"][0]
    expected = None if normalized else float(-(-cfg["env"]["horizon"] // smallest))
    assert seen and set(seen) == {expected}  # every micro-batch of every optimiser step


def test_the_adapt_stage_selects_checkpoints_by_its_loss_rule(tiny_baseline):
    """adapt.loss_rule: "significant" (Stage 2's) keeps a checkpoint whose 3-point validation loss
    is noise; "tolerance" rejects it."""
    from policytrim.train.stages import AdaptStage

    def val(successes, calls):
        by_state = {f"t:{i}": ok for i, ok in enumerate(successes)}
        return Validation({"success_rate": sum(successes) / len(successes), "calls_per_success": calls}, by_state)

    start = val([True] * 70 + [False] * 2, 8.0)
    noisy = val([True] * 68 + [False] * 4, 6.0)
    budget = CallBudget(10, "given", None, 8.0, 60.0, 0.97, 72, "sampled", 72, start=start)
    policy = load_policy(tiny_baseline)
    for rule, kept in (("significant", True), ("tolerance", False)):
        stage = AdaptStage(tiny_config(adapt={**STAGE, "loss_rule": rule}), policy, budget)
        assert stage.is_better(noisy, start, start) is kept


def test_per_call_credit_updates_the_branch_calls_only(tiny_baseline, tmp_path):
    """adapt.credit call: `branch_only` keeps the rows of the branch calls' chunks and the
    trajectories that reached one; the stage trains end to end with it; without common noise it is
    refused."""
    from policytrim.config import AdaptConfig
    from policytrim.errors import InputError
    from policytrim.rollout.types import Trajectories
    from policytrim.train.grpo import branch_only

    n = 3
    traj = Trajectories(
        task=["t"] * n,
        instruction=[""] * n,
        seed=torch.zeros(n, dtype=torch.long),
        index=torch.zeros(n, dtype=torch.long),
        group=torch.zeros(n, dtype=torch.long),
        window=torch.full((n,), 4),
        success=torch.ones(n, dtype=torch.bool),
        steps=torch.full((n,), 8),
        calls=torch.tensor([2, 2, 1]),
        horizon=20,
        group_size=n,
        chunk_traj=torch.tensor([0, 0, 1, 1, 2]),
        chunk_pos=torch.tensor([0, 1, 0, 1, 0]),
        chunk_branch=torch.tensor([False, True, False, True, False]),  # the branch is call 1; member 2 ended first
    )
    rows = torch.ones(5, 4, dtype=torch.bool)
    mask, valid = branch_only(traj, rows, torch.ones(n, dtype=torch.bool))
    assert mask.any(dim=1).tolist() == [False, True, False, True, False]
    assert valid.tolist() == [True, True, False]

    config = write_config(tmp_path / "config.yaml", epochs=1, common_noise=True, credit="call")
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--stage", "adapt", "--init", str(tiny_baseline), "--out", str(run)]
    assert main(args) == 0
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r.get("stage") == "adapt"][-1] == 1
    with pytest.raises(InputError, match="adapt.credit call needs adapt.common_noise"):
        AdaptConfig(credit="call")
    from policytrim.train.stages import build_adaptor

    policy = load_policy(tiny_baseline)
    greedy = build_adaptor(policy, tiny_config(adapt={**STAGE, "common_noise": True, "credit": "call"}))
    assert greedy.greedy and not build_adaptor(policy, tiny_config(adapt=STAGE)).greedy


def test_branch_calls_bounds_where_groups_branch(tiny_baseline):
    """adapt.credit call: groups branch below ceil(mean calls) of the entering policy, or below
    adapt.branch_calls when set; episode credit does not branch."""
    from policytrim.train.stages import AdaptStage

    start = Validation({"success_rate": 1.0, "calls_per_success": 7.2}, {"t:0": True})
    budget = CallBudget(10, "calibrated", None, 7.2, 60.0, 1.0, 4, "sampled", 1, start=start)
    policy = load_policy(tiny_baseline)
    call = {**STAGE, "common_noise": True, "credit": "call"}
    for adapt, below in ((call, 8), ({**call, "branch_calls": 1}, 1), (STAGE, None)):
        options = AdaptStage(tiny_config(adapt=adapt), policy, budget).rollout_options(policy)
        assert options.get("branch_below") == below
