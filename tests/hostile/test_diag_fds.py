"""Opening a passed ``Fd`` as a file (the README's broker pattern) is not a violation.

``open()`` asks ``isatty()`` of every file it opens, an ``ioctl(fd, TCGETS)``: it was
denied and logged on every open of a passed fd, with advice to grant a networking set.
The runtime now answers TCGETS on any fd (it only reads a terminal's attributes); every
ioctl that changes a terminal stays denied.
"""

from __future__ import annotations

import errno
import logging
import os
import pty
from collections.abc import Iterator
from pathlib import Path

import diag_attacks as attacks
import pytest

from compartments import Fd, control


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    for target in (attacks.read_passed_fd, attacks.read_passed_fd_as_text,
                   attacks.terminal_checks):  # fmt: skip
        target.close()


def _denials(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "was denied" in r.getMessage()]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_bytes(b"brokered\n")
    return path


@pytest.mark.timeout(60)
def test_opening_a_passed_fd_logs_no_denial(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    with data.open("rb") as file:
        assert attacks.read_passed_fd(Fd(file)) == b"brokered\n"
    assert _denials(caplog) == []
    assert attacks.read_passed_fd.violations == []


@pytest.mark.timeout(60)
def test_opening_a_passed_fd_as_text_logs_no_denial(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    with data.open("rb") as file:
        assert attacks.read_passed_fd_as_text(Fd(file)) == "brokered\n"
    assert _denials(caplog) == []


@pytest.mark.timeout(60)
def test_a_compartment_granted_only_its_fd_opens_it_without_a_denial(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    with data.open("rb") as file, attacks.ReadsItsFd(Fd(file)) as broker:
        assert broker.read() == b"brokered\n"
        assert control(broker).violations == []
    assert _denials(caplog) == []


@pytest.fixture
def terminal() -> Iterator[int]:
    """The follower end of a new pseudo-terminal."""
    leader, follower = pty.openpty()
    try:
        yield follower
    finally:
        os.close(follower)
        os.close(leader)


@pytest.mark.timeout(60)
def test_a_passed_terminal_is_seen_as_one(terminal: int) -> None:
    checks = attacks.terminal_checks(Fd(terminal))
    assert checks["isatty"] is True
    assert checks["tcgetattr"] == 7


@pytest.mark.timeout(60)
def test_a_passed_terminal_cannot_be_reconfigured(terminal: int) -> None:
    before = os.get_terminal_size(terminal)
    checks = attacks.terminal_checks(Fd(terminal))
    assert checks["tcsetattr"] == errno.EPERM
    assert checks["setwinsize"] == errno.EPERM
    assert os.get_terminal_size(terminal) == before
