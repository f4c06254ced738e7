"""The reading side of a channel, shared by all its callers: one reader at a time
(whoever waits reads for everyone), each reply delivered to its call's slot, and one
failure for every call once the channel breaks.

Below ``Connection`` (which sends and waits) so that reading and failing read as one
concern; the callers' side is ``_connection``, calls that settle on their own ``_settling``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import ProtocolError
from . import _frames
from ._channel import Channel
from ._decoder import FrameDecoder
from ._frames import Notification, Request, Response

__all__ = [
    "FailureExplainer",
    "NotificationHandler",
    "Reader",
    "Slot",
    "run_callback",
    "run_callbacks",
    "run_hook",
]

_log = logging.getLogger("compartments")


class Slot:
    """Where one call's reply lands. ``callback`` (if any) is run once it has, by the
    thread that read it, after that thread has let go of the reader's role and every lock:
    a callback may call the same compartment again."""

    __slots__ = (
        "callback", "deadline", "done", "eager", "error", "method", "on_timeout", "timeout",
        "value",
    )  # fmt: skip

    def __init__(
        self,
        callback: Callable[[Slot], None] | None = None,
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


class Reader:
    """The reader's role over one :class:`Channel`, its pending calls and its failure.

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
    ) -> None:
        self.channel = channel
        self.name = name
        self.max_message = max_message
        self._decoder = FrameDecoder(max_message=max_message, name=name)
        self._on_notification = on_notification
        self.explain_failure = explain_failure
        self._pending: dict[int, Slot] = {}
        # Calls whose caller stopped waiting (a timeout, a cancelled await): their late
        # replies are dropped. Only the parent adds to it, one per call it gave up on.
        self._abandoned: set[int] = set()
        # Replies read for slots with callbacks, to run once the reader has let go.
        self._ready: list[Slot] = []
        self._eager: list[Slot] = []
        # One-shot hooks run when the reader's role is next released (an event loop that
        # found another thread reading and stopped watching the fd meanwhile).
        self._release_hooks: list[Callable[[], None]] = []
        # `with self._lock` (C-level) wherever the condition's own lock is all we need;
        # Condition.__enter__/__exit__ are Python frames, and this is the hot path.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._waiters = 0  # threads in _cond.wait(): notify only when someone listens
        self._failure: BaseException | None = None
        self.responses_seen = 0
        #: Turns a remote error into a better one (a PermissionError into the
        #: PolicyViolation that caused it); set by the supervisor.
        self.translate_error: Callable[[BaseException], BaseException] | None = None

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def _become_reader(self, slot: Slot, deadline: float | None) -> bool:
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

    # -- reading -----------------------------------------------------------------------

    def _read_until(self, slot: Slot, deadline: float | None) -> None:
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
                run_callback(slot)

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
            run_hook(hook)

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

    def _run_ready(self, ready: list[Slot]) -> None:
        """Run finished calls' callbacks in a thread of their own: a callback is user code
        that may block, or call this compartment again (``_settling`` runs some itself)."""
        threading.Thread(
            target=run_callbacks, args=(ready,), daemon=True,
            name=f"compartments-callbacks-{self.name}",
        ).start()  # fmt: skip

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
            ready: list[Slot] = []
            hooks: list[Callable[[], None]] = []
            if not self._reading:
                ready, self._ready = self._ready, []
                hooks, self._release_hooks = self._release_hooks, []
        self.channel.close()
        self._decoder.close()
        if ready:
            self._run_ready(ready)
        for hook in hooks:
            run_hook(hook)
        raise failure.with_traceback(None)  # shared by every caller: do not let it grow

    def fail(self, cause: BaseException) -> None:
        """Mark the connection dead from outside (e.g. the child was killed)."""
        with contextlib.suppress(BaseException):  # recorded; callers see it on their calls
            self._fail(cause)

    def close(self) -> None:
        self.channel.close()
        self._decoder.close()


def run_callback(slot: Slot) -> None:
    callback = slot.callback
    if callback is None:
        return
    slot.callback = None
    try:
        callback(slot)
    except Exception:
        _log.exception("a compartment call's completion callback raised")


def run_callbacks(ready: list[Slot]) -> None:
    for slot in ready:
        run_callback(slot)


def run_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception:
        _log.exception("a compartment channel's release hook raised")
