"""The violation monitor: one thread answering every compartment's seccomp listener, which
no compartment may stop, slow past its budget, or make it block on.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .._policy import _seccomp
from .._text import printable
from . import _broker
from ._memory import TaskMemory as _Memory
from ._report import Violation, describe_violation

log = logging.getLogger("compartments")

__all__ = ["FLOOD_BURST", "FLOOD_RATE", "Listener", "ViolationMonitor", "monitor"]

Sink = Callable[[Violation], None]

#: A compartment may cost the monitor this many reports at once, then this many a second.
#: Each report costs the parent 50-250 us of CPU (measured here: ~200 us with logging,
#: ~40 us merely receiving and answering), so no cheaper way of answering bounds a flood:
#: above the rate the listener is closed, and the parent pays nothing more (see
#: ``ViolationMonitor``). The burst leaves room for legitimate bursts of harmless denials.
FLOOD_BURST = 2048
FLOOD_RATE = 100.0


@dataclass
class _Budget:
    """A compartment's report budget (a token bucket). It belongs to the compartment's
    name, not to one process: restarts, ``fresh=True`` calls and a Pool's fresh workers
    share it, or each new process would bring a new burst."""

    tokens: float = field(default_factory=lambda: float(FLOOD_BURST))
    refilled: float = field(default_factory=time.monotonic)

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(FLOOD_BURST), self.tokens + (now - self.refilled) * FLOOD_RATE)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Listener:
    fd: int
    compartment: str
    learn: bool
    sink: Sink
    budget: _Budget = field(default_factory=_Budget)

    def spend(self) -> bool:
        """Take one report from this compartment's budget."""
        return self.budget.spend()


class ViolationMonitor:
    """One thread answering every compartment's listener fd; nothing a compartment does
    may stop it.

    - Each notification is handled on its own: whatever decoding or recording raises,
      the notification is answered (EPERM), and the next one is served.
    - If the thread dies anyway (a BaseException), it is restarted: by itself as it
      unwinds, and by ``register``/``retire``/``ensure_running`` if it is found dead.
    - A compartment that floods denials (above ``FLOOD_RATE`` a second, after a burst of
      ``FLOOD_BURST``) stops costing the parent anything: its listener is closed and
      that is logged once, naming it. The kernel then answers its denied syscalls
      itself, with **ENOSYS, not EPERM** (kernel/seccomp.c answers a notification
      without a listener ENOSYS; measured here). The parent cannot make it EPERM: a
      loaded filter cannot change, and an EPERM filter stacked in the child would
      always win over the notifying one. ENOSYS is still a denial: the call never runs,
      and a libc fallback it triggers (clone3 -> clone, openat2 -> openat) goes through
      the same filter. Those later denials are no longer reported or translated into
      ``PolicyViolation``. Learn mode is exempt: it lets every call through, and closing
      its listener would turn the run into ENOSYS failures.
    """

    def __init__(self) -> None:
        self._listeners: dict[int, Listener] = {}
        self._budgets: dict[str, _Budget] = {}
        self._retiring: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._restarts: deque[float] = deque(maxlen=8)

    @property
    def thread(self) -> threading.Thread | None:
        """The thread serving now (for tests and diagnostics)."""
        return self._thread

    def close_inherited(self) -> None:
        """Close this process's copies of the listener fds and the wake pipe."""
        for fd in [*self._listeners, self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._listeners.clear()

    def register(
        self, fd: int, compartment: str, sink: Sink, *, learn: bool = False
    ) -> Listener:
        """Take ownership of a listener fd; it is closed when its compartment is gone."""
        with self._lock:
            budget = self._budgets.setdefault(compartment, _Budget())
        listener = Listener(fd, compartment, learn, sink, budget)
        with self._lock:
            self._listeners[fd] = listener
        self.ensure_running()
        self._wake()
        return listener

    def ensure_running(self) -> None:
        """Start the monitor thread if there is none, or if the last one died."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="compartments-violations", daemon=True
            )
            self._thread.start()

    def retire(self, listener: Listener, timeout: float = 2.0) -> None:
        """Close a listener now, from this thread's point of view.

        Only the monitor thread closes listeners, so a number it polls is never closed
        and reused under it; the caller waits until it has happened.
        """
        done = threading.Event()
        with self._lock:
            # Identity, not the number: a listener closed on hang-up may have had its
            # number reused by another compartment's since.
            if self._listeners.get(listener.fd) is not listener:
                return
            self._retiring[listener.fd] = done
        self.ensure_running()
        self._wake()
        done.wait(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already awake: the pipe is full
            os.write(self._wake_w, b"\0")

    def _close_retired(self) -> None:
        with self._lock:
            retiring, self._retiring = self._retiring, {}
            for fd in retiring:
                if self._listeners.pop(fd, None) is not None:
                    os.close(fd)
        for done in retiring.values():
            done.set()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the monitor must outlive anything
            log.error("the violation monitor stopped (%s); restarting it", type(exc).__name__)
        finally:
            self._restart()

    def _restart(self) -> None:
        now = time.monotonic()
        self._restarts.append(now)
        if len(self._restarts) == self._restarts.maxlen and now - self._restarts[0] < 1.0:
            time.sleep(0.1)  # failing on every pass: do not spin
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None
        self.ensure_running()

    def _serve(self) -> None:
        while True:
            self._close_retired()
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._lock:
                for fd in self._listeners:
                    poller.register(fd, select.POLLIN)
            for fd, events in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif events & select.POLLIN:
                    self._answer(fd)
                else:
                    self._forget(fd)

    def _answer(self, fd: int) -> None:
        with self._lock:
            listener = self._listeners.get(fd)
        if listener is None:
            return
        notification = _seccomp.receive_notification(fd)
        if notification is None:
            return
        if self._brokered(listener, notification):
            return
        flooded = False
        try:  # from here on, whatever happens, the notification is answered
            flooded = not listener.learn and not listener.spend()
            if not flooded:
                self._report(listener, notification)
        finally:
            # Record first, answer second: the caller's reply then always finds it.
            _seccomp.respond(fd, notification.id, error=errno.EPERM, proceed=listener.learn)
            if flooded:
                self._silence(listener)

    def _brokered(self, listener: Listener, notification: _seccomp.Notification) -> bool:
        """Serve a read under the import roots (``_broker``); True once it is answered.

        In learn mode such a read is let through unrecorded: it needs no grant.
        """
        try:
            memory = _Memory(
                notification.pid,
                functools.partial(_seccomp.notification_valid, listener.fd, notification.id),
            )
            syscall = _seccomp.syscall_name(notification.syscall)
            request = _broker.parse(syscall, notification.args, notification.pid, memory)
            if request is None or not request.servable:
                return False
            if listener.learn:
                _seccomp.respond(listener.fd, notification.id, proceed=True)
                return True
            return _broker.serve(listener.fd, notification, request, memory, owner=listener)
        except Exception as exc:  # a request is not worth the monitor: deny it instead
            log.error("serving a read of compartment `%s` failed (%s)",
                      printable(listener.compartment), type(exc).__name__)  # fmt: skip
            return False

    def _report(self, listener: Listener, notification: _seccomp.Notification) -> None:
        """Describe and record one notification; an Exception costs only this report."""
        syscall = _seccomp.syscall_name(notification.syscall)
        try:
            memory = _Memory(
                notification.pid,
                functools.partial(_seccomp.notification_valid, listener.fd, notification.id),
            )
            violation = describe_violation(
                listener.compartment, notification.pid, syscall, notification.args, memory
            )
        except Exception as exc:  # a report is not worth the monitor
            log.error("decoding a denied %s of compartment `%s` failed (%s)",
                      syscall, printable(listener.compartment), type(exc).__name__)  # fmt: skip
            violation = Violation(listener.compartment, notification.pid, syscall,
                                  notification.args, f"{syscall}(?)", time.time(), "")  # fmt: skip
        try:
            listener.sink(violation)
        except Exception as exc:
            log.error("recording a denied %s of compartment `%s` failed (%s)",
                      syscall, printable(listener.compartment), type(exc).__name__)  # fmt: skip

    def _silence(self, listener: Listener) -> None:
        log.warning(
            "compartment `%s` floods denied syscalls (over %d a second): its listener is "
            "closed, so the kernel now answers them ENOSYS, unreported",
            printable(listener.compartment), int(FLOOD_RATE),
        )  # fmt: skip
        self._forget(listener.fd)

    def _forget(self, fd: int) -> None:
        with self._lock:
            if self._listeners.pop(fd, None) is not None:
                os.close(fd)


_monitor: ViolationMonitor | None = None
_monitor_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked copy of the parent has no monitor thread, and must not answer the
    parent's listeners (it would steal their reports): it closes its copies."""
    global _monitor, _monitor_lock
    inherited, _monitor, _monitor_lock = _monitor, None, threading.Lock()
    if inherited is not None:
        inherited.close_inherited()


os.register_at_fork(after_in_child=_forget_in_child)


def monitor() -> ViolationMonitor:
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = ViolationMonitor()
        return _monitor
