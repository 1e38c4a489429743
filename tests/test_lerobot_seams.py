"""The LeRobot seams that need no lerobot install: config, the trainer's architecture check, and
clear errors where the extra is missing (the adapter itself is tested in tests/with_lerobot)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from policytrim.config import ConfigError, PolicyConfig, RunConfig
from policytrim.errors import InputError
from policytrim.policies import load_policy
from policytrim.policies.lerobot import is_lerobot_checkpoint
from policytrim.train.grpo import check_architecture

LEROBOT_SPEC = {"kind": "lerobot", "family": "smolvla", "chunk_size": 15, "default_window": 5}
HAS_LEROBOT = importlib.util.find_spec("lerobot") is not None


def test_policy_config_knows_lerobot_and_checks_train_parts():
    cfg = PolicyConfig(kind="lerobot", train_parts="expert", lerobot_path="ckpt")
    assert cfg.kind == "lerobot" and cfg.train_parts == "expert"
    with pytest.raises(ConfigError, match="train_parts must be all, expert or no_vision"):
        PolicyConfig(kind="lerobot", train_parts="head")


def test_trainer_checks_kind_window_and_chunk_size_of_a_lerobot_checkpoint():
    with pytest.raises(InputError, match="pass --policy.kind lerobot"):
        check_architecture(RunConfig(), LEROBOT_SPEC, "checkpoint 'x'")
    check_architecture(
        RunConfig(policy=PolicyConfig(kind="lerobot", chunk_size=15, default_window=5)), LEROBOT_SPEC, "checkpoint 'x'"
    )
    with pytest.raises(InputError, match="policy.chunk_size is 50 in the config but 15 in the checkpoint"):
        check_architecture(
            RunConfig(policy=PolicyConfig(kind="lerobot", chunk_size=50, default_window=5)),
            LEROBOT_SPEC,
            "checkpoint 'x'",
        )


def test_lerobot_checkpoints_are_recognised_by_their_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla", "n_action_steps": 5}))
    assert is_lerobot_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "chunk"}))
    assert not is_lerobot_checkpoint(tmp_path)


@pytest.mark.skipif(HAS_LEROBOT, reason="checks the message shown where the lerobot extra is missing")
def test_without_the_extra_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla"}))
    with pytest.raises(InputError, match="need the lerobot extra"):
        load_policy(tmp_path)
    from policytrim.data.collect import collect_demos

    with pytest.raises(InputError, match="need the lerobot extra"):
        collect_demos(RunConfig(), tmp_path / "out", fmt="lerobot")
    assert not (tmp_path / "out").exists()
