"""Class 6 of issue 12, the stdio part: no compartment holds the parent's own stdio.

The parent's fds 1 and 2 used to be inherited by the zygote and every compartment, so
a compartment could read and rewrite the parent's capture file through them, change
the flags of the parent's own file descriptions, or find the parent's terminal. Now each
gets its own pipes, and the parent relays what arrives, prefixed, escaped and bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from zygote_attacks import FlagSetter, Printer, StdioProbe
from zygote_support import own_zygote

from compartments._parent import _output

SECRET_OUTPUT = b"the parent printed this: stdout-secret-4f1d\n"


@pytest.fixture(autouse=True)
def fresh_zygote() -> Iterator[None]:
    with own_zygote():
        yield


@contextlib.contextmanager
def _parent_fds_on(fd: int) -> Iterator[None]:
    """The parent's fds 1 and 2 are ``fd`` while a fresh zygote starts and runs (entered in
    the test itself: pytest puts its own capture file back on fd 1 before each phase)."""
    saved = [os.dup(1), os.dup(2)]
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        with own_zygote():
            yield
    finally:
        for target, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, target)
            os.close(copy)


@contextlib.contextmanager
def _capture_file(path: Path) -> Iterator[Path]:
    """A read-write regular file as the parent's stdout and stderr, as pytest's are."""
    with open(path, "w+b", buffering=0) as handle, _parent_fds_on(handle.fileno()):
        handle.write(SECRET_OUTPUT)
        yield path


def _relayed(capfd: pytest.CaptureFixture[str], done: Callable[[str], bool]) -> str:
    """What the relay wrote to the parent's stdout and stderr once ``done`` holds (5 s)."""
    seen = ""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        _output.relay().flush(1.0)
        out, err = capfd.readouterr()
        seen += out + err
        if done(seen):
            break
        time.sleep(0.05)
    return seen


# -- the parent's file descriptions are out of reach --------------------------------------


@pytest.mark.timeout(60)
def test_mapping_fd1_and_fd2_does_not_read_the_parents_capture_file(tmp_path: Path) -> None:
    with _capture_file(tmp_path / "captured"), StdioProbe() as probe:
        seen = [probe.mmap_read(1), probe.mmap_read(2)]
    assert [type(outcome) for outcome in seen] == [int, int], seen  # errnos, never contents


@pytest.mark.timeout(60)
def test_a_shared_mapping_of_fd2_cannot_rewrite_the_parents_stderr(tmp_path: Path) -> None:
    with _capture_file(tmp_path / "captured") as captured, StdioProbe() as probe:
        probe.mmap_write(2, b"REWRITTEN BY A COMPARTMENT")
        probe.mmap_write(1, b"REWRITTEN BY A COMPARTMENT")
    assert captured.read_bytes() == SECRET_OUTPUT


@pytest.mark.timeout(60)
def test_setting_flags_on_fd1_and_fd2_leaves_the_parents_own_flags_alone(
    tmp_path: Path,
) -> None:
    with _capture_file(tmp_path / "captured"):
        before = [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in (1, 2)]
        with FlagSetter() as setter:
            for fd in (1, 2):
                setter.set_flags(fd, os.O_APPEND | os.O_NONBLOCK)
        after = [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in (1, 2)]
    assert after == before


@pytest.mark.timeout(60)
def test_no_terminal_is_in_reach_when_the_parent_has_one() -> None:
    controller, terminal = pty.openpty()
    try:
        with _parent_fds_on(terminal), FlagSetter() as setter:
            assert os.isatty(1) and os.isatty(2)
            assert setter.ttys() == [False, False, False]
    finally:
        os.close(controller)
        os.close(terminal)


@pytest.mark.timeout(60)
def test_a_raw_write_to_fd1_never_lands_in_the_parents_stdout_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with _capture_file(tmp_path / "captured") as captured, Printer() as printer:
        printer.write(1, b"\x1b[2J\x1b]0;owned\x07forged line\n")
    assert captured.read_bytes() == SECRET_OUTPUT
    assert "forged line" in _relayed(capfd, lambda seen: "forged line" in seen)


# -- what is relayed, and how much ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_print_in_an_allow_stdout_compartment_arrives_prefixed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with Printer() as printer:
        printer.say("hello from inside")
    seen = _relayed(capfd, lambda seen: "hello from inside" in seen)
    assert "[Printer] hello from inside\n" in seen


@pytest.mark.timeout(60)
def test_escape_sequences_in_output_arrive_escaped(capfd: pytest.CaptureFixture[str]) -> None:
    with Printer() as printer:
        printer.write(2, b"\x1b]0;owned\x07\x1b[2Jtext\rover\x9b\n")
        printer.say("fake\n[parent] forged")
    seen = _relayed(capfd, lambda seen: "forged" in seen)
    assert "\x1b" not in seen and "\r" not in seen and "\x07" not in seen
    assert "[Printer] \\x1b]0;owned\\x07\\x1b[2Jtext\\rover" in seen
    assert "[Printer] fake\n[Printer] [parent] forged\n" in seen  # each line is labelled


@pytest.mark.timeout(60)
def test_a_long_line_is_cut_and_says_how_much(capfd: pytest.CaptureFixture[str]) -> None:
    with Printer() as printer:
        printer.write(1, b"A" * (_output.LINE_CAP + 5000) + b"\n")
    seen = _relayed(capfd, lambda seen: "cut]" in seen)
    assert f"[Printer] {'A' * _output.LINE_CAP} [... 5000 more bytes cut]\n" in seen


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGESIZE")


@pytest.mark.timeout(90)
def test_an_output_flood_is_dropped_counted_and_bounded(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    flood = 8 << 20
    rss_before = _rss()
    started = time.monotonic()
    with _capture_file(tmp_path / "captured") as captured, Printer() as printer:
        assert printer.flood(flood) >= flood
        printer.say("after the flood")
    elapsed = time.monotonic() - started
    seen = _relayed(capfd, lambda seen: "dropped" in seen)
    relayed = len(seen.encode())
    print(f"\n{flood} bytes printed in {elapsed:.2f}s; {relayed} relayed")
    assert relayed <= _output.BYTES_PER_SECOND * (elapsed + 2) + 64 * 1024
    assert "[Printer] [output over its budget" in seen and "a second: dropped" in seen
    assert captured.read_bytes() == SECRET_OUTPUT  # nothing went around the relay
    assert _rss() - rss_before < 64 << 20


@pytest.mark.timeout(90)
def test_a_flood_of_empty_lines_is_bounded_in_lines(capfd: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    with Printer() as printer:
        printer.flood(2 << 20, line_length=1)
    elapsed = time.monotonic() - started
    seen = _relayed(capfd, lambda seen: "dropped" in seen)
    lines = seen.count("\n")
    print(f"\n{2 << 20} empty lines printed in {elapsed:.2f}s; {lines} relayed")
    assert lines <= _output.LINES_PER_SECOND * (elapsed + 2)
    assert "a second: dropped" in seen
