"""A compartment's ``logging`` records, forwarded as records to the parent's ``logging``.

In the child, a handler on the root logger sends each record as a ``$log`` notification
on the primary channel: level, logger name, message, exception text, stack text, and
how many records were dropped before it. It never blocks on a full socket: a record
that does not fit now is dropped and counted. The child's root logger takes the level
the parent's ``compartments.remote.<name>`` logger has when the child starts, so a
debug flood the parent would discard costs the child one level check per record.
``warnings`` are captured into logging (``py.warnings``), so they arrive the same way.

The parent's end, which takes each record as hostile data, is ``_parent._remote_log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Any, TextIO

from .._wire import _frames
from .._wire._channel import Channel

__all__ = [
    "BURST",
    "MAX_NAME",
    "METHOD",
    "RECORDS_PER_SECOND",
    "Bucket",
    "ForwardingHandler",
    "flush_drops",
    "forward_records",
]

METHOD = "$log"

#: Records a compartment may log at once, then per second (the parent keeps the same
#: budget, so an honest flood costs neither side the records that would be dropped).
BURST = 2000
RECORDS_PER_SECOND = 1000.0
#: The child cuts a message, an exception text and a stack text to as many UTF-8 bytes,
#: so one record fits one socket buffer and is queued whole or not at all.
_CHILD_MESSAGE_BYTES = 12 * 1024
_CHILD_EXCEPTION_BYTES = 16 * 1024
_CHILD_STACK_BYTES = 4 * 1024
#: The most characters of a logger name either end keeps.
MAX_NAME = 200
#: How long a record waits for another thread's frame to go out (not when congested).
_LOCK_WAIT = 0.01


class Bucket:
    """A token bucket: :data:`BURST` at once, :data:`RECORDS_PER_SECOND` after."""

    __slots__ = ("refilled", "tokens")

    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.refilled = time.monotonic()

    def spend(self, now: float) -> bool:
        tokens = self.tokens + (now - self.refilled) * RECORDS_PER_SECOND
        self.tokens = min(float(BURST), tokens)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``text`` (lone surrogates escaped), saying what
    was cut."""
    if text.isascii() and len(text) <= limit:
        return text
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}... [{len(data) - limit} more bytes cut in the compartment]"


class ForwardingHandler(logging.Handler):
    """Sends each record to the parent, or drops and counts it; never blocks on the socket.

    ``Handler.handle`` serializes ``emit`` under the handler's lock, so the count needs
    no lock of its own; the channel's send lock keeps frames whole against the server
    thread's replies.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel
        self._budget = Bucket()
        self._formatter = logging.Formatter()
        self.dropped = 0
        self._congested = False
        #: False in a fork of the compartment: the channel is not its own to write to.
        self.live = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self._budget.spend(time.monotonic()):
            self.dropped += 1
            return
        try:
            fields = [
                record.levelno,
                _cut(str(record.name), MAX_NAME),
                _cut(record.getMessage(), _CHILD_MESSAGE_BYTES),
                self._exception_text(record),
                None if not record.stack_info else _cut(record.stack_info, _CHILD_STACK_BYTES),
                self.dropped,
            ]
            self._send(fields)
        except Exception:
            self.handleError(record)  # what the stdlib does with a bad format string

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        text = record.exc_text
        if not text and record.exc_info:
            text = self._formatter.formatException(record.exc_info)
        return _cut(text, _CHILD_EXCEPTION_BYTES) if text else None

    def report_drops(self) -> None:
        """Send the count of records dropped since the last one that went, if any."""
        if not self.dropped:
            return
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self.dropped:
                with contextlib.suppress(Exception):  # never fail the call it follows
                    self._send([self.dropped])

    def _send(self, fields: list[Any]) -> None:
        if not self.live:
            return
        data, _ = _frames.encode_notification(METHOD, fields)
        frame = data if isinstance(data, bytes) else b"".join(data)
        try:
            sent = self._channel.send_if_room(frame, 0.0 if self._congested else _LOCK_WAIT)
        except OSError:  # the parent is gone; the compartment is ending
            sent = False
        self._congested = not sent
        if sent:
            self.dropped = 0
        elif len(fields) > 1:
            self.dropped += 1


_handler: ForwardingHandler | None = None


def forward_records(channel: Channel, level: object) -> None:
    """In a new compartment: forward the root logger's records (and warnings) on ``channel``.

    ``level`` is the parent's level for this compartment's records (see :func:`level_for`).
    """
    global _handler
    _handler = handler = ForwardingHandler(channel)
    os.register_at_fork(after_in_child=lambda: setattr(handler, "live", False))
    root = logging.getLogger()
    root.addHandler(handler)
    if type(level) is int and 0 <= level < 2**31:
        root.setLevel(max(level, 1))  # NOTSET on the root would mean WARNING elsewhere
        handler.setLevel(level)  # for loggers with a lower level of their own
    warnings.showwarning = _log_warning


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one record on ``py.warnings`` (as ``logging.captureWarnings`` does,
    on one line: the parent shows a message's newlines as escapes)."""
    if file is not None:
        _show_warning(message, category, filename, lineno, file, line)
        return
    logging.getLogger("py.warnings").warning(
        "%s:%s: %s: %s", filename, lineno, category.__name__, message
    )


_show_warning = warnings.showwarning


def flush_drops() -> None:
    """After each call: the parent hears of records dropped at its end, not at the next
    record (which may never come)."""
    handler = _handler
    if handler is not None and handler.dropped:
        handler.report_drops()
