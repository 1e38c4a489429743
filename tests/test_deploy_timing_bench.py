"""The parts of `benchmarks/deploy_timing.py` (seconds per success on the robot's clock) that run
without timing episodes: the compute-trick variants it builds (bf16 / int8 / fewer steps on a TinyVLA)
and its policy flags (exactly one of --train SIZE and --baseline/--trimmed). The benchmark itself is
not run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from test_precision import TOLERANCE, chunks, tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import deploy_timing as bench  # noqa: E402


@pytest.mark.parametrize("tricks", [("bf16",), ("int8",), ("steps=2", "int8")])
def test_build_variant_applies_the_tricks_to_a_copy(tricks):
    policy = tiny("flow", image=True)
    reference = chunks(policy)
    variant = bench.build_variant(policy, tricks)
    out = chunks(variant)
    assert out.dtype == torch.float32 and out.shape == reference.shape and torch.isfinite(out).all()
    if "steps=2" in tricks:
        assert variant.flow_steps == 2 and policy.flow_steps == 10
    else:  # the same denoising steps: only the precision differs
        assert 0 < (out - reference).abs().max() <= TOLERANCE
    assert torch.equal(chunks(policy), reference)


def test_build_variant_takes_one_precision():
    with pytest.raises(ValueError, match="one precision at a time"):
        bench.build_variant(tiny("flow", image=False), ("bf16", "int8"))


def _args(argv: list[str], monkeypatch, tmp_path: Path) -> None:
    out = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.json")]
    monkeypatch.setattr(sys, "argv", ["deploy_timing.py", *argv, *out])


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give --train SIZE (train the LeRobot SmolVLA first), or both --baseline and --trimmed"),
        (["--baseline", "b"], "or both --baseline and --trimmed"),
        (["--train", "tiny", "--trimmed", "t"], "not both"),
        (["--train-work", "w", "--baseline", "b", "--trimmed", "t"], "give --train too"),
        (["--train", "tiny", "--task", "drawer-close-v3"], "trained with --task push-v3; got drawer-close-v3"),
        (["--train", "tiny", "--image-size", "32"], "trained with --image-size 64; got 32"),
        (["--train", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_policy_flags_are_checked_before_anything_runs(argv, message, monkeypatch, tmp_path, capsys):
    _args(argv, monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_train_fixes_the_task_and_image_and_own_checkpoints_keep_the_defaults():
    def ns(**kw):
        base = dict(baseline=None, trimmed=None, train=None, train_work=None, task=None, image=False, image_size=None)
        return bench.argparse.Namespace(**{**base, **kw})

    trained = ns(train="tiny")
    assert bench.check_policy_args(trained, "push-v3", 64) is None
    assert (trained.task, trained.image, trained.image_size) == ("push-v3", True, 64)
    own = ns(baseline="b", trimmed="t")
    assert bench.check_policy_args(own, "push-v3", 64) is None
    assert (own.task, own.image, own.image_size) == (bench.DEFAULT_TASK, False, bench.DEFAULT_IMAGE_SIZE)


def test_no_combination_when_the_baseline_never_succeeds():
    """A baseline without a success has no seconds per success to beat (this compared a number with None)."""
    base = {"policy": "baseline", "tricks": [], "mode": "sync", "seconds_per_success": None, "success": [False] * 4}
    trick = {**base, "tricks": ["bf16"], "seconds_per_success": 3.0, "success": [True, False, False, False]}
    assert bench.best_combination([base, trick], base, 2.0) == ()
    assert bench.best_combination([base, trick], {**base, "seconds_per_success": 4.0}, 2.0) == ("bf16",)


def test_variants_are_named_checkpoint_directories(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")

    def parse(*items):
        args = bench.argparse.Namespace(variant=list(items))
        return bench.parse_variants(args), args.variant

    assert parse(f"stale-trained={ckpt}", f"control={ckpt}") == (
        None,
        [("stale-trained", str(ckpt)), ("control", str(ckpt))],
    )
    assert "takes NAME=DIR" in parse(str(ckpt))[0]
    assert "takes NAME=DIR" in parse(f"={ckpt}")[0]
    assert "no config.json" in parse(f"a={tmp_path}")[0]
    assert "must be unique" in parse(f"a={ckpt}", f"a={ckpt}")[0]
    assert "must be unique" in parse(f"PolicyTrim={ckpt}")[0]
