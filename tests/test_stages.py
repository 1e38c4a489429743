"""Which PolicyTrim stages a policy family supports, and the trainer's refusal of the others."""

import json

import pytest

from policytrim.cli import main
from policytrim.policies.base import supported_stages
from policytrim.policies.expert import ExpertPolicy
from tests.test_policies import make_policy

TINY = [
    "--env.tasks", "reach-v3", "--env.horizon", "12", "--rollout.num-workers", "0", "--rollout.group-size", "2",
    "--rollout.groups-per-epoch", "1", "--stage2.epochs", "1", "--stage2.val-episodes", "1", "--stage2.budget", "12",
    "--logging.no-progress", "--logging.no-tensorboard",
]


def test_stage_1_needs_a_chunk_longer_than_the_window():
    assert make_policy("token_ar", chunk_size=6, default_window=2).supported_stages == ("extend", "trim")
    assert make_policy("token_ar", chunk_size=2, default_window=2).supported_stages == ("trim",)  # OpenVLA-style
    assert make_policy("gaussian", chunk_size=3, default_window=3).supported_stages == ("trim",)
    assert supported_stages(ExpertPolicy()) == ("trim",)


def policy_flags(spec):
    return [
        "--policy.head", spec["head"], "--policy.chunk-size", str(spec["chunk_size"]), "--policy.default-window",
        str(spec["default_window"]), "--policy.hidden-dim", str(spec["hidden_dim"]), "--policy.num-layers",
        str(spec["num_layers"]), "--policy.token-dim", str(spec["token_dim"]), "--policy.token-layers", str(spec["token_layers"]),
    ]


@pytest.mark.parametrize("stage", ["extend", "both"])
def test_train_refuses_stage_1_for_an_exact_k_decoder_in_one_line_and_writes_nothing(tmp_path, capsys, stage):
    policy = make_policy("token_ar", chunk_size=2, default_window=2, token_dim=16, token_layers=1)
    policy.save_pretrained(tmp_path / "ar")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--init", str(tmp_path / "ar"), "--stage", stage, "--out", str(out), *policy_flags(policy.spec()), *TINY])
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
    from policytrim.envs.tasks import INSTRUCTIONS
    from policytrim.policies.chunk import TinyVLA

    spec.update(state_dim=39, state_mean=[0.0] * 39, state_std=[1.0] * 39, instructions=[INSTRUCTIONS["reach-v3"]], vocabulary=None)
    spec.pop("vocabulary")
    TinyVLA.from_spec(spec).save_pretrained(tmp_path / "ar")
    out = tmp_path / "run"
    assert main(["train", "--init", str(tmp_path / "ar"), "--stage", "trim", "--out", str(out), *policy_flags(spec), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == ["trim"] and summary["window"] == 2
    assert "trim: best at epoch" in capsys.readouterr().out
