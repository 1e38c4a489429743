"""`optional_env.require_or_skip`: the optional environments' tests skip where their package is
absent, and fail where scripts/run.sh requires it (POLICYTRIM_REQUIRE), so a broken .venv-lerobot or
.venv-libero cannot pass as "skipped"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional_env import REQUIRE_VAR, require_or_skip

MISSING = "policytrim_no_such_module"


def test_skips_where_not_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_VAR, raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_or_skip(MISSING, "lerobot")
    monkeypatch.setenv(REQUIRE_VAR, "libero")  # another environment's requirement
    with pytest.raises(pytest.skip.Exception):
        require_or_skip(MISSING, "lerobot")


def test_fails_where_required_and_names_the_import_error(monkeypatch):
    monkeypatch.setenv(REQUIRE_VAR, "libero,lerobot")
    with pytest.raises(
        pytest.fail.Exception, match=f"the lerobot tests need {MISSING}, which does not import.*ModuleNotFoundError"
    ):
        require_or_skip(MISSING, "lerobot")
    assert require_or_skip("json", "lerobot").__name__ == "json"


def test_a_required_environment_without_its_package_fails_the_run(tmp_path):
    """The LeRobot test step as scripts/run.sh runs it, here where lerobot is absent: not green."""
    if subprocess.run([sys.executable, "-c", "import lerobot"], capture_output=True).returncode == 0:
        pytest.skip("lerobot imports here")
    tests = Path(__file__).resolve().parent
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(tests / "with_lerobot" / "test_lerobot_dataset.py"),
    ]
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_VAR}
    skipped = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    failed = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**env, REQUIRE_VAR: "lerobot"}, cwd=tmp_path
    )
    assert "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert failed.returncode not in (0, 5) and "POLICYTRIM_REQUIRE=lerobot" in failed.stdout, failed.stdout[-2000:]
