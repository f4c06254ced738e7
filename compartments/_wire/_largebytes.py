"""Large bytes leave the msgpack frame as raw trailing bytes.

Embedded in msgpack, a payload is copied by the packer, by the unpacker's buffer and
again into the decoded ``bytes``. Bytes of :data:`TRAILING_MIN` and up instead follow
their frame's msgpack head unchanged (``sendmsg`` gathers them, and the receiver reads
them straight into the final ``bytes`` object), so they cost what a raw socket costs.
Below that size inline msgpack measured cheaper: an echo with both ends pinned to one
core, inline and trailing interleaved in one run, took 1.18-1.23x as long as trailing
bytes at 64 KiB, 1.02-1.13x at 96 KiB, 0.79-1.02x at 128 KiB and 0.63-0.82x at 192 KiB
(two runs). Trailing bytes cost more ``recvmsg`` calls and Python per frame, which the
copies of less than about 128 KiB do not.

There is no memfd path any more: at 64 MiB, filling and sealing a fresh memfd and
mapping it in the child measured 1.5x slower than trailing bytes in the same run, since
the socket recycles its buffers where a memfd needs fresh pages. Extension type 3 (a
memfd) is refused from every sender.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

__all__ = ["TRAILING_MIN", "TrailingBytes", "close_all", "offload", "unfilled_bytes"]

#: Bytes of at least this size travel after the frame's msgpack head, copied by no one.
#: Also the smallest trailing bytes a compartment may send (see ``_decoder``).
TRAILING_MIN = 128 << 10


class TrailingBytes:
    """Stands in for a bytes value while it is encoded: sent as-is after the head."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _maybe(value: Any) -> Any:
    if type(value) is not bytes or len(value) < TRAILING_MIN:
        return value
    return TrailingBytes(value)


def offload(
    args: Sequence[Any], kwargs: dict[str, Any], *, memfds: bool = True
) -> tuple[list[Any], dict[str, Any], list[Any]]:
    """Replace large top-level bytes arguments by trailing bytes.

    The third item is always empty and ``memfds`` is ignored: both remain for callers
    written when the parent sent memfds (they close the third item after sending).
    """
    if not args and not kwargs:
        return [], kwargs, []
    new_args = [_maybe(value) for value in args]
    new_kwargs = {key: _maybe(value) for key, value in kwargs.items()} if kwargs else kwargs
    return new_args, new_kwargs, []


def close_all(made: Sequence[Any]) -> None:
    """Nothing to close: :func:`offload` makes no memfds any more."""


# A fresh bytes object the receiver fills in place, so the kernel copies a payload
# straight into the object the callee gets. Nothing sees the object before it is filled:
# the decoder holds the frame back until then, and refuses one as a map key (a hash).
_bytes_from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_from_size.restype = ctypes.py_object
_bytes_from_size.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.restype = ctypes.c_void_p
_bytes_address.argtypes = [ctypes.py_object]


def unfilled_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new ``bytes`` of ``size`` bytes (at least 2, so never a cached one) and a
    writable view of its still uninitialised contents."""
    if size < 2:
        raise ValueError("unfilled bytes must be at least 2 bytes long")
    data: bytes = _bytes_from_size(None, size)
    buffer = (ctypes.c_char * size).from_address(_bytes_address(data))
    buffer.owner = data  # type: ignore[attr-defined]  # the view keeps the bytes alive
    return data, memoryview(buffer).cast("B")
