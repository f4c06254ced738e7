"""The format of ``GET /read``: one message per line, oldest first, in UTF-8.

A message may contain line breaks (a textarea's, or any POSTed body), so each message is
escaped onto one line: a backslash is written ``\\\\``, a line feed ``\\n``, a carriage
return ``\\r``; nothing else changes. A message without those characters reads as
itself, and splitting the body on line feeds and unescaping each line gives back
exactly the messages stored. No messages is an empty body (a message is never empty).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["decode", "encode"]

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_TABLE = str.maketrans(_ESCAPES)
_UNESCAPES = {escaped[1]: plain for plain, escaped in _ESCAPES.items()}
_ESCAPED = re.compile(r"\\(.?)", re.DOTALL)  # .? : a lone trailing backslash too


def encode(messages: Iterable[str]) -> str:
    """The body of ``/read``: each message escaped onto its own line."""
    return "\n".join(message.translate(_TABLE) for message in messages)


def decode(body: str) -> list[str]:
    """The messages of a ``/read`` body; ValueError for an escape ``encode`` never writes."""
    if not body:
        return []
    return [_unescape(line) for line in body.split("\n")]


def _unescape(line: str) -> str:
    def plain(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped not in _UNESCAPES:
            raise ValueError(f"not an escape of /read: {match.group(0)!r} in {line!r}")
        return _UNESCAPES[escaped]

    return _ESCAPED.sub(plain, line)
