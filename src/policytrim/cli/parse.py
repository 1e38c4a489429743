"""Command-line arguments to a command's dataclass (`policytrim.cli.flags`), in layers: the
``--preset``, then the ``--config`` file on top of it, then the flags on top of both (tyro); tyro's
boxed errors become one line."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import typing
from typing import Annotated

import tyro

from policytrim.cli.errors import fail
from policytrim.config import RunConfig, from_dict, layered_config, to_dict
from policytrim.errors import InputError


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _defaults(cls: type, argv: list[str]) -> object | None:
    """Base instance from the layers under the flags: --preset, then --config on top of it."""
    if not issubclass(cls, RunConfig):
        return None
    config_file = _flag_value(argv, "--config")
    preset = _flag_value(argv, "--preset")
    if preset is None:
        preset = next((f.default for f in dataclasses.fields(cls) if f.name == "preset"), "")
    if not (config_file or preset):
        return None
    return from_dict(cls, to_dict(layered_config(preset, config_file or "")))


def _one_line(captured: str) -> str:
    """tyro's boxed error message as one line: the box's first paragraph, unwrapped."""
    text: list[str] = []
    for line in captured.splitlines()[1:]:  # the first line is the box's title
        content = line.strip().strip("│┃|").strip()
        if not content or set(content) <= set("─━╰╯-+="):  # rich draws ASCII boxes without UTF-8
            if text:
                break
            continue
        text.append(content)
    message = " ".join(text) if text else " ".join(captured.split())
    return re.sub(r"^Error parsing (?!-)[\w.-]+: ", "", message)


def _sequence_flags(cls: type, prefix: str = "") -> set[str]:
    """The flags of every tuple-typed field of a command (dotted and dashed spellings, aliases)."""
    flags: set[str] = set()
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        path = prefix + name
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        if dataclasses.is_dataclass(base):
            flags |= _sequence_flags(base, f"{path}.")
        elif typing.get_origin(base) is tuple:
            aliases = [a for m in typing.get_args(hint)[1:] for a in (getattr(m, "aliases", None) or ())]
            flags |= {f"--{path}", f"--{path.replace('_', '-')}", *aliases}
    return flags


def _check_no_empty_sequences(cls: type, argv: list[str]) -> None:
    """tyro reads a list flag given without values (``--stage1.windows``) as an empty list, which
    for some fields silently means "the default": refuse it instead."""
    flags = _sequence_flags(cls)
    for i, arg in enumerate(argv):
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            raise InputError(
                f"{arg} was given without values: give at least one value, or leave the flag out for the default"
            )


def parse(cls: type, argv: list[str], prog: str) -> object:
    """An instance of the command dataclass ``cls`` from ``argv``; bad flags: one line, exit 2."""
    buf = io.StringIO()
    try:
        _check_no_empty_sequences(cls, argv)
        default = _defaults(cls, argv)
        with contextlib.redirect_stderr(buf):
            return tyro.cli(cls, args=argv, default=default, prog=prog, description=cls.__doc__)
    except SystemExit as exc:
        if exc.code not in (0, None):
            fail(f"{prog}: {_one_line(buf.getvalue())}")
        sys.stderr.write(buf.getvalue())
        raise
