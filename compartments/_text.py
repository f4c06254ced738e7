"""Text from a compartment, made safe to show: in a log, an exception message, a terminal.

Anything a compartment sends (a path read from its memory, an exception message, a line
of its output) may hold newlines that forge log records, ESC/OSC sequences that drive
the terminal, or bidi controls that reorder what a reader sees. :func:`printable` shows
each of them as an escape instead, in one linear pass.
"""

from __future__ import annotations

__all__ = ["printable", "printable_lines"]

#: Unicode's format characters (Cf: bidi controls, zero-width and invisible ones, tags)
#: and line/paragraph separators (Zl, Zp), as of Unicode 14 (CPython 3.11); a test checks
#: the running interpreter's tables against it.
_FORMAT_RANGES = (
    (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD),
    (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)  # fmt: skip
#: C0 and C1 controls, DEL, and the format characters above.
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0),
           *(c for first, last in _FORMAT_RANGES for c in range(first, last + 1))]  # fmt: skip
_NAMED = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _escape(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
