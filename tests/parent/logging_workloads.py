"""Compartments that log, warn and print from inside a ``SystemIO.nothing()`` seal.

A top-level module, so the zygote imports it by name (``tests`` is on ``sys.path``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

from compartments import compartment
from compartments.rulesets import SystemIO, Threads

log = logging.getLogger("workload")


@compartment(rules=[SystemIO.nothing()])
class Logger:
    """Logs what it is told to, the ordinary way."""

    def warn(self, message: str) -> None:
        log.warning("said: %s", message)

    def at(self, level: int, message: str) -> None:
        log.log(level, message)

    def root_level(self) -> int:
        return logging.getLogger().level

    def fail(self) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("it went wrong: %s", "\x1b]0;owned\x07")

    def with_stack(self) -> None:
        log.warning("where am I", stack_info=True)

    def python_warning(self, message: str) -> None:
        warnings.warn(message, UserWarning, stacklevel=1)

    def flood(self, count: int) -> int:
        for index in range(count):
            log.warning("record %d", index)
        return count

    def names(self, count: int) -> int:
        for index in range(count):
            logging.getLogger(f"n{index}").warning("from n%d", index)
        return count


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
class ThreadedLogger:
    """Threads that log while the server thread answers calls."""

    def start(self, threads: int, records: int) -> None:
        def run(number: int) -> None:
            for index in range(records):
                log.warning("thread %d record %d", number, index)

        self._threads = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def start_unattended(self, records: int, size: int) -> None:
        """One thread logging while no call is in flight: nobody reads the channel."""
        started = time.monotonic()
        self._took: float | None = None

        def run() -> None:
            for index in range(records):
                log.warning("%d %s", index, "x" * size)
            self._took = time.monotonic() - started

        self._threads = [threading.Thread(target=run)]
        self._threads[0].start()

    def took(self) -> float | None:
        return self._took

    def ping(self) -> int:
        return 1

    def join(self) -> bool:
        for thread in self._threads:
            thread.join()
        return True
