"""What channels are made of, below ``Channel``: AF_UNIX stream pairs with urgent data
inline on both ends, and the fds that ride a message as SCM_RIGHTS.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Sequence

from ._fd import close_received

__all__ = [
    "FD_ITEM",
    "SCM_RIGHTS",
    "SOL_SOCKET",
    "close_quietly",
    "dup_all",
    "inline_urgent_data",
    "received_fds",
    "stream_socketpair",
]

SOL_SOCKET = int(socket.SOL_SOCKET)
SCM_RIGHTS = int(socket.SCM_RIGHTS)
_SO_OOBINLINE = int(socket.SO_OOBINLINE)
FD_ITEM = array.array("i").itemsize



def inline_urgent_data(sock: socket.socket) -> None:
    """Set ``SO_OOBINLINE`` unless it is set: an ``MSG_OOB`` byte then arrives in the
    stream, where a receive after ``poll`` finds it (and the decoder refuses it).

    It acts on the receiving end, so the parent sets it on both ends of every pair it
    makes: a sealed compartment may check it, but not set it.
    """
    if not sock.getsockopt(SOL_SOCKET, _SO_OOBINLINE):
        sock.setsockopt(SOL_SOCKET, _SO_OOBINLINE, 1)


def stream_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected AF_UNIX stream pair, close-on-exec, with urgent data inline on both
    ends: what every channel between processes is made of."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    inline_urgent_data(left)
    inline_urgent_data(right)
    return left, right


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % FD_ITEM])
            fds.extend(received)
    return fds


def close_quietly(fds: Sequence[int], *, received: bool = True) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            if received:
                close_received(fd)
            else:
                os.close(fd)


def dup_all(fds: Sequence[int]) -> list[int]:
    """Our own copies of a frame's fds, for a thread that sends them later."""
    own: list[int] = []
    try:
        for fd in fds:
            own.append(os.dup(fd))
    except BaseException:
        close_quietly(own, received=False)
        raise
    return own
