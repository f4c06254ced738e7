"""A compartment's direct lines: channel fds placed in the runtime's fd block, and the
``PeerProxy`` that calls another compartment over one (with a timeout on every call).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from typing import Any

from .._wire import _frames, _largebytes
from .._wire._channel import Channel
from .._wire._connection import Connection
from .._wire._fd import closing_in_compartment
from .._wire._frames import Fd, PeerRef
from .._wire._sent_keys import check_keys_from_compartment
from ..errors import CallTimeout
from ..rulesets.runtime import (
    CHANNEL_FD_BASE,
    CHANNEL_FD_LIMIT,
)

__all__ = [
    "PEER_CALL_TIMEOUT",
    "PeerProxy",
    "channel_from_fd",
    "peer_timeout",
    "set_peer_timeout",
    "with_peers",
]


class _ChannelSlots:
    """Hands out free fd numbers in the reserved channel block, reusing closed ones.

    A number is free when ``fcntl(F_GETFD)`` says EBADF: the runtime allows that command
    on the block, and it needs no bookkeeping that a forgotten close could leak.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def place(self, fd: int) -> int:
        """Move ``fd`` into a free slot (closing ``fd``, even on failure)."""
        if CHANNEL_FD_BASE <= fd < CHANNEL_FD_LIMIT:
            return fd  # the kernel gave it a number in the block already
        with self._lock:
            try:
                slot = self._free_slot()
                os.dup2(fd, slot, inheritable=False)  # dup3, the one call allowed into the block
            finally:
                os.close(fd)
        return slot

    @staticmethod
    def _free_slot() -> int:
        for slot in range(CHANNEL_FD_BASE, CHANNEL_FD_LIMIT):
            try:
                fcntl.fcntl(slot, fcntl.F_GETFD)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return slot
                raise
        raise OSError(
            errno.EMFILE,
            f"no free channel slot: a compartment holds at most "
            f"{CHANNEL_FD_LIMIT - CHANNEL_FD_BASE} channels at once",
        )


_slots = _ChannelSlots()


def channel_from_fd(fd: Fd, name: str, kind: type[Channel] = Channel) -> Channel:
    """A channel on ``fd``, moved into the channel block. Only compartments hold channel
    slots, so this also marks the process as one (see ``_fd.closing_in_compartment``)."""
    closing_in_compartment()
    slot = _slots.place(fd.detach())
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=slot)
    except BaseException:
        os.close(slot)
        raise
    return kind(sock, name=name)


#: A peer call's timeout when the compartment has no default timeout: a sibling that
#: never answers must not hold the caller for ever (the parent cannot kill it for us).
PEER_CALL_TIMEOUT = 60.0


_peer_timeout = PEER_CALL_TIMEOUT


def peer_timeout() -> float:
    """The timeout of this compartment's peer calls (and of draining a peer's line)."""
    return _peer_timeout


def set_peer_timeout(timeout: float | None) -> None:
    """Peer calls and peer lines take the compartment's default timeout, if it has one."""
    global _peer_timeout
    _peer_timeout = PEER_CALL_TIMEOUT if timeout is None else float(timeout)


class PeerProxy:
    """Inside a compartment: a direct line to another compartment, no parent involved.

    Every call has a timeout (the compartment's default, else :data:`PEER_CALL_TIMEOUT`).
    A call that misses it closes the line, as the parent kills a compartment that misses
    one: the peer may be stuck, and every later call would queue behind it. The line's
    fd (a channel slot) is freed when the proxy is closed or dropped.
    """

    def __init__(
        self,
        peer: PeerRef,
        max_message: int = _frames.DEFAULT_MAX_MESSAGE,
        timeout: float | None = None,
    ) -> None:
        self._name = peer.name
        self._timeout = _peer_timeout if timeout is None else timeout
        self._connection = Connection(
            channel_from_fd(peer.fd, peer.name), name=peer.name, max_message=max_message,
            kernel_timeouts=False,  # sealed: no setsockopt
        )  # fmt: skip

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            sent, named, _ = _largebytes.offload(args, kwargs, memfds=False)
            # The peer decodes us as hostile: refuse here what would make it drop the line.
            check_keys_from_compartment(
                [sent, named], f"call `{method}` to peer `{self._name}`", "params"
            )
            try:
                return self._connection.call(method, [sent, named], timeout=self._timeout)
            except CallTimeout:
                self._connection.fail(
                    ConnectionResetError(
                        f"peer `{self._name}` did not answer `{method}` within "
                        f"{self._timeout:g}s; the line to it is closed"
                    )
                )
                raise

        call.__name__ = method
        return call

    def close(self) -> None:
        """Close the line (idempotent); later calls raise ConnectionResetError."""
        self._connection.fail(ConnectionResetError(f"the line to peer `{self._name}` is closed"))

    def __enter__(self) -> PeerProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.close()

    def __repr__(self) -> str:
        return f"<peer compartment {self._name!r}>"


def with_peers(value: Any, max_message: int) -> Any:
    return PeerProxy(value, max_message) if isinstance(value, PeerRef) else value
