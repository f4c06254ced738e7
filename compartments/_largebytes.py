"""Large bytes leave the msgpack frame: as raw trailing bytes, or as a sealed memfd.

Embedded in msgpack, a payload is copied by the packer, by the unpacker's buffer and
again into the decoded ``bytes``. Bytes of :data:`TRAILING_MIN` and up instead follow
their frame's msgpack head unchanged (``sendmsg`` gathers them, and the receiver reads
them straight into the final ``bytes`` object), so they cost what a raw socket costs.

From :data:`THRESHOLD` up, the parent sends a sealed memfd instead: written once and
read once, never crossing the socket. Only the parent offloads (a sealed compartment
never needs memfd_create); a compartment reads what it receives with mmap, which its base
set already allows, and the parent reads what a compartment claims is a memfd with pread,
so a compartment that shrinks its memfd gets a ProtocolError, never a SIGBUS.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "THRESHOLD",
    "TRAILING_MIN",
    "LargeBytes",
    "TrailingBytes",
    "close_all",
    "offload",
    "read_by_pread",
    "unfilled_bytes",
]

#: Bytes of at least this size go by memfd when the parent sends them.
THRESHOLD = 4 << 20
#: Bytes of at least this size travel after the frame's msgpack head, copied by no one.
TRAILING_MIN = 32 << 10

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class LargeBytes:
    """Stands in for a bytes argument while it is encoded: the memfd holding it."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size


class TrailingBytes:
    """Stands in for a bytes value while it is encoded: sent as-is after the head."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _to_memfd(data: bytes) -> LargeBytes:
    fd = os.memfd_create("compartments-payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view, written = memoryview(data), 0
    while written < len(data):
        written += os.pwrite(fd, view[written:], written)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # the receiver may map it: freeze it first
    return LargeBytes(fd, len(data))


def _maybe(value: Any, made: list[LargeBytes] | None) -> Any:
    if type(value) is not bytes or len(value) < TRAILING_MIN:
        return value
    if made is None or len(value) < THRESHOLD:
        return TrailingBytes(value)
    large = _to_memfd(value)
    made.append(large)
    return large


def offload(
    args: Sequence[Any], kwargs: dict[str, Any], *, memfds: bool = True
) -> tuple[list[Any], dict[str, Any], list[LargeBytes]]:
    """Replace large top-level bytes arguments by trailing bytes or (``memfds``) memfds.

    Close the memfds (the third item) once the call is sent. A sealed compartment
    calling another passes ``memfds=False``: it may not create them.
    """
    made: list[LargeBytes] = []
    if not args and not kwargs:
        return [], kwargs, made
    collect = made if memfds else None
    new_args = [_maybe(value, collect) for value in args]
    new_kwargs = (
        {key: _maybe(value, collect) for key, value in kwargs.items()} if kwargs else kwargs
    )
    return new_args, new_kwargs, made


def close_all(made: Sequence[LargeBytes]) -> None:
    for large in made:
        os.close(large.fd)


def read_by_pread(fd: int, size: int) -> bytes:
    """Safe against a sender that truncates the file: a short read, never a SIGBUS."""
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PROT_READ, _MAP_PRIVATE, _MAP_POPULATE = 1, 2, 0x8000
_MADV_POPULATE_WRITE = 23
_PAGE = os.sysconf("SC_PAGESIZE")
_MAP_FAILED = ctypes.c_void_p(-1).value


def read_by_mmap(fd: int, size: int) -> bytes:
    """Inside a sealed compartment: mmap is in the base set, pread is not.

    Only for memfds from the parent, which seals them against shrinking first. The
    destination's pages are populated in one ``madvise`` rather than faulted in one at
    a time by the copy, which saves a sixth of the time at 64 MiB.
    """
    if size == 0:
        return b""
    address = _libc.mmap(None, size, _PROT_READ, _MAP_PRIVATE | _MAP_POPULATE, fd, 0)
    if address in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a {size}-byte payload: {os.strerror(err)}")
    try:
        if size < 2:
            return ctypes.string_at(address, size)
        data, _ = unfilled_bytes(size)
        destination: int = _bytes_address(data)
        first_page = -(-destination // _PAGE) * _PAGE
        last_page = (destination + size) // _PAGE * _PAGE
        if last_page > first_page:  # best effort: EINVAL before Linux 5.14 only costs time
            _libc.madvise(first_page, last_page - first_page, _MADV_POPULATE_WRITE)
        ctypes.memmove(destination, address, size)
        return data
    finally:
        _libc.munmap(address, size)


#: How a received payload fd is read; a sealed compartment switches to read_by_mmap.
reader: Callable[[int, int], bytes] = read_by_pread


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
