"""Large payloads by memfd: bytes above a threshold travel as a sealed memfd, not inline.

Inline, 64 MiB crosses the socket in hundreds of chunks and is copied four times; as a
memfd it is written once and read once. Only the parent offloads (a sealed compartment
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

__all__ = ["THRESHOLD", "LargeBytes", "close_all", "offload", "read_by_pread"]

#: Bytes of at least this size go by memfd (1 MiB payloads stay inline: they are faster so).
THRESHOLD = 4 << 20

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class LargeBytes:
    """Stands in for a bytes argument while it is encoded: the memfd holding it."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size


def _to_memfd(data: bytes) -> LargeBytes:
    fd = os.memfd_create("compartments-payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view, written = memoryview(data), 0
    while written < len(data):
        written += os.pwrite(fd, view[written:], written)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # the receiver may map it: freeze it first
    return LargeBytes(fd, len(data))


def _maybe(value: Any, made: list[LargeBytes]) -> Any:
    if type(value) is bytes and len(value) >= THRESHOLD:
        large = _to_memfd(value)
        made.append(large)
        return large
    return value


def offload(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any], list[LargeBytes]]:  # noqa: E501
    """Replace large top-level bytes arguments by memfds; close them once sent."""
    made: list[LargeBytes] = []
    if not args and not kwargs:
        return [], kwargs, made
    new_args = [_maybe(value, made) for value in args]
    new_kwargs = {key: _maybe(value, made) for key, value in kwargs.items()} if kwargs else kwargs
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
_PROT_READ, _MAP_PRIVATE, _MAP_POPULATE = 1, 2, 0x8000
_MAP_FAILED = ctypes.c_void_p(-1).value


def read_by_mmap(fd: int, size: int) -> bytes:
    """Inside a sealed compartment: mmap is in the base set, pread is not.

    Only for memfds from the parent, which seals them against shrinking first.
    """
    if size == 0:
        return b""
    address = _libc.mmap(None, size, _PROT_READ, _MAP_PRIVATE | _MAP_POPULATE, fd, 0)
    if address in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a {size}-byte payload: {os.strerror(err)}")
    try:
        return ctypes.string_at(address, size)
    finally:
        _libc.munmap(address, size)


#: How a received payload fd is read; a sealed compartment switches to read_by_mmap.
reader: Callable[[int, int], bytes] = read_by_pread
