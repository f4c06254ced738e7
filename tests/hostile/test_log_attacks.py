"""Forged ``$log`` notifications: a compartment's records reach the parent's ``logging``,
so their types, sizes, levels, logger names and rate are the compartment's to choose.
None of it may reach a logger outside ``compartments.remote.<name>``, a log unescaped,
or grow or stall the parent."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from log_attacks import MALFORMED_KINDS, LogForger

from compartments._parent import _remote_log
from compartments._text import printable_lines
from compartments.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)

PREFIX = "compartments.remote.LogForger"


def _remote(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("compartments.remote")]


def _unescaped(text: str) -> bool:
    return printable_lines(text) != text


@pytest.fixture
def forger(caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    caplog.set_level(logging.DEBUG, logger="compartments")
    with LogForger() as compartment_:
        yield compartment_


def test_a_record_with_megabytes_of_text_arrives_cut_and_escaped(
    forger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    forger.huge(8 << 20)
    (record,) = _remote(caplog)
    message, exc_text, stack = record.getMessage(), record.exc_text, record.stack_info
    assert exc_text is not None and stack is not None
    for text in (message, exc_text, stack):
        assert len(text) < _remote_log.MAX_TEXT + 200
        assert text.endswith("more characters]")
        assert "\\x1b]0;owned\\x07\\x1b[2J" in text and "\\u202e" in text
    assert "\n" not in message and message.startswith("\\x1b]0;owned")
    assert exc_text.startswith("Traceback\n") and not _unescaped(exc_text)
    assert not _unescaped(stack)
    assert not _unescaped(logging.Formatter().format(record))
    assert forger.ping() == 1


def test_a_forged_level_is_clamped_to_a_known_range(
    forger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1, logger="compartments")
    forger.levels([2**63 - 1, -(2**63), 0, 25, 51])
    assert [(r.getMessage(), r.levelno) for r in _remote(caplog)] == [
        (str(2**63 - 1), logging.CRITICAL), (str(-(2**63)), 1), ("0", 1), ("25", 25),
        ("51", logging.CRITICAL),
    ]  # fmt: skip


def test_a_forged_logger_name_never_leaves_the_compartments_logger(
    forger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(logging.root.manager.loggerDict)
    names = ["", "root", "compartments", "..compartments", ".", "compartments.remote.Other",
             "\x1b[2J\n.evil", "a" * 100_000, "a." * 50_000, "\u202eevil",
             "x" * 300 + ".y"]  # fmt: skip
    forger.names(names)
    records = _remote(caplog)
    assert len(records) == len(names)
    for record in records:
        assert record.name == PREFIX or record.name.startswith(PREFIX + ".")
        assert len(record.name) <= len(PREFIX) + 201
        assert record.name.isascii() and record.name.isprintable()
    assert [r.name for r in records[:5]] == [PREFIX, PREFIX, f"{PREFIX}.compartments",
                                             f"{PREFIX}.compartments", PREFIX]  # fmt: skip
    created = set(logging.root.manager.loggerDict) - before
    assert all(name.startswith(PREFIX + ".") for name in created), created
    assert max(name.count(".") for name in created) <= PREFIX.count(".") + 8


def test_a_hundred_thousand_forged_logger_names_create_a_bounded_number_of_loggers(
    forger: Any,
) -> None:
    before = len(logging.root.manager.loggerDict)
    forger.distinct_names(100_000, 8)
    assert forger.ping() == 1
    created = len(logging.root.manager.loggerDict) - before
    assert created <= 64 * 8  # 64 names at most, each with its 7 placeholders


def test_a_flood_of_forged_records_is_bounded_and_its_drops_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with LogForger() as forger:
        forger.flood(200_000)  # past the child's own budget, straight onto the channel
        elapsed = time.monotonic() - started
        arrived = len(_remote(caplog))
    assert elapsed < 20
    assert 0 < arrived <= 2_000 + 1_000 * (elapsed + 1)  # the burst, then the rate
    texts = [r.getMessage() for r in caplog.records if r.name == "compartments"]
    reported = [int(m[1]) for t in texts if (m := re.search(r": (\d+) records dropped$", t))]
    # Reported once the flood is over (or every REPORT_INTERVAL): a starved machine can
    # pause a flood for a quiet second more than once, but never more than once a second.
    assert reported and len(reported) <= elapsed / _remote_log.QUIET_AFTER_FLOOD + 2, reported
    assert sum(reported) == 200_000 - arrived, reported


class _Slow(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.005)


def test_a_slow_parent_handler_delays_a_flooding_compartments_call_by_a_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    slow = _Slow()
    logging.getLogger(PREFIX).addHandler(slow)
    try:
        with LogForger() as forger:
            started = time.monotonic()
            forger.flood(2_000)  # within the burst: 10 s of handler time, unbounded
            elapsed = time.monotonic() - started
    finally:
        logging.getLogger(PREFIX).removeHandler(slow)
    assert elapsed < 2.0
    assert 0 < len(_remote(caplog)) < 400


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_a_malformed_record_fails_the_compartment_and_names_the_field(
    forger: Any, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    with pytest.raises(ProtocolError, match=r"sent a `\$log`"):
        forger.malformed(kind)
    assert _remote(caplog) == []
    with LogForger() as again:
        assert again.ping() == 1


def test_fds_riding_along_forged_records_are_closed(forger: Any) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError, match=r"sent a `\$log` whose message is not a str"):
        forger.with_an_fd(1)
    assert len(os.listdir("/proc/self/fd")) <= fds
