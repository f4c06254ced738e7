"""One end of the unix-domain socketpair between a parent and a compartment.

Kept deliberately small: the per-call cost is one ``send``/``sendall`` and one
``recvmsg_into`` into a preallocated buffer. The socket stays blocking without a
timeout so CPython never adds a ``poll`` before the syscall, which keeps the
syscalls on the channel fd to exactly :data:`CHANNEL_SYSCALLS`.

A blocking receive is only ever made by a reader with no deadline. One that follows a
``poll`` passes ``nonblocking``: ``poll`` may say readable when a receive would still
block (an urgent byte sent with ``MSG_OOB``, which ``SO_OOBINLINE``, set on every
channel socket, turns into an ordinary byte and so a protocol error).
"""

from __future__ import annotations

import array
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ProtocolError
from ._decoder import FrameDecoder
from ._frames import DEFAULT_MAX_MESSAGE, MAX_FDS_PER_FRAME, FrameBytes
from ._sockets import (
    FD_ITEM,
    SCM_RIGHTS,
    SOL_SOCKET,
    close_quietly,
    dup_all,
    inline_urgent_data,
    received_fds,
    stream_socketpair,
)

__all__ = [
    "CHANNEL_SYSCALLS",
    "CHANNEL_TEARDOWN_SYSCALLS",
    "Channel",
    "frame_parts",
    "socketpair",
]

#: Syscalls the channel makes on its fd while running: ``send``/``sendall`` is
#: ``sendto`` in glibc, ``sendmsg`` only when a frame carries fds, and every receive is
#: ``recvmsg`` (always, so fds sent by the peer are never silently dropped).
#: ``recvfrom`` is listed for callers that ``recv`` on the fd directly.
CHANNEL_SYSCALLS: frozenset[str] = frozenset({"sendto", "sendmsg", "recvmsg", "recvfrom"})
#: Syscalls :meth:`Channel.close` makes (on the channel fd, and on received fds).
CHANNEL_TEARDOWN_SYSCALLS: frozenset[str] = frozenset({"shutdown", "close"})

# Enough for what a unix socket delivers per call (its send buffer is ~200 KiB).
RECEIVE_BUFFER_SIZE = 256 * 1024
# What is read at a frame boundary: all of an inline frame (below TRAILING_MIN, 128 KiB,
# every honest frame is inline), but little of a large one's trailing bytes, which are
# better received straight into their destination.
HEAD_RECEIVE_SIZE = 128 * 1024
_ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * FD_ITEM)
# Plain ints: the socket module's IntFlag members make `flags & X` a slow enum call.
_MSG_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000))
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
# Below IOV_MAX (1024): the iovecs one sendmsg may take.
_MAX_PARTS = 512
_SO_RCVTIMEO = int(socket.SO_RCVTIMEO)
# SO_RCVTIMEO of 0 means no timeout at all; a day is as good as for ever, and fits.
_MIN_RECEIVE_TIMEOUT = 1e-6
_MAX_RECEIVE_TIMEOUT = 86400.0
_RECEIVE_FLAGS = _MSG_CMSG_CLOEXEC
_NONBLOCKING_RECEIVE_FLAGS = _MSG_CMSG_CLOEXEC | _MSG_DONTWAIT


#: Called with the send's deadline while the peer's buffer is full; see Channel.send.
WhenFull = Callable[[float | None], None]
#: Called with the send's deadline, briefly, while another thread's frame goes out.
WhileBusy = Callable[[float | None], None]


class Channel:
    """Frames out (whole, thread-safe) and bytes plus fds in, over one stream socket.

    Sending is safe from many threads; receiving is meant for one reader thread.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        name: str = "channel",
    ) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError("Channel needs an AF_UNIX SOCK_STREAM socket")
        # Blocking without timeout: CPython then skips the poll() it does for timeouts.
        sock.settimeout(None)
        inline_urgent_data(sock)
        self.name = name
        self.max_message = max_message
        self._sock = sock
        self._send_lock = threading.Lock()
        self._buffer = bytearray(RECEIVE_BUFFER_SIZE)
        self._buffers = [memoryview(self._buffer)]
        self._head_buffers = [memoryview(self._buffer)[:HEAD_RECEIVE_SIZE]]
        self._closed = False
        self._receive_timeout = 0.0  # none: a blocking receive waits for ever

    def set_receive_timeout(self, seconds: float) -> None:
        """Bound every blocking receive by ``seconds`` (``SO_RCVTIMEO``; the kernel ends it
        with EAGAIN, which :meth:`receive_into` reads as nothing yet). Set only on change.

        It bounds the blocking receives of readers without a deadline too: they loop."""
        seconds = min(max(seconds, _MIN_RECEIVE_TIMEOUT), _MAX_RECEIVE_TIMEOUT)
        if seconds == self._receive_timeout:
            return
        whole = int(seconds)
        self._sock.setsockopt(
            SOL_SOCKET, _SO_RCVTIMEO, struct.pack("@ll", whole, int((seconds - whole) * 1e6))
        )
        self._receive_timeout = seconds

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def new_decoder(self, *, from_parent: bool = False) -> FrameDecoder:
        """A decoder bounded by this channel's ``max_message`` and named after it."""
        return FrameDecoder(max_message=self.max_message, name=self.name, from_parent=from_parent)

    def send(
        self,
        data: FrameBytes | bytearray | memoryview,
        fds: Sequence[int] = (),
        *,
        when_full: WhenFull | None = None,
        while_busy: WhileBusy | None = None,
        deadline: float | None = None,
    ) -> None:
        """Write one whole frame (a buffer, or a list of parts written in order);
        ``fds`` ride along with its first bytes.

        Send exactly one frame per call when ``fds`` are given: the receiver
        attributes them to the frame that starts in the chunk they arrive with.

        Without ``when_full`` the write blocks until the peer has taken everything,
        which suits a compartment answering its parent. With it the socket is never
        blocked on: ``when_full(deadline)`` runs whenever the peer's buffer is full, to
        wait for room (reading the peer's replies meanwhile: it may be blocked sending
        them) or raise TimeoutError. Waiting for another thread's frame to go out also
        ends at ``deadline`` (a ``time.monotonic()`` value); a thread that must keep
        reading meanwhile passes ``while_busy``, called between short waits for the lock.
        """
        if fds and len(fds) > MAX_FDS_PER_FRAME:
            raise ValueError(f"at most {MAX_FDS_PER_FRAME} fds per frame, got {len(fds)}")
        lock = self._send_lock
        if not lock.acquire(False):
            self._wait_for_turn(deadline, while_busy)
        try:
            flags = 0 if when_full is None else _MSG_DONTWAIT
            if not fds and not isinstance(data, list):  # the common case: one sendto
                try:
                    sent = self._sock.send(data, flags)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                parts = [memoryview(data).cast("B")[sent:]]
            else:
                parts = frame_parts(data)
                if fds and not parts[0]:
                    raise ValueError("fds need at least one byte of frame to travel with")
            self._send_parts(parts, fds, flags, when_full, deadline)
        finally:
            lock.release()

    def _wait_for_turn(self, deadline: float | None, while_busy: WhileBusy | None) -> None:
        lock = self._send_lock
        if while_busy is None:
            if not lock.acquire(True, _seconds_left(deadline)):
                raise TimeoutError(f"`{self.name}`: another thread's frame is still being sent")
            return
        while not lock.acquire(False):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"`{self.name}`: another thread's frame is still being sent")
            while_busy(deadline)

    def send_or_defer(
        self, data: FrameBytes | bytearray | memoryview, fds: Sequence[int] = ()
    ) -> Callable[[WhenFull, float | None], None] | None:
        """Send one whole frame if the peer has room for it now, never blocking: for an
        event loop, which must not wait for a peer that stopped reading.

        None once it is all out. Otherwise a function ``finish(when_full, deadline)``
        that sends the rest as :meth:`send` would, for another thread to call (it must be
        called): until it returns, no other frame can start inside this one.
        """
        if fds and len(fds) > MAX_FDS_PER_FRAME:
            raise ValueError(f"at most {MAX_FDS_PER_FRAME} fds per frame, got {len(fds)}")
        lock = self._send_lock
        if not lock.acquire(False):  # another thread's frame is going out
            own = dup_all(fds)

            def send_all(when_full: WhenFull, deadline: float | None) -> None:
                try:
                    self.send(data, own, when_full=when_full, deadline=deadline)
                finally:
                    close_quietly(own, received=False)

            return send_all
        handed_on = False
        try:
            if not fds and type(data) is bytes:  # the common frame: one send, no views
                try:
                    sent = self._sock.send(data, _MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return None
                parts = [memoryview(data)[sent:]]
            else:
                parts = frame_parts(data)
            if fds and not parts[0]:
                raise ValueError("fds need at least one byte of frame to travel with")
            ancillary = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))] if fds else []
            while parts:
                try:
                    sent = self._sock.sendmsg(parts[:_MAX_PARTS], ancillary, _MSG_DONTWAIT)
                except BlockingIOError:
                    break
                ancillary, fds = [], ()  # the fds went with the first bytes
                parts = _unsent(parts, sent)
            if not parts:
                return None
            # The caller may close its fds once we return: the rest goes with our own.
            rest, rest_fds = parts, dup_all(fds)

            def finish(when_full: WhenFull, deadline: float | None) -> None:
                try:
                    self._send_parts(rest, rest_fds, _MSG_DONTWAIT, when_full, deadline)
                finally:
                    lock.release()
                    close_quietly(rest_fds, received=False)

            handed_on = True
            return finish
        finally:
            if not handed_on:
                lock.release()

    def send_nowait(
        self, parts: list[memoryview], fds: Sequence[int] = ()
    ) -> tuple[list[memoryview], Sequence[int]]:
        """Send what the peer has room for now, never blocking (nor waiting for the lock).

        Returns the parts still unsent and the fds still to go with their first byte
        (none once any byte went). For a server that must not be parked by one reader.
        """
        if not self._send_lock.acquire(False):
            return parts, fds
        try:
            while parts:
                ancillary = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))] if fds else []
                try:
                    sent = self._sock.sendmsg(parts[:_MAX_PARTS], ancillary, _MSG_DONTWAIT)
                except BlockingIOError:
                    break
                fds = ()
                parts = _unsent(parts, sent)
        finally:
            self._send_lock.release()
        return parts, fds

    def send_if_room(self, data: bytes, lock_wait: float = 0.0) -> bool:
        """Send one whole frame now, or nothing: False when the peer's buffer has no room
        or another thread's frame takes longer than ``lock_wait`` seconds to go out.

        For what may be dropped (a log record), never for what must arrive. Linux queues
        a unix stream send of up to about 32 KiB as one buffer, whole or not at all
        (EAGAIN); a larger frame the kernel takes only in part is finished blocking,
        since the stream must stay whole.
        """
        lock = self._send_lock
        if not (lock.acquire(True, lock_wait) if lock_wait > 0 else lock.acquire(False)):
            return False
        try:
            try:
                sent = self._sock.send(data, _MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if sent < len(data):
                self._sock.sendall(memoryview(data)[sent:])
            return True
        finally:
            lock.release()

    def _send_parts(
        self,
        parts: list[memoryview],
        fds: Sequence[int],
        flags: int,
        when_full: WhenFull | None,
        deadline: float | None,
    ) -> None:
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))] if fds else []
        while parts:
            try:
                sent = self._sock.sendmsg(parts[:_MAX_PARTS], ancillary, flags)
            except BlockingIOError:
                sent = 0
            else:
                ancillary = []  # the fds went with the first bytes
            parts = _unsent(parts, sent)
            if parts and when_full is not None:
                when_full(deadline)

    def receive_into(self, decoder: FrameDecoder, nonblocking: bool = False) -> bool:
        """One ``recvmsg``: feed what arrived (bytes and fds) to ``decoder``.

        Trailing bytes the decoder is waiting for are received straight into their
        destination. Returns False at end of stream. Raises ProtocolError if the peer
        sent more fds than fit (the kernel truncated them), after closing those that
        arrived. ``nonblocking`` (for a receive after ``poll``): nothing there yet is
        not an error, it feeds nothing and returns True.
        """
        target = decoder.trailing_target
        if target is not None:
            buffers = [target]
        elif decoder.between_frames:  # a short read: trailing bytes must not land here
            buffers = self._head_buffers
        else:
            buffers = self._buffers
        try:
            nbytes, ancdata, flags, _ = self._sock.recvmsg_into(
                buffers,
                _ANCILLARY_SIZE,
                _NONBLOCKING_RECEIVE_FLAGS if nonblocking else _RECEIVE_FLAGS,
            )
        except BlockingIOError:
            return True
        fds = received_fds(ancdata) if ancdata else []
        if flags & _MSG_CTRUNC:
            close_quietly(fds)
            raise ProtocolError(
                f"`{self.name}` sent more than {MAX_FDS_PER_FRAME} fds in one frame"
            )
        if nbytes == 0:
            close_quietly(fds)
            return False
        if target is None:
            decoder.feed(buffers[0][:nbytes], fds)
        else:
            decoder.trailing_received(nbytes, fds)
        return True

    def shutdown(self) -> None:
        """End the connection for both sides, waking a reader blocked in :meth:`receive_into`.

        Unlike :meth:`close` this acts on the shared socket, so never call it on a
        copy inherited across ``fork()`` that merely needs dropping.
        """
        with contextlib.suppress(OSError):  # already closed, or the peer is gone
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close this process's fd; idempotent.

        Does not shut the connection down, so a forked child can drop its copy of the
        parent's end. To wake a reader blocked in another thread, :meth:`shutdown` first.
        """
        if self._closed:
            return
        self._closed = True
        self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<Channel {self.name!r} {state}>"


def socketpair(
    *, max_message: int = DEFAULT_MAX_MESSAGE, names: tuple[str, str] = ("parent", "child")
) -> tuple[Channel, Channel]:
    """Two connected channels (AF_UNIX, SOCK_STREAM, close-on-exec)."""
    left, right = stream_socketpair()
    return (
        Channel(left, max_message=max_message, name=names[0]),
        Channel(right, max_message=max_message, name=names[1]),
    )


def _parts(data: FrameBytes | bytearray | memoryview) -> list[Any]:
    return data if isinstance(data, list) else [data]


def frame_parts(data: FrameBytes | bytearray | memoryview) -> list[memoryview]:
    """A frame as byte views, for :meth:`Channel.send_nowait`."""
    return [memoryview(part).cast("B") for part in _parts(data)]


def _unsent(parts: list[memoryview], sent: int) -> list[memoryview]:
    for index, part in enumerate(parts):
        if sent < len(part):
            return [part[sent:], *parts[index + 1 :]]
        sent -= len(part)
    return []


def _seconds_left(deadline: float | None) -> float:
    """For ``Lock.acquire``: -1 waits forever."""
    return -1 if deadline is None else max(0.0, deadline - time.monotonic())


