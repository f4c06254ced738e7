"""Which builtin exceptions a compartment's error may come back as, and from what.

The values come from a compartment that may be hostile, and several builtins' C code
trusts its arguments: a ``UnicodeDecodeError`` whose ``start`` lies outside its object
reads out of bounds in ``str()`` (CPython gh-123378). So only the types listed here are
rebuilt, each by its own builder from arguments checked for type, range and length, and
every text in them is escaped. Anything else, or anything that fails a check, is for the
caller to turn into :class:`~compartments.errors.RemoteError`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._text import printable

__all__ = ["MAX_MESSAGE_CHARS", "rebuild"]

#: An exception message, or one str argument, is cut to this many characters.
MAX_MESSAGE_CHARS = 16 * 1024
_MAX_BYTES_ARG = 4096
_MAX_SHORT_TEXT = 1024  # strerror, a Unicode error's reason
_MAX_ENCODING = 64
_MAX_FILENAME = 4096  # PATH_MAX
_MAX_ERRNO = 4095  # Linux's MAX_ERRNO

# Types whose constructor only stores its arguments (BaseException.__init__), so any
# few scalars are safe. ExceptionGroups (which take exceptions), SystemExit and the
# other control-flow exceptions (StopIteration...) are deliberately absent.
_PLAIN = (
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "BufferError",
    "EOFError", "FloatingPointError", "ImportError", "IndexError", "KeyError",
    "LookupError", "MemoryError", "ModuleNotFoundError", "NameError", "NotImplementedError",
    "OverflowError", "RecursionError", "ReferenceError", "RuntimeError", "SystemError",
    "TypeError", "UnboundLocalError", "UnicodeError", "ValueError", "ZeroDivisionError",
    "Warning", "BytesWarning", "DeprecationWarning", "EncodingWarning", "FutureWarning",
    "ImportWarning", "PendingDeprecationWarning", "ResourceWarning", "RuntimeWarning",
    "SyntaxWarning", "UnicodeWarning", "UserWarning",
)  # fmt: skip
# SyntaxError parses a second argument as a location tuple: rebuilt from its message only.
_MESSAGE_ONLY = ("SyntaxError", "IndentationError", "TabError")
_OSERRORS = (
    "OSError", "BlockingIOError", "ChildProcessError", "ConnectionError", "BrokenPipeError",
    "ConnectionAbortedError", "ConnectionRefusedError", "ConnectionResetError",
    "FileExistsError", "FileNotFoundError", "InterruptedError", "IsADirectoryError",
    "NotADirectoryError", "PermissionError", "ProcessLookupError", "TimeoutError",
)  # fmt: skip

Builder = Callable[[type[BaseException], Mapping[str, Any], str], "BaseException | None"]


def rebuild(fields: Mapping[str, Any], message: str) -> BaseException | None:
    """The builtin exception ``fields`` describe, or None if it may not be rebuilt.

    ``fields`` passed ``_remote_errors``' shape check (field types, at most 8 scalar
    args); ``message`` is already escaped and bounded.
    """
    entry = _BUILDERS.get(fields["type"])
    if entry is None:
        return None
    cls, builder = entry
    try:
        error = builder(cls, fields, message)
    except (TypeError, ValueError, OverflowError):  # a check missed a case: not rebuilt
        return None
    return error if error is not None and type(error) is cls else None


def _plain(cls: type[BaseException], fields: Mapping[str, Any], message: str) -> BaseException:
    args = _safe_scalars(fields.get("args"))
    return cls(*args) if args is not None else cls(message)


def _message_only(
    cls: type[BaseException], fields: Mapping[str, Any], message: str
) -> BaseException:
    return cls(message)


def _oserror(
    cls: type[BaseException], fields: Mapping[str, Any], message: str
) -> BaseException | None:
    number = fields.get("errno")
    if number is None:  # OSError("text"): no errno to keep
        return cls(message)
    if type(number) is not int or not 0 < number <= _MAX_ERRNO:
        return None
    strerror = fields.get("strerror")
    filename, filename2 = fields.get("filename"), fields.get("filename2")
    if strerror is not None:
        strerror = printable(strerror, _MAX_SHORT_TEXT)
    if not (_filename_ok(filename) and _filename_ok(filename2)):
        return None
    # str() shows filenames by repr, which escapes them; the values stay exact. As
    # few arguments as they need, so ``args`` is what the compartment's error had.
    if filename2 is not None:
        return cls(number, strerror, filename, None, filename2)
    if filename is not None:
        return cls(number, strerror, filename)
    return cls(number, strerror)


def _unicode_coding(object_type: type) -> Builder:
    """UnicodeDecodeError (of bytes) and UnicodeEncodeError (of a str): the range must lie
    within the object, or ``str()`` reads outside it (gh-123378)."""

    def build(
        cls: type[BaseException], fields: Mapping[str, Any], message: str
    ) -> BaseException | None:
        args = _shaped(fields.get("args"), (str, object_type, int, int, str))
        if args is None:
            return None
        encoding, obj, start, end, reason = args
        if not (_encoding_ok(encoding) and 0 <= start < end <= len(obj)):
            return None
        return cls(encoding, obj, start, end, printable(reason, _MAX_SHORT_TEXT))

    return build


_unicode_decode = _unicode_coding(bytes)
_unicode_encode = _unicode_coding(str)


def _unicode_translate(
    cls: type[BaseException], fields: Mapping[str, Any], message: str
) -> BaseException | None:
    args = _shaped(fields.get("args"), (str, int, int, str))
    if args is None:
        return None
    obj, start, end, reason = args
    if not 0 <= start < end <= len(obj):
        return None
    return cls(obj, start, end, printable(reason, _MAX_SHORT_TEXT))


def _shaped(args: object, types: tuple[type, ...]) -> list[Any] | None:
    """``args`` if it is a list of exactly these types (a bool is not an int here)."""
    if not isinstance(args, list) or len(args) != len(types):
        return None
    return args if all(type(a) is t for a, t in zip(args, types, strict=True)) else None


def _encoding_ok(encoding: str) -> bool:
    return 0 < len(encoding) <= _MAX_ENCODING and printable(encoding) == encoding


def _filename_ok(name: object) -> bool:
    return name is None or (isinstance(name, (str, bytes)) and len(name) <= _MAX_FILENAME)


def _safe_scalars(args: object) -> tuple[Any, ...] | None:
    """The args with each str escaped and bounded; None if any is not safe to keep."""
    if type(args) is not list:
        return None
    safe: list[Any] = []
    for arg in args:
        if type(arg) is str:
            arg = printable(arg, MAX_MESSAGE_CHARS)
        elif type(arg) is bytes:
            if len(arg) > _MAX_BYTES_ARG:
                return None
        elif type(arg) not in (int, float, bool, type(None)):
            return None
        safe.append(arg)
    return tuple(safe)


def _table() -> dict[str, tuple[type[BaseException], Builder]]:
    groups: list[tuple[Sequence[str], Builder]] = [
        (_PLAIN, _plain),
        (_MESSAGE_ONLY, _message_only),
        (_OSERRORS, _oserror),
        (("UnicodeDecodeError",), _unicode_decode),
        (("UnicodeEncodeError",), _unicode_encode),
        (("UnicodeTranslateError",), _unicode_translate),
    ]
    table: dict[str, tuple[type[BaseException], Builder]] = {}
    for names, builder in groups:
        for name in names:
            cls = getattr(builtins, name)
            assert isinstance(cls, type) and issubclass(cls, Exception), name
            table[name] = (cls, builder)
    return table


_BUILDERS = _table()
