"""Progress of long-running phases (collect, pretrain, training epochs, validations, evaluations)
on stderr, in one place.

On a terminal a phase shows a tqdm bar. In a log (stderr is not a TTY: CI, ``2> log``) a bar's
carriage-return updates would be hundreds of lines a minute, so a phase instead prints one plain
line every `every_s` seconds (``what: n/total unit, rate, eta``) and one when it ends, if it printed
any; a phase shorter than that prints nothing.

Rollouts count themselves: the rollout engine calls `rollout_finished` for every trajectory that
ends, and the innermost `episodes` phase counts them. Nothing is shown unless a caller turned it on
(`enabled`; the CLI does when ``logging.progress`` is true), so library calls stay quiet.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

EVERY_S_ENV = "POLICYTRIM_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0

_enabled: ContextVar[bool] = ContextVar("policytrim_progress_enabled", default=False)
_listener: ContextVar[Progress | None] = ContextVar("policytrim_progress_listener", default=None)


def every_s() -> float:
    """Seconds between two plain progress lines (``POLICYTRIM_PROGRESS_EVERY_S``, default 10)."""
    try:
        value = float(os.environ.get(EVERY_S_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value > 0 else DEFAULT_EVERY_S


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Show the progress of phases started inside this block (those not told otherwise)."""
    token = _enabled.set(bool(on))
    try:
        yield
    finally:
        _enabled.reset(token)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One phase: ``what`` (e.g. "collect"), ``total`` steps of ``unit``. ``show``: None = as
    `enabled` says. A tqdm bar on a terminal, plain lines in a log (module docstring)."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "it",
        initial: int = 0,
        show: bool | None = None,
        stream: TextIO | None = None,
        nested: bool = False,
    ) -> None:
        self.what, self.total, self.unit = what, int(total), unit
        self.n = self.start_n = int(initial)
        self.stream = stream or sys.stderr
        self.show = _enabled.get() if show is None else bool(show)
        self.postfix = ""
        self.t0 = self.last_line = time.monotonic()
        self.lines = 0
        self.every_s = every_s()
        self.bar = None
        if self.show and _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=self.n,
                desc=what,
                unit=unit,
                file=self.stream,
                leave=not nested,
                mininterval=0.5,
            )

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.show and time.monotonic() - self.last_line >= self.every_s:
            self._line()

    def wrap(self, iterable: Iterable[T]) -> Iterator[T]:
        """The items of ``iterable``, counting one step as each is done (like iterating a tqdm bar)."""
        for item in iterable:
            yield item
            self.update(1)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def _line(self, done: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        if done:
            text = f"{self.what}: {self.n}/{self.total} {self.unit}, done in {_duration(elapsed)}"
        else:
            eta = f", eta {_duration((self.total - self.n) / rate)}" if rate > 0 and self.total >= self.n else ""
            text = f"{self.what}: {self.n}/{self.total} {self.unit}, {rate:.3g} {self.unit}/s{eta}"
        print(text + (f" ({self.postfix})" if self.postfix else ""), file=self.stream, flush=True)
        self.last_line = now
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.show and (self.lines or time.monotonic() - self.t0 >= self.every_s):
            self._line(done=True)
        self.show = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def episodes(what: str, total: int) -> Iterator[Progress]:
    """A phase that counts finished rollouts (`rollout_finished`) inside this block."""
    phase = Progress(what, total, unit="ep", nested=True)
    token = _listener.set(phase)
    try:
        yield phase
    finally:
        _listener.reset(token)
        phase.close()


def rollout_finished(n: int = 1) -> None:
    """Called by the rollout engine for trajectories that ended (done or failed)."""
    phase = _listener.get()
    if phase is not None:
        phase.update(n)
