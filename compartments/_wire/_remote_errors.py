"""Exceptions as data: what crosses the wire when a compartment raises, and back.

Allowlisted builtin types are rebuilt from checked values (see ``_builtin_errors``;
OSErrors keep errno and filename); anything else becomes RemoteError. Every text from
the compartment is escaped and bounded, and the remote traceback is the ``__cause__``.
Never pickled.
"""

from __future__ import annotations

import builtins
from typing import Any

from .._text import printable, printable_lines
from ..errors import ProtocolError, RemoteError
from ._builtin_errors import MAX_MESSAGE_CHARS, rebuild
from ._traceback import format_exception

__all__ = ["MAX_TRACEBACK_CHARS", "RemoteTraceback", "decode_error", "encode_error"]

MAX_TRACEBACK_CHARS = 64 * 1024
MAX_TYPE_NAME_LENGTH = 256
# What the parent keeps of a traceback: the child's cut, plus room for its marker.
_MAX_TRACEBACK_SHOWN = MAX_TRACEBACK_CHARS + 64
_MAX_ERROR_ARGS = 8
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry


def a_type(value: object) -> str:
    """"a dict", "an int": for messages about a value of the wrong type."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class RemoteTraceback(Exception):
    """Carries a compartment's traceback text as the ``__cause__`` of a re-raised error.

    Same trick as ``concurrent.futures.process._RemoteTraceback``: the interpreter
    prints the remote frames right above the local ones.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def encode_error(exc: BaseException) -> dict[str, Any]:
    """The error payload of a response: plain data, never the exception object."""
    exc_type = type(exc)
    is_builtin = getattr(builtins, exc_type.__name__, None) is exc_type
    type_name = exc_type.__qualname__
    if not is_builtin:
        type_name = f"{exc_type.__module__}.{type_name}"
    traceback_text = format_exception(exc)
    if len(traceback_text) > MAX_TRACEBACK_CHARS:
        half = MAX_TRACEBACK_CHARS // 2
        elided = "\n[... traceback truncated ...]\n"
        traceback_text = traceback_text[:half] + elided + traceback_text[-half:]
    payload: dict[str, Any] = {
        "type": _utf8_safe(type_name),
        "message": _utf8_safe(_safe_str(exc)),
        "traceback": _utf8_safe(traceback_text),
        "builtin": is_builtin,
    }
    args = _scalar_args(exc.args)
    if args is not None:
        payload["args"] = args
    if isinstance(exc, OSError):
        payload["errno"] = exc.errno if isinstance(exc.errno, int) else None
        payload["strerror"] = _utf8_safe(exc.strerror) if isinstance(exc.strerror, str) else None
        payload["filename"] = _filename(exc.filename)
        payload["filename2"] = _filename(exc.filename2)
    return payload


def decode_error(payload: object, compartment: str) -> BaseException:
    """Rebuild an exception from :func:`encode_error`'s payload.

    Allowlisted builtin types come back as themselves, from checked arguments (so
    ``except ValueError`` works); everything else becomes
    :class:`~compartments.errors.RemoteError`. Every text is escaped and bounded, and
    the remote traceback is attached as ``__cause__``.
    """
    fields = _validated_error(payload, compartment)
    message = printable(fields["message"], MAX_MESSAGE_CHARS)
    traceback_text = printable_lines(fields["traceback"], _MAX_TRACEBACK_SHOWN)
    error = rebuild(fields, message) if fields.get("builtin") is True else None
    if error is None:
        error = RemoteError(printable(fields["type"]), message, traceback_text)
    where = printable(compartment)
    cause = f'\n"""\nTraceback in compartment `{where}`:\n{traceback_text}"""'
    error.__cause__ = RemoteTraceback(cause)
    return error


_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "builtin": (bool,),
    "errno": (int, type(None)),
    "strerror": (str, type(None)),
    "filename": (str, bytes, type(None)),
    "filename2": (str, bytes, type(None)),
    "args": (list,),
}


def _validated_error(payload: object, compartment: str) -> dict[str, Any]:
    def bad(what: str) -> ProtocolError:
        return ProtocolError(f"compartment `{compartment}` sent a malformed error: {what}")

    if type(payload) is not dict:
        raise bad(f"expected a map, got {a_type(payload)}")
    for key in ("type", "message", "traceback"):
        if type(payload.get(key)) is not str:
            raise bad(f"field `{key}` must be a str")
    if not 0 < len(payload["type"]) <= MAX_TYPE_NAME_LENGTH:
        raise bad(f"field `type` must have 1..{MAX_TYPE_NAME_LENGTH} chars")
    for key, allowed in _OPTIONAL_FIELDS.items():
        if key in payload and type(payload[key]) not in allowed:
            raise bad(f"field `{key}` has type {type(payload[key]).__name__}")
    args = payload.get("args", [])
    if len(args) > _MAX_ERROR_ARGS or not all(type(arg) in _SCALARS for arg in args):
        raise bad(f"field `args` must hold at most {_MAX_ERROR_ARGS} scalars")
    return payload


_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _scalar_args(args: tuple[Any, ...]) -> list[Any] | None:
    """``exc.args`` if they are few, plain and encodable, so ``KeyError('x')`` stays exact."""
    if len(args) > _MAX_ERROR_ARGS:
        return None
    for arg in args:
        if type(arg) not in _SCALARS:
            return None
        if type(arg) is int and not _INT_MIN <= arg <= _UINT_MAX:
            return None
        if type(arg) is str and _utf8_safe(arg) is not arg:
            return None
    return list(args)


def _filename(value: object) -> str | bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return _utf8_safe(value if isinstance(value, str) else _safe_str(value))


def _utf8_safe(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}.__str__ raised>"
