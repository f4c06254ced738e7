"""Why a decoded object is not a message: the ProtocolError's words for each malformed
field. The decoder's fast path only tells a message from anything else; this names what
is wrong, off the hot path.
"""

from __future__ import annotations

import msgpack

from ._frames import MAX_METHOD_LENGTH, MAX_MSGID, NOTIFICATION, REQUEST, RESPONSE
from ._remote_errors import a_type

__all__ = ["describe_unpack_error", "why_not_a_message"]


def why_not_a_message(obj: object) -> str:
    """What is wrong with ``obj`` as a request, response or notification."""
    if type(obj) is not list or not obj:
        return f"expected a non-empty array, got {a_type(obj)}"
    kind = obj[0]
    if type(kind) is not int or kind not in (REQUEST, RESPONSE, NOTIFICATION):
        return f"unknown message type {_short(kind)}"
    expected = 3 if kind == NOTIFICATION else 4
    if len(obj) != expected:
        return f"message of type {kind} has {len(obj)} fields, not {expected}"
    if kind == NOTIFICATION:
        return _bad_method(obj[1]) or _bad_params(obj[2]) or "message rejected"
    if why := _bad_msgid(obj[1]):
        return why
    if kind == REQUEST:
        return _bad_method(obj[2]) or _bad_params(obj[3]) or "message rejected"
    return f"response error is {a_type(obj[2])}, not a map or nil"


def _bad_msgid(msgid: object) -> str | None:
    if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
        return f"msgid must be an int in 0..{MAX_MSGID}, got {_short(msgid)}"
    return None


def _bad_method(method: object) -> str | None:
    if type(method) is not str or not 0 < len(method) <= MAX_METHOD_LENGTH:
        return f"method must be a str of 1..{MAX_METHOD_LENGTH} chars, got {_short(method)}"
    return None


def _bad_params(params: object) -> str | None:
    if type(params) is not list:
        return f"params must be an array, got {a_type(params)}"
    return None


def _short(value: object) -> str:
    text = repr(value) if isinstance(value, (int, float, bool, type(None))) else a_type(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_unpack_error(exc: Exception) -> str:
    if isinstance(exc, msgpack.StackError):
        return "nesting too deep"
    if isinstance(exc, UnicodeDecodeError):
        return "str is not valid UTF-8"
    if isinstance(exc, TypeError):
        return f"unusable map key ({exc})"
    return str(exc) or type(exc).__name__
