"""Errors that mean "the user gave bad input" (the CLI reports them in one line, exit code 2)."""

from __future__ import annotations

import errno

MAX_MESSAGE_CHARS = 1500
"""An error line never exceeds this: a message that echoes a huge value (a YAML alias bomb, a pasted
array) keeps its beginning (what was wrong) and its end and says how much was cut."""


def one_line(message: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` on one line (whitespace runs become one space), cut in the middle past ``limit``."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    keep = (limit - 40) // 2
    return f"{text[:keep]} ... [{len(text) - 2 * keep} characters cut] ... {text[-keep:]}"


class InputError(ValueError):
    """Bad user input: a config value, a checkpoint, a dataset, a path. The message says what was
    wrong and what is accepted; it is one line of at most `MAX_MESSAGE_CHARS` (`one_line`)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))


class UnknownWords(InputError):
    """An instruction has words a word-embedding text encoder never saw (it has no vector for them):
    the policy cannot be asked that instruction. Its own type so a benchmark can record such a scene as
    refused by the policy while any other bad input still stops it."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` says the disk (or the user's quota) is full: an OSError with ENOSPC / EDQUOT, or
    safetensors' own error, which writes the file itself and reports the OS error inside its text."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    text = str(exc)
    return type(exc).__name__ == "SafetensorError" and ("No space left on device" in text or "StorageFull" in text)


class DiskFull(InputError):
    """The disk filled up while a command wrote its output. Not a fault of the code and not fixed by
    retrying at once: the user frees space and continues (a training run keeps its last complete
    checkpoint), so the CLI reports it like bad input, in one line with exit code 2."""
