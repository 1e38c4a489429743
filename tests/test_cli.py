"""The CLI: resolved config, overrides, one-line errors with exit code 2."""

import subprocess
import sys

import pytest
import yaml

from policytrim.cli import main
from policytrim.train.decisions import BudgetCalibration, TrainSummary, Validation
from policytrim.train.stages import StageOutcome


def run(*args):
    return subprocess.run([sys.executable, "-m", "policytrim.cli", *args], capture_output=True, text=True)


def test_config_dump_with_file_and_overrides(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("stage1:\n  lr: 0.0001\n  epochs: 7\n")
    assert main(["config", "--dump", "--config", str(path), "--stage1.epochs", "9", "--tasks", "reach-v3,push-v3"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["stage1"]["lr"] == 0.0001  # from the file
    assert data["stage1"]["epochs"] == 9  # flag beats file
    assert data["env"]["tasks"] == ["reach-v3", "push-v3"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["config", "--stage1.windows", "10", "5"], "strictly increasing"),
        (["config", "--rollout.group-size", "1"], "group_size must be an integer in [2, 1024]"),
        (["config", "--tasks", "pushh"], "unknown task 'pushh'"),
        (["config", "--bogus", "1"], "Unrecognized options: --bogus"),
        (["config", "--seed", "x"], "--seed"),
        (["config", "--preset", "nope"], "unknown preset"),
        (["config", "--config", "/does/not/exist.yaml"], "does not exist"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert result.stdout == ""


def test_help_lists_field_docstrings():
    result = run("train", "--help")
    assert result.returncode == 0
    assert "Stage 1's windows" not in result.stdout  # property, not a flag
    assert "--stage2.stability-coef" in result.stdout or "--stage2.stability_coef" in result.stdout
    assert "lambda_s: weight of the group-anchored stability penalty" in " ".join(result.stdout.split())


def test_train_summary_prints_dashes_when_validation_had_no_success(monkeypatch, capsys, tmp_path):
    """A best checkpoint with no validation success has no mean steps or calls per success (None):
    `policytrim train` prints '-' for them instead of crashing. The trainer is a fake returning
    such a summary; the printing is the real command's."""
    import policytrim.train.grpo as grpo

    def fake_train(cfg, stage, init, resume, overwrite):
        best = Validation({"success_rate": 0.0, "mean_steps": None, "calls_per_success": None}, epoch=1)
        trim = StageOutcome("trim", 1, 4, 4, best, best, budget=16, budget_evidence=BudgetCalibration(16.0, "flag"))
        return TrainSummary(str(tmp_path), str(tmp_path), ("trim",), (), 4, trim=trim)

    monkeypatch.setattr(grpo, "train", fake_train)
    assert main(["train", "--init", str(tmp_path), "--stage", "trim", "--logging.out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "trim: best at epoch 1: SR 0.000, steps -, calls - (validation)" in out
