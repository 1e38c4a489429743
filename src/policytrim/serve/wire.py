"""msgpack with numpy arrays, byte-compatible with openpi's ``openpi_client.msgpack_numpy``.

An array travels as a msgpack map ``{b"__ndarray__": True, b"data": raw bytes, b"dtype":
dtype.str, b"shape": shape}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": item,
b"dtype": dtype.str}``. Object, void (structured / sub-array) and complex dtypes are refused in
both directions, and so is any msgpack extension type: decoding never unpickles and never calls
anything but ``np.frombuffer``. Decoded arrays are read-only views of the message.

Before anything is decoded, `check_structure` walks the message's headers (skipping string, binary
and array payloads by their lengths) and refuses one holding more than ``max_objects`` values or
nesting deeper than ``max_depth``: a legal-size message can hold a million short map keys, which
msgpack would otherwise turn into a million Python objects (seconds of CPU, ~100 MB of memory). An
observation holds a few dozen values.

`pack` / `unpack` raise `policytrim.errors.InputError` with one line saying what was wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from policytrim import limits as L
from policytrim.errors import InputError

_ND, _NG = b"__ndarray__", b"__npgeneric__"
_REFUSED_KINDS = {"O": "object", "V": "void/structured", "c": "complex"}


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError:
        raise InputError("serving needs msgpack and websockets: pip install 'policytrim[serve]'") from None
    return msgpack


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise InputError(f"unknown numpy dtype {dtype!r} in message") from None
    if dt.kind in _REFUSED_KINDS or dt.hasobject:
        raise InputError(
            f"{_REFUSED_KINDS.get(dt.kind, 'object')} dtype {dt.str!r} is refused; send plain numeric arrays"
        )
    return dt


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
        if isinstance(obj, np.ndarray):
            return {
                _ND: True,
                b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str,
                b"shape": list(obj.shape),
            }
        return {_NG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} in a message")


def _decode(obj: dict) -> Any:
    if _ND in obj:
        dt = _check_dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise InputError(f"array shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(data, bytes):
            raise InputError("array data must be raw bytes")
        count = math.prod(shape)  # exact: no int64 wrap-around for absurd shapes
        if count * dt.itemsize != len(data):
            raise InputError(
                f"array of shape {tuple(shape)} and dtype {dt.str} needs {count * dt.itemsize} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if _NG in obj:
        dt = _check_dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"bad numpy scalar of dtype {dt.str}") from None
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise InputError(
        f"msgpack extension type {code} is refused (messages hold maps, lists, numbers, strings, bytes and arrays)"
    )


# msgpack type bytes (https://github.com/msgpack/msgpack/blob/master/spec.md) that are followed by a
# fixed number of payload bytes (nil, bool, numbers, fixext) / by a length of n bytes, then that many
# payload bytes (str, bin; ext adds one type byte) / by a count of n bytes of entries (array, map).
_FIXED = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
    0xD4: 2,
    0xD5: 3,
    0xD6: 5,
    0xD7: 9,
    0xD8: 17,
}
_SIZED = {
    0xC4: (1, 0),
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xC7: (1, 1),
    0xC8: (2, 1),
    0xC9: (4, 1),
    0xD9: (1, 0),
    0xDA: (2, 0),
    0xDB: (4, 0),
}  # type byte: (length bytes, extra bytes)
_ARRAY = {0xDC: 2, 0xDD: 4}  # type byte: count bytes
_MAP = {0xDE: 2, 0xDF: 4}
_TYPICAL = "an observation holds a few dozen"


def check_structure(
    data: bytes | bytearray | memoryview, max_objects: int = L.MAX_MESSAGE_OBJECTS, max_depth: int = L.MAX_MESSAGE_DEPTH
) -> None:
    """`InputError` if the msgpack ``data`` holds more than ``max_objects`` values (a map entry counts
    as two: key and value; an array's raw bytes as one) or nests containers deeper than ``max_depth``.

    Reads headers only and stops at the first value over a bound, so its cost is at most
    O(max_objects) whatever the message. A truncated or malformed message is left to the decoder,
    which says what is wrong with it."""
    buf = memoryview(data).cast("B")
    pos, count, end = 0, 0, len(buf)
    pending = [1]  # values still to read per open container; the bottom entry is the message itself
    while pending and pos < end:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        count += 1
        if count > max_objects:
            raise InputError(f"message holds more than {max_objects} values (keys, values and items); {_TYPICAL}")
        b = buf[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:
            continue  # fixint
        if 0xA0 <= b <= 0xBF:
            pos += b & 0x1F  # fixstr
            continue
        items = -1
        if 0x80 <= b <= 0x8F:
            items = 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            items = b & 0x0F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            size, extra = _SIZED[b]
            pos += size + extra + int.from_bytes(buf[pos : pos + size], "big")
        elif b in _ARRAY or b in _MAP:
            size = _ARRAY.get(b) or _MAP[b]
            items = int.from_bytes(buf[pos : pos + size], "big") * (2 if b in _MAP else 1)
            pos += size
        else:
            return  # 0xC1 (never used): malformed, the decoder says so
        if items >= 0:
            if count + items > max_objects:
                what = f"a map of {items // 2} entries" if b in _MAP or b <= 0x8F else f"a list of {items} items"
                raise InputError(f"message holds more than {max_objects} values ({what}); {_TYPICAL}")
            if len(pending) > max_depth:
                raise InputError(f"message nests containers more than {max_depth} deep; an observation nests three")
            pending.append(items)


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (dicts, lists, numbers, strings, bytes, numpy arrays/scalars)."""
    try:
        return _msgpack().packb(obj, default=_encode, use_bin_type=True)
    except TypeError as exc:
        raise InputError(str(exc)) from None


def unpack(data: bytes, max_objects: int = L.MAX_MESSAGE_OBJECTS, max_depth: int = L.MAX_MESSAGE_DEPTH) -> Any:
    """The object in msgpack ``data``; malformed or refused content (see `check_structure` for the
    bounds) is an `InputError`."""
    msgpack = _msgpack()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected a binary msgpack message, got {type(data).__name__}")
    check_structure(data, max_objects, max_depth)
    try:
        return msgpack.unpackb(
            data,
            object_hook=_decode,
            ext_hook=_refuse_ext,
            raw=False,
            max_map_len=max_objects,
            max_array_len=max_objects,  # check_structure bounds these already
        )
    except InputError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # truncated, extra data, bad utf-8, ...
        detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        raise InputError(f"malformed msgpack message ({detail})") from None
