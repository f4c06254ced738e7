"""Forged ``$out`` notifications: a compartment's text reaches the parent's stdout and
stderr, so its types, sizes and contents are the compartment's to choose. None of it may
pass as another process's line, reach a terminal unescaped, or grow or stall the parent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from relayed import relayed
from stdio_attacks import MALFORMED, MiB, OutForger

from compartments import control
from compartments._parent import _output
from compartments.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def forger() -> Iterator[Any]:
    with OutForger() as compartment_:
        yield compartment_


def test_a_megabytes_long_forged_line_is_cut_to_one_chunk(
    forger: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    forger.huge(8 * MiB)
    assert forger.ping() == 1
    control(forger).close()  # what is cut loses its newline: the line ends when the process does
    out, _ = relayed(capfd, "more bytes cut")
    line = next(x for x in out.splitlines() if x.startswith("[OutForger] A"))
    assert len(line) < _output.LINE_CAP + 100


def test_forged_lines_never_pass_as_another_process(
    forger: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    forger.fake_prefix()
    out, _ = relayed(capfd, "carriage")
    lines = [x for x in out.splitlines() if x]
    assert lines and all(x.startswith("[OutForger] ") for x in lines)
    assert "\r" not in out


def test_forged_drop_counts_do_not_overflow_the_report(
    forger: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    forger.forged_drops(10_000)
    assert forger.ping() == 1
    control(forger).close()
    _, err = relayed(capfd, "dropped")
    assert "[OutForger] [output over its budget" in err
    reported = int(err.split("dropped ", 1)[1].split(" ", 1)[0])
    assert reported <= 10_000 * 2**48


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_out_notification_fails_the_compartment(forger: Any, kind: str) -> None:
    with pytest.raises(ProtocolError, match=r"malformed `\$out`"):
        forger.malformed(kind)
    with OutForger() as again:
        assert again.ping() == 1
