"""The `policytrim` command line: the top floor. It parses flags into a config
(`policytrim.cli.parse`, the flags of each command in `policytrim.cli.flags`), calls library
functions a user could call from Python too (`policytrim.cli.commands`), prints and sets the exit
code (`policytrim.cli.errors`). Nothing in the library imports it.

Every command that runs something accepts the whole `RunConfig` tree as flags
(``--stage1.lr 1e-4``), a base file (``--config FILE.yaml``) or a named preset (``--preset demo``),
in layers: the preset, then the file on top, then the flags on top of both. Bad input: one line on
stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from policytrim import progress
from policytrim.cli import commands
from policytrim.cli.errors import fail, machine_problem
from policytrim.cli.flags import COMMANDS
from policytrim.cli.parse import parse
from policytrim.config import RunConfig
from policytrim.errors import InputError
from policytrim.preflight import check_preconditions

# What each command runs (`policytrim.cli.commands`): parse -> config -> library call -> print.
HANDLERS: dict[str, Callable[[Any], int]] = {
    "demo": commands.demo,
    "collect": commands.collect,
    "convert": commands.convert,
    "pretrain": commands.pretrain,
    "train": commands.train,
    "eval": commands.evaluate,
    "ablate": commands.ablate,
    "report": commands.report,
    "config": commands.config,
    "serve": commands.serve,
}


def _usage() -> str:
    lines = ["usage: policytrim <command> [flags]   (policytrim <command> --help for its flags)", "", "commands:"]
    for name, cls in COMMANDS.items():
        lines.append(f"  {name:<9} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def _launched_by_torchrun() -> bool:
    """``WORLD_SIZE`` > 1 (read here so that other commands never import torch.distributed)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def dispatch(name: str, args: object) -> int:
    """Run one parsed command; every command that runs something first checks what it shares with
    the others (output writable, device, logging back-ends) before anything is written."""
    if name != "config" and isinstance(args, RunConfig):  # a resumed run writes into its own directory
        # pretrain steps the simulator only to evaluate, and checks that itself (`policytrim.train.bc`)
        check_preconditions(args, getattr(args, "resume", "") or args.logging.out, simulator=name != "pretrain")
    # the progress of every phase inside (collect, pretrain, epochs, validations, evaluations) on stderr
    with progress.enabled(isinstance(args, RunConfig) and args.logging.progress):
        return int(HANDLERS[name](args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    as_program = argv is None  # the console script / python -m, not a call from Python code
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        fail(f"unknown command {name!r}; commands are: {', '.join(COMMANDS)}")
    try:
        args = parse(COMMANDS[name], rest, prog=f"policytrim {name}")
        code = dispatch(name, args)
    except InputError as exc:
        fail(str(exc))
    except PermissionError as exc:  # what the up-front checks cannot see (e.g. sysfs refuses root)
        fail(f"permission denied: {exc.filename!r} ({exc.strerror})")
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a training run says how to resume)
        fail(str(exc) or "interrupted", code=130)
    except Exception as exc:  # a full disk, a name too long: one line; anything else is a bug
        message = machine_problem(exc)
        if message is None:
            raise
        fail(message)
    if code == 0 and as_program and name == "train" and _launched_by_torchrun():
        from policytrim.train.distributed import exit_after_success

        exit_after_success(code)  # see there: a finished rank could abort in the interpreter's teardown
    return code
