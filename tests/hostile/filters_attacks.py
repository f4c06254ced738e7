"""Compartments that turn the fds they hold into write primitives, and controls.

Each attack runs inside a sealed compartment with stdlib calls or raw syscalls (ctypes
``syscall()`` with 64-bit arguments, so high bits reach the kernel as written) and
returns the errno it got (0: the step succeeded). The test then looks at what the parent
sees: the file on disk, its own fd's flags, its terminal's input.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from compartments import Fd, compartment
from compartments._policy._seccomp import syscall_number
from compartments.rulesets import SystemIO
from examples.ipc_db_server.database import SQLiteDatabase, database_rules

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {
    name: syscall_number(name)
    for name in ("mmap", "munmap", "mprotect", "mremap", "remap_file_pages", "fcntl", "ioctl",
                 "dup3")
}  # fmt: skip

PAGE = mmap.PAGESIZE
PROT_READ, PROT_WRITE = mmap.PROT_READ, mmap.PROT_WRITE
MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE, MAP_ANONYMOUS = 0x01, 0x02, 0x03, 0x20
MREMAP_MAYMOVE, MREMAP_DONTUNMAP = 1, 4
F_GETFL, F_SETFL, F_SETOWN, F_GETOWN = 3, 4, 8, 9
TIOCSTI, TIOCLINUX, FIOASYNC = 0x5412, 0x541C, 0x5452
TIOCL_SETSEL, TIOCL_PASTESEL = 2, 3
#: A slot of the channel block (64-127) that no channel uses in these tests.
BLOCK_SLOT = 120
HIGH = 1 << 32
MARK = b"PWNED"


def _long(value: Any) -> Any:
    return ctypes.c_long(value) if isinstance(value, int) else value


def sys_value(name: str, *args: Any) -> tuple[int, int]:
    """(return value, errno) of a raw syscall; every int argument passed as 64 bits."""
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(NR[name]), *(_long(a) for a in args)))
    return result, (ctypes.get_errno() if result == -1 else 0)


def sys_errno(name: str, *args: Any) -> int:
    return sys_value(name, *args)[1]


def _errno_of(action: Callable[[], object]) -> int:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def map_and_write(fd: int, flags: int, *, prot: int = PROT_READ | PROT_WRITE,
                  upgrade: bool = False) -> int:  # fmt: skip
    """mmap ``fd`` (raw syscall), optionally mprotect it writable, write MARK at 0."""
    address, err = sys_value("mmap", 0, PAGE, prot, flags, fd, 0)
    if err:
        return err
    try:
        if upgrade:
            err = sys_errno("mprotect", address, PAGE, PROT_READ | PROT_WRITE)
            if err:
                return err
        ctypes.memmove(address, MARK, len(MARK))
    finally:
        sys_value("munmap", address, PAGE)
    return 0


def toggle_nonblock(fd: int, blocking: bool) -> int:
    flags, err = sys_value("fcntl", fd, F_GETFL, 0)
    if err:
        return err
    wanted = flags & ~os.O_NONBLOCK if blocking else flags | os.O_NONBLOCK
    return sys_errno("fcntl", fd, F_SETFL, wanted) or _errno_of(
        lambda: os.set_blocking(fd, blocking)
    )


# -- shared file mappings ------------------------------------------------------------------


class _FileAttacker:
    """Holds one file opened ``r+b`` in setup (readable and writable by the kernel's rules)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "r+b", buffering=0)  # held for the seal

    def raw_map(self, flags: int, prot: int = PROT_READ | PROT_WRITE,
                upgrade: bool = False) -> int:  # fmt: skip
        return map_and_write(self.file.fileno(), flags, prot=prot, upgrade=upgrade)

    def stdlib_map(self) -> int:
        def write_through() -> None:
            with mmap.mmap(self.file.fileno(), PAGE, mmap.MAP_SHARED, mmap.PROT_WRITE) as m:
                m[: len(MARK)] = MARK

        return _errno_of(write_through)

    def private_map(self) -> tuple[int, bytes]:
        """Control: a private mapping reads the file, and writing it copies, not writes."""
        address, err = sys_value("mmap", 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE,
                                 self.file.fileno(), 0)  # fmt: skip
        if err:
            return err, b""
        try:
            seen = ctypes.string_at(address, 16)
            ctypes.memmove(address, MARK, len(MARK))
        finally:
            sys_value("munmap", address, PAGE)
        return 0, seen

    def private_map_moved(self) -> int:
        """Control: mremap (MAYMOVE | DONTUNMAP, then growing) keeps a private mapping private."""
        address, err = sys_value("mmap", 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE,
                                 self.file.fileno(), 0)  # fmt: skip
        if err:
            return err
        moved, err = sys_value("mremap", address, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
        if err:
            sys_value("munmap", address, PAGE)
            return err
        grown, err = sys_value("mremap", moved, PAGE, 2 * PAGE, MREMAP_MAYMOVE)
        for where in (address, grown if not err else moved):
            ctypes.memmove(where, MARK, len(MARK))
        sys_value("munmap", address, PAGE)
        sys_value("munmap", grown if not err else moved, 2 * PAGE if not err else PAGE)
        return err

    def remap_file_pages(self) -> int:
        """remap_file_pages works inside shared mappings only; it is not granted at all."""
        address, err = sys_value("mmap", 0, PAGE, PROT_READ, MAP_PRIVATE, self.file.fileno(), 0)
        if err:
            return err
        try:
            return sys_errno("remap_file_pages", address, PAGE, 0, 0, 0)
        finally:
            sys_value("munmap", address, PAGE)


def _read_only_rules(attacker: ReadOnlyFile) -> list[Any]:
    return [SystemIO.nothing().allow_file_read(attacker.file)]


@compartment(rules=_read_only_rules)
class ReadOnlyFile(_FileAttacker):
    """Granted reads (and fstat) on its file, nothing else."""


def _read_and_ioctl_rules(attacker: ReadOnlyFileWithFcntl) -> list[Any]:
    return [SystemIO.nothing().allow_file_read(attacker.file).allow_ioctl()]


@compartment(rules=_read_and_ioctl_rules)
class ReadOnlyFileWithFcntl(_FileAttacker):
    """Reads plus ioctl/fcntl: stdlib mmap.mmap dups the fd (fcntl) before mapping it."""


class _TwoFiles(_FileAttacker):
    def __init__(self, path: str, other: str) -> None:
        super().__init__(path)
        self.other = open(other, "r+b", buffering=0)  # held for the seal

    def raw_map_other(self, flags: int) -> int:
        return map_and_write(self.other.fileno(), flags)


def _shared_mapping_rules(attacker: SharedMappingGranted) -> list[Any]:
    f = attacker.file
    return [
        SystemIO.nothing().allow_file_read(f).allow_file_write(f).allow_shared_mapping(f),
        SystemIO.nothing().allow_file_read(attacker.other),
    ]


@compartment(rules=_shared_mapping_rules)
class SharedMappingGranted(_TwoFiles):
    """May write its first file and map it shared; may only read the second."""


@compartment(rules=[SystemIO.nothing()])
class PassedFdHolder:
    """Given an fd by the parent in setup (the parent keeps its own copy)."""

    def __init__(self, passed: Fd) -> None:
        self.fd = passed.detach()

    def map_and_write(self, flags: int) -> int:
        return map_and_write(self.fd, flags)

    def setfl_in_block(self, command: int, flags: int) -> int:
        """Move the fd into the channel block, where the runtime allows fcntl, and F_SETFL."""
        moved, err = sys_value("dup3", self.fd, BLOCK_SLOT, 0)
        if err:
            return err
        try:
            return sys_errno("fcntl", moved, command, flags)
        finally:
            os.close(moved)

    def set_blocking_in_block(self, blocking: bool) -> int:
        """Control: toggling O_NONBLOCK in the block, by F_SETFL (passing back the other
        flags F_GETFL returned, as callers do) and by ioctl(FIONBIO) (os.set_blocking)."""
        moved, err = sys_value("dup3", self.fd, BLOCK_SLOT, 0)
        if err:
            return err
        try:
            return toggle_nonblock(moved, blocking)
        finally:
            os.close(moved)


@compartment(rules=[SystemIO.nothing().allow_ioctl()])
class IoctlHolder:
    """Given an fd by the parent, with SystemIO.allow_ioctl(): ioctl and fcntl on any fd."""

    def __init__(self, passed: Fd) -> None:
        self.fd = passed.detach()

    def fcntl(self, command: int, arg: int) -> int:
        return sys_errno("fcntl", self.fd, command, arg)

    def arm_sigio(self, owner: int) -> dict[str, int]:
        """Aim SIGIO at ``owner`` and switch O_ASYNC on, through fcntl and through ioctl."""
        flags = sys_value("fcntl", self.fd, F_GETFL, 0)[0]
        on = ctypes.c_int(1)
        return {
            "F_SETOWN": sys_errno("fcntl", self.fd, F_SETOWN, owner),
            "F_SETFL(O_ASYNC)": sys_errno("fcntl", self.fd, F_SETFL, max(flags, 0) | os.O_ASYNC),
            "FIOASYNC": sys_errno("ioctl", self.fd, FIOASYNC, ctypes.byref(on)),
        }

    def set_blocking(self, blocking: bool) -> int:
        return toggle_nonblock(self.fd, blocking)

    def inject(self, command: int, text: bytes) -> list[int]:
        """TIOCSTI-style: one ioctl per byte, pushing it into the terminal's input."""
        return [sys_errno("ioctl", self.fd, command, ctypes.c_char_p(bytes([c]))) for c in text]

    def linux_paste(self) -> dict[str, int]:
        """TIOCLINUX: select a span of the console, then paste it as input."""
        select = ctypes.create_string_buffer(bytes([TIOCL_SETSEL]) + bytes(10))
        paste = ctypes.create_string_buffer(bytes([TIOCL_PASTESEL]))
        return {
            "TIOCL_SETSEL": sys_errno("ioctl", self.fd, TIOCLINUX, select),
            "TIOCL_PASTESEL": sys_errno("ioctl", self.fd, TIOCLINUX, paste),
        }

    def isatty(self) -> bool:
        return os.isatty(self.fd)


@compartment(rules=[SystemIO.nothing()])
class AnonymousMemory:
    """Control: multiprocessing-style shared anonymous memory works in a sealed child."""

    def shared_anonymous(self) -> bytes:
        with mmap.mmap(-1, PAGE) as m:  # MAP_SHARED | MAP_ANONYMOUS
            m[:5] = b"hello"
            stdlib = bytes(m[:5])
        address, err = sys_value("mmap", 0, PAGE, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0)  # fmt: skip
        if err:
            raise OSError(err, os.strerror(err))
        ctypes.memmove(address, b"world", 5)
        raw = ctypes.string_at(address, 5)
        sys_value("munmap", address, PAGE)
        return stdlib + raw


@compartment(rules=database_rules, name="GrowingDatabase")
class GrowingDatabase(SQLiteDatabase):
    """Control: the example's database, driven until SQLite maps more of -shm after the seal."""

    def write_batch(self, count: int, size: int) -> int:
        """One transaction of ``count`` rows: past 4062 WAL frames, -shm maps a new region."""
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        with self._transaction():
            for index in range(count):
                self._db.execute("INSERT INTO messages (body) VALUES (?)", (f"{index}" * size,))
        return self.count()


def tty_session(method: str, *args: Any) -> dict[str, Any]:
    """Run in a fresh process: make a new pty this session's controlling terminal (as a
    parent's own terminal is, for every compartment it starts), hand its slave to an
    IoctlHolder, run ``method`` there, and report what reached the terminal."""
    import json
    import select
    import termios

    master, slave = os.openpty()
    os.setsid()
    fcntl_ioctl(slave, termios.TIOCSCTTY, 0)
    with IoctlHolder(Fd(slave)) as holder:
        steps = getattr(holder, method)(*args)
    echoed = b""
    if select.select([master], [], [], 0.5)[0]:  # the echo reaches the master via a worker
        echoed = os.read(master, 4096)
    pending = int.from_bytes(fcntl_ioctl(slave, termios.FIONREAD, bytes(4)), "little")
    result = {"steps": steps, "echoed": echoed.decode(errors="replace"), "pending": pending}
    print(json.dumps(result))
    return result


def fcntl_ioctl(fd: int, request: int, arg: Any) -> Any:
    import fcntl

    return fcntl.ioctl(fd, request, arg)


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "ok"
