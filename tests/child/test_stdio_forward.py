"""print() and sys.stderr in a compartment whose policy grants no write: the text goes
over the channel and the parent relays it like its pipes' (``compartments._child._stdio``)."""

from __future__ import annotations

import sys
import time
import warnings

import pytest
from relayed import relayed

from compartments import compartment
from compartments._parent import _output
from compartments.rulesets import SystemIO

pytestmark = pytest.mark.timeout(60)


@compartment(rules=[SystemIO.nothing()])
def prints(lines: list[str], to_stderr: bool = False) -> int:
    for line in lines:
        print(line, file=sys.stderr if to_stderr else sys.stdout)
    return len(lines)


@compartment(rules=[SystemIO.nothing()])
def warns() -> None:
    warnings.warn("careful now", stacklevel=1)


@compartment(rules=[SystemIO.nothing()])
def floods(count: int) -> int:
    for _ in range(count):
        print("x" * 100)
    return count


@compartment(rules=[SystemIO.nothing().allow_stdout()])
def prints_with_a_grant() -> bool:
    print("through the pipe")
    return type(sys.stdout).__name__ == "TextIOWrapper"


@compartment(rules=[SystemIO.nothing()])
def stream_kind() -> tuple[str, str]:
    return type(sys.stdout).__name__, type(sys.stderr).__name__


def test_print_without_a_write_grant_reaches_the_parents_stdout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert prints(["hello from inside"]) == 1
    out, _ = relayed(capfd, "hello from inside")
    assert "[prints] hello from inside\n" in out


def test_stderr_without_a_write_grant_reaches_the_parents_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    prints(["an error line"], to_stderr=True)
    _, err = relayed(capfd, "an error line")
    assert "[prints] an error line\n" in err


def test_forwarded_text_is_escaped(capfd: pytest.CaptureFixture[str]) -> None:
    prints(["\x1b]0;owned\x07\x1b[2Jred"])
    out, _ = relayed(capfd, "red")
    assert "\x1b" not in out and "\\x1b]0;owned\\x07" in out


def test_a_warning_reaches_the_parent(caplog: pytest.LogCaptureFixture) -> None:
    warns()
    assert any("careful now" in r.getMessage() for r in caplog.records)


def test_a_policy_that_grants_stdout_keeps_the_real_stream(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert prints_with_a_grant() is True
    prints_with_a_grant.close()  # a pipe is block-buffered: the text goes at exit
    out, _ = relayed(capfd, "through the pipe")
    assert "[prints_with_a_grant] through the pipe\n" in out


def test_without_a_grant_both_streams_are_forwarded() -> None:
    assert stream_kind() == ["ChannelStream", "ChannelStream"]


def test_a_print_flood_is_bounded_and_its_drops_reported(
    capfd: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert floods(200_000) == 200_000  # 20 MB: the call returns, the parent keeps up
    elapsed = time.monotonic() - started
    floods.close()
    out, err = relayed(capfd, "dropped", timeout=15.0)
    assert out.count("\n") <= 2 * _output.LINES_PER_SECOND * (elapsed + 2)
    assert "[floods] [output over its budget" in err
