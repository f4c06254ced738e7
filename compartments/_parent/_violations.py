"""What one compartment was denied: its recent violations, and the PermissionError a
denial caused turned into the ``PolicyViolation`` that names it.

A sealed compartment's filter sends denied syscalls to a user-notification listener that
the parent holds. The monitor thread (``_monitor``) records each one with its decoded
arguments (``_arguments``) and advice (``_advice``), logs it, and answers EPERM, so the
compartment sees exactly what a plain errno filter would give it. Allowed syscalls never
reach the listener and pay nothing.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from .._text import printable
from .._wire._frames import Fd
from ..errors import PolicyViolation, ProtocolError
from ._monitor import Listener, monitor
from ._report import Violation, log_violation

__all__ = ["ViolationLog", "log"]

log = logging.getLogger("compartments")


_MAX_KEPT = 1000
_fallback_reported = False


class ViolationLog:
    """What one compartment was denied (or, learning, used), and the errors it explains."""

    def __init__(self, compartment: str, *, learn: bool) -> None:
        self.compartment = compartment
        self.learn = learn
        self.recent: deque[Violation] = deque(maxlen=_MAX_KEPT)
        self.observed: list[Violation] = []
        self._lock = threading.Lock()
        self._connection: Any = None
        self._unexplained: list[tuple[int, Violation]] = []
        self._listener_seen = False
        self._listener: Listener | None = None

    def attach(self, connection: Any) -> None:
        """Follow a new child's connection (after a restart, a new one)."""
        with self._lock:
            self._connection = connection
            self._unexplained.clear()
            self._listener_seen = False
        connection.translate_error = self.translate

    def on_notification(self, method: str, params: list[Any]) -> None:
        if method != "$listener" or self._listener_seen or len(params) != 2:
            raise ProtocolError(f"`{self.compartment}` sent an unexpected notification")
        self._listener_seen = True
        listener, reason = params
        if listener is None:
            if reason:  # the kernel lacks it; no reason means reports were turned off
                _report_fallback(str(reason))
        elif isinstance(listener, Fd):
            self._listener = monitor().register(
                listener.detach(), self.compartment, self.record, learn=self.learn
            )
        else:
            raise ProtocolError(f"`{self.compartment}` sent a malformed listener")

    def retire_listener(self) -> None:
        """Release the current child's listener as the compartment closes."""
        listener, self._listener = self._listener, None
        if listener is not None:
            monitor().retire(listener)

    def record(self, violation: Violation) -> None:
        with self._lock:
            self.recent.append(violation)
            if self.learn:
                self.observed.append(violation)
                return
            seen = getattr(self._connection, "responses_seen", 0)
            self._unexplained.append((seen, violation))
            del self._unexplained[:-16]
        log_violation(violation)

    def translate(self, error: BaseException) -> BaseException:
        """A PermissionError whose call hit the filter becomes that PolicyViolation."""
        if not isinstance(error, PermissionError) or error.errno != errno.EPERM:
            return error

        with self._lock:
            # Answered in order: violations recorded since the previous reply are this call's.
            seen = getattr(self._connection, "responses_seen", 0)
            mine = [v for at, v in self._unexplained if at == seen - 1]
            self._unexplained.clear()
        if not mine:
            return error
        violation = _raised_by(mine)
        translated = PolicyViolation(
            violation.syscall, violation.args, self.compartment, violation.suggestion,
            violation.decoded,
        )  # fmt: skip
        translated.__cause__ = error.__cause__
        return translated


_STDIO_WRITES = frozenset({"write", "writev"})


def _raised_by(violations: Sequence[Violation]) -> Violation:
    """The denial a call's PermissionError came from: its last one, but not the write to
    stdout or stderr that the compartment's end-of-call flush hits after the error was
    raised (``_sealed_stdio``), unless that is all there is."""
    raised = [v for v in violations
              if not (v.syscall in _STDIO_WRITES and v.args and v.args[0] in (1, 2))]  # fmt: skip
    return (raised or violations)[-1]


def _report_fallback(reason: str) -> None:
    global _fallback_reported
    if not _fallback_reported:
        _fallback_reported = True
        log.warning(
            "seccomp user notification is unavailable (%s): denied syscalls are plain "
            "EPERM, without violation reports", printable(reason, 200) or "unknown reason",
        )  # fmt: skip
