"""Crash-safe file writing (nothing half-written is ever read back) and the one JSON reader.

A file is written to a temporary sibling, flushed and fsynced, then renamed over its target
(`os.replace` is atomic on POSIX). A directory (a checkpoint, a dataset) is assembled under a
temporary name and renamed into place only when complete (`atomic_directory`, the one directory
writer). JSON side files are read by `read_json`, which turns every way they can be broken into
one `InputError` naming the file.

Test hook (crash-safety tests only, no effect otherwise): with the environment variable
``POLICYTRIM_TEST_KILL_AT=POINT:N`` the process SIGKILLs itself the N-th time it reaches `kill_point`
``POINT`` -- exactly a ``kill -9`` at that moment. Points: ``directory.swap`` (`atomic_directory`,
the old directory moved aside, the new one not yet in place), ``metrics.torn`` (`append_jsonl`, half
a line written), ``checkpoint.partial`` and ``checkpoint.pointer`` (`policytrim.train.checkpoint`),
``update.step`` (`policytrim.train.grpo.grpo_update`, after an optimiser step).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from policytrim.errors import InputError

KILL_AT_ENV = "POLICYTRIM_TEST_KILL_AT"
_kill_counts: dict[str, int] = {}


def kill_armed(point: str) -> bool:
    """True when the test hook (module docstring) wants this process killed at ``point`` now."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return False
    name, _, count = spec.partition(":")
    if name != point:
        return False
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    return _kill_counts[point] >= int(count or 1)


def kill_point(point: str) -> None:
    """Test hook (module docstring): SIGKILL this process here when asked to; otherwise nothing."""
    if kill_armed(point):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_dir(path: str | Path, flag: str) -> None:
    """InputError unless a directory can be created or written at ``path``, checked without writing
    anything: ``path`` and its nearest existing ancestor must be directories (not files), on a
    file system mounted read-write, and writable for this user. ``flag`` names the option in the
    message (e.g. ``--logging.out``).

    Not detectable without writing: a directory that refuses root on a special file system (sysfs
    refuses mkdir with EPERM even to root, whom permission bits do not stop). The CLI turns the
    PermissionError of the first write into one line; commands create their output early."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a file; a directory is written there")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a directory")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise InputError(f"{flag} {str(path)!r} cannot be written: {str(existing)!r} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {str(path)!r} cannot be written: no write permission in {str(existing)!r}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d torch tensors
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(data: Any, indent: int | None = 2) -> str:
    """JSON text for results and metadata (numpy / 0-d tensor scalars converted)."""
    return json.dumps(data, indent=indent, default=_json_default, allow_nan=True)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write_bytes(path, (to_json(data) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(
    path: str | Path, overwrite: bool = False, merge: bool = False, last: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary directory; on success it is renamed to ``path`` in one step. The one
    way policytrim writes a directory (checkpoints, datasets): nothing half-written is ever read.

    With ``overwrite`` an existing ``path`` is replaced (the old one is moved aside first and
    removed only after the new one is in place); without it an existing ``path`` is an error.
    With ``merge`` an existing directory ``path`` keeps its other files: the new entries are moved
    into it one by one (each an atomic `os.replace`; a directory entry of the same name is removed
    first), those named in ``last`` at the end -- a file that pins the others (a config holding the
    weights' SHA-256) goes last, so a crash in between leaves a set that is refused, never a
    silently mixed one. A ``path`` that does not exist appears in one rename either way.
    On an exception the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not (path.is_dir() if merge else overwrite):
        raise FileExistsError(f"{path} already exists" + (" and is not a directory" if merge else ""))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if merge and path.is_dir():
            for entry in sorted(tmp.iterdir(), key=lambda e: (last.index(e.name) + 1 if e.name in last else 0, e.name)):
                target = path / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
            _fsync_dir(path)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{os.urandom(4).hex()}")  # unique: pids repeat
            os.replace(path, old)
            kill_point("directory.swap")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(
    path: str | Path, name: str | None = None, missing_ok: bool = False, kind: type | None = dict, corrupt: str = ""
) -> Any:
    """Read, decode and parse the JSON file ``path`` (a side file: a config, a run's record, a
    dataset's meta) -- the one JSON reader of policytrim. Every failure is one `InputError`:

    - absent: ``None`` with ``missing_ok``, else "<name> is missing";
    - unreadable, not UTF-8 text or not JSON: "<name> is not valid JSON (<why>)<corrupt>";
    - of another type than ``kind`` (None: any): "<name> must hold a JSON object, got list".

    ``name`` is how the messages call the file (default: its path); ``corrupt`` is appended to the
    invalid-JSON message to say what that means for the caller (e.g. ": the checkpoint is corrupt").
    """
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        if missing_ok and not path.exists():
            return None
        raise InputError(f"{name} is missing" if not path.exists() else f"{name} is not a file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{name} is not valid JSON (not UTF-8 text){corrupt}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} is not valid JSON ({exc}){corrupt}") from None
    except RecursionError:
        raise InputError(f"{name} is not valid JSON (nested too deeply){corrupt}") from None
    except OSError as exc:
        raise InputError(f"{name} cannot be read ({exc.strerror or exc})") from None
    if kind is not None and not isinstance(data, kind):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        expected = "a JSON object" if kind is dict else f"{article} JSON {kind.__name__}"
        raise InputError(f"{name} must hold {expected}, got {type(data).__name__}")
    return data


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and fsync (the metrics log survives a kill -9 up to this line)."""
    line = to_json(record, indent=None) + "\n"
    with open(path, "a") as f:
        if kill_armed("metrics.torn"):
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file of JSON objects, ignoring a torn last line (a write cut off by a crash; a
    writer that goes on appending must first rewrite the file without it, see
    `RunDir.truncate_metrics`). Any other unreadable line is an InputError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not text (JSON lines expected)") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise InputError(f"{path} line {i + 1} is not valid JSON ({exc}): the file is corrupt") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {i + 1} must be a JSON object, got {type(record).__name__}")
        records.append(record)
    return records
