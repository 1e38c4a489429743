"""How the CLI reports a failure: one line on stderr (``error: ...``) and an exit code -- 2 for
bad input and for what the user must fix on the machine (a full disk, a name too long), 130 for
Ctrl-C."""

from __future__ import annotations

import errno
import sys
from typing import NoReturn

from policytrim.errors import is_disk_full, one_line


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def machine_problem(exc: BaseException) -> str | None:
    """The one line for an error the user fixes on the machine rather than in the code (None for
    any other error, which stays a traceback: that is a bug to report). A training run marks itself
    first (`policytrim.train.rundir.RunDir.out_of_space`); this covers every other command."""
    filename = getattr(exc, "filename", None)
    where = f" writing {filename!r}" if filename else ""
    if is_disk_full(exc):
        return f"no space left on device{where}; free some space and run the command again"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {filename!r}; choose a shorter output path"
    return None
