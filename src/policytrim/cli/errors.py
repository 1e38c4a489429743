"""How the CLI reports a failure: one line on stderr (``error: ...``) and an exit code -- 2 for
bad input, 130 for Ctrl-C."""

from __future__ import annotations

import sys
from typing import NoReturn

from policytrim.errors import one_line


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)
