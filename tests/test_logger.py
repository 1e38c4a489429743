"""The metric sinks (`policytrim.train.logger`): JSONL always, and one notice on stderr when
TensorBoard is asked for but not installed."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from policytrim.train.logger import MetricsLogger, tensorboard_missing_notice


@pytest.fixture
def without_tensorboard(monkeypatch):
    """A fake `importlib.util.find_spec` that finds no tensorboard package (others as before),
    and a fresh process as far as the once-per-process notice is concerned."""
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "tensorboard" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    tensorboard_missing_notice.cache_clear()
    yield
    tensorboard_missing_notice.cache_clear()


def test_tensorboard_asked_for_but_missing_is_said_once_and_jsonl_still_written(tmp_path, caplog, without_tensorboard):
    with caplog.at_level(logging.WARNING, logger="policytrim.train.logger"):
        for run in ("a", "b"):  # two runs in one process (an ablation grid): one notice
            (tmp_path / run).mkdir()
            logger = MetricsLogger(tmp_path / run, tensorboard=True)
            logger.log({"stage": "extend", "epoch": 1, "reward": 0.5})
            logger.close()
            assert logger.backends == ["jsonl"]
            assert json.loads((tmp_path / run / "metrics.jsonl").read_text()) == {
                "stage": "extend",
                "epoch": 1,
                "reward": 0.5,
            }
    notices = [r.getMessage() for r in caplog.records if r.name == "policytrim.train.logger"]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "TensorBoard is not installed" in notices[0] and "pip install 'policytrim[tensorboard]'" in notices[0]


def test_no_notice_when_tensorboard_is_not_asked_for(tmp_path, caplog, without_tensorboard):
    with caplog.at_level(logging.WARNING, logger="policytrim.train.logger"):
        MetricsLogger(tmp_path, tensorboard=False).close()
    assert not [r for r in caplog.records if r.name == "policytrim.train.logger"]
