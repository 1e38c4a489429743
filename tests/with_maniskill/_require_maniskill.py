"""Skip (main suite) or fail (its own environment) when ManiSkill3 is not installed.

The main suite collects tests/ in .venv, where ManiSkill is absent by design: these tests skip there.
In .venv-maniskill (`bash scripts/run.sh test` sets POLICYTRIM_REQUIRE_MANISKILL=1) a missing
``mani_skill`` is a broken environment, so the tests fail instead of passing as skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REQUIRED = os.environ.get("POLICYTRIM_REQUIRE_MANISKILL") == "1" or os.path.basename(sys.prefix) == ".venv-maniskill"


def require_maniskill() -> None:
    if importlib.util.find_spec("mani_skill") is not None:
        return
    if REQUIRED:
        message = "mani_skill is not installed in this environment: bash scripts/run.sh setup-maniskill"
        pytest.fail(message, pytrace=False)
    reason = "ManiSkill3 is not installed (these tests run in .venv-maniskill: bash scripts/run.sh test-maniskill)"
    pytest.skip(reason, allow_module_level=True)
