"""The output relay on its own: pipes written by hand, relayed to the parent's streams."""

from __future__ import annotations

import os
import time

import pytest

from compartments._parent import _output


def _relayed(capsys: pytest.CaptureFixture[str], until: str, timeout: float = 5.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        _output.relay().flush(1.0)
        out, err = capsys.readouterr()
        seen += out + err
        time.sleep(0.01)
    return seen


def test_complete_lines_are_relayed_as_they_arrive(capsys: pytest.CaptureFixture[str]) -> None:
    pipes = _output.outputs("live")
    try:
        os.write(pipes.stdout_w, b"one\ntwo\nthr")
        seen = _relayed(capsys, "[live] two\n")
        assert seen == "[live] one\n[live] two\n"  # the partial line waits for its end
    finally:
        pipes.retire()
    assert _relayed(capsys, "thr") == "[live] thr\n"


def test_stderr_goes_to_the_parents_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    pipes = _output.outputs("err")
    os.write(pipes.stderr_w, b"oops\n")
    pipes.retire()
    _output.relay().flush(1.0)
    assert capsys.readouterr().err == "[err] oops\n"


def test_controls_and_bad_utf8_arrive_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    pipes = _output.outputs("x\x1b[31m")
    os.write(pipes.stdout_w, b"\x1b[2J\r\t\xff\xe2\x80\xae\n")
    pipes.retire()
    assert _relayed(capsys, "\n") == "[x\\x1b[31m] \\x1b[2J\\r\\t\\xff\\u202e\n"


def test_a_long_line_is_cut_and_counted(capsys: pytest.CaptureFixture[str]) -> None:
    pipes = _output.outputs("long")
    os.write(pipes.stdout_w, b"B" * (_output.LINE_CAP + 10) + b"\nnext\n")
    pipes.retire()
    seen = _relayed(capsys, "next")
    assert seen == f"[long] {'B' * _output.LINE_CAP} [... 10 more bytes cut]\n[long] next\n"


def test_output_over_the_budget_is_dropped_and_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "BYTES_PER_SECOND", 100)
    pipes = _output.outputs("flood")
    os.write(pipes.stdout_w, b"x" * 9 + b"\n" + b"y" * 999 + b"\n" + b"z" * 9 + b"\n")
    pipes.retire()
    seen = _relayed(capsys, "dropped")
    assert seen == (
        "[flood] xxxxxxxxx\n"
        "[flood] [output over its budget of 100 bytes and 2000 lines a second: dropped "
        "1010 bytes, 2 lines]\n"
    )


def test_a_flood_is_reported_once_it_has_stopped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "BYTES_PER_SECOND", 10)
    monkeypatch.setattr(_output, "QUIET_AFTER_FLOOD", 0.2)
    pipes = _output.outputs("quiet")
    try:
        os.write(pipes.stdout_w, b"0123456789" * 5 + b"\n")
        assert "dropped 51 bytes, 1 lines" in _relayed(capsys, "dropped")  # still open
    finally:
        pipes.retire()


def test_retired_pipes_are_closed() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        _output.outputs("census").retire()
    assert len(os.listdir("/proc/self/fd")) == before


def test_lines_over_the_budget_are_dropped_and_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "LINES_PER_SECOND", 3)
    pipes = _output.outputs("chatty")
    os.write(pipes.stdout_w, b"1\n2\n3\n4\n5\n")
    pipes.retire()
    seen = _relayed(capsys, "dropped")
    assert seen.startswith("[chatty] 1\n[chatty] 2\n[chatty] 3\n[chatty] [output over")
    assert seen.endswith("dropped 4 bytes, 2 lines]\n")
