"""SystemIO: files and fds, with extrasafe's method names."""

from __future__ import annotations

import errno
import os
from typing import Any

from .._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet, YesReally, fd_number

__all__ = ["SystemIO"]

READ = ("read", "readv", "preadv", "preadv2", "pread64", "lseek")
WRITE = ("write", "writev", "pwritev", "pwritev2", "pwrite64", "fsync", "fdatasync", "lseek")
OPEN = ("open", "openat", "openat2")
META = ("stat", "fstat", "newfstatat", "lstat", "statx", "getdents", "getdents64", "getcwd")
CLOSE = ("close", "close_range")
UNLINK = ("unlink", "unlinkat")
IOCTL = ("ioctl", "fcntl")

# The kernel's O_TMPFILE is __O_TMPFILE | O_DIRECTORY; masking O_DIRECTORY would refuse
# plain directory opens (os.listdir), so only the __O_TMPFILE bit is checked.
_O_TMPFILE_BIT = 0o20000000
WRITE_INTENT = (
    os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC | _O_TMPFILE_BIT
)
_AT_EMPTY_PATH = 0x1000
# Syscalls whose first argument is the fd they act on (fstat is newfstatat(fd, "",
# AT_EMPTY_PATH) in glibc >= 2.33, and statx is checked the same way).
_FD_READ = ("read", "readv", "preadv", "preadv2", "pread64", "lseek", "fstat")
_FD_WRITE = ("write", "writev", "pwritev", "pwritev2", "pwrite64", "fsync", "fdatasync", "lseek")


def _on_fd(syscalls: tuple[str, ...], fd: int) -> list[SeccompRule]:
    return [SeccompRule(name).and_condition(Arg(0, bits=32) == fd) for name in syscalls]


def _stat_fd(fd: int) -> list[SeccompRule]:
    return [
        SeccompRule("newfstatat")
        .and_condition(Arg(0, bits=32) == fd)
        .and_condition(Arg(3) & _AT_EMPTY_PATH == _AT_EMPTY_PATH),
        SeccompRule("statx")
        .and_condition(Arg(0, bits=32) == fd)
        .and_condition(Arg(2) & _AT_EMPTY_PATH == _AT_EMPTY_PATH),
    ]


class SystemIO(BuiltinRuleSet):
    """File and fd I/O. ``nothing()`` plus the ``allow_*`` methods you need."""

    name = "SystemIO"

    @classmethod
    def everything(cls) -> SystemIO:
        """Every file syscall, opening any path included."""
        return cls()._with(simple=READ + WRITE + OPEN + META + CLOSE + UNLINK + IOCTL)

    def allow_read(self) -> SystemIO:
        """Read and seek on any fd already open."""
        return self._with(simple=READ)

    def allow_write(self) -> SystemIO:
        """Write, seek and sync on any fd already open."""
        return self._with(simple=WRITE)

    def allow_metadata(self) -> SystemIO:
        """stat family, directory listing and getcwd (paths included)."""
        return self._with(simple=META)

    def allow_unlink(self) -> SystemIO:
        return self._with(simple=UNLINK)

    def allow_close(self) -> SystemIO:
        return self._with(simple=CLOSE)

    def allow_ioctl(self) -> SystemIO:
        return self._with(simple=IOCTL)

    def allow_open(self) -> YesReally[SystemIO]:
        """Open any path with any flags: risky, so it must be confirmed."""
        return YesReally(self._with(simple=OPEN), "SystemIO.allow_open()")

    def allow_open_readonly(self) -> SystemIO:
        """Open for reading only: no write, append, create, truncate or O_TMPFILE.

        openat2 hides its flags behind a pointer, so it answers ENOSYS and libc falls back
        to openat, whose flags can be checked.
        """
        return self._with(
            conditional=[
                SeccompRule("open").and_condition(Arg(1) & WRITE_INTENT == 0),
                SeccompRule("openat").and_condition(Arg(2) & WRITE_INTENT == 0),
                SeccompRule("openat2").returning_errno(errno.ENOSYS),
            ]
        )

    def allow_stdin(self) -> SystemIO:
        return self._with(conditional=_on_fd(("read",), 0))

    def allow_stdout(self) -> SystemIO:
        return self._with(conditional=_on_fd(("write",), 1))

    def allow_stderr(self) -> SystemIO:
        return self._with(conditional=_on_fd(("write",), 2))

    def allow_file_read(self, file: Any) -> SystemIO:
        """Read, seek and fstat on this one fd."""
        fd = fd_number(file, "SystemIO.allow_file_read")
        return self._with(conditional=_on_fd(_FD_READ, fd) + _stat_fd(fd))

    def allow_file_write(self, file: Any) -> SystemIO:
        """Write, seek and sync on this one fd."""
        fd = fd_number(file, "SystemIO.allow_file_write")
        return self._with(conditional=_on_fd(_FD_WRITE, fd))
