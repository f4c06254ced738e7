"""Calls that settle without a waiting caller: Futures, whose replies a settler thread
reads while no caller does, and awaits, whose event loop reads the fd when it is free.

Only the parent makes such calls (``_parent._calls``); a compartment's peer lines are
plain ``Connection`` calls.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CallTimeout, ProtocolError
from ._connection import Connection
from ._reader import Slot, run_callback

__all__ = ["SettlingConnection"]

# The settler looks this often for a call sent since it began to wait whose timeout ends
# sooner than the one it waits for: how late such a Future's CallTimeout may be.
_SETTLE_SLICE = 0.25


class SettlingConnection(Connection):
    """A :class:`Connection` whose calls may also settle on their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: An event loop's watch on this connection's fd, per loop (see _calls).
        self.watches: dict[Any, Any] = {}
        # Calls sent by submit(): a settler thread reads for them while nobody else does.
        self._background: deque[tuple[int, Slot]] = deque()
        # The same calls' deadlines, soonest first: a later call may have a shorter one.
        self._deadlines: list[tuple[float, int, Slot]] = []
        self._settler: threading.Thread | None = None

    def start_background_call(
        self,
        method: str,
        params: Sequence[Any],
        callback: Callable[[Slot], None],
        *,
        timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> tuple[int, Slot]:
        """Send a call whose reply settles itself: a settler thread reads while no
        caller does, and ``callback`` runs when the reply (or the failure) is in."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = Slot(callback, method, deadline, on_timeout, timeout=timeout)
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
        callback: Callable[[Slot], None],
        *,
        names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Slot]:
        """Send a call whose reply someone else watches for (an event loop reading
        the fd through :meth:`read_if_free`); ``callback`` runs when it is in."""
        slot = Slot(callback, method, eager=True)
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
        due: list[Slot] = []
        with self._lock:
            deadlines = self._deadlines
            while deadlines and (deadlines[0][2].done or deadlines[0][0] <= now):
                _, msgid, slot = heapq.heappop(deadlines)
                if self._pending.pop(msgid, None) is not None:
                    self._abandoned.add(msgid)
                    due.append(slot)
        for slot in due:
            self._expire(slot, CallTimeout(self.name, slot.method, slot.timeout or 0.0))

    def _expire(self, slot: Slot, late: CallTimeout) -> None:
        with self._lock:
            if slot.done:
                return
            slot.error = late
            slot.done = True
        if slot.on_timeout is not None:
            with contextlib.suppress(Exception):
                slot.on_timeout()
        self._run_ready([slot])

    def _run_ready(self, ready: list[Slot]) -> None:
        """Run finished calls' callbacks. A Future's done-callbacks are user code that may
        block, or wait for a later Future of this compartment: only the settler with no
        other call due runs them itself. Any other reader (an event loop, a caller with a
        deadline, the settler with replies still to read or expire) hands them to a
        thread of their own."""
        if threading.current_thread() is self._settler and not self._background_due():
            for slot in ready:
                run_callback(slot)
            return
        super()._run_ready(ready)

    def _background_due(self) -> bool:
        with self._lock:
            queue = self._background
            while queue and queue[0][1].done:
                queue.popleft()
            return bool(queue)
