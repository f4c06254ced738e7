"""Class 8 of issue 12: text from a compartment reaching a log, a message or a terminal.

Paths read from a sealed child's memory and the messages and type names of what it
raises are the compartment's to choose. Newlines forge log records, ESC and OSC
sequences drive the terminal that shows them, bidi controls reorder what a reader sees.
They must arrive as escapes, bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from wire_attacks import TextForger

from compartments import control
from compartments.errors import PolicyViolation, RemoteError

pytestmark = pytest.mark.timeout(60)

_OSC_TITLE = "\x1b]0;owned\x07"
_CONTROLS = {*range(0x20), 0x7F, *range(0x80, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029,
             *range(0x202A, 0x202F), *range(0x2066, 0x206A)}  # fmt: skip


def _raw_controls(text: str, allow: str = "") -> list[str]:
    return [char for char in text if ord(char) in _CONTROLS and char not in allow]


@pytest.fixture
def forger() -> Iterator[Any]:
    with TextForger() as compartment_:
        yield compartment_


def test_a_denied_path_with_a_newline_and_osc_is_escaped_in_the_log_and_the_violation(
    forger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/tmp/x\n[CRITICAL] forged record {_OSC_TITLE}"
    with (
        caplog.at_level(logging.WARNING, logger="compartments"),
        pytest.raises(PolicyViolation) as info,
    ):
        forger.open_path(path)
    message = str(info.value)
    assert _raw_controls(message) == [], message
    assert "\\n[CRITICAL] forged record \\x1b]0;owned\\x07" in message
    records = [r.getMessage() for r in caplog.records if "was denied" in r.getMessage()]
    assert records, "the violation was not logged"
    for record in records:
        assert _raw_controls(record) == [], record
    assert any("\\x1b]0;owned\\x07" in record for record in records)


def test_a_raised_exception_with_controls_in_its_message_and_type_name_is_escaped(
    forger: Any,
) -> None:
    with pytest.raises(RemoteError) as info:
        forger.raise_evil()
    error = info.value
    for text in (str(error), error.remote_type, error.message):
        assert _raw_controls(text) == [], text
    assert error.remote_type.startswith("wire_attacks.Evil\\x1b[2J\\x1b]0;owned\\x07\\nFAKE")
    assert "\\n[CRITICAL] forged record\\x1b]0;owned\\x07" in error.message
    # The traceback keeps its own lines, but no terminal control reaches the reader.
    assert _raw_controls(str(error.__cause__), allow="\n") == []


def test_a_rebuilt_builtin_escapes_bidi_overrides_and_lone_surrogates(forger: Any) -> None:
    with pytest.raises(ValueError) as info:
        forger.raise_bidi_and_surrogate()
    text = str(info.value)
    assert _raw_controls(text) == [], ascii(text)
    assert "\\u202e" in text and "\\x1b" in text
    text.encode("utf-8")  # a lone surrogate would make printing it raise


def test_a_multi_megabyte_message_arrives_bounded(forger: Any) -> None:
    with pytest.raises(ValueError) as info:
        control(forger).with_timeout(30).raise_value_error("A", repeat=8 * 2**20)
    assert len(str(info.value)) < 20 * 1024
    assert str(info.value).endswith("more characters]")


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\u061c", "\u2066", "\ufeff", "\U000e0041", "\u00ad"],
    ids=["zero-width space", "arabic letter mark", "bidi isolate", "bom", "tag", "soft hyphen"],
)
def test_invisible_format_characters_in_a_message_arrive_escaped(
    forger: Any, invisible: str
) -> None:
    with pytest.raises(ValueError) as info:
        forger.raise_value_error(f"user{invisible}=admin")
    code = ord(invisible)
    width = "x02" if code < 0x100 else "u04" if code < 0x10000 else "U08"
    escape = f"\\{width[0]}{code:{width[1:]}x}"
    assert invisible not in str(info.value)
    assert f"user{escape}=admin" in str(info.value)
