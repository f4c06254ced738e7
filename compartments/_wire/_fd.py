"""File descriptors that travel with a call (SCM_RIGHTS): ``Fd`` and ``PeerRef``.

A received ``Fd`` owns its descriptor and closes it when dropped, so a peer cannot leak
descriptors into us; one passed by the caller is only borrowed. Closing a received
descriptor never lingers: a compartment could have set ``SO_LINGER`` on a socket whose
peer never reads, and ``close()`` would then block for as long as it chose.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import IO, Any, Protocol

__all__ = ["MAX_NAME_LENGTH", "Fd", "PeerRef", "close_received", "closing_in_compartment"]

MAX_NAME_LENGTH = 256

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_uint]  # fmt: skip
_NO_LINGER = struct.pack("ii", 0, 0)  # struct linger {l_onoff = 0, l_linger = 0}
_SOL_SOCKET, _SO_LINGER = int(socket.SOL_SOCKET), int(socket.SO_LINGER)
_unlinger = True


def closing_in_compartment() -> None:
    """Inside a sealed compartment ``setsockopt`` is denied (and reported), so received
    fds are closed as they are; only the parent turns lingering off."""
    global _unlinger
    _unlinger = False


def close_received(fd: int) -> None:
    """Close a descriptor that came from another process, without lingering.

    One ``setsockopt`` (ENOTSOCK for anything but a socket, ignored) right before the
    ``close``: the sender may hold the same socket and set ``SO_LINGER`` again at any time.
    """
    _stop_lingering(fd)
    os.close(fd)


def _stop_lingering(fd: int) -> None:
    if _unlinger:
        _libc.setsockopt(fd, _SOL_SOCKET, _SO_LINGER, _NO_LINGER, len(_NO_LINGER))


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Fd:
    """A file descriptor that travels with a call, duplicated into the receiver.

    Sending side: ``Fd(fileobj_or_int)`` borrows the descriptor (and keeps the file
    object alive until sent); it is never closed by this library. Receiving side: the
    ``Fd`` owns a fresh descriptor; use it as a context manager, ``close()`` it,
    ``detach()`` it, or turn it into a file/socket. An owned ``Fd`` that is dropped
    closes its descriptor, so a peer cannot leak descriptors into us.
    """

    __slots__ = ("__weakref__", "_fd", "_keepalive", "_owned")

    def __init__(self, fileobj: int | _HasFileno) -> None:
        if isinstance(fileobj, bool):
            raise TypeError("Fd needs a file descriptor or an object with fileno(), got a bool")
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"Fd needs a non-negative file descriptor, got {fd!r}")
        self._fd = fd
        self._owned = False
        self._keepalive: object = fileobj

    @classmethod
    def _adopt(cls, fd: int) -> Fd:
        """Wrap a descriptor just received from a peer; the ``Fd`` now owns it."""
        self = cls(fd)
        self._owned = True
        self._keepalive = None
        return self

    @property
    def owned(self) -> bool:
        """True when closing this ``Fd`` closes the descriptor (received ones)."""
        return self._owned

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("Fd is closed or detached")
        return self._fd

    def detach(self) -> int:
        """Hand the descriptor over to the caller, who must close it.

        A received socket is handed over with lingering off, as the sender may have
        turned it on; a sender that can still set it again (one allowed setsockopt) can
        make the new owner's close linger, so close such sockets through ``Fd``.
        """
        fd = self.fileno()
        if self._owned:
            _stop_lingering(fd)
        self._fd, self._owned, self._keepalive = -1, False, None
        return fd

    def close(self) -> None:
        fd, owned = self._fd, self._owned
        self._fd, self._owned, self._keepalive = -1, False, None
        if owned and fd >= 0:
            close_received(fd)

    def open(self, mode: str = "rb", buffering: int = -1, **kwargs: Any) -> IO[Any]:
        """A file object that takes over the descriptor (closing it closes the fd)."""
        return open(self.detach(), mode, buffering, closefd=True, **kwargs)

    def socket(self) -> socket.socket:
        """A socket object that takes over the descriptor."""
        return socket.socket(fileno=self.detach())

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            fd, owned = self._fd, self._owned
            self._fd, self._owned = -1, False
            if owned and fd >= 0:
                close_received(fd)
        except (AttributeError, OSError):  # half-built by a failed __init__, or gone
            pass

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else ("owned" if self._owned else "borrowed")
        return f"Fd({self._fd}, {state})"


class PeerRef:
    """A reference to another compartment: its channel's fd plus its name.

    The runtime sends one when a compartment is handed a proxy to another; the
    receiver gets a ``PeerRef`` whose ``fd`` is an owned :class:`Fd`.
    """

    __slots__ = ("fd", "name")

    def __init__(self, fd: Fd | int | _HasFileno, name: str) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"PeerRef name must be a str of 1..{MAX_NAME_LENGTH} chars")
        self.fd = fd if isinstance(fd, Fd) else Fd(fd)
        self.name = name

    def __repr__(self) -> str:
        return f"PeerRef({self.fd!r}, {self.name!r})"
