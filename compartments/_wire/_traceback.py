"""Format exceptions inside a sealed compartment, where the filesystem is off limits.

The stdlib's :mod:`traceback` calls :func:`linecache.checkcache`, which ``stat``\\ s
every source file and evicts entries it cannot stat, and reads missing sources from
disk. Inside a seccomp-sealed process those syscalls are denied (or kill it), so this
module walks the traceback itself and takes source lines only from what
:func:`warm_linecache` put into :data:`linecache.cache` before sealing.
"""

from __future__ import annotations

import builtins
import linecache
from collections.abc import Iterable
from types import ModuleType, TracebackType
from typing import cast

__all__ = ["format_exception", "format_exception_only", "warm_linecache"]

# CPython collapses runs of identical frames (deep recursion) after this many.
_REPEAT_CUTOFF = 3
# Guards against pathological chains (each link is another exception to format).
_MAX_CHAIN = 64
_MAX_GROUP_DEPTH = 8

_CAUSE_HEADER = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT_HEADER = "\nDuring handling of the above exception, another exception occurred:\n\n"


def warm_linecache(targets: ModuleType | str | Iterable[ModuleType | str]) -> int:
    """Read sources into :data:`linecache.cache` now, while the filesystem is reachable.

    Accepts a module, a filename, or an iterable of either (e.g. ``sys.modules.values()``).
    Returns how many files are now cached. Must run *before* sealing; a later
    ``linecache.checkcache()`` in the sealed process would evict these entries again.
    """
    single = isinstance(targets, (ModuleType, str))
    items = cast("Iterable[ModuleType | str]", [targets] if single else targets)
    cached = 0
    for item in items:
        if isinstance(item, ModuleType):
            filename = getattr(item, "__file__", None)
            module_globals: dict[str, object] | None = vars(item)
        else:
            filename, module_globals = item, None
        if not isinstance(filename, str) or not filename:
            continue
        try:
            lines = linecache.getlines(filename, module_globals)
        except Exception:  # a broken loader must not stop the warm-up
            continue
        cached += bool(lines)
    return cached


def format_exception(exc: BaseException) -> str:
    """The text ``traceback.format_exception`` would give, without any syscall.

    Source lines appear only for files already in :data:`linecache.cache`.
    """
    lines: list[str] = []
    _format_chain(exc, lines, seen=set(), group_depth=0)
    return "".join(lines)


def format_exception_only(exc: BaseException) -> str:
    """``Type: message`` (plus notes), robust against a ``__str__`` that raises."""
    exc_type = type(exc)
    name = exc_type.__qualname__
    module = getattr(exc_type, "__module__", None)
    if isinstance(module, str) and module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    message = _safe_str(exc)
    text = f"{name}: {message}\n" if message else f"{name}\n"
    if isinstance(exc, SyntaxError) and exc.filename is not None:
        location = f'  File "{exc.filename}", line {exc.lineno}\n'
        source = (exc.text or "").strip()
        text = location + (f"    {source}\n" if source else "") + text
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        text += "".join(f"{_safe_str(note)}\n" for note in notes)
    return text


def _format_chain(exc: BaseException, lines: list[str], seen: set[int], group_depth: int) -> None:
    # Oldest first, like the interpreter: walk the chain back, then print forwards.
    chain: list[tuple[BaseException, str]] = []
    current: BaseException | None = exc
    header = ""
    while current is not None and id(current) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, header))
        if current.__cause__ is not None:
            current, header = current.__cause__, _CAUSE_HEADER
        elif current.__context__ is not None and not current.__suppress_context__:
            current, header = current.__context__, _CONTEXT_HEADER
        else:
            current = None
    # An entry's header says how it led to the one printed after it.
    for link, header in reversed(chain):
        _format_single(link, lines, seen, group_depth)
        lines.append(header)


def _format_single(exc: BaseException, lines: list[str], seen: set[int], group_depth: int) -> None:
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(_format_frames(exc.__traceback__))
    lines.append(format_exception_only(exc))
    if isinstance(exc, getattr(builtins, "BaseExceptionGroup", ())):
        _format_group_members(exc, lines, seen, group_depth)


def _format_group_members(
    group: BaseException, lines: list[str], seen: set[int], group_depth: int
) -> None:
    members = getattr(group, "exceptions", ())
    if group_depth >= _MAX_GROUP_DEPTH:
        lines.append(f"  ... ({len(members)} nested exceptions not shown)\n")
        return
    for number, member in enumerate(members, start=1):
        lines.append(f"  +---------------- {number} ----------------\n")
        nested: list[str] = []
        _format_chain(member, nested, seen, group_depth + 1)
        text = "".join(nested)
        lines.extend(f"  | {line}\n" for line in text.splitlines())


def _format_frames(tb: TracebackType | None) -> list[str]:
    lines: list[str] = []
    last: tuple[str, int | None, str] | None = None
    repeats = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (code.co_filename, tb.tb_lineno, code.co_name)
        if key == last:
            repeats += 1
        else:
            lines.extend(_repeat_note(repeats))
            last, repeats = key, 0
        if repeats < _REPEAT_CUTOFF:
            lines.append(_format_frame(*key))
        tb = tb.tb_next
    lines.extend(_repeat_note(repeats))
    return lines


def _repeat_note(repeats: int) -> list[str]:
    hidden = repeats - _REPEAT_CUTOFF + 1
    if hidden <= 0:
        return []
    plural = "s" if hidden > 1 else ""
    return [f"  [Previous line repeated {hidden} more time{plural}]\n"]


def _format_frame(filename: str, lineno: int | None, name: str) -> str:
    text = f'  File "{filename}", line {lineno}, in {name}\n'
    source = _cached_line(filename, lineno)
    return text + (f"    {source}\n" if source else "")


def _cached_line(filename: str, lineno: int | None) -> str:
    """The source line if linecache already holds it; never reads or stats a file."""
    entry = linecache.cache.get(filename)
    # Full entries are (size, mtime, lines, fullname); 1-tuples are lazy loaders
    # that would import or read on demand, so they are skipped.
    if lineno is None or not isinstance(entry, tuple) or len(entry) != 4:
        return ""
    source_lines = entry[2]
    if not isinstance(source_lines, list) or not 1 <= lineno <= len(source_lines):
        return ""
    line = source_lines[lineno - 1]
    return line.strip() if isinstance(line, str) else ""


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}.__str__ raised>"
