"""Text from a compartment, made safe to show: in a log, an exception message, a terminal.

Anything a compartment sends (a path read from its memory, an exception message, a line
of its output) may hold newlines that forge log records, ESC/OSC sequences that drive
the terminal, or bidi controls that reorder what a reader sees. :func:`printable` shows
each of them as an escape instead, in one linear pass.
"""

from __future__ import annotations

__all__ = ["printable", "printable_lines"]

#: C0 and C1 controls, DEL, and the Unicode line separators and bidi controls.
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # fmt: skip
_NAMED = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _escape(code: int) -> str:
    return _NAMED.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


_TABLE = {code: _escape(code) for code in _UNSAFE}
_TABLE_KEEPING_NEWLINES = {code: text for code, text in _TABLE.items() if code != ord("\n")}


def _bounded(text: str, limit: int | None) -> tuple[str, str]:
    if limit is None or len(text) <= limit:
        return text, ""
    return text[:limit], f"... [{len(text) - limit} more characters]"


def _valid_utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: shown as escapes, never raised later
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def printable(text: object, limit: int | None = None) -> str:
    """``text`` on one line, every control character shown as an escape (``\\x1b``, ``\\n``).

    ``limit`` caps the characters kept; what is cut is counted, never silently dropped.
    Anything that is not a str is shown by its ``repr``-free type name.
    """
    if not isinstance(text, str):
        text = f"<{type(text).__name__}>"
    kept, cut = _bounded(text, limit)
    return _valid_utf8(kept.translate(_TABLE)) + cut


def printable_lines(text: object, limit: int | None = None) -> str:
    """Like :func:`printable`, but newlines stay: for tracebacks and multi-line output."""
    if not isinstance(text, str):
        text = f"<{type(text).__name__}>"
    kept, cut = _bounded(text, limit)
    return _valid_utf8(kept.translate(_TABLE_KEEPING_NEWLINES)) + cut
