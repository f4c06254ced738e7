"""The calling side of a channel: msgids, pipelining, timeouts and failure fan-out.

No reader thread: whichever caller is waiting reads the socket for everyone (leader and
followers), so a lone caller pays one send and one receive per call and no thread
hand-off, while many threads still pipeline their calls by msgid.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import CallTimeout, ProtocolError
from . import _frames
from ._channel import Channel
from ._decoder import FrameDecoder
from ._frames import Notification, Request, Response

__all__ = ["Connection"]

_log = logging.getLogger("compartments")

# A sender waiting for room re-checks this often whether it should read for everyone.
_SEND_POLL_SLICE = 0.05
# The reader waiting for another thread's frame to go out looks at the lock this often.
_BUSY_POLL_SLICE = 0.005
# The settler looks this often for a call sent since it began to wait whose timeout ends
# sooner than the one it waits for: how late such a Future's CallTimeout may be.
_SETTLE_SLICE = 0.25


class _Slot:
    """Where one call's reply lands. ``callback`` (if any) is run once it has, by the
    thread that read it, after that thread has let go of the reader's role and every lock:
    a callback may call the same compartment again."""

    __slots__ = (
        "callback", "deadline", "done", "eager", "error", "method", "on_timeout", "timeout",
        "value",
    )  # fmt: skip

    def __init__(
        self,
        callback: Callable[[_Slot], None] | None = None,
        method: str = "",
        deadline: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        *,
        eager: bool = False,
        timeout: float | None = None,
    ) -> None:
        #: The callback only hands the result on (to an event loop): it may run while
        #: the reader still reads, so an await is not held up by another thread's call.
        self.eager = eager
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.callback = callback
        self.method = method
        self.deadline = deadline
        self.timeout = timeout
        self.on_timeout = on_timeout


NotificationHandler = Callable[[str, list[Any]], None]
FailureExplainer = Callable[[BaseException], BaseException]


class Connection:
    """Thread-safe calls over one :class:`Channel`.

    ``explain_failure`` turns a low-level failure (EOF, a bad frame) into the error the
    callers should see, e.g. ``CompartmentCrashed`` with the child's exit signal.
    """

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
        self.channel = channel
        #: Time timed calls out with SO_RCVTIMEO rather than a poll per call. Off in a
        #: sealed compartment (its peer calls), which may not setsockopt.
        self.kernel_timeouts = kernel_timeouts
        self.name = name
        self.max_message = max_message
        self._decoder = FrameDecoder(max_message=max_message, name=name)
        self._on_notification = on_notification
        self.explain_failure = explain_failure
        self._ids = itertools.count(1)
        self._pending: dict[int, _Slot] = {}
        # Calls whose caller stopped waiting (a timeout, a cancelled await): their late
        # replies are dropped. Only the parent adds to it, one per call it gave up on.
        self._abandoned: set[int] = set()
        # Replies read for slots with callbacks, to run once the reader has let go.
        self._ready: list[_Slot] = []
        self._eager: list[_Slot] = []
        #: An event loop's watch on this connection's fd, per loop (see _calls).
        self.watches: dict[Any, Any] = {}
        # One-shot hooks run when the reader's role is next released (an event loop that
        # found another thread reading and stopped watching the fd meanwhile).
        self._release_hooks: list[Callable[[], None]] = []
        # Calls sent by submit(): a settler thread reads for them while nobody else does.
        self._background: deque[tuple[int, _Slot]] = deque()
        # The same calls' deadlines, soonest first: a later call may have a shorter one.
        self._deadlines: list[tuple[float, int, _Slot]] = []
        self._settler: threading.Thread | None = None
        # `with self._lock` (C-level) wherever the condition's own lock is all we need;
        # Condition.__enter__/__exit__ are Python frames, and this is the hot path.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._waiters = 0  # threads in _cond.wait(): notify only when someone listens
        self._failure: BaseException | None = None
        self.calls_started = 0
        self.responses_seen = 0
        #: Turns a remote error into a better one (a PermissionError into the
        #: PolicyViolation that caused it); set by the supervisor.
        self.translate_error: Callable[[BaseException], BaseException] | None = None

    @property
    def failure(self) -> BaseException | None:
        return self._failure

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
    ) -> tuple[int, _Slot]:
        """Send a request. A peer that stops reading cannot block this past ``timeout``;
        if it does, the connection fails (half a frame may be out) and CallTimeout is raised.
        """
        slot = _Slot()
        return self._send_request(method, params, names, timeout, slot), slot

    def _send_request(
        self,
        method: str,
        params: Sequence[Any],
        names: Sequence[str] | None,
        timeout: float | None,
        slot: _Slot | None,
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
        call: tuple[int, _Slot],
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

    def _become_reader(self, slot: _Slot, deadline: float | None) -> bool:
        """Take the reader's role, unless our reply arrives first or time runs out.

        True only when this thread is now the one reader; False otherwise (check
        ``slot.done`` to tell a delivered reply from a timeout).
        """
        with self._lock:
            while self._reading and not slot.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._waiters += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiters -= 1
            if slot.done:
                return False
            self._reading = True
            return True

    def _abandon(self, msgid: int, slot: _Slot) -> None:
        with self._lock:
            if self._pending.pop(msgid, None) is not None:
                self._abandoned.add(msgid)

    def abandon(self, call: tuple[int, _Slot]) -> bool:
        """Stop waiting for a call (a cancelled await): its reply, when it comes, is
        dropped. False if the reply had already arrived."""
        msgid = call[0]
        with self._lock:
            if self._pending.pop(msgid, None) is None:
                return False
            self._abandoned.add(msgid)
            return True

    # -- settling without a waiting caller -------------------------------------------

    def start_background_call(
        self,
        method: str,
        params: Sequence[Any],
        callback: Callable[[_Slot], None],
        *,
        timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> tuple[int, _Slot]:
        """Send a call whose reply settles itself: a settler thread reads while no
        caller does, and ``callback`` runs when the reply (or the failure) is in."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = _Slot(callback, method, deadline, on_timeout, timeout=timeout)
        msgid = self._send_request(method, params, None, timeout, slot)
        with self._lock:
            if slot.done:
                return msgid, slot
            self._background.append((msgid, slot))
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, msgid, slot))
            if self._settler is not None:
                return msgid, slot
            settler = self._settler = threading.Thread(
                target=self._settle_background, name=f"compartments-settle-{self.name}",
                daemon=True,
            )  # fmt: skip
        settler.start()
        return msgid, slot

    def start_watched_call(
        self,
        method: str,
        params: Sequence[Any],
        callback: Callable[[_Slot], None],
        *,
        names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, _Slot]:
        """Send a call whose reply someone else watches for (an event loop reading
        the fd through :meth:`read_if_free`); ``callback`` runs when it is in."""
        slot = _Slot(callback, method, eager=True)
        return self._send_request(method, params, names, timeout, slot, on_loop=True), slot

    def read_if_free(self) -> bool:
        """Read what has arrived, unless another thread holds the reader's role.

        For an event loop's reader callback: never blocks. False when another thread is
        reading: it delivers what comes, and the loop should look again once it lets go
        (:meth:`when_reader_free`)."""
        if not self._claim_reader_if_free():
            return False
        try:
            self._receive(None, nonblocking=True)
        except (ProtocolError, OSError) as exc:
            # Explaining a failure waits for the child's exit (a child that closed its
            # channel and lives gets a second) and asks its zygote: not on an event loop.
            # That thread keeps the reader's role until every call has its error.
            threading.Thread(
                target=self._fail_then_release, args=(exc,), daemon=True,
                name=f"compartments-fail-{self.name}",
            ).start()  # fmt: skip
            return True
        except BaseException:  # recorded: every pending call has its error
            pass
        try:
            self._run_eager()
        finally:
            self._release_reader()
        return True

    def _fail_then_release(self, cause: BaseException) -> None:
        try:
            self.fail(cause)
        finally:
            self._release_reader()

    def when_reader_free(self, hook: Callable[[], None]) -> bool:
        """Run ``hook`` when the current reader lets go; False (and no hook) if nobody
        reads now, so the caller can read at once."""
        with self._lock:
            if not self._reading:
                return False
            self._release_hooks.append(hook)
            return True

    def _settle_background(self) -> None:
        """The settler: wait, as any caller would, for the oldest background call, until
        none is left, but only until the soonest deadline of them all (a later call may
        have a shorter timeout): each call that missed its own fails with CallTimeout."""
        while True:
            with self._lock:
                queue = self._background
                while queue and queue[0][1].done:
                    queue.popleft()
                if not queue:
                    self._settler = None
                    self._deadlines.clear()
                    return
                msgid, slot = queue[0]
                deadlines = self._deadlines
                while deadlines and deadlines[0][2].done:
                    heapq.heappop(deadlines)
                soonest = deadlines[0][0] if deadlines else None
            remaining = _SETTLE_SLICE
            if soonest is not None:
                remaining = min(max(soonest - time.monotonic(), 0.0), remaining)
            try:
                self.wait((msgid, slot), slot.method, remaining, abandon_on_timeout=False)
            except CallTimeout:
                self._expire_due()
            except BaseException:  # the slot has its error; its callback reports it
                pass

    def _expire_due(self) -> None:
        now = time.monotonic()
        due: list[_Slot] = []
        with self._lock:
            deadlines = self._deadlines
            while deadlines and (deadlines[0][2].done or deadlines[0][0] <= now):
                _, msgid, slot = heapq.heappop(deadlines)
                if self._pending.pop(msgid, None) is not None:
                    self._abandoned.add(msgid)
                    due.append(slot)
        for slot in due:
            self._expire(slot, CallTimeout(self.name, slot.method, slot.timeout or 0.0))

    def _expire(self, slot: _Slot, late: CallTimeout) -> None:
        with self._lock:
            if slot.done:
                return
            slot.error = late
            slot.done = True
        if slot.on_timeout is not None:
            with contextlib.suppress(Exception):
                slot.on_timeout()
        self._run_ready([slot])

    def _run_ready(self, ready: list[_Slot]) -> None:
        """Run finished calls' callbacks. A Future's done-callbacks are user code that may
        block, or wait for a later Future of this compartment: only the settler with no
        other call due runs them itself. Any other reader (an event loop, a caller with a
        deadline, the settler with replies still to read or expire) hands them to a
        thread of their own."""
        if threading.current_thread() is self._settler and not self._background_due():
            for slot in ready:
                _run_callback(slot)
            return
        threading.Thread(
            target=_run_callbacks, args=(ready,), daemon=True,
            name=f"compartments-callbacks-{self.name}",
        ).start()  # fmt: skip

    def _background_due(self) -> bool:
        with self._lock:
            queue = self._background
            while queue and queue[0][1].done:
                queue.popleft()
            return bool(queue)

    # -- reading -----------------------------------------------------------------------

    def _read_until(self, slot: _Slot, deadline: float | None) -> None:
        while not slot.done:
            if deadline is not None and not self._readable_before(deadline):
                return
            self._read_once(nonblocking=deadline is not None)

    def _read_once(self, mine: int | None = None, *, nonblocking: bool = False) -> Response | None:
        """One receive, its messages dispatched; only the reader may call this.

        The reply to msgid ``mine``, a call with no slot, is returned instead. A receive
        after ``poll`` is ``nonblocking``: readable is not a promise that it will not block.
        """
        try:
            found = self._receive(mine, nonblocking)
        except (ProtocolError, OSError) as exc:
            self._fail(exc)
        self._run_eager()
        return found

    def _receive(self, mine: int | None, nonblocking: bool) -> Response | None:
        """:meth:`_read_once` without failing the connection: its failure is raised."""
        decoder = self._decoder
        found = None
        if not self.channel.receive_into(decoder, nonblocking):
            raise ConnectionResetError(f"`{self.name}` closed its channel")
        while (message := decoder.next_message()) is not None:
            if type(message) is Response and message.msgid == mine:
                found = message
            else:
                self._dispatch(message)
        return found

    def _run_eager(self) -> None:
        if self._eager:
            with self._lock:
                eager, self._eager = self._eager, []
            for slot in eager:
                _run_callback(slot)

    def _claim_reader_if_free(self) -> bool:
        with self._lock:
            if self._reading:
                return False
            self._reading = True
            return True

    def _release_reader(self) -> None:
        with self._lock:
            self._reading = False
            if self._waiters:
                self._cond.notify_all()
            if not (self._ready or self._release_hooks):
                return
            ready, self._ready = self._ready, []
            hooks, self._release_hooks = self._release_hooks, []
        if ready:
            self._run_ready(ready)
        for hook in hooks:
            _run_hook(hook)

    def _readable_before(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN)
        return bool(poller.poll(remaining * 1000))

    def _dispatch(self, message: _frames.Message) -> None:
        if isinstance(message, Response):
            self._complete(message)
        elif isinstance(message, Notification):
            if self._on_notification is None:
                raise ProtocolError(f"`{self.name}` sent an unexpected notification")
            self._on_notification(message.method, message.params)
        elif isinstance(message, Request):
            raise ProtocolError(f"`{self.name}` sent a request; it may only answer")

    def _complete(self, response: Response) -> None:
        with self._lock:
            slot = self._pending.pop(response.msgid, None)
            if slot is None:
                if response.msgid in self._abandoned:
                    self._abandoned.discard(response.msgid)
                    return
                raise ProtocolError(
                    f"`{self.name}` answered msgid {response.msgid}, which was never sent"
                )
            self.responses_seen += 1
            if response.error is not None:
                slot.error = self._remote_error(response.error)
            else:
                slot.value = response.result
            slot.done = True
            if slot.callback is not None:
                (self._eager if slot.eager else self._ready).append(slot)
            if self._waiters:
                self._cond.notify_all()

    def _remote_error(self, payload: dict[Any, Any]) -> BaseException:
        error = _frames.decode_error(payload, self.name)
        return error if self.translate_error is None else self.translate_error(error)

    # -- failing ---------------------------------------------------------------------

    def _fail(self, cause: BaseException) -> NoReturn:
        """Fail every pending call and all future ones with one explained error."""
        with self._lock:
            first = self._failure is None
        if first:
            error = cause if self.explain_failure is None else self.explain_failure(cause)
        with self._lock:
            if self._failure is None:
                self._failure = error
            for slot in self._pending.values():
                slot.error = self._failure
                slot.done = True
                if slot.callback is not None:
                    self._ready.append(slot)
            self._pending.clear()
            self._abandoned.clear()
            self._ready.extend(self._eager)
            self._eager.clear()
            self._cond.notify_all()
            failure = self._failure
            # With no reader to hand them to, the failed calls' callbacks run here.
            ready: list[_Slot] = []
            hooks: list[Callable[[], None]] = []
            if not self._reading:
                ready, self._ready = self._ready, []
                hooks, self._release_hooks = self._release_hooks, []
        self.channel.close()
        self._decoder.close()
        if ready:
            self._run_ready(ready)
        for hook in hooks:
            _run_hook(hook)
        raise failure.with_traceback(None)  # shared by every caller: do not let it grow

    def fail(self, cause: BaseException) -> None:
        """Mark the connection dead from outside (e.g. the child was killed)."""
        with contextlib.suppress(BaseException):  # recorded; callers see it on their calls
            self._fail(cause)

    def close(self) -> None:
        self.channel.close()
        self._decoder.close()


def _run_callback(slot: _Slot) -> None:
    callback = slot.callback
    if callback is None:
        return
    slot.callback = None
    try:
        callback(slot)
    except Exception:
        _log.exception("a compartment call's completion callback raised")


def _run_callbacks(ready: list[_Slot]) -> None:
    for slot in ready:
        _run_callback(slot)


def _run_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception:
        _log.exception("a compartment channel's release hook raised")
