"""A compartment's ``logging`` records, received as hostile data into the parent's ``logging``.

The child's end (``_child._log_forward``) sends each record as a ``$log`` notification;
here a record is hostile data. Every field's type is checked (a wrong one is
a protocol error), texts are cut to :data:`MAX_TEXT` characters and escaped, the level
is clamped, and the child's logger name becomes a sanitized suffix of
``compartments.remote.<name>``, so no record reaches a logger outside it. ``logging``
keeps every logger it creates forever, so a compartment gets at most
:data:`MAX_CHILD_LOGGERS` of its own; later names log to ``compartments.remote.<name>``
itself (the child's name stays in the record's ``remote_logger``). A compartment may
log :data:`BURST` records at once, then :data:`RECORDS_PER_SECOND`, and its records may
take the parent's handlers :data:`HANDLER_SECONDS_PER_SECOND` of each second (they run
in the thread reading the compartment's replies, so a slow handler delays its calls by
no more than that); the excess is dropped and reported once, on the ``compartments``
logger, when the flood is over (or the compartment closes).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .._child._log_forward import BURST, MAX_NAME, METHOD, RECORDS_PER_SECOND, Bucket
from .._text import printable, printable_lines
from ..errors import ProtocolError

__all__ = [
    "BURST",
    "HANDLER_SECONDS_PER_SECOND",
    "LOGGER_PREFIX",
    "MAX_CHILD_LOGGERS",
    "MAX_TEXT",
    "METHOD",
    "RECORDS_PER_SECOND",
    "RemoteLog",
    "level_for",
]

LOGGER_PREFIX = "compartments.remote"

#: The most characters of a message, an exception text or a stack text kept in the
#: parent (the child cuts each to about as many UTF-8 bytes).
MAX_TEXT = 16 * 1024
#: The child's logger names a compartment may make the parent create, at most.
MAX_CHILD_LOGGERS = 64
_MAX_NAME_PARTS = 8
#: Seconds of the parent's handler time one compartment's records may take per second.
HANDLER_SECONDS_PER_SECOND = 0.2
#: A flood is over once nothing was dropped for this long; then it is reported. One that
#: goes on is reported this often.
QUIET_AFTER_FLOOD = 1.0
REPORT_INTERVAL = 10.0

log = logging.getLogger("compartments")


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _logger_part(name: str) -> str:
    """``name`` as dotted ASCII words: no empty part, no control, at most 8 parts."""
    parts = [part for part in _UNSAFE_IN_NAME.sub("_", name[:MAX_NAME]).split(".") if part]
    return ".".join(parts[:_MAX_NAME_PARTS])


def logger_name(compartment: str) -> str:
    """The logger a compartment's records go to (its child loggers below it)."""
    return f"{LOGGER_PREFIX}.{_logger_part(compartment) or '_'}"


def level_for(compartment: str) -> int:
    """The level the child's root logger starts at: the parent's, for its records."""
    return logging.getLogger(logger_name(compartment)).getEffectiveLevel()


class _Source:
    """One compartment name's budget, drops and loggers: restarts, ``fresh=True`` calls
    and a Pool's workers share them, or each new process would bring a new burst."""

    def __init__(self, compartment: str) -> None:
        self.compartment = compartment
        self.logger = logging.getLogger(logger_name(compartment))
        self.pathname = f"<compartment {printable(compartment, MAX_NAME)}>"
        self.lock = threading.Lock()
        self.budget = Bucket()
        self.loggers: dict[str, logging.Logger] = {}
        self.dropped = 0
        self.last_drop = 0.0
        self.last_report = time.monotonic()
        self.window_start = 0.0
        self.handler_seconds = 0.0

    def logger_for(self, child_name: str) -> logging.Logger:
        if child_name == "root" or not child_name:
            return self.logger
        logger = self.loggers.get(child_name)
        if logger is None:
            if len(self.loggers) >= MAX_CHILD_LOGGERS:
                return self.logger
            logger = logging.getLogger(f"{self.logger.name}.{child_name}")
            self.loggers[child_name] = logger
        return logger

    def admit(self, now: float, child_dropped: int) -> bool:
        """Count what the child dropped; take one record from the budgets, or drop it."""
        if now - self.window_start >= 1.0:
            self.window_start, self.handler_seconds = now, 0.0
        if child_dropped:
            self.dropped += child_dropped
            self.last_drop = now
        if self.handler_seconds < HANDLER_SECONDS_PER_SECOND and self.budget.spend(now):
            return True
        self.dropped += 1
        self.last_drop = now
        return False

    def take_report(self, now: float, *, closing: bool = False) -> int:
        """The count to report now (and forget), or 0: a flood is reported once over."""
        if not self.dropped:
            return 0
        over = now - self.last_drop >= QUIET_AFTER_FLOOD
        if not (closing or over or now - self.last_report >= REPORT_INTERVAL):
            return 0
        dropped, self.dropped, self.last_report = self.dropped, 0, now
        return dropped


_sources: dict[str, _Source] = {}
_sources_lock = threading.Lock()


def _source(compartment: str) -> _Source:
    with _sources_lock:
        source = _sources.get(compartment)
        if source is None:
            source = _sources[compartment] = _Source(compartment)
        return source


def _int(value: object, what: str, compartment: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"`{compartment}` sent a `$log` whose {what} is not an int")
    return value


def _text(value: object, what: str, compartment: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise ProtocolError(f"`{compartment}` sent a `$log` whose {what} is not a str")
    return value


NotificationHandler = Callable[[str, list[Any]], None]


class RemoteLog:
    """The parent's end: ``$log`` notifications of one compartment into ``logging``."""

    def __init__(self, compartment: str) -> None:
        self.compartment = compartment
        self._source = _source(compartment)

    def dispatcher(self, other: NotificationHandler) -> NotificationHandler:
        """``$log`` handled here, every other notification by ``other``."""

        def on_notification(method: str, params: list[Any]) -> None:
            if method == METHOD:
                self.receive(params)
            else:
                other(method, params)

        return on_notification

    def receive(self, params: list[Any]) -> None:
        """Validate, budget, escape and emit one record (or count a drop report)."""
        name = self.compartment
        if len(params) == 1:
            self._count(max(_int(params[0], "drop count", name), 0))
            return
        if len(params) != 6:
            raise ProtocolError(f"`{name}` sent a `$log` with {len(params)} fields, not 6")
        level, child_name, message, exc_text, stack, dropped = params
        level = min(max(_int(level, "level", name), 1), logging.CRITICAL)
        child_name = _logger_part(_text(child_name, "logger name", name) or "")
        message = _text(message, "message", name)
        exc_text = _text(exc_text, "exception text", name, optional=True)
        stack = _text(stack, "stack text", name, optional=True)
        dropped = max(_int(dropped, "drop count", name), 0)
        source = self._source
        now = time.monotonic()
        with source.lock:
            logger = source.logger_for(child_name)
            admitted = logger.isEnabledFor(level) and source.admit(now, dropped)
            report = source.take_report(now)
        if report:
            self._report(report)
        if not admitted:
            return
        record = logging.LogRecord(
            logger.name, level, source.pathname, 0, printable(message, MAX_TEXT), None, None,
            sinfo=None if stack is None else printable_lines(stack, MAX_TEXT),
        )  # fmt: skip
        record.exc_text = None if exc_text is None else printable_lines(exc_text, MAX_TEXT)
        record.compartment = name
        record.remote_logger = child_name or "root"
        started = time.perf_counter()
        try:
            logger.handle(record)
        except Exception:  # a broken filter or handler of the parent's: not the child's doing
            pass
        finally:
            spent = time.perf_counter() - started
            with source.lock:
                source.handler_seconds += spent

    def _count(self, dropped: int) -> None:
        source = self._source
        now = time.monotonic()
        with source.lock:
            if dropped:
                source.dropped += dropped
                source.last_drop = now
            report = source.take_report(now)
        if report:
            self._report(report)

    def close(self) -> None:
        """Report what is still unreported as the compartment (or its child) goes."""
        source = self._source
        with source.lock:
            report = source.take_report(time.monotonic(), closing=True)
        if report:
            self._report(report)

    def _report(self, dropped: int) -> None:
        log.warning(
            "compartment `%s` logged more than %d records at once or %g a second (or "
            "faster than its channel took them): %d records dropped",
            printable(self.compartment, MAX_NAME), BURST, RECORDS_PER_SECOND, dropped,
        )  # fmt: skip
