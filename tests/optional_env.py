"""Skip or fail the tests of an optional environment (.venv-lerobot, .venv-libero, .venv-maniskill).

In the main environment, where LeRobot, LIBERO and ManiSkill3 are absent, their test modules skip. In their own
environment a missing or broken package must fail them instead of leaving "1 skipped" and a green
run: scripts/run.sh runs each such step with ``POLICYTRIM_REQUIRE=<extra>``, and there
`require_or_skip` turns the skip into a failure that names the import error."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_VAR = "POLICYTRIM_REQUIRE"


def required_extras() -> set[str]:
    """The extras ``POLICYTRIM_REQUIRE`` names (comma separated), e.g. {"lerobot"}."""
    return {name.strip() for name in os.environ.get(REQUIRE_VAR, "").split(",") if name.strip()}


def require_or_skip(module: str, extra: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip(module)``, except where ``extra`` is required (`required_extras`): there
    an import that fails, for whatever reason, fails the test module."""
    if extra not in required_extras():
        return pytest.importorskip(module, reason=reason)
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        pytest.fail(
            f"{REQUIRE_VAR}={os.environ[REQUIRE_VAR]}: the {extra} tests need {module}, which does not import "
            f"in this environment ({type(exc).__name__}: {exc})",
            pytrace=False,
        )
