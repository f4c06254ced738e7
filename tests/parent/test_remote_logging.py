"""``logging`` in a sealed compartment: its records reach the parent's ``logging`` as
records, under ``compartments.remote.<name>``, bounded and escaped."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from logging_workloads import Logger, ThreadedLogger

from compartments._wire._channel import socketpair

pytestmark = pytest.mark.timeout(60)

PREFIX = "compartments.remote.Logger"


def _remote(caplog: pytest.LogCaptureFixture, prefix: str = PREFIX) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == prefix or r.name.startswith(prefix + ".")]


def _dropped(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The counts in the drop reports on the ``compartments`` logger."""
    texts = [r.getMessage() for r in caplog.records if r.name == "compartments"]
    return [int(m[1]) for text in texts if (m := re.search(r": (\d+) records dropped$", text))]


@pytest.fixture
def logger(caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    caplog.set_level(logging.INFO, logger="compartments.remote")  # before the child starts
    with Logger() as compartment_:
        yield compartment_


def test_a_warning_arrives_as_a_record_under_the_compartments_logger(
    logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger.warn("hello")
    (record,) = _remote(caplog)
    assert record.name == f"{PREFIX}.workload"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "said: hello"
    assert record.compartment == "Logger"  # type: ignore[attr-defined]


def test_the_childs_root_logger_starts_at_the_parents_level(
    logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert logger.root_level() == logging.INFO
    logger.at(logging.DEBUG, "not wanted")
    logger.at(logging.INFO, "wanted")
    assert [r.getMessage() for r in _remote(caplog)] == ["wanted"]


def test_a_logged_exception_carries_its_traceback(
    logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger.fail()
    (record,) = _remote(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_text is not None
    assert record.exc_text.startswith("Traceback (most recent call last):\n")
    assert "ZeroDivisionError: division by zero" in record.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(record)


def test_control_characters_in_a_record_arrive_escaped(
    logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger.fail()
    logger.warn("line\n[CRITICAL] forged\x1b[2J\u202e")
    failed, forged = _remote(caplog)
    assert failed.getMessage() == "it went wrong: \\x1b]0;owned\\x07"
    assert forged.getMessage() == "said: line\\n[CRITICAL] forged\\x1b[2J\\u202e"
    text = logging.Formatter().format(forged) + logging.Formatter().format(failed)
    assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or ord(c) == 0x202E]


def test_stack_info_arrives(logger: Any, caplog: pytest.LogCaptureFixture) -> None:
    logger.with_stack()
    (record,) = _remote(caplog)
    assert record.stack_info is not None
    assert record.stack_info.startswith("Stack (most recent call last):")
    assert "with_stack" in record.stack_info


def test_warnings_arrive_as_records_on_py_warnings(
    logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger.python_warning("careful")
    (record,) = _remote(caplog)
    assert record.name == f"{PREFIX}.py.warnings"
    assert record.levelno == logging.WARNING
    assert re.search(r"/logging_workloads\.py:\d+: UserWarning: careful$", record.getMessage())


def test_a_flood_of_records_is_bounded_and_its_drops_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with Logger() as flooder:
        assert flooder.flood(100_000) == 100_000
        elapsed = time.monotonic() - started
        arrived = len(_remote(caplog))
    assert elapsed < 20
    assert 0 < arrived <= 2_000 + 1_000 * (elapsed + 1)  # the burst, then the rate
    reported = _dropped(caplog)  # once, unless the flood outlasted REPORT_INTERVAL
    assert len(reported) in (1, 2), reported
    assert sum(reported) == 100_000 - arrived, reported


def test_distinct_logger_names_create_a_bounded_number_of_parent_loggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with Logger() as named:
        named.names(100_000)
    created = [n for n in logging.root.manager.loggerDict if n.startswith(f"{PREFIX}.n")]
    assert 0 < len(created) <= 64
    beyond = [r for r in _remote(caplog) if r.name == PREFIX]
    assert beyond and all(r.remote_logger.startswith("n") for r in beyond)  # type: ignore[attr-defined]


def test_threads_logging_while_calls_are_answered_keep_the_channel_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with ThreadedLogger() as threaded:
        threaded.start(4, 300)
        assert sum(threaded.ping() for _ in range(300)) == 300
        assert threaded.join()
        assert threaded.ping() == 1
    records = _remote(caplog, "compartments.remote.ThreadedLogger")
    assert records and all(r.getMessage().startswith("thread ") for r in records)


def test_a_thread_logging_while_nobody_reads_drops_records_instead_of_blocking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with ThreadedLogger() as threaded:
        threaded.start_unattended(1_000, 2_000)  # 2 MB: ten times what the socket holds
        time.sleep(1.5)  # no call in flight: the parent reads nothing meanwhile
        took = threaded.took()
        assert threaded.join()
    assert took is not None and took < 1.0
    assert _dropped(caplog), [r.getMessage() for r in caplog.records]


# -- the channel's send for what may be dropped ----------------------------------------------


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    received = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            received += chunk
    return bytes(received)


def test_send_if_room_sends_whole_frames_or_nothing_when_the_peer_is_full() -> None:
    ours, theirs = socketpair()
    try:
        frames = 0
        while ours.send_if_room(bytes([frames % 256]) * 1024):
            frames += 1
        assert frames > 10 and not ours.send_if_room(b"x" * 1024)
        received = _drain(theirs._sock)
        assert len(received) == frames * 1024
        assert received[-1024:] == bytes([(frames - 1) % 256]) * 1024
    finally:
        ours.close()
        theirs.close()


def test_send_if_room_finishes_a_frame_the_kernel_took_in_part() -> None:
    ours, theirs = socketpair()
    frame = os.urandom(4 << 20)  # far past what one socket buffer holds
    received = bytearray()

    def read() -> None:
        while len(received) < len(frame):
            received.extend(theirs._sock.recv(1 << 20))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert ours.send_if_room(frame)
        reader.join(10)
        assert bytes(received) == frame
    finally:
        ours.close()
        theirs.close()


def test_send_if_room_gives_up_when_another_threads_frame_holds_the_line() -> None:
    ours, theirs = socketpair()
    try:
        with ours._send_lock:
            started = time.monotonic()
            assert not ours.send_if_room(b"x", lock_wait=0.05)
            assert 0.04 <= time.monotonic() - started < 1.0
        assert ours.send_if_room(b"x") and _drain(theirs._sock) == b"x"
    finally:
        ours.close()
        theirs.close()
