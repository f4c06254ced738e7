"""What ``printable`` shows for text from a compartment: no character that moves the
cursor, hides itself or reorders what a reader sees reaches a log or a terminal raw."""

from __future__ import annotations

import sys
import unicodedata

from compartments._text import printable, printable_lines

_HIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


def test_every_control_format_and_separator_character_is_escaped() -> None:
    hidden = [chr(c) for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) in _HIDDEN_CATEGORIES]  # fmt: skip
    shown = printable("".join(hidden))
    assert [c for c in shown if unicodedata.category(c) in _HIDDEN_CATEGORIES] == []


def test_newlines_stay_only_in_printable_lines() -> None:
    assert printable("a\nb") == "a\\nb"
    assert printable_lines("a\nb\x1b") == "a\nb\\x1b"


def test_a_cut_says_how_much_was_cut() -> None:
    assert printable("abcdef", limit=2) == "ab... [4 more characters]"


def test_lone_surrogates_become_escapes_that_encode() -> None:
    printable("\udc80").encode("utf-8")


def test_plain_text_is_unchanged() -> None:
    assert printable("naïve café — 日本語 🙂") == "naïve café — 日本語 🙂"
