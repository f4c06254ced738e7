"""The calling side of a channel: msgids, pipelining, sends that read while they wait, and
timeouts (reading and failing are ``_reader``'s).

No reader thread: whichever caller is waiting reads the socket for everyone (leader and
followers), so a lone caller pays one send and one receive per call and no thread
hand-off, while many threads still pipeline their calls by msgid.
"""

from __future__ import annotations

import itertools
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CallTimeout
from . import _frames
from ._channel import Channel
from ._frames import Response
from ._reader import FailureExplainer, NotificationHandler, Reader, Slot

__all__ = ["Connection"]

# A sender waiting for room re-checks this often whether it should read for everyone.
_SEND_POLL_SLICE = 0.05
# The reader waiting for another thread's frame to go out looks at the lock this often.
_BUSY_POLL_SLICE = 0.005


class Connection(Reader):
    """Thread-safe calls over one :class:`Channel`."""

    def __init__(
        self,
        channel: Channel,
        *,
        name: str,
        on_notification: NotificationHandler | None = None,
        explain_failure: FailureExplainer | None = None,
        max_message: int = _frames.DEFAULT_MAX_MESSAGE,
        kernel_timeouts: bool = True,
    ) -> None:
        super().__init__(
            channel, name=name, on_notification=on_notification,
            explain_failure=explain_failure, max_message=max_message,
        )  # fmt: skip
        #: Time timed calls out with SO_RCVTIMEO rather than a poll per call. Off in a
        #: sealed compartment (its peer calls), which may not setsockopt.
        self.kernel_timeouts = kernel_timeouts
        self._ids = itertools.count(1)
        self.calls_started = 0

    # -- calling ---------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: Sequence[Any],
        *,
        timeout: float | None = None,
        names: Sequence[str] | None = None,
    ) -> Any:
        """Send a request and wait for its reply; raise what the compartment raised.

        When no other thread is reading, the caller becomes the reader before it sends
        and reads its own reply with no slot and no hand-off: the common case, kept short.
        """
        if not self._claim_reader_if_free():
            call = self.start_call(method, params, names=names, timeout=timeout)
            return self.wait(call, method, timeout)
        try:
            return self._call_as_reader(method, params, names, timeout)
        finally:
            self._release_reader()

    def _call_as_reader(
        self, method: str, params: Sequence[Any], names: Sequence[str] | None, timeout: float | None
    ) -> Any:
        msgid = self._send_request(method, params, names, timeout, None, as_reader=True)
        mine: Response | None = None
        if timeout is None:
            while mine is None:
                mine = self._read_once(msgid)
        elif not self.kernel_timeouts:
            deadline = time.monotonic() + timeout
            while mine is None:
                if not self._readable_before(deadline):
                    with self._lock:
                        self._abandoned.add(msgid)  # its reply may still come: drop it then
                    raise CallTimeout(self.name, method, timeout)
                mine = self._read_once(msgid, nonblocking=True)
        else:
            # A blocking receive the kernel ends at the deadline (SO_RCVTIMEO, set once per
            # timeout value): no poll per call. An early end reads nothing and loops.
            deadline = time.monotonic() + timeout
            self.channel.set_receive_timeout(timeout)
            while (mine := self._read_once(msgid)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    with self._lock:
                        self._abandoned.add(msgid)  # its reply may still come: drop it then
                    raise CallTimeout(self.name, method, timeout)
                self.channel.set_receive_timeout(remaining)
        self.responses_seen += 1
        if mine.error is not None:
            raise self._remote_error(mine.error)
        return mine.result

    def start_call(
        self,
        method: str,
        params: Sequence[Any],
        *,
        names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Slot]:
        """Send a request. A peer that stops reading cannot block this past ``timeout``;
        if it does, the connection fails (half a frame may be out) and CallTimeout is raised.
        """
        slot = Slot()
        return self._send_request(method, params, names, timeout, slot), slot

    def _send_request(
        self,
        method: str,
        params: Sequence[Any],
        names: Sequence[str] | None,
        timeout: float | None,
        slot: Slot | None,
        *,
        as_reader: bool = False,
        on_loop: bool = False,
    ) -> int:
        """Encode and send; ``slot`` (if any) is where the reply will be delivered.

        ``as_reader``: this thread holds the reader's role, so while the send waits
        (for room, or for another thread's frame) it must read: the peer may be blocked
        sending replies, and nobody else will take them. ``on_loop``: this thread is an
        event loop, which must not wait at all; a thread finishes a frame that does not
        fit now, and a failure reaches the call through its slot.
        """
        msgid = next(self._ids) & _frames.MAX_MSGID
        data, fds = _frames.encode_request(msgid, method, params, names=names)
        size = len(data) if type(data) is bytes else _frames.frame_size(data)
        if size > self.max_message:
            raise ValueError(
                f"call `{method}` to `{self.name}` is a {size}-byte frame, over the "
                f"compartment's max_message of {self.max_message} bytes"
            )
        with self._lock:
            if self._failure is not None:
                raise self._failure.with_traceback(None)  # shared: do not let it grow
            if slot is not None:
                self._pending[msgid] = slot
            self.calls_started += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        if on_loop:
            self._send_from_loop(data, fds, method, timeout, deadline)
            return msgid
        try:
            if as_reader:
                self.channel.send(
                    data, fds, when_full=self._room_as_reader,
                    while_busy=self._read_a_little, deadline=deadline,
                )  # fmt: skip
            else:
                self.channel.send(data, fds, when_full=self._while_send_blocked, deadline=deadline)
        except TimeoutError:
            self.fail(ConnectionResetError(f"call `{method}` could not be sent in {timeout:g}s"))
            raise CallTimeout(self.name, method, timeout or 0.0) from None
        except OSError as exc:
            self._fail(exc)
        return msgid

    def _send_from_loop(
        self, data: Any, fds: Sequence[int], method: str, timeout: float | None,
        deadline: float | None,
    ) -> None:  # fmt: skip
        try:
            finish = self.channel.send_or_defer(data, fds)
        except OSError as exc:  # explaining it waits for the child: not on the loop
            finish = None
            self._in_thread(self.fail, exc)
        if finish is not None:
            self._in_thread(self._finish_send, finish, method, timeout, deadline)

    def _finish_send(
        self, finish: Callable[..., None], method: str, timeout: float | None,
        deadline: float | None,
    ) -> None:  # fmt: skip
        """The rest of an event loop's frame, sent (and read for) as any thread would."""
        try:
            finish(self._while_send_blocked, deadline)
        except TimeoutError:  # the call's own timer, on the loop, reports CallTimeout
            self.fail(ConnectionResetError(f"call `{method}` could not be sent in {timeout:g}s"))
        except OSError as exc:
            self.fail(exc)

    def _in_thread(self, target: Callable[..., None], *args: Any) -> None:
        threading.Thread(
            target=target, args=args, daemon=True, name=f"compartments-send-{self.name}"
        ).start()

    def wait(
        self,
        call: tuple[int, Slot],
        method: str,
        timeout: float | None,
        *,
        abandon_on_timeout: bool = True,
    ) -> Any:
        """Wait for a reply. A timeout abandons the call unless told otherwise (a Future's
        ``result(timeout)`` only stops waiting; the reply can still be collected later)."""
        msgid, slot = call
        deadline = None if timeout is None else time.monotonic() + timeout
        while not slot.done:
            if not self._become_reader(slot, deadline):
                if slot.done:
                    break
                if abandon_on_timeout:
                    self._abandon(msgid, slot)
                raise CallTimeout(self.name, method, timeout or 0.0)
            try:
                self._read_until(slot, deadline)
            finally:
                self._release_reader()
            if not slot.done and deadline is not None and time.monotonic() >= deadline:
                if abandon_on_timeout:
                    self._abandon(msgid, slot)
                raise CallTimeout(self.name, method, timeout or 0.0)
        if slot.error is not None:
            raise slot.error.with_traceback(None)  # may be the shared failure
        return slot.value

    def _while_send_blocked(self, deadline: float | None) -> None:
        """Wait until the peer has room for more of our frame, reading its replies
        meanwhile unless another thread is: the peer may be blocked sending them."""
        while True:
            reading = self._claim_reader_if_free()  # nobody else reads: we must
            try:
                if self._wait_for_room(deadline, reading):
                    return
            finally:
                if reading:
                    self._release_reader()

    def _room_as_reader(self, deadline: float | None) -> None:
        """The same for a sender that already holds the reader's role: always read."""
        while not self._wait_for_room(deadline, True):
            pass

    def _wait_for_room(self, deadline: float | None, reading: bool) -> bool:
        """One slice of waiting for room; True once there is (or an error to report)."""
        wait = _SEND_POLL_SLICE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLOUT | (select.POLLIN if reading else 0))
        events = 0
        for _, happened in poller.poll(wait * 1000):
            events |= happened
        if events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            return True  # room, or an error the next send reports
        if events & select.POLLIN:
            self._read_once(nonblocking=True)
        return False

    def _read_a_little(self, deadline: float | None) -> None:
        """The reader, waiting for another thread's frame to go out: read what comes
        meanwhile (that thread may be blocked until we do), then look at the lock again."""
        wait = _BUSY_POLL_SLICE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN)
        if poller.poll(max(wait, 0.0) * 1000):
            self._read_once(nonblocking=True)

    def _abandon(self, msgid: int, slot: Slot) -> None:
        with self._lock:
            if self._pending.pop(msgid, None) is not None:
                self._abandoned.add(msgid)

    def abandon(self, call: tuple[int, Slot]) -> bool:
        """Stop waiting for a call (a cancelled await): its reply, when it comes, is
        dropped. False if the reply had already arrived."""
        msgid = call[0]
        with self._lock:
            if self._pending.pop(msgid, None) is None:
                return False
            self._abandoned.add(msgid)
            return True
