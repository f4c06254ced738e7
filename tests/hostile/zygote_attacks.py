"""Attacks through what compartments used to share by being forks of one zygote.

A compromised compartment looks for what another one was given (walking the objects
``gc`` knows, or reading raw heap pages through ctypes, with no syscall at all), for
another module's state, and at the stdio it was started with. Everything the attacks
need (ctypes prototypes, constants, a regex) is prepared at import, in the zygote.
Nothing here imports ``zygote_victims``: its state must never reach this module's zygote.
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
from typing import Any

from compartments import compartment
from compartments.rulesets import SystemIO

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.fcntl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.sbrk.restype = ctypes.c_void_p
_libc.sbrk.argtypes = [ctypes.c_long]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


_libc.mallinfo2.restype = _MallInfo2

PAGE = os.sysconf("SC_PAGESIZE")
PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE = 1, 2, 1, 2
F_SETFL = 4
MAP_FAILED = ctypes.c_void_p(-1).value
#: A stolen secret is the needle followed by 32 hex digits (``secrets.token_hex(16)``).
_TOKEN = re.compile(rb"[0-9a-f]{32}")
_CHUNK = 1 << 20


def _everything() -> list[Any]:
    """Every object gc tracks, plus what they reference (str and bytes are untracked)."""
    tracked = gc.get_objects()
    return tracked + gc.get_referents(*tracked)


def _tokens_after(data: bytes, needle: bytes, found: set[str]) -> None:
    at = data.find(needle)
    while at >= 0:
        match = _TOKEN.match(data, at + len(needle))
        if match:
            found.add(match.group().decode())
        at = data.find(needle, at + 1)


def tokens_in_objects(needle: str) -> list[str]:
    """Secrets (needle + token) in any string, bytes or buffer reachable through gc."""
    raw = needle.encode()
    found: set[str] = set()
    for obj in _everything():
        if isinstance(obj, str) and needle in obj:
            _tokens_after(obj.encode("utf-8", "replace"), raw, found)
        elif isinstance(obj, (bytes, bytearray)) and raw in obj:
            _tokens_after(bytes(obj), raw, found)
    return sorted(found)


def _pages_of(obj: Any) -> range:
    """The pages an object's own memory lies on: always mapped, so safe to read."""
    start = id(obj)
    end = start + (sys.getsizeof(obj) if isinstance(obj, (str, bytes)) else 1)
    return range(start & -PAGE, end, PAGE)


def tokens_in_pages(needle: str) -> list[str]:
    """Secrets in raw memory, freed blocks included: malloc's whole brk heap, and the
    pages around every live object (pymalloc's pools) and under every buffer."""
    raw = needle.encode()
    pages: set[int] = set()
    for obj in _everything():
        pages.update(_pages_of(obj))
        if isinstance(obj, bytearray) and obj:
            view = (ctypes.c_char * len(obj)).from_buffer(obj)
            address = ctypes.addressof(view)
            pages.update(range(address & -PAGE, address + len(obj), PAGE))
            del view
    top = _libc.sbrk(0)  # glibc's cached break: no syscall
    heap = _libc.mallinfo2().arena  # what malloc took with brk: [top - arena, top)
    pages.update(range((top - heap) & -PAGE, top, PAGE))
    found: set[str] = set()
    runs: list[list[int]] = []
    for page in sorted(pages):
        if runs and runs[-1][1] == page:
            runs[-1][1] = page + PAGE
        else:
            runs.append([page, page + PAGE])
    overlap = len(raw) + 32
    for start, end in runs:
        for offset in range(start, end, _CHUNK):
            size = min(_CHUNK + overlap, end - offset)
            _tokens_after(ctypes.string_at(offset, size), raw, found)
    return sorted(found)


def worker_pid() -> int:
    """A Pool task."""
    return os.getpid()


@compartment(rules=[SystemIO.nothing()])
class Scavenger:
    """A compartment of another module than the victim's, looking for its secrets."""

    def in_objects(self, needle: str) -> list[str]:
        return tokens_in_objects(needle)

    def in_pages(self, needle: str) -> list[str]:
        return tokens_in_pages(needle)

    def module_state(self, module: str, attribute: str) -> Any:
        loaded = sys.modules.get(module)
        return None if loaded is None else getattr(loaded, attribute, None)


@compartment(rules=[SystemIO.nothing()])
class Worker:
    def ping(self) -> int:
        return os.getpid()


@compartment(rules=[SystemIO.nothing()])
def whoami() -> int:
    return os.getpid()


def _errno() -> int:
    return ctypes.get_errno() or -1


@compartment(rules=[SystemIO.nothing()])
class StdioProbe:
    """Maps its fd 1 or 2: the parent's capture file, if that is what it holds."""

    def mmap_read(self, fd: int) -> bytes | int:
        address = _libc.mmap(None, PAGE, PROT_READ, MAP_PRIVATE, fd, 0)
        if address in (None, MAP_FAILED):
            return _errno()
        try:
            return ctypes.string_at(address, PAGE)
        finally:
            _libc.munmap(address, PAGE)

    def mmap_write(self, fd: int, data: bytes) -> int:
        address = _libc.mmap(None, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if address in (None, MAP_FAILED):
            return _errno()
        ctypes.memmove(address, data, len(data))
        _libc.munmap(address, PAGE)
        return 0


@compartment(rules=[SystemIO.nothing().allow_ioctl()])
class FlagSetter:
    """Changes the flags of the file descriptions behind its fds 1 and 2."""

    def set_flags(self, fd: int, flags: int) -> int:
        return 0 if _libc.fcntl(fd, F_SETFL, flags) == 0 else _errno()

    def ttys(self) -> list[bool]:
        return [os.isatty(fd) for fd in (0, 1, 2)]


@compartment(rules=[SystemIO.nothing().allow_stdout().allow_stderr()])
class Printer:
    """Prints, as a compartment with a stdout grant may: normal lines, forged ones, floods."""

    def say(self, text: str) -> None:
        print(text)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def flood(self, total: int, line_length: int = 100) -> int:
        chunk = (b"x" * (line_length - 1) + b"\n") * (65536 // line_length)
        written = 0
        while written < total:
            written += os.write(1, chunk)
        return written
