"""msgpack with numpy arrays, byte-compatible with openpi's ``openpi_client.msgpack_numpy``.

An array travels as a msgpack map ``{b"__ndarray__": True, b"data": raw bytes, b"dtype":
dtype.str, b"shape": shape}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": item,
b"dtype": dtype.str}``. Object, void (structured / sub-array) and complex dtypes are refused in
both directions, and so is any msgpack extension type: decoding never unpickles and never calls
anything but ``np.frombuffer``. Decoded arrays are read-only views of the message.

`pack` / `unpack` raise `policytrim.errors.InputError` with one line saying what was wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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
        raise InputError(f"{_REFUSED_KINDS.get(dt.kind, 'object')} dtype {dt.str!r} is refused; send plain numeric arrays")
    return dt


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
        if isinstance(obj, np.ndarray):
            return {_ND: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
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
            raise InputError(f"array of shape {tuple(shape)} and dtype {dt.str} needs {count * dt.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if _NG in obj:
        dt = _check_dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"bad numpy scalar of dtype {dt.str}") from None
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise InputError(f"msgpack extension type {code} is refused (messages hold maps, lists, numbers, strings, bytes and arrays)")


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (dicts, lists, numbers, strings, bytes, numpy arrays/scalars)."""
    try:
        return _msgpack().packb(obj, default=_encode, use_bin_type=True)
    except TypeError as exc:
        raise InputError(str(exc)) from None


def unpack(data: bytes) -> Any:
    """The object in msgpack ``data``; malformed or refused content is an `InputError`."""
    msgpack = _msgpack()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected a binary msgpack message, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, ext_hook=_refuse_ext, raw=False)
    except InputError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # truncated, extra data, bad utf-8, ...
        detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        raise InputError(f"malformed msgpack message ({detail})") from None
